"""The app's extensions, created unbound and attached in init_app."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import redis
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Base class of the plugin's typed models: metadata of its own, so any Flask-SQLAlchemy session (ours or the
    host's) reads and writes them on its default engine, and the host's metadata never sees them."""


# expire_on_commit=False: what a request committed stays readable without another round trip
own_db = SQLAlchemy(metadata=Base.metadata, session_options={"expire_on_commit": False})

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


def engine_connect_args() -> dict[str, Any]:
    """The connect_args the app's engine was made with (search_path, SSL files, timeouts), for another engine on
    the same database that must connect the same way."""
    options = current_app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
    return dict(options.get("connect_args") or {})


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


def one_of(column: Any, values: list[Any]) -> Any:
    """`column IN values`; on PostgreSQL `column = ANY(array)`, one parameter however many values (an IN of
    thousands of placeholders costs more to convert than to run)."""
    if db.session.get_bind().dialect.name != "postgresql":
        return column.in_(values)
    return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))


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


def run_alone(statement: Any, parameters: dict[str, Any], timeout_ms: int | None = None) -> Any:
    """Run one statement in a transaction of its own and return its first row (attribute access by column name),
    or None (see rows_alone)."""
    rows = rows_alone(statement, parameters, timeout_ms, first_only=True)
    return rows[0] if rows else None


def rows_alone(statement: Any, parameters: dict[str, Any], timeout_ms: int | None = None, first_only: bool = False) -> list[Any]:
    """Run one statement in a transaction of its own and return its rows (attribute access by column name).

    On PostgreSQL it runs on the pooled driver connection itself, in autocommit: one round trip, and a write is
    committed (durably) with it; a SQLAlchemy Connection would add about 0.2 ms of bookkeeping per use. With
    timeout_ms (a host's engine, whose connections carry no statement_timeout of ours) it runs between BEGIN,
    `SET LOCAL statement_timeout` and COMMIT instead. Driver errors come out as SQLAlchemy's, and a broken
    connection renews the pool (once_more_if_disconnected)."""
    engine = db.engine
    if engine.dialect.name != "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            result = connection.execute(statement, parameters)
            return [row for row in [result.first()] if row is not None] if first_only else list(result)
    sql = _compiled_sql(statement, engine.dialect)
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        pooled = engine.raw_connection()
    except dbapi_error as exc:  # cannot connect: SQLAlchemy's error, as from a Connection
        raise DBAPIError.instance(None, None, exc, dbapi_error, dialect=engine.dialect) from exc
    driver = pooled.driver_connection
    try:
        driver.autocommit = timeout_ms is None
        cursor = pooled.cursor()
        if timeout_ms is not None:
            cursor.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        cursor.execute(sql, parameters)
        rows = [row for row in [cursor.fetchone()] if row is not None] if first_only else cursor.fetchall()
        names = _column_names.get(sql) or _column_names.setdefault(sql, tuple(column[0] for column in cursor.description))
        cursor.close()
        if timeout_ms is not None:
            driver.commit()
        driver.autocommit = False
    except dbapi_error as exc:
        broken = engine.dialect.is_disconnect(exc, driver, None)
        if broken or not _leave_clean(driver):
            pooled.invalidate(exc)
        if broken:  # a server restart broke every pooled connection: start a new pool, as a Connection would
            engine.dispose()
        raise DBAPIError.instance(sql, parameters, exc, dbapi_error, connection_invalidated=broken, dialect=engine.dialect) from exc
    finally:
        pooled.close()
    return [SimpleNamespace(**dict(zip(names, row))) for row in rows]


def _leave_clean(driver: Any) -> bool:
    """Roll back what a failed statement left and leave autocommit, so the connection can go back to the pool."""
    try:
        driver.rollback()
        driver.autocommit = False
    except Exception:
        return False
    return True


_compiled: dict[tuple[int, type, str], str] = {}
_column_names: dict[str, tuple[str, ...]] = {}  # by SQL text: the driver builds its description anew per query


def _compiled_sql(statement: Any, dialect: Any) -> str:
    """The statement's SQL for this kind of dialect (statements are module constants: compiled once)."""
    key = (id(statement), type(dialect), dialect.paramstyle)
    sql = _compiled.get(key)
    if sql is None:
        sql = _compiled[key] = str(statement.compile(dialect=dialect))
    return sql


LIMITS_EXTENSION = "multibackend.limits"
LIMIT_KEY = "multibackend:ratelimit:{}:{}:{}"  # name, window number, client address
SYNC_INTERVAL_SECONDS = 1.0


class WindowLimits:
    """Fixed-window limits per client address, shared by every worker and instance through Redis, without a round
    trip on the happy path:

    - `count_now` (failed authentication): one INCR per counted request; the count Redis returns decides, so
      concurrent requests can never pass more than the limit within a window (a fixed window: at most twice the
      limit across a window boundary). Requests that are not counted (valid credentials) cost nothing.
    - `count_later` (lookups): counted in this process's memory and added to Redis by a background thread every
      SYNC_INTERVAL_SECONDS, which brings back the total of every worker. A process refuses once its last known
      total plus its own unsent count reaches the limit: exact within one process; across processes a client may
      pass the limit by what the other workers admitted during the last SYNC_INTERVAL_SECONDS.

    Without Redis, or while it is unreachable, counts are per process; a Redis outage never fails a request."""

    def __init__(self, client: redis.Redis | None, enabled: bool):
        self.client = client
        self.enabled = enabled
        self.lock = threading.Lock()
        self.local: dict[str, list[float]] = {}  # key -> [window's end, known total of every process, unsent here, being sent]
        self.flusher_pid = 0

    def count_now(self, name: str, address: str, limit: Any) -> int | None:
        """Count one request now; the seconds to wait (Retry-After) if it is over the limit, else None."""
        if not self.enabled:
            return None
        key, window, period = self._window(name, address, limit)
        count = None
        if self.client is not None:
            try:
                pipeline = self.client.pipeline(transaction=False)
                pipeline.incr(key)
                pipeline.expire(key, period + 1)
                count = pipeline.execute()[0]
            except redis.RedisError:
                count = None
        if count is None:
            with self.lock:
                entry = self._entry(key, window, period)
                entry[2] += 1
                count = entry[1] + entry[2] + entry[3]
        return self._retry_after(window, period) if count > limit.amount else None

    def count_later(self, name: str, address: str, limit: Any) -> int | None:
        """Count one request in memory (sent to Redis in the background); Retry-After seconds if over the limit."""
        if not self.enabled:
            return None
        key, window, period = self._window(name, address, limit)
        with self.lock:
            entry = self._entry(key, window, period)
            if entry[1] + entry[2] + entry[3] >= limit.amount:
                return self._retry_after(window, period)
            entry[2] += 1
        if self.client is not None and self.flusher_pid != os.getpid():
            self._start_flusher()
        return None

    @staticmethod
    def _window(name: str, address: str, limit: Any) -> tuple[str, int, int]:
        """(counter key, window number, window length in seconds) of this limit for this client, now."""
        period = limit.get_expiry()
        window = int(time.time() // period)
        return LIMIT_KEY.format(name, window, address), window, period

    def _entry(self, key: str, window: int, period: int) -> list[float]:
        entry = self.local.get(key)
        if entry is None:
            if len(self.local) > 10_000:
                now = time.time()
                self.local = {k: v for k, v in self.local.items() if v[0] > now}
            entry = self.local[key] = [(window + 1) * period, 0, 0, 0]
        return entry

    @staticmethod
    def _retry_after(window: int, period: int) -> int:
        return max(1, int((window + 1) * period - time.time()) + 1)

    def _start_flusher(self) -> None:
        with self.lock:
            if self.flusher_pid == os.getpid():
                return
            self.flusher_pid = os.getpid()
        threading.Thread(target=self._flush_forever, name="rate-limit-sync", daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(SYNC_INTERVAL_SECONDS)
            try:
                self.flush()
            except Exception:  # never let the thread die; counts stay local meanwhile
                pass

    def flush(self) -> None:
        """Send the unsent counts, and learn every process's totals (one pipeline)."""
        with self.lock:
            now = time.time()
            self.local = {key: entry for key, entry in self.local.items() if entry[0] > now}
            pending = [(key, int(entry[2])) for key, entry in self.local.items() if entry[2]]
            for key, count in pending:
                self.local[key][2:4] = [0, count]
        if not pending or self.client is None:
            return
        try:
            pipeline = self.client.pipeline(transaction=False)
            for key, count in pending:
                pipeline.incrby(key, count)
                pipeline.expire(key, int(self.local[key][0] - now) + 2 if key in self.local else 3700)
            results = pipeline.execute()
        except redis.RedisError:
            with self.lock:  # keep them for the next try
                for key, count in pending:
                    if key in self.local:
                        self.local[key][2:4] = [self.local[key][2] + count, 0]
            return
        with self.lock:
            for (key, _), total in zip(pending, results[::2]):
                entry = self.local.get(key)
                if entry is not None:
                    entry[1], entry[3] = int(total), 0


def init_limiter(app: Flask) -> None:
    """The plugin's rate limits (WindowLimits), on the app's Redis (per process without it). They apply to the
    plugin's routes only, and never read or change the host's own Flask-Limiter settings."""
    app.extensions[LIMITS_EXTENSION] = WindowLimits(app.extensions.get(REDIS_EXTENSION), app.config["RATELIMIT_ENABLED"])


def window_limits() -> WindowLimits:
    return current_app.extensions[LIMITS_EXTENSION]
