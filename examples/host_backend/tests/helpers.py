"""What the example's tests share: URLs and databases, the host's `flask` command, the app, a delivery."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask
from psycopg import sql
from sqlalchemy.engine import make_url

from host_backend import create_app

EXAMPLE = Path(__file__).resolve().parent.parent
SECRET = "host-example-secret"
WEBHOOK = "/api/chatwoot/webhooks/account-created"
LOOKUP = "/api/chatwoot/webhooks/company/{}"
# The host's default rate limit in the tests. Flask-Limiter reads RATELIMIT_DEFAULT on a Limiter's first init_app
# only, so every app of the session gets the same one.
HOST_LIMIT = 20

# Rows the host had before it mounted the auto-sync (the old guide's columns only):
PREEXISTING_ACCOUNT = 7  # a company the old guide's code created for Chatwoot account 7
HOST_OWN_COMPANY = "acme"  # the host's own company: no Chatwoot account

ADMIN_URL = make_url(os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))


def url_of(database_name: str, driver: str = "") -> str:
    """TEST_DATABASE_URL pointed at another database, as postgresql:// or postgresql+<driver>://."""
    url = ADMIN_URL.set(drivername=f"postgresql+{driver}" if driver else "postgresql", database=database_name)
    return url.render_as_string(hide_password=False)


def run_sql(url: str, statement: Any, params: Any = None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        cursor = connection.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def create_database(prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    run_sql(url_of(ADMIN_URL.database), sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    run_sql(url_of(ADMIN_URL.database), sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def flask_command(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """The host's `flask` command (the installed Flask, this folder's app), as an operator or a Procfile runs it."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "host_backend:create_app", *args],
        cwd=EXAMPLE, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )


def cli_env(database: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment a deployment gives the host's processes."""
    return {"DATABASE_URL": url_of(database), "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": SECRET, **extra}


def make_host_app(database_name: str, redis_url: str, driver: str = "psycopg2", **config: Any) -> Flask:
    """The host app with settings given through app.config (as the host's Config object would)."""
    return create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": url_of(database_name, driver),
            "REDIS_URL": redis_url,
            "CHATWOOT_WEBHOOK_SECRET": SECRET,
            "RATELIMIT_DEFAULT": f"{HOST_LIMIT} per minute",
            **config,
        }
    )


def deliver(client, account_id: int, name: str):
    """Chatwoot's installation webhook for one new account, authenticated with ?token=."""
    return client.post(f"{WEBHOOK}?token={SECRET}", json={"event": "account_created", "id": account_id, "name": name})
