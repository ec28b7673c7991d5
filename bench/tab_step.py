#!/usr/bin/env python3
"""What the company-tab step adds to a webhook's answer: new-account deliveries with the tab on (a Chatwoot-shaped
database on the local server, the documented grants) against the same with CHATWOOT_DASHBOARD_APPS=false, same run.

    .venv/bin/python bench/tab_step.py [--requests 500]

In-process (Flask's test client), sequential; prints median and p99 of both and their difference, then checks that
every account got exactly one tab."""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import click  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402

from bench.settings import DEFAULT_ADMIN_URL  # noqa: E402
from tests.servers import ChatwootDatabase  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/9"
SECRET = "tab-bench"


def latencies(app, first: int, requests: int) -> list[float]:  # type: ignore[no-untyped-def]
    client = app.test_client()
    times = []
    for account_id in range(first, first + requests):
        started = time.perf_counter()
        response = client.post(f"/api/chatwoot/webhooks/account-created?token={SECRET}", json={"id": account_id, "name": f"Company {account_id}"})
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.data
    return times


def percentile(times: list[float], share: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


@click.command()
@click.option("--requests", default=500, show_default=True)
@click.option("--admin-url", default=DEFAULT_ADMIN_URL, show_default=True)
def main(requests: int, admin_url: str) -> None:
    """Median and p99 of new-account webhooks with and without the tab step."""
    from multibackend import create_app

    redis.Redis.from_url(REDIS_URL).flushdb()
    name = f"tab_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database_url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    chatwoot = ChatwootDatabase(admin_url, f"chatwoot_{uuid.uuid4().hex[:8]}")
    try:
        accounts = [(account_id, f"Company {account_id}") for account_id in range(1, 2 * requests + 101)]
        chatwoot.add_accounts(accounts)
        chatwoot.add_administrators([(account_id, 7) for account_id, _ in accounts])
        settings = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "CHATWOOT_WEBHOOK_SECRET": SECRET,
                    "CHATWOOT_DATABASE_URL": chatwoot.role_url(), "PUBLIC_URL": "https://backend.example"}
        off = create_app({**settings, "CHATWOOT_DASHBOARD_APPS": "false"})
        assert off.test_cli_runner().invoke(args=["chatwoot", "init-db"]).exit_code == 0
        on = create_app(settings)
        latencies(off, 2 * requests + 1, 50)  # warm-up of pools and compiled statements
        half = requests // 2
        without = latencies(off, 1, half) + latencies(off, requests + 1, half)  # before and after: order effects cancel
        with_tab = latencies(on, half + 1, half) + latencies(on, requests + half + 1, half)
        time.sleep(2)  # the background passes finish
        tabs = chatwoot.dashboard_apps()
    finally:
        chatwoot.drop()
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    rows = [(label, statistics.median(times), percentile(times, 0.99)) for label, times in (("tab step off", without), ("tab step on", with_tab))]
    for label, median, p99 in rows:
        click.echo(f"{label:14} median {median:6.2f} ms   p99 {p99:6.2f} ms")
    click.echo(f"{'added':14} median {rows[1][1] - rows[0][1]:+6.2f} ms   p99 {rows[1][2] - rows[0][2]:+6.2f} ms")
    per_account = {}
    for row in tabs:
        per_account[row[1]] = per_account.get(row[1], 0) + 1
    click.echo(f"tabs: {len(tabs)} rows for {len(per_account)} accounts, at most {max(per_account.values(), default=0)} per account")


if __name__ == "__main__":
    main()
