"""Fixtures: a real PostgreSQL database and a real Redis database owned by the test session, and apps on them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from psycopg import sql

from multibackend import create_app
from multibackend.cli import apply_schema
from multibackend.extensions import db
from tests.helpers import LIVE_SECRET, TABS_PUBLIC_URL, CompanyWriteWatch, LiveServer, admin_url, with_database
from tests.servers import ChatwootDatabase, FakePlatformApi

TABLES = ("companies", "chatwoot_sync_events", "chatwoot_webhook_rejections", "chatwoot_sync_totals", "chatwoot_tenant_announcements", "chatwoot_dashboard_tabs")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database with the schema applied, dropped at the end of the session."""
    admin = admin_url()
    name = f"multibackend_test_{uuid.uuid4().hex[:8]}"
    try:
        admin_connection = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL is not reachable at {admin} ({exc}); run the README's test command", returncode=3)
    with admin_connection:
        admin_connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(admin, name)
    app = create_app({"DATABASE_URL": url, "REDIS_URL": ""})
    with app.app_context():
        apply_schema()
        db.engine.dispose()
    yield url
    with psycopg.connect(admin, autocommit=True) as admin_connection:
        admin_connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(autouse=True)
def company_write_watch() -> Iterator[CompanyWriteWatch]:
    """Fail any test during which our code wrote `companies` outside the one write path."""
    with CompanyWriteWatch() as watch:
        yield watch
    assert not watch.violations, f"companies written outside company_write(): {watch.violations}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis is not reachable at {url} ({exc}); run the README's test command", returncode=3)
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def clean_database(database_url: str) -> Iterator[str]:
    """The session database, emptied before the test."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    yield database_url


@pytest.fixture
def make_app(clean_database: str, redis_client: redis.Redis, redis_url: str) -> Iterator[Callable[..., Flask]]:
    """Build apps on the test PostgreSQL and Redis; settings as keyword overrides (env-style names)."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        settings = {"DATABASE_URL": clean_database, "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": ""}
        settings.update(overrides)
        app = create_app(settings)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def app_on_own_database(make_app: Callable[..., Flask]) -> Iterator[Callable[..., tuple[Flask, str]]]:
    """A factory: a database of the test's own, set up by the given SQL statements, and an app on it: (app, its URL).
    Dropped at the end of the test."""
    admin, made = admin_url(), []

    def factory(*statements: str) -> tuple[Flask, str]:
        name = f"multibackend_own_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = with_database(admin, name)
        with psycopg.connect(url, autocommit=True) as connection:
            for statement in statements:
                connection.execute(statement)
        app = make_app(DATABASE_URL=url)
        made.append((app, name))
        return app, url

    yield factory
    for app, name in made:
        with app.app_context():
            db.engine.dispose()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def tabs_app(make_app: Callable[..., Flask], chatwoot: ChatwootDatabase) -> Callable[..., Flask]:
    """Build apps that make company tabs in the test module's `chatwoot` (its writer role) for TABS_PUBLIC_URL."""

    def build(**settings: Any) -> Flask:
        return make_app(**{"CHATWOOT_DATABASE_URL": chatwoot.writer_url, "PUBLIC_URL": TABS_PUBLIC_URL, **settings})  # type: ignore[attr-defined]

    return build


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def live_server(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """gunicorn with 3 workers on the test databases, webhook secret LIVE_SECRET."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CHATWOOT_WEBHOOK_SECRET": f"old-live-secret,{LIVE_SECRET}",
        "WEB_CONCURRENCY": "3",
    }
    server = LiveServer(env, tmp_path_factory.mktemp("gunicorn") / "gunicorn.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def production_server(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The production command as it ships (default workers, gevent), webhook secret LIVE_SECRET and a 1000-byte
    body limit; `.database_url` is its database."""
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": LIVE_SECRET,
           "CHATWOOT_WEBHOOK_MAX_BODY_BYTES": "1000"}
    server = LiveServer(env, tmp_path_factory.mktemp("production") / "gunicorn.log")
    server.database_url = database_url  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def chatwoot_db() -> Iterator[ChatwootDatabase]:
    """A Chatwoot-shaped database (accounts, installation_configs) of the test's own."""
    database = ChatwootDatabase(admin_url(), f"chatwoot_{uuid.uuid4().hex[:8]}")
    yield database
    database.drop()


@pytest.fixture
def platform_api() -> Iterator[FakePlatformApi]:
    """A local HTTP server with the Platform API's account endpoints and 401s."""
    api = FakePlatformApi()
    yield api
    api.stop()
