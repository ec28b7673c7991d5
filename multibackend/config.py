"""Settings read from the environment at factory time, validated once."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "DATABASE_URL": "",
    "REDIS_URL": "",
    "CHATWOOT_WEBHOOK_SECRET": "",
    "CHATWOOT_WEBHOOK_MAX_BODY_BYTES": 1024 * 1024,
    "CHATWOOT_SIGNATURE_TOLERANCE_SECONDS": 300,
    "DATABASE_CONNECT_TIMEOUT_SECONDS": 2,
    "DATABASE_STATEMENT_TIMEOUT_MS": 2000,
    "DATABASE_POOL_SIZE": 5,
    "REDIS_TIMEOUT_SECONDS": 0.5,
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",
    "CHATWOOT_DATABASE_URL": "",
    "CHATWOOT_API_URL": "",
    "CHATWOOT_PLATFORM_TOKEN": "",
    "PUBLIC_URL": "",
    "CHATWOOT_URL": "",
    "CHATWOOT_ADMIN_TOKEN": "",
    "CHATWOOT_EMBED_SECRET": "",
    "EMBED_WAIT_SECONDS": 30.0,
    "RATELIMIT_ENABLED": "true",
    "RATELIMIT_AUTH_FAILURES": "20 per minute",
    "RATELIMIT_LOOKUP": "300 per minute",
    "TRUSTED_PROXY_COUNT": 0,
    "RECONCILE_MAX_ATTEMPTS": 5,
    "RECONCILE_BACKOFF_SECONDS": 30,
    "RECONCILE_BATCH_SIZE": 1000,
    "SELF_HEAL_TIMEOUT_SECONDS": 1.0,
    "SELF_HEAL_NEGATIVE_TTL_SECONDS": 30,
}

INTEGER_SETTINGS = (
    "CHATWOOT_WEBHOOK_MAX_BODY_BYTES",
    "CHATWOOT_SIGNATURE_TOLERANCE_SECONDS",
    "DATABASE_CONNECT_TIMEOUT_SECONDS",
    "DATABASE_STATEMENT_TIMEOUT_MS",
    "DATABASE_POOL_SIZE",
    "RECONCILE_MAX_ATTEMPTS",
    "RECONCILE_BATCH_SIZE",
    "SELF_HEAL_NEGATIVE_TTL_SECONDS",
)
FLOAT_SETTINGS = ("REDIS_TIMEOUT_SECONDS", "SELF_HEAL_TIMEOUT_SECONDS", "EMBED_WAIT_SECONDS")
NON_NEGATIVE_FLOAT_SETTINGS = ("RECONCILE_BACKOFF_SECONDS",)


class ConfigError(RuntimeError):
    """A setting is present but unusable; raised at start-up, never at request time."""


def read_settings(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return every known setting, typed: defaults < environment < overrides."""
    raw: dict[str, Any] = dict(DEFAULTS)
    raw.update({key: environ[key] for key in DEFAULTS if key in environ})
    raw.update(overrides or {})
    for key in INTEGER_SETTINGS:
        raw[key] = _positive_number(key, raw[key], int)
    for key in FLOAT_SETTINGS:
        raw[key] = _positive_number(key, raw[key], float)
    for key in NON_NEGATIVE_FLOAT_SETTINGS:
        raw[key] = _positive_number(key, raw[key], float, allow_zero=True)
    raw["CHATWOOT_WEBHOOK_SECRETS"] = parse_secrets(raw["CHATWOOT_WEBHOOK_SECRET"])
    raw["LOG_LEVEL"] = str(raw["LOG_LEVEL"]).upper()
    raw["LOG_FORMAT"] = str(raw["LOG_FORMAT"]).lower()
    raw["RATELIMIT_ENABLED"] = str(raw["RATELIMIT_ENABLED"]).strip().lower() not in ("0", "false", "no", "off")
    raw["TRUSTED_PROXY_COUNT"] = _positive_number("TRUSTED_PROXY_COUNT", raw["TRUSTED_PROXY_COUNT"], int, allow_zero=True)
    for key in ("RATELIMIT_AUTH_FAILURES", "RATELIMIT_LOOKUP"):
        raw[key] = _rate_limit(key, raw[key])
    if raw["LOG_FORMAT"] not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be text or json, got {raw['LOG_FORMAT']!r}")
    return raw


def parse_secrets(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Split a comma-separated secret list (rotation) into its non-empty members."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(item.strip() for item in items if item and item.strip())


def sqlalchemy_database_uri(database_url: str, instance_path: str) -> str:
    """Map DATABASE_URL to a SQLAlchemy URI: psycopg 3 for PostgreSQL, SQLite file when unset."""
    url = (database_url or "").strip()
    if not url:
        Path(instance_path).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(instance_path) / 'multibackend.db'}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith(("postgresql+", "sqlite:")):
        return url
    raise ConfigError("DATABASE_URL must start with postgresql:// (or postgres://); leave it unset for SQLite")


def engine_options(uri: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Pool and timeout options so that a hung database cannot hold a request past Chatwoot's 5 s."""
    if uri.startswith("sqlite:"):
        return {"connect_args": {"timeout": settings["DATABASE_CONNECT_TIMEOUT_SECONDS"]}}
    statement_timeout = settings["DATABASE_STATEMENT_TIMEOUT_MS"]
    return {
        # no pool_pre_ping: a round trip per request; a connection broken by a server restart is retried once
        # (extensions.once_more_if_disconnected) and SQLAlchemy then replaces the whole pool
        "pool_size": settings["DATABASE_POOL_SIZE"],
        "pool_timeout": settings["DATABASE_CONNECT_TIMEOUT_SECONDS"],
        "connect_args": {
            "connect_timeout": settings["DATABASE_CONNECT_TIMEOUT_SECONDS"],
            "options": f"-c statement_timeout={statement_timeout}",
            "application_name": "multibackend",
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            # a partitioned network would otherwise hold a pooled connection's request for minutes
            "tcp_user_timeout": 3000,
        },
    }


def _rate_limit(key: str, value: Any) -> str:
    """A limit in Flask-Limiter's notation ("20 per minute", "5/second; 100/hour"), checked at start-up."""
    from limits import parse_many

    try:
        parse_many(str(value))
    except ValueError:
        raise ConfigError(f"{key} must look like '20 per minute', got {value!r}") from None
    return str(value)


def _positive_number(key: str, value: Any, kind: type, allow_zero: bool = False) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{key} must be greater than zero, got {value!r}")
    return number

