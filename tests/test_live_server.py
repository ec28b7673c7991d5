"""The production command (gunicorn, several workers): concurrent duplicates make one company, metrics add up, logs hide secrets."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import requests

from tests.helpers import LIVE_SECRET, WEBHOOK, LiveServer

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


def test_prometheus_metrics_add_up_across_workers(live_server):
    session = requests.Session()
    for account_id in range(777100, 777130):
        session.post(f"{live_server.url}{WEBHOOK}?token={LIVE_SECRET}", json={"id": account_id, "name": "Prom"}, timeout=10)
        requests.get(f"{live_server.url}/api/chatwoot/webhooks/company/{account_id}", timeout=10)  # new connection
    text = requests.get(f"{live_server.url}/metrics?token={LIVE_SECRET}", timeout=10).text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['chatwoot_webhook_deliveries_total{outcome="created"}'] >= 30
    assert samples["chatwoot_webhook_duration_seconds_count"] >= 30
    assert samples['chatwoot_lookup_duration_seconds_count{result="hit"}'] >= 30
    assert samples['chatwoot_companies{provisioning_status="ready"}'] >= 30
    assert "chatwoot_spool_length" in samples


def test_prometheus_metrics_need_the_token(live_server):
    assert requests.get(f"{live_server.url}/metrics", timeout=10).status_code == 401


def test_json_logs_carry_the_account_and_the_outcome(database_url, redis_url, tmp_path):
    server = LiveServer(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": LIVE_SECRET,
         "WEB_CONCURRENCY": "1", "LOG_FORMAT": "json"},
        tmp_path / "json.log",
    )
    try:
        requests.post(f"{server.url}{WEBHOOK}?token={LIVE_SECRET}", json={"id": 777200, "name": "Json Co"}, timeout=10)
    finally:
        server.stop()
    records = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]  # every line
    received = next(r for r in records if r.get("message", "").startswith("[Chatwoot Webhook] Account created: 777200"))
    assert (received["account_id"], received["outcome"], received["level"]) == (777200, "received", "INFO")
    created = next(r for r in records if r.get("outcome") == "created")
    assert created["company_id"] == "chatwoot_777200"
    access = next(r for r in records if r.get("logger") == "gunicorn.access" and "account-created" in r["request"])
    assert "token=***" in access["request"] and access["status"] == "200"
    assert LIVE_SECRET not in server.log_path.read_text()


def test_smoke_script_signs_lookups_when_the_backend_wants_it(database_url, redis_url, tmp_path, capsys):
    import test_chatwoot_webhook

    server = LiveServer(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": LIVE_SECRET,
         "CHATWOOT_EMBED_SECRET": "embed-live", "WEB_CONCURRENCY": "1"},
        tmp_path / "signed.log",
    )
    try:
        assert test_chatwoot_webhook.run_suite(server.url, LIVE_SECRET, embed_secret="embed-live") is True
        assert test_chatwoot_webhook.run_suite(server.url, LIVE_SECRET) is False  # unsigned lookups are refused
    finally:
        server.stop()
    assert "embed-live" not in capsys.readouterr().out
