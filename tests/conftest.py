"""Fixtures: a real PostgreSQL database and a real Redis database owned by the test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from psycopg import sql
from sqlalchemy.engine import make_url

from multibackend import create_app
from multibackend.cli import apply_schema
from multibackend.extensions import db
from tests.helpers import CompanyWriteWatch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chatwoot"
SHARED_PAYLOADS = ROOT.parent / "shared" / "chatwoot" / "payloads"
TABLES = ("companies", "chatwoot_sync_events", "chatwoot_webhook_rejections", "chatwoot_sync_totals")
WEBHOOK = "/api/chatwoot/webhooks/account-created"


def _admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database with the schema applied, dropped at the end of the session."""
    admin = _admin_url()
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
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def count_rows(database_url: str, table: str) -> int:
    with psycopg.connect(database_url) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def payload(name: str) -> bytes:
    """A real Chatwoot payload sample, byte for byte."""
    return (FIXTURES / name).read_bytes()


class LiveServer:
    """The production command (gunicorn with gunicorn.conf.py) running on a spare port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wsgi:app", "--config", "gunicorn.conf.py"],
            cwd=ROOT, env={**os.environ, **env, "PORT": str(self.port)}, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_until_ready()

    def _wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/api/system/info", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not answer in time")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


LIVE_SECRET = "live-secret-Zx81"


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


@pytest.fixture
def chatwoot_db() -> Iterator[Any]:
    """A Chatwoot-shaped database (accounts, installation_configs) of the test's own."""
    from tests.servers import ChatwootDatabase

    database = ChatwootDatabase(_admin_url(), f"chatwoot_{uuid.uuid4().hex[:8]}")
    yield database
    database.drop()


@pytest.fixture
def platform_api() -> Iterator[Any]:
    """A local HTTP server with the Platform API's account endpoints and 401s."""
    from tests.servers import FakePlatformApi

    api = FakePlatformApi()
    yield api
    api.stop()


def run_command(app: Flask, *args: str) -> Any:
    """Run `flask chatwoot <args>` in-process against the app; returns click's result (exit_code, output)."""
    return app.test_cli_runner().invoke(args=["chatwoot", *args])


def companies_state(database_url: str) -> dict[str, tuple[str, str, str]]:
    """{company_id: (company_name, provisioning_status, chatwoot_status)} of every company."""
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT company_id, company_name, provisioning_status, chatwoot_status FROM companies"
        ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def namespaces_state(client: redis.Redis) -> dict[str, dict[str, str]]:
    """{tenant key: its hash without created_at} of every tenant namespace, plus the index registry."""
    state = {
        key: {field: value for field, value in client.hgetall(key).items() if field != "created_at"}
        for key in client.scan_iter("chatwoot_*:tenant")
    }
    state["registry"] = {index: "1" for index in client.smembers("multibackend:vectorstore:indexes")}
    return state


def tenant_data_keys(client: redis.Redis) -> list[str]:
    """Every Redis key except the rate limiter's counters (which count refused requests by design)."""
    return [key for key in client.scan_iter() if "multibackend:ratelimit" not in key]
