"""The reconciler brings companies and namespaces to what Chatwoot and PostgreSQL say, and its summary tells; so does its command."""

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
from tests.helpers import (
    ROOT,
    WEBHOOK,
    companies_state,
    count_rows,
    dead_database_url,
    dead_redis_url,
    namespaces_state,
    reconcile,
    retry_failed,
    run_command,
    tenant_data_keys,
)

COUNTS = ("replayed", "created", "renamed", "marked", "provisioned", "restored", "failed")


def counts(summary):
    return {name: getattr(summary, name) for name in COUNTS}


def backfilled(make_app, chatwoot_db):
    """50 Chatwoot accounts (2 with control characters in its name, 3 suspended, 4 marked for deletion), account 1
    also delivered by its webhook, then one reconcile: (app, its summary)."""
    chatwoot_db.add_accounts([(i, f"Account {i}") for i in range(1, 51)])
    chatwoot_db.execute("UPDATE accounts SET name = E'Tab\\tand  spaces \\x01 ' WHERE id = 2")
    chatwoot_db.execute("UPDATE accounts SET status = 1 WHERE id = 3")
    chatwoot_db.execute("""UPDATE accounts SET custom_attributes = '{"marked_for_deletion_at": "2026-11-01T00:00:00Z"}' WHERE id = 4""")
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    app.test_client().post(WEBHOOK, json={"id": 1, "name": "Account 1"})
    return app, reconcile(app)


# ---- backfill, renames and marks from Chatwoot ---------------------------------------------------------------


def test_backfill_creates_the_companies_whose_webhook_never_arrived(make_app, clean_database, redis_client, chatwoot_db):
    _, summary = backfilled(make_app, chatwoot_db)
    assert summary.ok, summary.problems
    assert (summary.created, summary.failed) == (49, 0)
    assert len(companies_state(clean_database)) == 50
    assert len(redis_client.keys("chatwoot_*:tenant")) == 50


def test_backfill_normalises_the_names_chatwoot_stores(make_app, clean_database, redis_client, chatwoot_db):
    backfilled(make_app, chatwoot_db)
    assert companies_state(clean_database)["chatwoot_2"] == ("Taband  spaces", "ready", "active")


def test_backfill_takes_each_accounts_status(make_app, clean_database, redis_client, chatwoot_db):
    backfilled(make_app, chatwoot_db)
    state = companies_state(clean_database)
    assert state["chatwoot_3"][2] == "suspended"
    assert state["chatwoot_4"][2] == "deletion_pending"
    assert redis_client.hget("chatwoot_3:tenant", "chatwoot_status") == "suspended"


def test_a_second_reconcile_changes_nothing(make_app, clean_database, redis_client, chatwoot_db):
    app, _ = backfilled(make_app, chatwoot_db)
    assert counts(reconcile(app)) == dict.fromkeys(COUNTS, 0)


def test_renames_in_chatwoot_are_followed(make_app, clean_database, redis_client, chatwoot_db):
    app, _ = backfilled(make_app, chatwoot_db)
    chatwoot_db.execute("UPDATE accounts SET name = 'Renamed Co' WHERE id = 5")
    summary = reconcile(app)
    assert (summary.renamed, summary.marked) == (1, 0)
    assert companies_state(clean_database)["chatwoot_5"][0] == "Renamed Co"
    assert redis_client.hget("chatwoot_5:tenant", "company_name") == "Renamed Co"


def test_status_changes_in_chatwoot_are_marked(make_app, clean_database, redis_client, chatwoot_db):
    app, _ = backfilled(make_app, chatwoot_db)
    chatwoot_db.execute("UPDATE accounts SET status = 0 WHERE id = 3")
    chatwoot_db.execute("DELETE FROM accounts WHERE id = 6")
    summary = reconcile(app)
    assert (summary.renamed, summary.marked) == (0, 2)
    assert companies_state(clean_database)["chatwoot_3"][2] == "active"


def test_deleted_accounts_are_marked_never_removed(make_app, clean_database, redis_client, chatwoot_db):
    app, _ = backfilled(make_app, chatwoot_db)
    chatwoot_db.execute("DELETE FROM accounts WHERE id = 6")
    assert reconcile(app).marked == 1
    assert companies_state(clean_database)["chatwoot_6"] == ("Account 6", "ready", "deleted")
    assert redis_client.hget("chatwoot_6:tenant", "chatwoot_status") == "deleted"
    assert app.test_client().get("/api/chatwoot/webhooks/company/6").json["data"]["chatwoot_status"] == "deleted"


def test_dry_run_counts_what_would_change_and_writes_nothing(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(i, f"Account {i}") for i in range(1, 6)])
    summary = reconcile(make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url), dry_run=True)
    assert summary.ok, summary.problems
    assert (summary.dry_run, summary.created) == (True, 5)
    assert count_rows(clean_database, "companies") == 0
    assert tenant_data_keys(redis_client) == []


def test_empty_chatwoot_source_never_marks_everything_deleted(make_app, clean_database, chatwoot_db):
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    app.test_client().post(WEBHOOK, json={"id": 7, "name": "Seven"})
    summary = reconcile(app)
    assert not summary.ok
    assert any("lists no accounts at all" in problem for problem in summary.problems)
    assert companies_state(clean_database)["chatwoot_7"][2] == "active"


def test_backfill_of_10000_missing_accounts(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(i, f"Company {i}") for i in range(1, 10_001)])
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    started = time.perf_counter()
    summary = reconcile(app)
    elapsed = time.perf_counter() - started
    assert summary.ok, summary.problems
    assert summary.created == 10_000
    assert count_rows(clean_database, "companies") == 10_000
    assert len(list(redis_client.scan_iter("chatwoot_*:tenant", count=1000))) == 10_000
    print(f"\nbackfill of 10,000 accounts: {elapsed:.2f} s")


def create_batch(app, rows):
    """The backfill's creation of one batch, in its own write; returns what it created."""
    from multibackend.services.companies import company_write
    from multibackend.services.tenant_provisioning import create_provisioned

    with app.app_context(), company_write() as write:
        return create_provisioned(write, rows)


def test_a_batch_is_created_without_loading_a_company_into_the_session(app, clean_database, redis_client):
    from multibackend.extensions import db
    from multibackend.models import Company
    from multibackend.services.companies import company_row, company_write
    from multibackend.services.tenant_provisioning import create_provisioned

    with app.app_context(), company_write() as write:
        created = create_provisioned(write, [company_row(i, f"Company {i}") for i in range(1, 501)])
        loaded = [obj for obj in db.session.identity_map.values() if isinstance(obj, Company)]
    assert loaded == []
    assert sorted(snapshot.company_id for snapshot in created.values()) == sorted(f"chatwoot_{i}" for i in range(1, 501))
    assert {state[1] for state in companies_state(clean_database).values()} == {"ready"}
    assert len(namespaces_state(redis_client)) == 501 and len(namespaces_state(redis_client)["registry"]) == 500
    assert redis_client.hget("chatwoot_7:tenant", "company_name") == "Company 7"


def test_backfilled_companies_are_announced_once_each_and_owe_nothing_after(make_app, clean_database, redis_client, chatwoot_db):
    from multibackend.services.companies import tenant_provisioned

    chatwoot_db.add_accounts([(i, f"Company {i}") for i in range(1, 31)])
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    announced = []
    with tenant_provisioned.connected_to(lambda sender, company: announced.append((company.company_id, company.company_name, company.provisioning_status))):
        assert reconcile(app).created == 30
        assert reconcile(app).created == 0
    assert sorted(announced) == sorted((f"chatwoot_{i}", f"Company {i}", "ready") for i in range(1, 31))
    assert count_rows(clean_database, "chatwoot_tenant_announcements") == 0


def test_a_batch_leaves_a_company_delivered_meanwhile_as_it_was_delivered(app, clean_database, redis_client):
    from multibackend.services.companies import company_row

    app.test_client().post(WEBHOOK, json={"id": 3, "name": "Delivered"})
    delivered = redis_client.hgetall("chatwoot_3:tenant")
    created = create_batch(app, [company_row(i, f"Backfill {i}") for i in range(1, 11)])
    assert len(created) == 9 and "chatwoot_3" not in {snapshot.company_id for snapshot in created.values()}
    assert companies_state(clean_database)["chatwoot_3"][0] == "Delivered"
    assert redis_client.hgetall("chatwoot_3:tenant") == delivered


def test_a_batch_the_database_refuses_leaves_no_namespace_behind(app, clean_database, redis_client):
    from sqlalchemy.exc import IntegrityError

    from multibackend.services.companies import company_row

    rows = [company_row(i, f"Company {i}") for i in range(1, 11)]
    rows[5]["chatwoot_status"] = "not a status"  # the table's check refuses the whole statement
    with pytest.raises(IntegrityError):
        create_batch(app, rows)
    assert count_rows(clean_database, "companies") == 0
    assert tenant_data_keys(redis_client) == []


def test_backfill_with_redis_down_creates_pending_companies_that_the_next_run_provisions(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(i, f"Company {i}") for i in range(1, 21)])
    down = reconcile(make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url, REDIS_URL=dead_redis_url(), RECONCILE_BACKOFF_SECONDS=0))
    assert down.created == 20
    assert {state[1] for state in companies_state(clean_database).values()} == {"pending"}
    assert tenant_data_keys(redis_client) == []
    back = reconcile(make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url))
    assert back.ok, back.problems
    assert (back.created, back.provisioned) == (0, 20)
    assert {state[1] for state in companies_state(clean_database).values()} == {"ready"}
    assert len(namespaces_state(redis_client)["registry"]) == 20


def test_companies_created_while_the_listing_ran_are_never_marked_gone(make_app, clean_database, chatwoot_db):
    chatwoot_db.add_accounts([(1, "One")])
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    client = app.test_client()
    for account_id in (1, 2, 3):
        client.post(WEBHOOK, json={"id": account_id, "name": f"Account {account_id}"})
    with psycopg.connect(clean_database) as connection:  # 2 existed before; 3 "signed up" after the listing began
        connection.execute("UPDATE companies SET created_at = now() - interval '1 hour' WHERE chatwoot_account_id IN ('1', '2')")
        connection.execute("UPDATE companies SET created_at = now() + interval '1 minute' WHERE chatwoot_account_id = '3'")
    assert reconcile(app).ok
    state = companies_state(clean_database)
    assert (state["chatwoot_2"][2], state["chatwoot_3"][2]) == ("deleted", "active")


# ---- the Platform API as the source --------------------------------------------------------------------------


def test_platform_api_source_creates_and_marks_the_visible_accounts(make_app, clean_database, redis_client, platform_api):
    platform_api.add(1, "Visible One")
    platform_api.add(2, "Visible Two", status="suspended")
    summary = reconcile(make_app(CHATWOOT_API_URL=platform_api.url, CHATWOOT_PLATFORM_TOKEN=platform_api.token))
    assert summary.ok, summary.problems
    state = companies_state(clean_database)
    assert state["chatwoot_1"] == ("Visible One", "ready", "active")
    assert state["chatwoot_2"][2] == "suspended"


def test_platform_api_source_marks_gone_only_the_accounts_it_answers_404_for(make_app, clean_database, redis_client, platform_api):
    platform_api.add(1, "Visible One")
    platform_api.add(3, "Not Ours", visible=False)  # exists, but this platform app may not see it
    app = make_app(CHATWOOT_API_URL=platform_api.url, CHATWOOT_PLATFORM_TOKEN=platform_api.token)
    client = app.test_client()
    client.post(WEBHOOK, json={"id": 3, "name": "Not Ours"})
    client.post(WEBHOOK, json={"id": 4, "name": "Deleted Since"})
    assert reconcile(app).ok
    state = companies_state(clean_database)
    assert state["chatwoot_3"][2] == "active"  # 401 Non permissible resource: not known to be gone
    assert state["chatwoot_4"][2] == "deleted"  # 404: gone


def test_platform_api_refusing_the_token_fails_the_run(make_app, clean_database, platform_api):
    summary = reconcile(make_app(CHATWOOT_API_URL=platform_api.url, CHATWOOT_PLATFORM_TOKEN="wrong"))
    assert not summary.ok
    assert any("401" in problem and "Invalid access_token" in problem for problem in summary.problems)


# ---- the spool of deliveries that arrived while PostgreSQL was down ------------------------------------------


def test_spooled_deliveries_are_replayed_idempotently(make_app, clean_database, redis_client):
    down = make_app(DATABASE_URL=dead_database_url()).test_client()
    for body in ({"id": 1, "name": "One"}, {"id": 2, "name": "Two"}, {"id": 1, "name": "One"}):
        assert down.post(WEBHOOK, json=body).status_code == 202
    assert redis_client.llen(SPOOL_KEY) == 3
    app = make_app()
    app.test_client().post(WEBHOOK, json={"id": 2, "name": "Two"})
    summary = reconcile(app)
    assert summary.ok, summary.problems
    assert summary.replayed == 3
    assert set(companies_state(clean_database)) == {"chatwoot_1", "chatwoot_2"}
    assert redis_client.llen(SPOOL_KEY) == 0
    metrics = app.test_client().get("/api/chatwoot/webhooks/metrics").json["data"]
    assert metrics["total_syncs"] == 3  # the direct delivery, and one sync per spooled account


def test_spool_stays_when_the_database_is_still_down(make_app, clean_database, redis_client):
    down = make_app(DATABASE_URL=dead_database_url())
    down.test_client().post(WEBHOOK, json={"id": 1, "name": "One"})
    summary = reconcile(down)
    assert not summary.ok
    assert "database unavailable (OperationalError): nothing reconciled, the spool is kept" in summary.problems
    assert redis_client.llen(SPOOL_KEY) == 1


def test_unreadable_spool_entries_go_to_a_dead_letter_list(make_app, clean_database, redis_client):
    redis_client.lpush(SPOOL_KEY, "not json", json.dumps({"id": 5, "name": "Five", "received_at": "x"}))
    assert reconcile(make_app()).replayed == 1
    assert redis_client.lrange(SPOOL_KEY + ":dead", 0, -1) == ["not json"]
    assert set(companies_state(clean_database)) == {"chatwoot_5"}


def test_a_delivery_that_cannot_be_replayed_goes_to_dead_letters_and_the_rest_go_on(make_app, clean_database, redis_client):
    with psycopg.connect(clean_database) as connection:  # an older row that holds chatwoot_7 for another account
        connection.execute(
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index)"
            " VALUES ('chatwoot_7', 'Old', '77', 'chatwoot_7:', 'chatwoot_7_documents')"
        )
    for raw in ('{"id": 7, "name": "Seven"}', '"5"', '{"id": 8, "name": "Eight"}'):
        redis_client.lpush(SPOOL_KEY, raw)
    summary = reconcile(make_app())
    assert summary.ok, summary.problems
    assert summary.replayed == 1
    assert "chatwoot_8" in companies_state(clean_database)
    assert sorted(redis_client.lrange(SPOOL_KEY + ":dead", 0, -1)) == ['"5"', '{"id": 7, "name": "Seven"}']
    assert redis_client.llen(SPOOL_KEY) == 0


def test_a_spooled_delivery_is_found_by_the_lookup_once_postgres_is_back(make_app, clean_database, redis_client):
    down = make_app(DATABASE_URL=dead_database_url()).test_client()
    assert down.post(WEBHOOK, json={"id": 31, "name": "Spooled Co"}).status_code == 202
    app = make_app()
    data = app.test_client().get("/api/chatwoot/webhooks/company/31").json["data"]
    assert (data["exists"], data["company_name"]) == (True, "Spooled Co")  # not after the worker's next run: now
    assert reconcile(app).replayed == 1
    assert count_rows(clean_database, "chatwoot_sync_events") == 1  # one delivery, one sync


# ---- provisioning retries, backoff and giving up -------------------------------------------------------------


def given_up(make_app, clean_database):
    """Company 9, pending since Redis was down at its delivery, after two reconciles with Redis still down and at
    most 3 attempts: it gave up. Returns the app (Redis still down)."""
    down = make_app(REDIS_URL=dead_redis_url(), RECONCILE_MAX_ATTEMPTS=3, RECONCILE_BACKOFF_SECONDS=0)
    assert down.test_client().post(WEBHOOK, json={"id": 9, "name": "Nine"}).json["data"]["provisioning_status"] == "pending"
    reconcile(down)
    reconcile(down)
    assert companies_state(clean_database)["chatwoot_9"][1] == "failed"
    return down


def test_provisioning_is_retried_until_the_attempts_run_out(make_app, clean_database, redis_client):
    down = make_app(REDIS_URL=dead_redis_url(), RECONCILE_MAX_ATTEMPTS=3, RECONCILE_BACKOFF_SECONDS=0)
    assert down.test_client().post(WEBHOOK, json={"id": 9, "name": "Nine"}).json["data"]["provisioning_status"] == "pending"
    first = reconcile(down)
    assert not first.ok
    assert "1 companies could not be provisioned yet" in first.problems
    assert not reconcile(down).ok
    with psycopg.connect(clean_database) as connection:
        status, error, attempts = connection.execute(
            "SELECT provisioning_status, provisioning_error, provisioning_attempts FROM companies"
        ).fetchone()
    assert (status, attempts) == ("failed", 3)
    assert error.startswith("gave up after 3 attempts: Redis unavailable")


def test_a_company_that_gave_up_is_reported_on_every_run(make_app, clean_database, redis_client):
    summary = reconcile(given_up(make_app, clean_database))
    assert not summary.ok
    assert any("gave up after 3 attempts" in problem for problem in summary.problems)


def test_a_company_that_gave_up_is_not_retried_by_itself(make_app, clean_database, redis_client):
    given_up(make_app, clean_database)
    assert not reconcile(make_app(RECONCILE_MAX_ATTEMPTS=3)).ok  # Redis is back, yet nothing retries it
    assert companies_state(clean_database)["chatwoot_9"][1] == "failed"


def test_retry_failed_gives_a_fresh_set_of_attempts(make_app, clean_database, redis_client):
    given_up(make_app, clean_database)
    up = make_app(RECONCILE_MAX_ATTEMPTS=3)
    assert retry_failed(up) == 1
    summary = reconcile(up)
    assert summary.ok, summary.problems
    assert companies_state(clean_database)["chatwoot_9"][1] == "ready"


def test_retry_delay_doubles_from_the_second_retry_up_to_an_hour():
    from multibackend.models.company import retry_delay

    assert [retry_delay(n, 30) for n in (1, 2, 3, 4, 10)] == [0, 30, 60, 120, 3600]


def retried_once(make_app):
    """Company 9, pending since Redis was down at its delivery, after its first retry (Redis still down, backoff 1 h)."""
    down = make_app(REDIS_URL=dead_redis_url(), RECONCILE_BACKOFF_SECONDS=3600)
    down.test_client().post(WEBHOOK, json={"id": 9, "name": "Nine"})
    return reconcile(down)


def test_the_first_retry_is_immediate(make_app, clean_database, redis_client):
    assert "1 companies could not be provisioned yet" in retried_once(make_app).problems


def test_later_retries_wait_for_their_backoff(make_app, clean_database, redis_client):
    retried_once(make_app)
    assert reconcile(make_app(RECONCILE_BACKOFF_SECONDS=3600)).provisioned == 0
    with psycopg.connect(clean_database) as connection:
        connection.execute("UPDATE companies SET next_provisioning_at = now() - interval '1 second'")
    assert reconcile(make_app()).provisioned == 1


def test_a_company_without_an_account_id_is_the_hosts_and_left_alone(make_app, clean_database, redis_client):
    with psycopg.connect(clean_database) as connection:
        connection.execute(
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index, provisioning_status)"
            " VALUES ('acme_internal', 'Internal', NULL, 'acme_internal:', 'acme_internal_documents', 'pending')"
        )
    summary = reconcile(make_app())
    assert summary.ok, summary.problems
    assert (summary.provisioned, summary.restored) == (0, 0)
    assert redis_client.exists("acme_internal:tenant") == 0
    assert companies_state(clean_database)["acme_internal"] == ("Internal", "pending", "active")


# ---- Redis rebuilt from PostgreSQL; one run at a time ---------------------------------------------------------


def test_redis_flush_is_repaired_by_one_reconcile(make_app, clean_database, redis_client):
    app = make_app()
    client = app.test_client()
    for account_id in range(1, 21):
        client.post(WEBHOOK, json={"id": account_id, "name": f"Company {account_id}"})
    before = namespaces_state(redis_client)
    redis_client.flushdb()
    summary = reconcile(app)
    assert summary.ok, summary.problems
    assert summary.restored == 20
    assert namespaces_state(redis_client) == before


def test_a_backfill_also_restores_the_namespaces_a_flush_took_from_older_companies(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(i, f"Company {i}") for i in range(1, 31)])
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url, RECONCILE_BATCH_SIZE=7)
    client = app.test_client()
    for account_id in (2, 9, 10, 11, 25):
        client.post(WEBHOOK, json={"id": account_id, "name": f"Company {account_id}"})
    redis_client.flushdb()
    summary = reconcile(app)
    assert summary.ok, summary.problems
    assert (summary.created, summary.restored) == (25, 5)
    assert len(namespaces_state(redis_client)["registry"]) == 30
    assert redis_client.hget("chatwoot_9:tenant", "company_name") == "Company 9"


def test_a_second_reconcile_waits_its_turn(make_app, clean_database, database_url):
    app = make_app()
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242002)")
        summary = reconcile(app)
        holder.execute("SELECT pg_advisory_unlock(4242002)")
    assert summary.locked_out is True
    assert summary.ok  # waiting is not a failure


# ---- the command: exit codes, what it prints, --dry-run, --retry-failed, progress, --watch --------------------


def test_reconcile_command_prints_one_summary_line_and_exits_0(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(1, "One"), (2, "Two"), (3, "Three")])
    result = run_command(make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url), "reconcile")
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    assert line.startswith("✓ [Chatwoot Sync] Reconcile: 0 replayed, 3 created, 0 renamed, 0 marked, 0 provisioned, ")
    assert line.endswith(" 0 restored, 0 failed; company tabs: 0 created, 0 updated")


def test_reconcile_command_exits_1_and_prints_each_problem(make_app, clean_database, chatwoot_db):
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    app.test_client().post(WEBHOOK, json={"id": 7, "name": "Seven"})
    result = run_command(app, "reconcile")
    assert result.exit_code == 1
    assert "✗ [Chatwoot Sync] Reconcile:" in result.output
    assert "lists no accounts at all" in result.output


def test_reconcile_command_reports_an_unreachable_database_without_a_traceback(make_app, clean_database, redis_client):
    down = make_app(DATABASE_URL=dead_database_url())
    down.test_client().post(WEBHOOK, json={"id": 1, "name": "One"})
    result = run_command(down, "reconcile")
    assert result.exit_code == 1
    assert "database unavailable (OperationalError): nothing reconciled, the spool is kept" in result.output
    assert "Traceback" not in result.output


def test_reconcile_command_dry_run_says_what_would_be_done(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(i, f"Account {i}") for i in range(1, 6)])
    result = run_command(make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url), "reconcile", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "(dry run)" in result.output and "5 would be created" in result.output


def test_reconcile_command_retry_failed_option(make_app, clean_database, redis_client):
    given_up(make_app, clean_database)
    result = run_command(make_app(RECONCILE_MAX_ATTEMPTS=3), "reconcile", "--retry-failed")
    assert result.exit_code == 0, result.output
    assert "1 companies get a fresh set of attempts" in result.output
    assert companies_state(clean_database)["chatwoot_9"][1] == "ready"


def test_reconcile_command_says_when_another_run_holds_the_lock(make_app, clean_database, database_url):
    app = make_app()
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242002)")
        result = run_command(app, "reconcile")
        holder.execute("SELECT pg_advisory_unlock(4242002)")
    assert result.exit_code == 0
    assert "Another reconcile is running" in result.output


def test_reconcile_command_shows_a_progress_bar_on_long_runs(make_app, clean_database, redis_client, chatwoot_db, monkeypatch):
    monkeypatch.setattr("multibackend.cli.PROGRESS_THRESHOLD", 5)  # instead of thousands of accounts
    chatwoot_db.add_accounts([(i, f"Account {i}") for i in range(1, 6)])
    result = run_command(make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url), "reconcile")
    assert result.exit_code == 0, result.output
    assert "Chatwoot accounts" in result.stderr


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


def test_chatwoot_batches_read_ahead_come_in_order_and_end_with_the_reader(app):
    from multibackend.services.chatwoot_source import SourceError
    from multibackend.services.reconciler import read_ahead

    closed = []

    def listing(fail_after: int | None = None):
        try:
            for number in range(1, 6):
                if number == fail_after:
                    raise SourceError("Chatwoot went away")
                yield [number]
        finally:
            closed.append(fail_after)

    with app.app_context():
        assert list(read_ahead(listing())) == [[1], [2], [3], [4], [5]]
        taken = []
        with pytest.raises(SourceError):
            for batch in read_ahead(listing(fail_after=3)):
                taken.append(batch)
        assert taken == [[1], [2]]
        reader = read_ahead(listing(fail_after=99))
        assert next(reader) == [1]
        reader.close()  # the caller stopped early (a failed write): the listing is closed, not left open
    assert closed == [None, 3, 99]


def test_a_command_leaves_its_objects_to_the_os_at_exit_and_still_runs_every_atexit_handler(database_url, clean_database):
    said_at_exit = "import atexit, gc; atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))"
    completed = subprocess.run(
        [sys.executable, "-c", f"{said_at_exit}; from flask.cli import main; main()", "--app", "wsgi", "chatwoot", "init-db"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Schema up to date on PostgreSQL" in completed.stdout and "frozen at exit: True" in completed.stdout
