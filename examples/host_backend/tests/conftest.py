"""Fixtures: a fresh PostgreSQL database for the session, brought up the way a deployment does it (the host's
`flask db upgrade`, rows that predate the auto-sync, then `flask chatwoot init-db`), Redis, and the host app.

TEST_DATABASE_URL: a PostgreSQL URL whose role may create databases (scripts/services.sh exports it);
TEST_REDIS_URL: a Redis database the tests may flush."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
import redis
from flask import Flask

from host_backend.extensions import database
from tests.helpers import (
    HOST_OWN_COMPANY, PREEXISTING_ACCOUNT, cli_env, create_database, drop_database, flask_command, make_host_app,
    run_sql, url_of,
)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis is not reachable at {url} ({exc}): run scripts/test-example-host", returncode=3)
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def database_name(redis_url: str) -> Iterator[str]:
    """A fresh database: the host's tables by `flask db upgrade`, the host's older rows, then `flask chatwoot
    init-db` (which adds the auto-sync's tables and columns); dropped at the end of the session."""
    try:
        name = create_database("host_example")
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL is not reachable ({exc}): run scripts/test-example-host", returncode=3)
    redis.Redis.from_url(redis_url).flushdb()
    env = cli_env(name, redis_url)
    try:
        upgraded = flask_command("db", "upgrade", env=env)
        assert upgraded.returncode == 0, upgraded.stderr
        run_sql(
            url_of(name),
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, plan) VALUES"
            " (%s, 'Seven (from the old guide)', %s, 'pro'), (%s, 'Acme (the host itself)', NULL, 'enterprise')",
            (f"chatwoot_{PREEXISTING_ACCOUNT}", str(PREEXISTING_ACCOUNT), HOST_OWN_COMPANY),
        )
        initialised = flask_command("chatwoot", "init-db", env=env)
        assert initialised.returncode == 0, initialised.stdout + initialised.stderr
        yield name
    finally:
        drop_database(name)


@pytest.fixture
def database_url(database_name: str) -> str:
    return url_of(database_name)


@pytest.fixture
def cli(database_name: str, redis_url: str):
    """Run `flask ...` of the host against the session database."""

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return flask_command(*args, env=cli_env(database_name, redis_url, **extra_env))

    return run


@pytest.fixture
def app(database_name: str, redis_url: str) -> Iterator[Flask]:
    app = make_host_app(database_name, redis_url)
    yield app
    with app.app_context():
        database.engine.dispose()


@pytest.fixture
def client(app: Flask):
    return app.test_client()


@pytest.fixture(scope="session")
def chatwoot_database_url() -> Iterator[str]:
    """A Chatwoot-shaped database (its `accounts` table) for the reconciler to read (CHATWOOT_DATABASE_URL)."""
    name = create_database("host_example_chatwoot")
    url = url_of(name)
    run_sql(url, "CREATE TABLE accounts (id bigint PRIMARY KEY, name varchar NOT NULL, status integer NOT NULL DEFAULT 0,"
                 " custom_attributes jsonb NOT NULL DEFAULT '{}')")
    run_sql(url, "CREATE TABLE installation_configs (name varchar PRIMARY KEY, serialized_value jsonb)")
    try:
        yield url
    finally:
        drop_database(name)
