#!/usr/bin/env python3
"""The per-request cost of mounting: the example host backend (examples/host_backend, the auto-sync mounted on
its database, limiter and handlers) against the standalone service, same machine, same run.

    .venv/bin/python bench/mounting.py [--requests 1000]

In-process (Flask's test client, no HTTP server or network in between), sequential requests, fresh databases;
prints the median and p90 of each scenario for both apps and their ratio. Needs requirements-dev.txt
(psycopg2-binary, Flask-Migrate) and the example's Flask-Limiter."""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "examples" / "host_backend")]

import click  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402

from bench.settings import DEFAULT_ADMIN_URL  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/9"
SECRET = "mounting-bench"
WEBHOOK = f"/api/chatwoot/webhooks/account-created?token={SECRET}"
LOOKUP = "/api/chatwoot/webhooks/company/{}"


def fresh_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    name = f"mounting_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


def standalone_app(url: str):  # type: ignore[no-untyped-def]
    from multibackend import create_app

    app = create_app({"DATABASE_URL": url, "REDIS_URL": REDIS_URL, "CHATWOOT_WEBHOOK_SECRET": SECRET, "RATELIMIT_LOOKUP": "1000000 per minute"})
    assert app.test_cli_runner().invoke(args=["chatwoot", "init-db"]).exit_code == 0
    return app


def host_app(url: str):  # type: ignore[no-untyped-def]
    from host_backend import create_app
    from host_backend.config import database_uri
    from host_backend.extensions import database

    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": database_uri(url),
            "REDIS_URL": REDIS_URL,
            "CHATWOOT_WEBHOOK_SECRET": SECRET,
            "RATELIMIT_LOOKUP": "1000000 per minute",
        }
    )
    with app.app_context():
        database.create_all()
    assert app.test_cli_runner().invoke(args=["chatwoot", "init-db"]).exit_code == 0
    return app


def timed(requests: int, call: Callable[[int], object]) -> list[float]:
    """Milliseconds of each call, in order."""
    times = []
    for index in range(requests):
        started = time.perf_counter()
        call(index)
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure(app, requests: int, first_account: int) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    client = app.test_client()
    for index in range(50):  # warm-up: pools, caches, compiled statements
        client.post(WEBHOOK, json={"id": first_account - 1000 + index, "name": "Warm-up"})
        client.get(LOOKUP.format(first_account - 1000 + index))

    def webhook(index: int) -> None:
        response = client.post(WEBHOOK, json={"id": first_account + index, "name": f"Company {index}"})
        assert response.status_code == 200, response.data

    def lookup(index: int) -> None:
        response = client.get(LOOKUP.format(first_account + index % 100))
        assert response.status_code == 200 and response.json["data"]["exists"], response.data

    return {"webhook, new account": timed(requests, webhook), "lookup, existing company": timed(requests, lookup)}


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.9)]


@click.command()
@click.option("--requests", default=1000, show_default=True, help="Requests per scenario and app.")
@click.option("--admin-url", default=DEFAULT_ADMIN_URL, show_default=True)
def main(requests: int, admin_url: str) -> None:
    """Median and p90 per scenario, host vs standalone, and their ratio."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    results = {}
    drops = []
    try:
        for name, build, first in (("standalone", standalone_app, 10_000_000), ("example host", host_app, 20_000_000)):
            url, drop = fresh_database(admin_url)
            drops.append(drop)
            results[name] = measure(build(url), requests, first)
    finally:
        for drop in drops:
            drop()
    click.echo(f"{'scenario':28} {'standalone p50/p90 ms':>22} {'host p50/p90 ms':>18} {'host/standalone p50':>20}")
    for scenario in results["standalone"]:
        alone, host = summary(results["standalone"][scenario]), summary(results["example host"][scenario])
        click.echo(f"{scenario:28} {alone[0]:10.2f} / {alone[1]:6.2f}   {host[0]:8.2f} / {host[1]:6.2f}   {host[0] / alone[0]:18.2f}×")


if __name__ == "__main__":
    main()
