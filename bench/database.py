"""The bench's own PostgreSQL databases and Redis DB: create, load with generate_series, check, drop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from bench.settings import REPO

LOAD_COMPANIES = """
INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index,
                       provisioning_status, created_at, updated_at)
SELECT 'chatwoot_' || i, 'Bench Company ' || i, i::text, 'chatwoot_' || i || ':', 'chatwoot_' || i || '_documents',
       'ready', created_at, created_at
FROM (SELECT i, now() - random() * interval '30 days' AS created_at
      FROM generate_series(1, %(companies)s::bigint) AS i) AS rows
"""

# 2 % of the syncs failed (no company, an error text, as record_failed_sync writes them); the first
# successful sync of each company created it; latencies are exponential around 15 ms.
LOAD_EVENTS = """
INSERT INTO chatwoot_sync_events (chatwoot_account_id, company_id, outcome, created, latency_ms, error, created_at)
SELECT account::text,
       CASE WHEN failed THEN NULL ELSE 'chatwoot_' || account END,
       CASE WHEN failed THEN 'failed' ELSE 'success' END,
       NOT failed AND i <= %(companies)s,
       round((2 - 15 * ln(1 - random()))::numeric, 3),
       CASE WHEN failed THEN 'database error (OperationalError)' END,
       now() - random() * interval '30 days'
FROM (SELECT i, 1 + (i - 1) %% %(companies)s AS account, random() < 0.02 AS failed
      FROM generate_series(1, %(events)s::bigint) AS i) AS rows
"""


def database_url(admin_url: str, name: str) -> str:
    """The admin URL pointed at another database of the same server."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def recreate_database(admin_url: str, name: str) -> str:
    """Drop (if present) and create an empty database; returns its URL."""
    drop_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a bench database even while something is still connected to it."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def apply_schema(url: str) -> None:
    """Apply the schema the way a release does: `flask --app wsgi chatwoot init-db`."""
    flask = Path(sys.executable).with_name("flask")
    env = {**os.environ, "DATABASE_URL": url}
    completed = subprocess.run(
        [str(flask) if flask.exists() else "flask", "--app", "wsgi", "chatwoot", "init-db"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"init-db failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}")


def load_dataset(url: str, companies: int, events: int) -> float:
    """Fill companies and sync events in parallel, then VACUUM ANALYZE; returns the seconds it took."""
    started = time.perf_counter()
    parameters = {"companies": companies, "events": events}
    with ThreadPoolExecutor(max_workers=2) as pool:
        loads = [pool.submit(_execute, url, sql, parameters) for sql in (LOAD_COMPANIES, LOAD_EVENTS)]
        for load in loads:
            load.result()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) companies, chatwoot_sync_events")
    fold_history(url)
    return time.perf_counter() - started


def fold_history(url: str) -> int:
    """Fold the loaded history into the running totals, as the deployed worker's reconcile would have."""
    from multibackend import create_app
    from multibackend.extensions import db
    from multibackend.services.sync_metrics import fold_sync_totals

    app = create_app({"DATABASE_URL": url, "REDIS_URL": "", "DATABASE_STATEMENT_TIMEOUT_MS": 600_000})
    with app.app_context():
        folded = fold_sync_totals()
        db.engine.dispose()
    return folded


def _execute(url: str, sql: str, parameters: dict[str, int]) -> None:
    """Run one statement in its own connection and transaction."""
    with psycopg.connect(url) as connection:
        connection.execute("SELECT setseed(0.42)")
        connection.execute(sql, parameters)


def count_companies_from(url: str, first_account_id: int) -> int:
    """How many companies have an account id at or above first_account_id."""
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT count(*) FROM companies WHERE chatwoot_account_id::bigint >= %s", (first_account_id,)
        ).fetchone()[0]


def count_existing_accounts(url: str, account_ids: list[int]) -> int:
    """How many of these account ids have a committed company."""
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT count(*) FROM companies WHERE chatwoot_account_id = ANY(%s)", ([str(i) for i in account_ids],)
        ).fetchone()[0]


def checkpoint(admin_url: str) -> None:
    """Write out what the set-up left in PostgreSQL's buffers now, so that no checkpoint of it runs during a timed run
    (skipped for a role that may not: superuser or pg_checkpoint)."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        try:
            connection.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass


def flush_redis(url: str) -> None:
    """Empty the bench's Redis database (only that DB number)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
