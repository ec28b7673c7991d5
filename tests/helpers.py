"""Plain helpers shared by the tests: paths, payloads, database and Redis probes, service runners, a live server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from multibackend.models import Company
from multibackend.services.companies import write_in_progress
from multibackend.services.sync_metrics import REJECTIONS_KEY

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chatwoot"
SHARED_PAYLOADS = ROOT.parent / "shared" / "chatwoot" / "payloads"
WEBHOOK = "/api/chatwoot/webhooks/account-created"
LIVE_SECRET = "live-secret-Zx81"

COMPANY_WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?companies\"?[\s(]", re.IGNORECASE)


# ---- where the tests' servers are ---------------------------------------------------------------------------


def admin_url() -> str:
    """The PostgreSQL server the tests create their databases on."""
    return os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


# the companies table of the first setup guide (before the auto-sync), as operators created it by hand
SETUP_GUIDE_COMPANIES = """
CREATE TABLE companies (
    id SERIAL PRIMARY KEY,
    company_id VARCHAR(64) NOT NULL,
    company_name VARCHAR(255) NOT NULL,
    chatwoot_account_id VARCHAR(50),
    created_at TIMESTAMP DEFAULT now()
);
"""


#: the public address the company-tab tests give the backend
TABS_PUBLIC_URL = "https://backend.example"


def wait_for(condition: Any, seconds: float = 5.0) -> Any:
    """condition()'s first truthy value within `seconds`, else its last value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    return condition()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def payload(name: str) -> bytes:
    """A real Chatwoot payload sample, byte for byte."""
    return (FIXTURES / name).read_bytes()


# ---- what the stores hold -----------------------------------------------------------------------------------


def count_rows(database_url: str, table: str) -> int:
    with psycopg.connect(database_url) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


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
    """Every Redis key except the counters of refused requests (the rate limiter's and the rejections')."""
    return [key for key in client.scan_iter() if "multibackend:ratelimit" not in key and key != REJECTIONS_KEY]


# ---- the services the commands run, and the commands themselves ---------------------------------------------


def reconcile(app: Flask, **options: Any) -> Any:
    """One reconciler run in the app's context (what `flask chatwoot reconcile` runs); its ReconcileSummary."""
    from multibackend.services import reconciler

    with app.app_context():
        return reconciler.reconcile(**options)


def retry_failed(app: Flask) -> int:
    """Give the companies that gave up a fresh set of attempts; how many did."""
    from multibackend.services import reconciler

    with app.app_context():
        return reconciler.retry_failed()


def doctor_checks(app: Flask) -> dict[str, Any]:
    """{check name: Check(name, ok, detail, fix)} of the doctor's checklist (what `flask chatwoot doctor` prints)."""
    from multibackend.services import doctor

    with app.app_context():
        return {check.name: check for check in doctor.run_checks()}


def run_command(app: Flask, *args: str) -> Any:
    """Run `flask chatwoot <args>` in-process against the app; returns click's result (exit_code, output)."""
    return app.test_cli_runner().invoke(args=["chatwoot", *args])


# ---- the production command on a spare port -----------------------------------------------------------------


class LiveServer:
    """The production command (gunicorn with gunicorn.conf.py) running on a spare port."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {name: value.replace("{server_url}", self.url) for name, value in env.items()}  # e.g. PUBLIC_URL
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
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or a worker still booting
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


# ---- the one write path's watch -----------------------------------------------------------------------------


class CompanyWriteWatch:
    """Every SQL statement this process sends through SQLAlchemy is checked: one that writes `companies` outside
    company_write() (the one write path, which keeps lookups and announcements in step) is recorded."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CompanyWriteWatch:
        event.listen(Engine, "before_cursor_execute", self._check)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        event.remove(Engine, "before_cursor_execute", self._check)

    def _check(self, connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if COMPANY_WRITE.match(statement) and not write_in_progress() and not _written_by_a_host_model(context):
            with self._lock:
                self.violations.append(" ".join(statement.split())[:200])


def _written_by_a_host_model(context: Any) -> bool:
    """A host backend's own model of `companies` (another Table object than ours) may write its rows."""
    table = getattr(getattr(getattr(context, "compiled", None), "statement", None), "table", None)
    return table is not None and table is not Company.__table__


def dead_redis_url() -> str:
    """A Redis address where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


def dead_database_url() -> str:
    """A PostgreSQL address where nothing listens."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"


# ---- the old deployment, reading and inserting while a release upgrades the table -----------------------------


class ConcurrentLoad:
    """Connections that read companies by account and insert new ones with only the setup guide's columns, each
    statement timed from the connection's side, until the block ends: `max_wait`, `slowest`, `failures`."""

    def __init__(self, url: str, connections: int = 4):
        self.url, self.connections = url, connections
        self.latencies: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.inserted = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(number,), daemon=True) for number in range(connections)]

    def __enter__(self) -> ConcurrentLoad:
        for thread in self._threads:
            thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        time.sleep(0.3)
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    @property
    def statements(self) -> int:
        return len(self.latencies)

    @property
    def max_wait(self) -> float:
        return max((seconds for seconds, _ in self.latencies), default=0.0)

    @property
    def slowest(self) -> list[tuple[float, str]]:
        return sorted(self.latencies, reverse=True)[:3]

    def _run(self, number: int) -> None:
        account = 10_000_000 + number * 1_000_000
        with psycopg.connect(self.url, autocommit=True, options="-c statement_timeout=30000") as connection:
            while not self._stop.is_set():
                account += 1
                for kind, statement, parameters in (
                    ("read", "SELECT id, company_id FROM companies WHERE chatwoot_account_id = %s", (str(account % 1000 + 1),)),
                    ("insert", "INSERT INTO companies (company_id, company_name, chatwoot_account_id) VALUES (%s, %s, %s)",
                     (f"chatwoot_{account}", f"New {account}", str(account))),
                ):
                    started = time.perf_counter()
                    try:
                        connection.execute(statement, parameters)
                    except psycopg.Error as exc:
                        with self._lock:
                            self.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                        continue
                    with self._lock:
                        self.latencies.append((time.perf_counter() - started, kind))
                        self.inserted += kind == "insert"
                time.sleep(0.002)
