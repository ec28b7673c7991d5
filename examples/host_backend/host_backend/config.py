"""The host's settings, read from the environment when the app is created (the old setup guide's Config object)."""

from __future__ import annotations

import os


def database_uri(url: str) -> str:
    """postgres:// (Railway, Heroku) and postgresql:// mean psycopg2, this backend's driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


class Config:
    SQLALCHEMY_DATABASE_URI = database_uri(os.environ.get("DATABASE_URL", "postgresql://localhost/host_backend"))
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    # the host's own Flask-Limiter: a default limit on every route, counted in process memory
    RATELIMIT_DEFAULT = os.environ.get("HOST_RATE_LIMIT", "120 per minute")
    RATELIMIT_STORAGE_URI = "memory://"
    RATELIMIT_HEADERS_ENABLED = True
    # read by the Chatwoot auto-sync (app.config wins over the environment; anything unset here comes from there)
    CHATWOOT_WEBHOOK_SECRET = os.environ.get("CHATWOOT_WEBHOOK_SECRET", "")
    # fault injection for the example's tests only: the vector-index receiver kills its own process
    HOST_CRASH_IN_RECEIVER = os.environ.get("HOST_CRASH_IN_RECEIVER") == "1"
