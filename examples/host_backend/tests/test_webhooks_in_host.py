"""The auto-sync inside the host: one company per Chatwoot account on the host's own database and session."""

import pytest

from host_backend.extensions import database
from tests.helpers import LOOKUP, PREEXISTING_ACCOUNT, SECRET, deliver, make_host_app, run_sql


@pytest.mark.parametrize(("driver", "account"), [("psycopg2", 101), ("psycopg", 102)])
def test_webhook_creates_the_company_once_and_the_receiver_its_vector_index(
    driver, account, database_name, database_url, redis_url, redis_client
):
    app = make_host_app(database_name, redis_url, driver=driver)
    try:
        client = app.test_client()
        first = deliver(client, account, "Globex")
        assert first.status_code == 200, first.json
        assert first.json["data"]["created"] is True
        for _ in range(2):
            repeat = deliver(client, account, "Globex")
            assert (repeat.status_code, repeat.json["data"]["created"]) == (200, False)
        lookup = client.get(LOOKUP.format(account)).json["data"]
    finally:
        with app.app_context():
            database.engine.dispose()

    company_id = f"chatwoot_{account}"
    rows = run_sql(database_url, "SELECT company_id, company_name, plan, provisioning_status FROM companies"
                                 " WHERE chatwoot_account_id = %s", (str(account),))
    assert rows == [(company_id, "Globex", "free", "ready")]  # one row; the host's column kept its default
    assert run_sql(database_url, "SELECT company_id FROM vector_indexes WHERE index_name = %s",
                   (f"{company_id}_documents",)) == [(company_id,)]
    assert redis_client.hget(f"{company_id}:tenant", "company_name") == "Globex"
    assert lookup["exists"] is True
    assert (lookup["company_id"], lookup["provisioning_status"]) == (company_id, "ready")


def test_lookup_finds_a_company_the_host_had_before_the_auto_sync(client, database_url):
    lookup = client.get(LOOKUP.format(PREEXISTING_ACCOUNT))
    assert lookup.status_code == 200
    data = lookup.json["data"]
    assert data["exists"] is True
    assert (data["company_id"], data["chatwoot_account_id"]) == (f"chatwoot_{PREEXISTING_ACCOUNT}", str(PREEXISTING_ACCOUNT))
    assert data["redis_prefix"] == f"chatwoot_{PREEXISTING_ACCOUNT}:"  # init-db filled the new columns of old rows
    assert run_sql(database_url, "SELECT plan FROM companies WHERE chatwoot_account_id = %s",
                   (str(PREEXISTING_ACCOUNT),)) == [("pro",)]


def test_metrics_answer_operators_with_the_secret(client):
    assert deliver(client, 103, "Initech").status_code == 200
    assert client.get("/api/chatwoot/webhooks/metrics").status_code == 401
    metrics = client.get(f"/api/chatwoot/webhooks/metrics?token={SECRET}")
    assert metrics.status_code == 200
    assert metrics.json["success"] is True
    assert metrics.json["data"]["total_syncs"] >= 1
    assert metrics.json["data"]["success_rate"] == 100.0
