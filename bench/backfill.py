"""The backfill scenario: `flask --app wsgi chatwoot reconcile` creating the companies of BACKFILL_ACCOUNTS Chatwoot
accounts that have none, timed from the command's start to its exit (wall, Python start-up included)."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from pathlib import Path


from bench import database, machine
from bench.settings import BACKFILL_ACCOUNTS, DATABASE_NAME, REPO

CHATWOOT_DATABASE = f"{DATABASE_NAME}_chatwoot"
APP_DATABASE = f"{DATABASE_NAME}_backfill"


def measure(admin_url: str, redis_url: str, repeats: int, log=print, accounts: int = BACKFILL_ACCOUNTS) -> list[float]:
    """Wall seconds of each run; every run starts from an empty companies table and an empty Redis DB."""
    from tests.servers import ChatwootDatabase

    _compile_project()
    database.drop_database(admin_url, CHATWOOT_DATABASE)
    chatwoot = ChatwootDatabase(admin_url, CHATWOOT_DATABASE)
    walls = []
    try:
        chatwoot.add_accounts([(account_id, f"Backfill {account_id}") for account_id in range(1, accounts + 1)])
        for _ in range(max(1, repeats)):
            url = database.recreate_database(admin_url, APP_DATABASE)
            database.apply_schema(url)
            database.flush_redis(redis_url)
            database.checkpoint(admin_url)
            machine.settled_share()  # as before every load run: the set-up's own work is not timed
            walls.append(_run_reconcile(url, redis_url, chatwoot.url))
            created = database.count_companies_from(url, 1)
            if created != accounts:
                raise RuntimeError(f"backfill created {created} companies, expected {accounts}")
    finally:
        database.drop_database(admin_url, APP_DATABASE)
        database.drop_database(admin_url, CHATWOOT_DATABASE)
        database.flush_redis(redis_url)
    return walls


def _compile_project() -> None:
    """Byte-compile the project as an install (or any earlier start) leaves it, so each timed start loads it as a
    deployed one does, also where PYTHONDONTWRITEBYTECODE keeps Python from writing the .pyc files itself."""
    compileall.compile_dir(str(REPO / "multibackend"), quiet=1)
    compileall.compile_file(str(REPO / "wsgi.py"), quiet=1)


def _run_reconcile(url: str, redis_url: str, chatwoot_url: str) -> float:
    flask = Path(sys.executable).with_name("flask")
    env = {
        **os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "CHATWOOT_DATABASE_URL": chatwoot_url,
        "CHATWOOT_DASHBOARD_APPS": "false", "CHATWOOT_API_URL": "", "CHATWOOT_PLATFORM_TOKEN": "",
    }
    started = time.perf_counter()
    completed = subprocess.run(
        [str(flask) if flask.exists() else "flask", "--app", "wsgi", "chatwoot", "reconcile"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"reconcile failed ({completed.returncode}):\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}")
    return wall


if __name__ == "__main__":  # pragma: no cover - by hand: python -m bench.backfill
    sys.path.insert(0, str(REPO))
    print(measure(os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
                  os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"), 1))
