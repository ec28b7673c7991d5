"""Provisioning: ready means namespace, index and one tenant_provisioned signal; a failure leaves the company pending, never lost."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from multibackend.services.delivery_spool import SPOOL_KEY
from multibackend.services.tenant_naming import tenant_names
from multibackend.services.tenant_provisioning import VECTORSTORE_REGISTRY_KEY, tenant_provisioned
from tests.helpers import WEBHOOK, count_rows, free_port, tenant_data_keys

ACCOUNT = {"id": 42, "name": "Acme Corp", "event": "account_created", "users": []}


def deliver(client, body=ACCOUNT):
    return client.post(WEBHOOK, json=body)


def status_of(database_url, account_id="42"):
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT provisioning_status, provisioning_error FROM companies WHERE chatwoot_account_id = %s", (account_id,)
        ).fetchone()


def test_tenant_names_have_one_rule():
    names = tenant_names(42)
    assert (names.company_id, names.redis_prefix, names.vectorstore_index) == (
        "chatwoot_42", "chatwoot_42:", "chatwoot_42_documents",
    )
    assert names.redis_tenant_key == "chatwoot_42:tenant"
    assert not tenant_names(12).redis_tenant_key.startswith(tenant_names(1).redis_prefix)


def test_namespace_and_index_registry_are_written(client, clean_database, redis_client):
    deliver(client)
    tenant = redis_client.hgetall("chatwoot_42:tenant")
    assert tenant["company_id"] == "chatwoot_42"
    assert tenant["chatwoot_account_id"] == "42"
    assert tenant["vectorstore_index"] == "chatwoot_42_documents"
    assert tenant["created_at"].endswith("Z")
    assert redis_client.smembers(VECTORSTORE_REGISTRY_KEY) == {"chatwoot_42_documents"}
    assert status_of(clean_database) == ("ready", None)


def test_signal_is_sent_once_when_ready(client, clean_database):
    received = []

    def receiver(sender, company):
        received.append(company)

    with tenant_provisioned.connected_to(receiver):
        deliver(client)
        deliver(client)
    assert [company.company_id for company in received] == ["chatwoot_42"]
    assert received[0].vectorstore_index == "chatwoot_42_documents"
    assert received[0].provisioning_status == "ready"


def test_failing_receiver_leaves_the_company_pending_for_a_retry(client, clean_database):
    def broken_receiver(sender, company):
        raise RuntimeError("vector store is down")

    with tenant_provisioned.connected_to(broken_receiver):
        response = deliver(client)
    assert response.status_code == 200
    assert response.json["data"]["provisioning_status"] == "pending"
    assert status_of(clean_database)[0] == "pending"
    assert "RuntimeError" in status_of(clean_database)[1]
    retried = deliver(client).json["data"]
    assert (retried["created"], retried["provisioning_status"]) == (False, "ready")
    assert status_of(clean_database) == ("ready", None)


def test_redis_down_keeps_the_company_pending(make_app, clean_database, redis_client):
    down = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").test_client()
    response = deliver(down)
    assert response.status_code == 200
    data = response.json["data"]
    assert (data["created"], data["provisioning_status"], data["redis"]) == (True, "pending", "failed")
    assert "pending" in data["message"]
    status, error = status_of(clean_database)
    assert status == "pending" and "Redis unavailable" in error
    assert count_rows(clean_database, "companies") == 1


def test_a_repeat_delivery_finishes_provisioning_once_redis_is_back(make_app, clean_database, redis_client):
    deliver(make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").test_client())
    up = make_app().test_client()
    retried = deliver(up).json["data"]
    assert (retried["created"], retried["provisioning_status"], retried["redis"]) == (False, "ready", "ready")
    assert redis_client.hget("chatwoot_42:tenant", "company_id") == "chatwoot_42"


def test_hung_redis_cannot_hold_the_answer(make_app, clean_database):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers
    try:
        client = make_app(REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0").test_client()
        started = time.perf_counter()
        response = deliver(client)
        elapsed = time.perf_counter() - started
    finally:
        silent.close()
    assert response.status_code == 200
    assert response.json["data"]["provisioning_status"] == "pending"
    assert elapsed < 3.0


def test_without_redis_url_the_step_is_reported_skipped(make_app, clean_database, redis_client, caplog):
    caplog.set_level("INFO", logger="multibackend")
    data = deliver(make_app(REDIS_URL="").test_client()).json["data"]
    assert (data["redis"], data["provisioning_status"]) == ("skipped", "ready")
    assert "Redis step skipped" in data["message"]
    assert any("Redis step skipped for chatwoot_42" in r.getMessage() for r in caplog.records)
    assert tenant_data_keys(redis_client) == []


def test_concurrent_duplicates_in_threads_make_one_company(app, clean_database, redis_client):
    rounds, threads = 20, 16

    def deliver_together(barrier, account_id):
        with app.test_client() as client:
            barrier.wait()
            response = deliver(client, {"id": account_id, "name": f"Race {account_id}"})
            return response.status_code, response.json["data"]

    with ThreadPoolExecutor(threads) as pool:
        for account_id in range(1000, 1000 + rounds):
            barrier = threading.Barrier(threads)
            results = list(pool.map(lambda _: deliver_together(barrier, account_id), range(threads)))
            assert {status for status, _ in results} == {200}
            assert sum(data["created"] for _, data in results) == 1
            assert {data["company_id"] for _, data in results} == {f"chatwoot_{account_id}"}
    assert count_rows(clean_database, "companies") == rounds
    assert count_rows(clean_database, "chatwoot_sync_events") == rounds * threads
    assert redis_client.llen(SPOOL_KEY) == 0


def wait_for(condition, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


def test_deliveries_arriving_while_a_creation_is_in_flight_are_created_together(app, clean_database, redis_client):
    def deliver_alone(account_id):
        response = deliver(app.test_client(), {"id": account_id, "name": f"Together {account_id}"})
        return response.status_code, response.json["data"]

    def waiting_in_the_database():  # outside the blocker's transaction, which would see one snapshot of the view
        return watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()[0]

    with psycopg.connect(clean_database, autocommit=False) as blocker, psycopg.connect(clean_database, autocommit=True) as watcher, \
            ThreadPoolExecutor(11) as pool:
        # an uncommitted row of account 500 holds the first creation in flight (waiting on the unique index)
        blocker.execute(
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index)"
            " VALUES ('chatwoot_500', 'Blocker', '500', 'chatwoot_500:', 'chatwoot_500_documents')"
        )
        first = pool.submit(deliver_alone, 500)
        wait_for(lambda: waiting_in_the_database() == 1, "the first creation to wait on the lock")
        later = [pool.submit(deliver_alone, account_id) for account_id in range(501, 511)]
        shared = app.extensions["multibackend.round_trips.creations"][1]
        wait_for(lambda: shared.waiting == 10, "ten deliveries to wait for the next creation")
        blocker.rollback()
        answers = [first.result(), *(future.result() for future in later)]
    assert [(status, data["created"], data["company_id"]) for status, data in answers] == [
        (200, True, f"chatwoot_{account_id}") for account_id in range(500, 511)
    ]
    with psycopg.connect(clean_database) as connection:
        transactions, companies, events = connection.execute(
            "SELECT count(DISTINCT c.xmin::text), count(DISTINCT c.id), count(e.id) FROM companies c"
            " JOIN chatwoot_sync_events e ON e.chatwoot_account_id = c.chatwoot_account_id"
            " WHERE c.chatwoot_account_id::bigint BETWEEN 501 AND 510"
        ).fetchone()
    assert (transactions, companies, events) == (1, 10, 10)  # one commit for the ten, one sync event each
    assert all(redis_client.hget(f"chatwoot_{account_id}:tenant", "company_id") for account_id in range(500, 511))


def asks_for(*rows):
    from multibackend.round_trips import Ask

    return [Ask(row["chatwoot_account_id"], (row, time.perf_counter())) for row in rows]


def test_a_shared_creation_the_database_refuses_lets_each_delivery_create_alone(app, clean_database, redis_client):
    from sqlalchemy.exc import SQLAlchemyError

    from multibackend.services.companies import company_row
    from multibackend.services.tenant_provisioning import _create_alone, create_together_now

    with app.app_context():
        asks = asks_for(company_row(601, "A"), company_row(602, "B", chatwoot_status="bogus"), company_row(603, "C"))
        create_together_now(asks)  # one row breaks a CHECK constraint: the statement writes nothing
        assert [ask.alone for ask in asks] == [True, True, True] and count_rows(clean_database, "companies") == 0
        outcomes = []
        for ask in asks:
            try:
                outcomes.append(_create_alone(*ask.value).company.company_id)
            except SQLAlchemyError:
                outcomes.append("refused")
    assert outcomes == ["chatwoot_601", "refused", "chatwoot_603"]
    assert count_rows(clean_database, "companies") == count_rows(clean_database, "chatwoot_sync_events") == 2
    assert sorted(key for key in tenant_data_keys(redis_client) if key.startswith("chatwoot_60")) == [
        "chatwoot_601:tenant", "chatwoot_603:tenant"
    ]  # the refused one's namespace is removed again


def test_a_shared_creation_the_database_cannot_take_fails_every_delivery_in_it(make_app, redis_client):
    from multibackend.extensions import is_transient
    from multibackend.services.companies import company_row
    from multibackend.services.tenant_provisioning import create_together_now

    with make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere").app_context():
        asks = asks_for(company_row(611, "A"), company_row(612, "B"))
        create_together_now(asks)
    assert all(ask.error is not None and is_transient(ask.error) and not ask.alone for ask in asks)  # spooled: 202


def test_database_down_spools_the_delivery_and_answers_202(make_app, clean_database, redis_client):
    client = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere").test_client()
    response = deliver(client)
    assert response.status_code == 202
    data = response.json["data"]
    assert (data["queued"], data["company_id"], data["provisioning_status"]) == (True, "chatwoot_42", "queued")
    assert redis_client.llen(SPOOL_KEY) == 1


def client_with_both_stores_down(make_app):
    return make_app(
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    ).test_client()


def test_database_and_redis_down_answer_503_json(make_app, clean_database):
    response = deliver(client_with_both_stores_down(make_app))
    assert response.status_code == 503
    assert response.json == {"success": False, "error": "The database is unavailable, try again later", "code": "service_unavailable"}
    assert response.headers["Retry-After"].isdigit()


def test_lookups_answer_503_json_when_both_stores_are_down(make_app, clean_database):
    lookup = client_with_both_stores_down(make_app).get("/api/chatwoot/webhooks/company/42")
    assert lookup.status_code == 503 and lookup.json["code"] == "service_unavailable"


@pytest.mark.parametrize("account_id", [1, 2**63 - 1])
def test_extreme_account_ids_get_their_company(client, clean_database, account_id):
    data = deliver(client, {"id": account_id, "name": "Edge"}).json["data"]
    assert data["company_id"] == f"chatwoot_{account_id}"
