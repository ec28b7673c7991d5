"""Real servers that a test owns and stops: a PostgreSQL cluster, a Redis server, a fake Chatwoot Platform API."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from sqlalchemy.engine import make_url
import redis

from tests.helpers import free_port, with_database


def _postgres_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda path: int(path.split("/")[4]))
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: PostgreSQL server binaries are needed (scripts/test installs them)")
    return found


class DisposablePostgres:
    """A private PostgreSQL cluster (trust auth) on a spare port; stop() makes the database go away."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="mb-pg-")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._as_postgres(_postgres_bin("initdb"), "-D", f"{self.directory}/data", "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, cwd="/", timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(_postgres_bin("pg_ctl"), "-D", f"{self.directory}/data", "-l", f"{self.directory}/log", "-o", options, "-w", "start")

    def stop(self) -> None:
        self._as_postgres(_postgres_bin("pg_ctl"), "-D", f"{self.directory}/data", "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


class DisposableRedis:
    """A private redis-server on a spare port that keeps nothing on disk: a restart is an empty Redis."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


CHATWOOT_SCHEMA = """
CREATE TABLE accounts (id serial PRIMARY KEY, name varchar NOT NULL, created_at timestamp NOT NULL DEFAULT now(),
  updated_at timestamp NOT NULL DEFAULT now(), locale integer DEFAULT 0, domain varchar(100), support_email varchar(100),
  feature_flags bigint DEFAULT 0 NOT NULL, auto_resolve_duration integer, limits jsonb DEFAULT '{}',
  custom_attributes jsonb DEFAULT '{}', status integer DEFAULT 0, internal_attributes jsonb DEFAULT '{}' NOT NULL,
  settings jsonb DEFAULT '{}');
CREATE TABLE installation_configs (id bigserial PRIMARY KEY, name varchar NOT NULL UNIQUE,
  serialized_value jsonb DEFAULT '{}' NOT NULL, created_at timestamp NOT NULL DEFAULT now(),
  updated_at timestamp NOT NULL DEFAULT now(), locked boolean DEFAULT true NOT NULL);
CREATE TABLE users (id serial PRIMARY KEY, name varchar NOT NULL, email varchar, type varchar,
  created_at timestamp NOT NULL DEFAULT now(), updated_at timestamp NOT NULL DEFAULT now());
CREATE TABLE account_users (id bigserial PRIMARY KEY, account_id bigint, user_id bigint, role integer DEFAULT 0,
  inviter_id bigint, created_at timestamp(6) NOT NULL DEFAULT now(), updated_at timestamp(6) NOT NULL DEFAULT now(),
  active_at timestamp, availability integer DEFAULT 0 NOT NULL, auto_offline boolean DEFAULT true NOT NULL);
CREATE UNIQUE INDEX uniq_user_id_per_account_id ON account_users (account_id, user_id);
-- as Chatwoot's db/schema.rb (4.x): Rails sets the timestamps (no default), no foreign keys
CREATE TABLE dashboard_apps (id bigserial PRIMARY KEY, title varchar NOT NULL, content jsonb DEFAULT '[]',
  account_id bigint NOT NULL, user_id bigint, created_at timestamp(6) NOT NULL, updated_at timestamp(6) NOT NULL);
CREATE INDEX index_dashboard_apps_on_account_id ON dashboard_apps (account_id);
CREATE INDEX index_dashboard_apps_on_user_id ON dashboard_apps (user_id);
"""

#: exactly what the README tells operators to grant the role behind CHATWOOT_DATABASE_URL
DOCUMENTED_GRANTS = (
    "GRANT SELECT ON accounts, account_users, installation_configs TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON dashboard_apps TO {role}",
    "GRANT USAGE ON SEQUENCE dashboard_apps_id_seq TO {role}",
    "GRANT SELECT (id) ON users TO {role}",
)


class ChatwootDatabase:
    """A database shaped like Chatwoot's (accounts, installation_configs) on the test PostgreSQL server."""

    def __init__(self, admin_url: str, name: str):
        self.admin_url = admin_url
        self.name = name
        self.roles: list[str] = []
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.url = with_database(admin_url, name)
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(CHATWOOT_SCHEMA)

    def execute(self, sql: str, params: Any = None) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(sql, params)

    def add_accounts(self, rows: list[tuple[int, str]]) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            with connection.cursor().copy("COPY accounts (id, name) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            connection.execute("SELECT setval('accounts_id_seq', (SELECT max(id) FROM accounts))")

    def set_webhook_url(self, url: str) -> None:
        yaml = f"--- !ruby/hash:ActiveSupport::HashWithIndifferentAccess\nvalue: {url}\n"
        self.execute(
            "INSERT INTO installation_configs (name, serialized_value, locked) VALUES ('INSTALLATION_EVENTS_WEBHOOK_URL', %s, false)"
            " ON CONFLICT (name) DO UPDATE SET serialized_value = EXCLUDED.serialized_value",
            (json.dumps(yaml),),
        )

    def add_administrators(self, rows: list[tuple[int, int]]) -> None:
        """(account id, user id): a user who administers the account (role 1), as signup makes them."""
        with psycopg.connect(self.url, autocommit=True) as connection:
            for account_id, user_id in rows:
                connection.execute(
                    "INSERT INTO users (id, name, email, type) VALUES (%s, %s, %s, 'User') ON CONFLICT (id) DO NOTHING",
                    (user_id, f"Admin {user_id}", f"admin{user_id}@example.com"),
                )
                connection.execute("INSERT INTO account_users (account_id, user_id, role) VALUES (%s, %s, 1)", (account_id, user_id))

    def dashboard_apps(self, account_id: int | None = None) -> list[tuple[Any, ...]]:
        """(id, account_id, title, content, user_id, created_at) of the dashboard apps, by id."""
        with psycopg.connect(self.url) as connection:
            return connection.execute(
                "SELECT id, account_id, title, content, user_id, created_at FROM dashboard_apps"
                " WHERE %(account)s::bigint IS NULL OR account_id = %(account)s ORDER BY id",
                {"account": account_id},
            ).fetchall()

    def role_url(self, grants: tuple[str, ...] = DOCUMENTED_GRANTS) -> str:
        """A login role on this database with exactly these grants (the documented ones by default)."""
        role = f"{self.name}_role{len(self.roles) + 1}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE ROLE "{role}" LOGIN')
        self.roles.append(role)
        with psycopg.connect(self.url, autocommit=True) as connection:
            for grant in grants:
                connection.execute(grant.format(role=f'"{role}"'))
        return make_url(self.url).set(username=role, password=None).render_as_string(hide_password=False)

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            for role in self.roles:
                connection.execute(f'DROP ROLE IF EXISTS "{role}"')


class QuietHTTPServer(ThreadingHTTPServer):
    """Clients that give up early (the timeout tests) are expected: no traceback for them."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class FakePlatformApi:
    """A local HTTP server speaking the shapes of Chatwoot's Platform API for accounts, with its 401s."""

    def __init__(self, token: str = "platform-token"):
        self.token = token
        self.accounts: dict[int, dict[str, Any]] = {}
        self.visible: set[int] = set()
        self.requests: list[str] = []
        self.delay = 0.0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                api.requests.append(self.path)
                time.sleep(api.delay)
                if self.headers.get("api_access_token") != api.token:
                    return self._send(401, {"error": "Invalid access_token"})
                if self.path == "/platform/api/v1/accounts":
                    return self._send(200, [api.accounts[i] for i in sorted(api.visible) if i in api.accounts])
                prefix = "/platform/api/v1/accounts/"
                if self.path.startswith(prefix) and self.path[len(prefix):].isdigit():
                    account_id = int(self.path[len(prefix):])
                    if account_id not in api.accounts:
                        return self._send(404, {"error": "Resource could not be found"})
                    if account_id not in api.visible:
                        return self._send(401, {"error": "Non permissible resource"})
                    return self._send(200, api.accounts[account_id])
                return self._send(404, {"error": "Not found"})

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, account_id: int, name: str, status: str = "active", visible: bool = True, **custom_attributes: Any) -> None:
        self.accounts[account_id] = {
            "id": account_id, "name": name, "locale": "en", "domain": None, "support_email": None,
            "enabled_features": {}, "custom_attributes": custom_attributes, "limits": {}, "status": status,
        }
        if visible:
            self.visible.add(account_id)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
