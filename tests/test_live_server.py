"""The production command under load: gunicorn, several workers, real PostgreSQL and Redis."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import requests

from tests.conftest import LIVE_SECRET, WEBHOOK

ACCOUNT_ID = 777001


def test_concurrent_duplicate_deliveries_across_workers_make_one_company(live_server, database_url):
    barrier = threading.Barrier(40)
    body = {"id": ACCOUNT_ID, "name": "Race Corp", "event": "account_created", "users": []}

    def deliver(_):
        with requests.Session() as session:
            barrier.wait()
            return session.post(f"{live_server.url}{WEBHOOK}?token={LIVE_SECRET}", json=body, timeout=10)

    with ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(deliver, range(40)))
    assert {response.status_code for response in responses} == {200}
    created = [response.json()["data"]["created"] for response in responses]
    assert created.count(True) == 1 and created.count(False) == 39
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            "SELECT count(*) FROM companies WHERE chatwoot_account_id = %s", (str(ACCOUNT_ID),)
        ).fetchone()[0]
    assert rows == 1


def test_access_log_masks_the_token(live_server):
    requests.post(f"{live_server.url}{WEBHOOK}?token={LIVE_SECRET}", json={"id": 777002, "name": "Masked"}, timeout=10)
    requests.post(f"{live_server.url}{WEBHOOK}?token=guess-123", json={"id": 777003, "name": "Guess"}, timeout=10)
    log = live_server.log()
    assert "token=***" in log
    assert LIVE_SECRET not in log and "old-live-secret" not in log and "guess-123" not in log
    assert "[Chatwoot Webhook] Account created: 777002 - Masked" in log


def test_smoke_script_passes_against_the_live_server(live_server, capsys):
    import test_chatwoot_webhook

    assert test_chatwoot_webhook.run_suite(live_server.url, LIVE_SECRET) is True
    output = capsys.readouterr().out
    assert "✗" not in output and "✓" in output
    assert LIVE_SECRET not in output


def test_smoke_script_fails_with_the_wrong_secret(live_server, capsys):
    import test_chatwoot_webhook

    assert test_chatwoot_webhook.run_suite(live_server.url, "not-the-secret") is False
    assert "✗" in capsys.readouterr().out
