"""The app's extensions, created unbound and attached in init_app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Base class of the plugin's typed models: metadata of its own, so any Flask-SQLAlchemy session (ours or the
    host's) reads and writes them on its default engine, and the host's metadata never sees them."""


# expire_on_commit=False: what a request committed stays readable without another round trip
own_db = SQLAlchemy(metadata=Base.metadata, session_options={"expire_on_commit": False})
limiter = Limiter(key_func=get_remote_address)

DATABASE_EXTENSION = "multibackend.database"
PLUGIN_BLUEPRINT = "chatwoot_webhooks"
REDIS_EXTENSION = "multibackend.redis"
T = TypeVar("T")
logger = logging.getLogger(__name__)


class ActiveDatabase:
    """`db.session` and `db.engine` of the app being served: the host's Flask-SQLAlchemy when the plugin is mounted
    in a backend that has one (one pool, one session, the host's transaction rules), else the plugin's own."""

    metadata = Base.metadata

    @property
    def sqlalchemy(self) -> SQLAlchemy:
        return current_app.extensions[DATABASE_EXTENSION]

    @property
    def session(self) -> Any:
        return self.sqlalchemy.session

    @property
    def engine(self) -> Engine:
        return self.sqlalchemy.engine

    @property
    def is_own(self) -> bool:
        """Whether the engine is the plugin's (configured with its timeouts), not the host's."""
        return self.sqlalchemy is own_db


db = ActiveDatabase()


def init_database(app: Flask, host_db: SQLAlchemy | None) -> SQLAlchemy:
    """Use the host's SQLAlchemy (given, or found on the app whatever its variable name), else the plugin's own on
    DATABASE_URL (or the app's SQLALCHEMY_DATABASE_URI, or the embedded SQLite file); returns the one in use."""
    from multibackend.config import engine_options, sqlalchemy_database_uri

    found = host_db or app.extensions.get("sqlalchemy")
    if found is None:
        config = app.config
        if config["DATABASE_URL"] or "SQLALCHEMY_DATABASE_URI" not in config:
            config["SQLALCHEMY_DATABASE_URI"] = sqlalchemy_database_uri(config["DATABASE_URL"], app.instance_path)
        config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(config["SQLALCHEMY_DATABASE_URI"], config))
        own_db.init_app(app)
        found = own_db
    elif app.config["DATABASE_URL"]:
        logger.info("[Chatwoot Sync] Using the host app's database (its Flask-SQLAlchemy); DATABASE_URL is not used")
    app.extensions[DATABASE_EXTENSION] = found
    return found


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


def is_transient(exc: BaseException) -> bool:
    """A database error that another try may not meet (unreachable, timed out, connection lost), unlike a refusal
    by the schema (a constraint, a wrong column) that would fail the same way forever."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError, PoolTimeout))


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
    a Redis outage never fails a request (limits fall back to process memory). The host's own RATELIMIT_* keys
    (its Flask-Limiter's: default limits, storage...) are hidden while our limiter reads its own, then restored;
    only RATELIMIT_ENABLED is shared."""
    config = app.config
    redis_url = config.get("REDIS_URL") or ""
    ours: dict[str, Any] = {
        "RATELIMIT_STORAGE_URI": redis_url or "memory://",
        "RATELIMIT_STORAGE_OPTIONS": (
            {"socket_connect_timeout": config["REDIS_TIMEOUT_SECONDS"], "socket_timeout": config["REDIS_TIMEOUT_SECONDS"]}
            if redis_url
            else {}
        ),
        # no X-RateLimit-* headers: each costs a Redis round trip on every request; 429s carry Retry-After anyway
        "RATELIMIT_HEADERS_ENABLED": False,
        "RATELIMIT_SWALLOW_ERRORS": True,
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_KEY_PREFIX": "multibackend:ratelimit",
        "RATELIMIT_STRATEGY": "fixed-window",
    }
    hosts = {key: config.pop(key) for key in [key for key in config if key.startswith("RATELIMIT_") and key != "RATELIMIT_ENABLED"]}
    config.update(ours)
    try:
        limiter.init_app(app)
    finally:
        for key in ours:
            config.pop(key, None)
        config.update(hosts)


@limiter.request_filter
def _not_ours() -> bool:
    """The plugin's limiter looks at the plugin's routes only; the host's routes are its own limiter's business."""
    return not (request.blueprint or "").startswith(PLUGIN_BLUEPRINT)
