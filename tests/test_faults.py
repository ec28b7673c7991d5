"""Faults on servers the tests own and stop: each scenario ends with the companies and namespaces a run without faults gives."""

from __future__ import annotations

import time

import psycopg
import pytest

from multibackend.cli import apply_schema
from multibackend.extensions import db
from tests.helpers import WEBHOOK, companies_state, namespaces_state, reconcile
from tests.servers import DisposablePostgres, DisposableRedis

DELIVERIES = [{"id": i, "name": f"Company {i}", "event": "account_created", "users": []} for i in range(1, 7)]


@pytest.fixture
def postgres():
    server = DisposablePostgres()
    yield server
    server.destroy()


@pytest.fixture
def own_redis():
    server = DisposableRedis()
    yield server
    server.stop()


@pytest.fixture
def expected_state(make_app, clean_database, redis_client):
    """What the deliveries give when nothing fails (the control run, on the session's servers)."""
    client = make_app().test_client()
    for body in DELIVERIES:
        assert client.post(WEBHOOK, json=body).status_code == 200
    return companies_state(clean_database), namespaces_state(redis_client)


@pytest.fixture
def faulty_app(make_app, postgres, own_redis):
    app = make_app(DATABASE_URL=postgres.url, REDIS_URL=own_redis.url)
    with app.app_context():
        apply_schema()
    yield app
    with app.app_context():
        db.engine.dispose()


def timed_post(client, body):
    started = time.perf_counter()
    response = client.post(WEBHOOK, json=body)
    return response, time.perf_counter() - started


def test_postgres_goes_away_mid_test(faulty_app, postgres, own_redis, expected_state):
    client = faulty_app.test_client()
    for body in DELIVERIES[:2]:
        assert client.post(WEBHOOK, json=body).status_code == 200
    postgres.stop()
    for body in DELIVERIES[2:] + DELIVERIES[2:3]:  # one delivery twice while down
        response, elapsed = timed_post(client, body)
        assert response.status_code == 202 and response.json["data"]["queued"] is True
        assert elapsed < 5.0
    assert faulty_app.test_client().get("/readyz").status_code == 503
    postgres.start()
    summary = reconcile(faulty_app)
    assert summary.ok, summary.problems
    assert summary.replayed == 5
    assert (companies_state(postgres.url), namespaces_state(own_redis.client())) == expected_state
    assert client.post(WEBHOOK, json=DELIVERIES[0]).json["data"]["created"] is False


def test_postgres_and_redis_down_answer_503_then_backfill_recovers(faulty_app, postgres, own_redis, expected_state, chatwoot_db):
    faulty_app.config["CHATWOOT_DATABASE_URL"] = chatwoot_db.url
    from multibackend.services.chatwoot_source import init_chatwoot_source

    init_chatwoot_source(faulty_app)
    chatwoot_db.add_accounts([(body["id"], body["name"]) for body in DELIVERIES])
    client = faulty_app.test_client()
    for body in DELIVERIES[:3]:
        assert client.post(WEBHOOK, json=body).status_code == 200
    postgres.stop()
    own_redis.stop()
    for body in DELIVERIES[3:]:
        response, elapsed = timed_post(client, body)
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert elapsed < 5.0
    postgres.start()
    own_redis.start()  # an empty Redis: the first three namespaces are gone too
    summary = reconcile(faulty_app)
    assert summary.ok, summary.problems
    assert (summary.created, summary.restored) == (3, 3)
    assert (companies_state(postgres.url), namespaces_state(own_redis.client())) == expected_state


def test_redis_restarts_empty_mid_test(faulty_app, postgres, own_redis, expected_state):
    client = faulty_app.test_client()
    for body in DELIVERIES[:3]:
        assert client.post(WEBHOOK, json=body).json["data"]["provisioning_status"] == "ready"
    own_redis.stop()
    for body in DELIVERIES[3:]:
        response, elapsed = timed_post(client, body)
        assert response.status_code == 200 and response.json["data"]["provisioning_status"] == "pending"
        assert elapsed < 5.0
    assert client.get("/readyz").json["data"]["checks"]["redis"].startswith("unreachable")
    own_redis.start()
    summary = reconcile(faulty_app)
    assert summary.ok, summary.problems
    assert summary.provisioned == 3
    assert (companies_state(postgres.url), namespaces_state(own_redis.client())) == expected_state


def test_a_hung_database_cannot_hold_the_answer(faulty_app, postgres, own_redis, expected_state):
    client = faulty_app.test_client()
    for body in DELIVERIES[:5]:
        assert client.post(WEBHOOK, json=body).status_code == 200
    locker = psycopg.connect(postgres.url)
    locker.execute("LOCK TABLE companies IN ACCESS EXCLUSIVE MODE")  # every write now waits
    try:
        response, elapsed = timed_post(client, DELIVERIES[5])
    finally:
        locker.rollback()
        locker.close()
    assert response.status_code == 202
    assert elapsed < 4.0  # DATABASE_STATEMENT_TIMEOUT_MS (2 s) ends the wait, well within Chatwoot's 5 s
    assert reconcile(faulty_app).replayed == 1
    assert (companies_state(postgres.url), namespaces_state(own_redis.client())) == expected_state


def test_pooled_connections_survive_a_postgres_restart(faulty_app, postgres, own_redis, expected_state):
    client = faulty_app.test_client()
    for body in DELIVERIES[:3]:
        client.post(WEBHOOK, json=body)
    with faulty_app.app_context():  # several connections in the pool, all broken by the restart
        from multibackend.extensions import db

        held = [db.engine.connect() for _ in range(3)]
        for connection in held:
            connection.close()
    postgres.stop()
    postgres.start()
    assert client.get(f"/api/chatwoot/webhooks/company/{DELIVERIES[0]['id']}").json["data"]["exists"] is True
    for body in DELIVERIES[3:]:
        assert client.post(WEBHOOK, json=body).status_code == 200
    assert (companies_state(postgres.url), namespaces_state(own_redis.client())) == expected_state


def test_readyz_is_ok_when_the_database_and_redis_answer(faulty_app):
    ready = faulty_app.test_client().get("/readyz")
    assert ready.status_code == 200 and ready.json["data"]["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_names_redis_when_it_is_down(faulty_app, own_redis):
    own_redis.stop()
    not_ready = faulty_app.test_client().get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json["code"] == "not_ready" and "redis" in not_ready.json["error"]


def test_readyz_names_every_dependency_that_is_down(faulty_app, postgres, own_redis):
    own_redis.stop()
    postgres.stop()
    assert faulty_app.test_client().get("/readyz").json["error"] == "Not ready: database, redis"


def test_livez_answers_whatever_the_dependencies_do(faulty_app, postgres, own_redis):
    client = faulty_app.test_client()
    assert client.get("/livez").json == {"success": True, "data": {"status": "alive"}}
    own_redis.stop()
    postgres.stop()
    assert client.get("/livez").status_code == 200
