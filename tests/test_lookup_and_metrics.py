"""GET company/<account_id> (what the iframe polls) answers from the cache in step with writes; GET metrics adds up."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

import time

from multibackend.services import lookup_cache, sync_metrics
from tests.helpers import WEBHOOK, free_port, reconcile


def wait_for(condition, seconds=2.0):
    """Until condition() holds (an invalidation travels through Redis pub/sub), or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.005)

LOOKUP = "/api/chatwoot/webhooks/company/"
METRICS = "/api/chatwoot/webhooks/metrics"


def test_lookup_of_an_existing_company(client, clean_database):
    client.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    response = client.get(LOOKUP + "42")
    assert response.status_code == 200
    data = response.json["data"]
    created_at = data.pop("created_at")
    assert data == {
        "exists": True,
        "company_id": "chatwoot_42",
        "company_name": "Acme Corp",
        "chatwoot_account_id": "42",
        "redis_prefix": "chatwoot_42:",
        "vectorstore_index": "chatwoot_42_documents",
        "provisioning_status": "ready",
        "chatwoot_status": "active",
    }
    moment = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    assert created_at.endswith("Z") and abs(datetime.now(timezone.utc) - moment) < timedelta(minutes=1)


def test_lookup_of_an_unknown_account_says_it_does_not_exist(client, clean_database):
    response = client.get(LOOKUP + "4242")
    assert response.status_code == 200
    assert response.json == {"success": True, "data": {"exists": False}}


def test_lookup_does_not_confuse_account_1_with_12(client, clean_database):
    client.post(WEBHOOK, json={"id": 12, "name": "Twelve"})
    assert client.get(LOOKUP + "1").json["data"]["exists"] is False


def test_lookup_reads_leading_zeros_as_the_same_account(client, clean_database):
    client.post(WEBHOOK, json={"id": 12, "name": "Twelve"})
    assert client.get(LOOKUP + "012").json["data"]["company_id"] == "chatwoot_12"


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "1e3", "%20", "42abc", "9223372036854775808", "9" * 40, "٤٢", "0x2a"])
def test_lookup_of_an_invalid_id_is_400(client, clean_database, bad):
    response = client.get(LOOKUP + bad)
    assert response.status_code == 400
    assert response.json == {"success": False, "error": "Account id must be a positive integer", "code": "invalid_account_id"}


def test_lookup_without_id_is_404_json(client):
    response = client.get(LOOKUP)
    assert response.status_code == 404
    assert response.json["code"] == "not_found"


def test_metrics_start_empty(client, clean_database):
    assert client.get(METRICS).json["data"] == {
        "total_syncs": 0,
        "success_count": 0,
        "failed_count": 0,
        "rejected_count": 0,
        "success_rate": None,
        "avg_latency_ms": None,
        "last_sync": None,
        "recent_errors": [],
    }


def insert_events(database_url, rows):
    with psycopg.connect(database_url) as connection:
        connection.cursor().executemany(
            "INSERT INTO chatwoot_sync_events (chatwoot_account_id, company_id, outcome, created, latency_ms, error, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def test_metrics_add_up_the_recorded_events(client, clean_database):
    base = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    rows = [(str(i), f"chatwoot_{i}", "success", True, 10.0, None, base + timedelta(seconds=i)) for i in range(1, 6)]
    rows += [(str(i), None, "failed", False, 40.0, f"database error {i}", base + timedelta(seconds=i)) for i in range(6, 20)]
    rows += [("1", "chatwoot_1", "success", False, 100.0, None, base + timedelta(seconds=30))]
    insert_events(clean_database, rows)
    data = client.get(METRICS).json["data"]
    assert data["total_syncs"] == 20
    assert (data["success_count"], data["failed_count"]) == (6, 14)
    assert data["success_rate"] == 30.0
    assert data["avg_latency_ms"] == round((5 * 10 + 14 * 40 + 100) / 20, 2)
    assert data["last_sync"] == "2026-11-01T12:00:30Z"
    assert len(data["recent_errors"]) == 10
    assert [error["account_id"] for error in data["recent_errors"]] == [str(i) for i in range(19, 9, -1)]
    assert data["recent_errors"][0] == {"time": "2026-11-01T12:00:19Z", "account_id": "19", "error": "database error 19"}


def test_success_rate_has_two_decimals(client, clean_database):
    now = datetime.now(timezone.utc)
    insert_events(clean_database, [("1", "c", "success", True, 1.0, None, now)] * 2 + [("2", None, "failed", False, 1.0, "x", now)])
    assert client.get(METRICS).json["data"]["success_rate"] == 66.67


def test_metrics_follow_real_deliveries(make_app, clean_database):
    client = make_app().test_client()
    client.post(WEBHOOK, json={"id": 1, "name": "One"})
    client.post(WEBHOOK, json={"id": 1, "name": "One"})
    client.post(WEBHOOK, data=b"broken", content_type="application/json")
    make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").test_client().post(WEBHOOK, json={"id": 2, "name": "Two"})
    data = client.get(METRICS).json["data"]
    assert (data["total_syncs"], data["success_count"], data["failed_count"], data["rejected_count"]) == (3, 3, 0, 1)
    assert data["avg_latency_ms"] > 0
    assert [error["account_id"] for error in data["recent_errors"]] == ["2"]
    assert "Redis unavailable" in data["recent_errors"][0]["error"]


def test_metrics_are_shared_between_app_instances(make_app, clean_database):
    make_app().test_client().post(WEBHOOK, json={"id": 1, "name": "One"})
    assert make_app().test_client().get(METRICS).json["data"]["total_syncs"] == 1


def test_lookup_cache_keeps_read_your_writes_across_workers(make_app, clean_database, redis_client):
    poller, webhook_worker = make_app().test_client(), make_app().test_client()
    for _ in range(3):
        assert poller.get(LOOKUP + "42").json["data"] == {"exists": False}  # a miss is never held
    webhook_worker.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    assert poller.get(LOOKUP + "42").json["data"]["exists"] is True  # at once, on another app instance


def test_lookup_answers_come_from_the_cache(make_app, clean_database, redis_client):
    app = make_app()
    client = app.test_client()
    client.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    assert client.get(LOOKUP + "42").json["data"]["company_name"] == "Acme Corp"  # now held by the worker
    with psycopg.connect(clean_database) as connection:  # behind the service's back: the held answer still answers
        connection.execute("UPDATE companies SET company_name = 'Changed Directly'")
    assert client.get(LOOKUP + "42").json["data"]["company_name"] == "Acme Corp"
    redis_client.publish(lookup_cache.INVALIDATION_CHANNEL, "42")  # what any instance's write sends
    wait_for(lambda: client.get(LOOKUP + "42").json["data"]["company_name"] == "Changed Directly")


def test_status_changes_and_renames_show_at_once(make_app, clean_database, redis_client, chatwoot_db):
    down = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").test_client()
    down.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url)
    client = app.test_client()
    assert client.get(LOOKUP + "42").json["data"]["provisioning_status"] == "pending"
    chatwoot_db.add_accounts([(42, "Acme Renamed")])
    assert reconcile(app).ok
    data = client.get(LOOKUP + "42").json["data"]
    assert (data["company_name"], data["provisioning_status"]) == ("Acme Renamed", "ready")


def test_lookup_without_redis_reads_postgres_every_time(make_app, clean_database):
    client = make_app(REDIS_URL="").test_client()
    assert client.get(LOOKUP + "42").json["data"] == {"exists": False}
    client.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    assert client.get(LOOKUP + "42").json["data"]["exists"] is True


def totals_row(database_url):
    with psycopg.connect(database_url) as connection:
        return connection.execute("SELECT through_event_id, total_syncs FROM chatwoot_sync_totals").fetchone()


def fold(app):
    with app.app_context():
        return sync_metrics.fold_sync_totals()


def test_reading_metrics_never_writes(client, clean_database):
    old = datetime.now(timezone.utc) - timedelta(days=2)
    insert_events(clean_database, [(str(i), None, "success", True, 1.0, None, old) for i in range(1, 1502)])
    assert client.get(METRICS).json["data"]["total_syncs"] == 1501
    assert totals_row(clean_database) is None


def computed_metrics(client, redis_client):
    """The metrics as a request computes them now (the shared copy, up to 1 s old, dropped first)."""
    redis_client.delete(sync_metrics.SHARED_METRICS_KEY)
    return client.get(METRICS).json["data"]


def folded_history(app, client, clean_database, redis_client):
    """1501 settled events (every 4th failed), a second apart from two days ago, folded by a reconcile: (two days
    ago, the metrics before the fold, the metrics after it)."""
    old = datetime.now(timezone.utc) - timedelta(days=2)
    rows = [(str(i), f"chatwoot_{i}", "success" if i % 4 else "failed", True, float(i % 7), None if i % 4 else "boom", old + timedelta(seconds=i)) for i in range(1, 1502)]
    insert_events(clean_database, rows)
    before = client.get(METRICS).json["data"]
    assert reconcile(app).ok
    return old, before, computed_metrics(client, redis_client)


def test_the_reconciler_folds_settled_history_into_running_totals(app, client, clean_database, redis_client):
    folded_history(app, client, clean_database, redis_client)
    assert totals_row(clean_database) == (1501, 1501)


def test_folding_leaves_the_metrics_as_they_were(app, client, clean_database, redis_client):
    old, before, after = folded_history(app, client, clean_database, redis_client)
    assert after == before
    assert after["last_sync"] == (old + timedelta(seconds=1501)).isoformat().replace("+00:00", "Z")


def test_metrics_after_a_fold_add_the_newer_events(app, client, clean_database, redis_client):
    _, _, first = folded_history(app, client, clean_database, redis_client)
    insert_events(clean_database, [("9", "chatwoot_9", "failed", False, 100.0, "late error", datetime.now(timezone.utc))])
    second = computed_metrics(client, redis_client)
    assert first["total_syncs"] == 1501 and second["total_syncs"] == 1502
    assert (second["success_count"], second["failed_count"]) == (first["success_count"], first["failed_count"] + 1)
    expected_sum = sum(float(i % 7) for i in range(1, 1502)) + 100.0
    assert second["avg_latency_ms"] == round(expected_sum / 1502, 2)
    assert second["recent_errors"][0]["error"] == "late error"


def test_metrics_are_computed_at_most_once_a_second_for_every_worker(make_app, clean_database):
    first, second = make_app().test_client(), make_app().test_client()
    assert first.get(METRICS).json["data"]["total_syncs"] == 0
    insert_events(clean_database, [("1", "chatwoot_1", "success", True, 1.0, None, datetime.now(timezone.utc))])
    assert second.get(METRICS).json["data"]["total_syncs"] == 0  # the copy the first worker shared
    time.sleep(sync_metrics.SHARED_METRICS_SECONDS)
    assert second.get(METRICS).json["data"]["total_syncs"] == 1  # never older than a second


def test_a_delivery_or_a_refusal_shows_in_the_metrics_at_once(make_app, clean_database):
    client = make_app().test_client()
    assert client.get(METRICS).json["data"]["total_syncs"] == 0
    client.post(WEBHOOK, json={"id": 1, "name": "One"})
    assert client.get(METRICS).json["data"]["total_syncs"] == 1
    client.post(WEBHOOK, data=b"broken", content_type="application/json")
    assert client.get(METRICS).json["data"]["rejected_count"] == 1


def test_recent_events_are_not_folded_until_settled(app, client, clean_database):
    now = datetime.now(timezone.utc)
    insert_events(clean_database, [(str(i), None, "success", True, 1.0, None, now) for i in range(1200)])
    assert fold(app) == 0
    assert client.get(METRICS).json["data"]["total_syncs"] == 1200


def prometheus_sample(name, **labels):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_prometheus_counts_each_outcome_once(make_app, clean_database):
    """Outcomes are recorded where they happen: the view (created, existing, ignored, hit, miss) and the error
    handler (the refusal's code, a lookup error)."""
    client = make_app().test_client()
    deliveries = {outcome: prometheus_sample("chatwoot_webhook_deliveries_total", outcome=outcome)
                  for outcome in ("created", "existing", "ignored", "invalid_json", "invalid_payload")}
    lookups = {result: prometheus_sample("chatwoot_lookup_duration_seconds_count", result=result) for result in ("hit", "miss", "error")}
    timed = prometheus_sample("chatwoot_webhook_duration_seconds_count")
    client.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    client.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    client.post(WEBHOOK, json={"id": 5, "name": "Ann", "event": "contact_created"})
    client.post(WEBHOOK, data=b"{nope", content_type="application/json")
    client.post(WEBHOOK, json={"id": "x", "name": "Acme"})
    client.get(LOOKUP + "42")
    client.get(LOOKUP + "43")
    client.get(LOOKUP + "abc")
    client.get(METRICS)  # neither a delivery nor a lookup
    assert {outcome: prometheus_sample("chatwoot_webhook_deliveries_total", outcome=outcome) - before
            for outcome, before in deliveries.items()} == dict.fromkeys(deliveries, 1.0)
    assert {result: prometheus_sample("chatwoot_lookup_duration_seconds_count", result=result) - before
            for result, before in lookups.items()} == dict.fromkeys(lookups, 1.0)
    assert prometheus_sample("chatwoot_webhook_duration_seconds_count") - timed == 5


def test_held_answers_stay_within_their_byte_budget_dropping_the_oldest(monkeypatch):
    from multibackend.services import lookup_cache

    monkeypatch.setattr(lookup_cache, "HELD_BYTES", 10 * (100 + lookup_cache.HELD_ENTRY_OVERHEAD_BYTES))
    held = lookup_cache.HeldAnswers(client=None)  # type: ignore[arg-type]
    held.live = True
    for account_id in range(1, 26):
        held.put(account_id, b"x" * 100, held.generation)
        assert held.held_bytes <= lookup_cache.HELD_BYTES
    assert sorted(held.answers) == list(range(16, 26))  # the ten newest
    held.put(20, b"y" * 100, held.generation)  # replaced, not counted twice
    assert held.held_bytes == 10 * (100 + lookup_cache.HELD_ENTRY_OVERHEAD_BYTES)
    held.drop([20, 21])
    assert held.held_bytes == 8 * (100 + lookup_cache.HELD_ENTRY_OVERHEAD_BYTES)
    held.drop(None)
    assert held.held_bytes == 0 and held.answers == {}


def test_a_lookup_answer_is_compact_utf8_without_escapes(client):
    name = "\U0001F600" * 255
    client.post("/api/chatwoot/webhooks/account-created", json={"id": 4242, "name": name})
    answer = client.get("/api/chatwoot/webhooks/company/4242")
    assert answer.json["data"]["company_name"] == name
    assert b"\\ud83d" not in answer.data and len(answer.data) < 1500
