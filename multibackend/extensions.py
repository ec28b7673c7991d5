"""The app's extensions, created unbound and attached in init_app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis
from flask import Flask, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from sqlalchemy.orm import DeclarativeBase



class Base(DeclarativeBase):
    """Base class of the project's typed models."""


# expire_on_commit=False: what a request committed stays readable without another round trip
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
limiter = Limiter(key_func=get_remote_address)

REDIS_EXTENSION = "multibackend.redis"
T = TypeVar("T")


def init_redis(app: Flask) -> None:
    """Create the app's Redis client (connections open lazily), or record that none is configured."""
    url = app.config.get("REDIS_URL") or ""
    timeout = app.config["REDIS_TIMEOUT_SECONDS"]
    app.extensions[REDIS_EXTENSION] = (
        redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
            decode_responses=True,
        )
        if url
        else None
    )


def get_redis() -> redis.Redis | None:
    """The current app's Redis client, or None when REDIS_URL is not set."""
    return current_app.extensions.get(REDIS_EXTENSION)


def conflict_aware_insert(table: Any) -> Any:
    """An INSERT that supports ON CONFLICT on the bound database (PostgreSQL in production, SQLite embedded)."""
    dialect = db.session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def once_more_if_disconnected(operation: Callable[[], T]) -> T:
    """Run a database operation; if its pooled connection turns out broken (a server restart), once more."""
    try:
        return operation()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        db.session.rollback()
        return operation()


def init_limiter(app: Flask) -> None:
    """Rate limits shared by every worker and instance (Redis), or per process when REDIS_URL is not set;
    a Redis outage never fails a request (limits fall back to process memory)."""
    config = app.config
    redis_url = config.get("REDIS_URL") or ""
    config.setdefault("RATELIMIT_STORAGE_URI", redis_url or "memory://")
    if redis_url:
        timeout = config["REDIS_TIMEOUT_SECONDS"]
        config.setdefault("RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": timeout, "socket_timeout": timeout})
    # no X-RateLimit-* headers: each costs a Redis round trip on every request; 429s carry Retry-After anyway
    config.setdefault("RATELIMIT_HEADERS_ENABLED", False)
    config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    config.setdefault("RATELIMIT_KEY_PREFIX", "multibackend:ratelimit")
    config.setdefault("RATELIMIT_STRATEGY", "fixed-window")
    limiter.init_app(app)
