"""flask chatwoot reconcile: backfill, renames, marks, spool replay, retries with backoff, Redis rebuild, locking."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from multibackend.services.delivery_spool import SPOOL_KEY
from tests.conftest import tenant_data_keys, ROOT, WEBHOOK, companies_state, count_rows, free_port, namespaces_state, run_command


def test_backfill_rename_and_marks_from_the_chatwoot_database(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(i, f"Account {i}") for i in range(1, 51)])
    chatwoot_db.execute("UPDATE accounts SET name = E'Tab\\tand  spaces \\x01 ' WHERE id = 2")
    chatwoot_db.execute("UPDATE accounts SET status = 1 WHERE id = 3")
    chatwoot_db.execute("""UPDATE accounts SET custom_attributes = '{"marked_for_deletion_at": "2026-11-01T00:00:00Z"}' WHERE id = 4""")
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    app.test_client().post(WEBHOOK, json={"id": 1, "name": "Account 1"})

    result = run_command(app, "reconcile")
    assert result.exit_code == 0, result.output
    assert "49 created" in result.output and "0 failed" in result.output
    state = companies_state(clean_database)
    assert len(state) == 50
    assert state["chatwoot_2"] == ("Taband  spaces", "ready", "active")
    assert state["chatwoot_3"][2] == "suspended"
    assert state["chatwoot_4"][2] == "deletion_pending"
    assert redis_client.hget("chatwoot_3:tenant", "chatwoot_status") == "suspended"
    assert len(redis_client.keys("chatwoot_*:tenant")) == 50

    again = run_command(app, "reconcile")
    assert "0 created, 0 renamed, 0 marked, 0 provisioned, 0 restored, 0 failed" in again.output

    chatwoot_db.execute("UPDATE accounts SET name = 'Renamed Co' WHERE id = 5")
    chatwoot_db.execute("UPDATE accounts SET status = 0 WHERE id = 3")
    chatwoot_db.execute("DELETE FROM accounts WHERE id = 6")
    result = run_command(app, "reconcile")
    assert "1 renamed, 2 marked" in result.output
    state = companies_state(clean_database)
    assert state["chatwoot_5"][0] == "Renamed Co"
    assert state["chatwoot_3"][2] == "active"
    assert state["chatwoot_6"] == ("Account 6", "ready", "deleted")  # marked, never deleted
    assert redis_client.hget("chatwoot_5:tenant", "company_name") == "Renamed Co"
    assert redis_client.hget("chatwoot_6:tenant", "chatwoot_status") == "deleted"
    assert app.test_client().get("/api/chatwoot/webhooks/company/6").json["data"]["chatwoot_status"] == "deleted"


def test_dry_run_reports_and_writes_nothing(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(i, f"Account {i}") for i in range(1, 6)])
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    result = run_command(app, "reconcile", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "(dry run)" in result.output and "5 would be created" in result.output
    assert count_rows(clean_database, "companies") == 0
    assert tenant_data_keys(redis_client) == []


def test_empty_chatwoot_source_never_marks_everything_deleted(make_app, clean_database, chatwoot_db):
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    app.test_client().post(WEBHOOK, json={"id": 7, "name": "Seven"})
    result = run_command(app, "reconcile")
    assert result.exit_code == 1
    assert "lists no accounts at all" in result.output
    assert companies_state(clean_database)["chatwoot_7"][2] == "active"


def test_backfill_of_10000_missing_accounts(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(i, f"Company {i}") for i in range(1, 10_001)])
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    started = time.perf_counter()
    result = run_command(app, "reconcile")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert "10000 created" in result.output
    assert count_rows(clean_database, "companies") == 10_000
    assert len(list(redis_client.scan_iter("chatwoot_*:tenant", count=1000))) == 10_000
    print(f"\nbackfill of 10,000 accounts: {elapsed:.2f} s")


def test_platform_api_source(make_app, clean_database, redis_client, platform_api):
    platform_api.add(1, "Visible One")
    platform_api.add(2, "Visible Two", status="suspended")
    platform_api.add(3, "Not Ours", visible=False)  # exists, but this platform app may not see it
    app = make_app(CHATWOOT_API_URL=platform_api.url, CHATWOOT_PLATFORM_TOKEN=platform_api.token)
    client = app.test_client()
    client.post(WEBHOOK, json={"id": 3, "name": "Not Ours"})
    client.post(WEBHOOK, json={"id": 4, "name": "Deleted Since"})

    result = run_command(app, "reconcile")
    assert result.exit_code == 0, result.output
    state = companies_state(clean_database)
    assert state["chatwoot_1"] == ("Visible One", "ready", "active")
    assert state["chatwoot_2"][2] == "suspended"
    assert state["chatwoot_3"][2] == "active"  # 401 Non permissible resource: not known to be gone
    assert state["chatwoot_4"][2] == "deleted"  # 404: gone


def test_platform_api_refusing_the_token_fails_the_run(make_app, clean_database, platform_api):
    app = make_app(CHATWOOT_API_URL=platform_api.url, CHATWOOT_PLATFORM_TOKEN="wrong")
    result = run_command(app, "reconcile")
    assert result.exit_code == 1
    assert "401" in result.output and "Invalid access_token" in result.output


def test_spooled_deliveries_are_replayed_idempotently(make_app, clean_database, redis_client):
    down = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere").test_client()
    for body in ({"id": 1, "name": "One"}, {"id": 2, "name": "Two"}, {"id": 1, "name": "One"}):
        assert down.post(WEBHOOK, json=body).status_code == 202
    assert redis_client.llen(SPOOL_KEY) == 3
    app = make_app()
    app.test_client().post(WEBHOOK, json={"id": 2, "name": "Two"})
    result = run_command(app, "reconcile")
    assert result.exit_code == 0, result.output
    assert "3 replayed" in result.output
    assert set(companies_state(clean_database)) == {"chatwoot_1", "chatwoot_2"}
    assert redis_client.llen(SPOOL_KEY) == 0
    metrics = app.test_client().get("/api/chatwoot/webhooks/metrics").json["data"]
    assert metrics["total_syncs"] == 3  # the direct delivery, and one sync per spooled account


def test_spool_stays_when_the_database_is_still_down(make_app, clean_database, redis_client):
    down = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    down.test_client().post(WEBHOOK, json={"id": 1, "name": "One"})
    result = run_command(down, "reconcile")
    assert result.exit_code == 1
    assert "database unavailable (OperationalError): nothing reconciled, the spool is kept" in result.output
    assert "Traceback" not in result.output
    assert redis_client.llen(SPOOL_KEY) == 1


def test_unreadable_spool_entries_go_to_a_dead_letter_list(make_app, clean_database, redis_client):
    redis_client.lpush(SPOOL_KEY, "not json", json.dumps({"id": 5, "name": "Five", "received_at": "x"}))
    result = run_command(make_app(), "reconcile")
    assert "1 replayed" in result.output
    assert redis_client.lrange(SPOOL_KEY + ":dead", 0, -1) == ["not json"]
    assert set(companies_state(clean_database)) == {"chatwoot_5"}


def test_pending_companies_retry_with_backoff_then_give_up(make_app, clean_database, redis_client):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    down = make_app(REDIS_URL=dead_redis, RECONCILE_MAX_ATTEMPTS=3, RECONCILE_BACKOFF_SECONDS=0)
    assert down.test_client().post(WEBHOOK, json={"id": 9, "name": "Nine"}).json["data"]["provisioning_status"] == "pending"

    first = run_command(down, "reconcile")
    assert first.exit_code == 1 and "1 companies could not be provisioned yet" in first.output
    second = run_command(down, "reconcile")
    assert second.exit_code == 1
    with psycopg.connect(clean_database) as connection:
        status, error, attempts = connection.execute(
            "SELECT provisioning_status, provisioning_error, provisioning_attempts FROM companies"
        ).fetchone()
    assert (status, attempts) == ("failed", 3)
    assert error.startswith("gave up after 3 attempts: Redis unavailable")
    third = run_command(down, "reconcile")
    assert "gave up after 3 attempts" in third.output and third.exit_code == 1

    up = make_app(RECONCILE_MAX_ATTEMPTS=3)
    assert run_command(up, "reconcile").exit_code == 1  # still given up: nothing retries it by itself
    result = run_command(up, "reconcile", "--retry-failed")
    assert result.exit_code == 0, result.output
    assert companies_state(clean_database)["chatwoot_9"][1] == "ready"


def test_backoff_delays_the_next_attempt(make_app, clean_database):
    from multibackend.models.company import retry_delay

    assert [retry_delay(n, 30) for n in (1, 2, 3, 4, 10)] == [0, 30, 60, 120, 3600]
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    down = make_app(REDIS_URL=dead_redis, RECONCILE_BACKOFF_SECONDS=3600)
    down.test_client().post(WEBHOOK, json={"id": 9, "name": "Nine"})
    assert "1 companies could not be provisioned yet" in run_command(down, "reconcile").output  # first retry: at once
    result = run_command(make_app(RECONCILE_BACKOFF_SECONDS=3600), "reconcile")
    assert "0 provisioned" in result.output  # the second waits for its backoff
    with psycopg.connect(clean_database) as connection:
        connection.execute("UPDATE companies SET next_provisioning_at = now() - interval '1 second'")
    assert "1 provisioned" in run_command(make_app(), "reconcile").output


def test_redis_flush_is_repaired_by_one_reconcile(make_app, clean_database, redis_client):
    app = make_app()
    client = app.test_client()
    for account_id in range(1, 21):
        client.post(WEBHOOK, json={"id": account_id, "name": f"Company {account_id}"})
    before = namespaces_state(redis_client)
    redis_client.flushdb()
    result = run_command(app, "reconcile")
    assert result.exit_code == 0 and "20 restored" in result.output
    assert namespaces_state(redis_client) == before


def test_a_second_reconcile_waits_its_turn(make_app, clean_database, database_url):
    app = make_app()
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242002)")
        result = run_command(app, "reconcile")
        holder.execute("SELECT pg_advisory_unlock(4242002)")
    assert result.exit_code == 0
    assert "Another reconcile is running" in result.output


def test_watch_mode_runs_until_sigterm(database_url, redis_url, clean_database):
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": "x"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "reconcile", "--watch", "--interval", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum("✓ [Chatwoot Sync] Reconcile:" in line for line in lines) < 2:
        lines.append(process.stdout.readline())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert sum("✓ [Chatwoot Sync] Reconcile:" in line for line in lines) >= 2


def test_procfile_has_a_reconcile_worker():
    lines = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert "chatwoot reconcile --watch --interval" in lines["worker"]


def test_companies_created_while_the_listing_ran_are_never_marked_gone(make_app, clean_database, chatwoot_db):
    chatwoot_db.add_accounts([(1, "One")])
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    client = app.test_client()
    for account_id in (1, 2, 3):
        client.post(WEBHOOK, json={"id": account_id, "name": f"Account {account_id}"})
    with psycopg.connect(clean_database) as connection:  # 2 existed before; 3 "signed up" after the listing began
        connection.execute("UPDATE companies SET created_at = now() - interval '1 hour' WHERE chatwoot_account_id IN ('1', '2')")
        connection.execute("UPDATE companies SET created_at = now() + interval '1 minute' WHERE chatwoot_account_id = '3'")
    assert run_command(app, "reconcile").exit_code == 0
    state = companies_state(clean_database)
    assert (state["chatwoot_2"][2], state["chatwoot_3"][2]) == ("deleted", "active")


def test_a_delivery_that_cannot_be_replayed_goes_to_dead_letters_and_the_rest_go_on(make_app, clean_database, redis_client):
    with psycopg.connect(clean_database) as connection:  # an older row that holds chatwoot_7 for another account
        connection.execute(
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index)"
            " VALUES ('chatwoot_7', 'Old', '77', 'chatwoot_7:', 'chatwoot_7_documents')"
        )
    for raw in ('{"id": 7, "name": "Seven"}', '"5"', '{"id": 8, "name": "Eight"}'):
        redis_client.lpush(SPOOL_KEY, raw)
    result = run_command(make_app(), "reconcile")
    assert "1 replayed" in result.output and "Traceback" not in result.output
    assert "chatwoot_8" in companies_state(clean_database)
    assert sorted(redis_client.lrange(SPOOL_KEY + ":dead", 0, -1)) == ['"5"', '{"id": 7, "name": "Seven"}']
    assert redis_client.llen(SPOOL_KEY) == 0


def test_a_company_without_an_account_id_does_not_stop_the_worker(make_app, clean_database, redis_client):
    with psycopg.connect(clean_database) as connection:
        connection.execute(
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index, provisioning_status)"
            " VALUES ('acme_internal', 'Internal', NULL, 'acme_internal:', 'acme_internal_documents', 'pending')"
        )
    result = run_command(make_app(), "reconcile")
    assert result.exit_code == 0, result.output
    assert redis_client.hget("acme_internal:tenant", "company_name") == "Internal"


def test_a_spooled_delivery_is_found_by_the_lookup_once_postgres_is_back(make_app, clean_database, redis_client):
    down = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere").test_client()
    assert down.post(WEBHOOK, json={"id": 31, "name": "Spooled Co"}).status_code == 202
    app = make_app()
    data = app.test_client().get("/api/chatwoot/webhooks/company/31").json["data"]
    assert (data["exists"], data["company_name"]) == (True, "Spooled Co")  # not after the worker's next run: now
    result = run_command(app, "reconcile")
    assert "1 replayed" in result.output
    assert count_rows(clean_database, "chatwoot_sync_events") == 1  # one delivery, one sync
