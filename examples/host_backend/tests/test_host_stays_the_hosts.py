"""What is the host's stays the host's: its system info (plus the auto-sync's entries), its errors, its limits, and
its own companies."""

import pytest

from tests.helpers import HOST_LIMIT, HOST_OWN_COMPANY, LOOKUP, PREEXISTING_ACCOUNT, deliver, run_sql


def test_system_info_is_the_hosts_with_the_auto_sync_entries(client):
    assert client.get("/api/system/info").json == {
        "name": "host-backend",
        "version": "2.3.0",
        "endpoints": {"chat": "/api/chat", "chatwoot_webhooks": "/api/chatwoot/webhooks"},
        "features": ["rag", "chat", "chatwoot-auto-sync"],
        "chatwoot_webhook_authentication": {
            "enabled": True, "methods": ["token", "basic", "hmac-sha256"], "warning": None,
        },
    }


def test_errors_are_the_hosts_on_its_paths_and_the_auto_syncs_on_its_own(client):
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json["status"] == 404 and "error" in missing.json
    wrong_method = client.get("/api/chat")
    assert (wrong_method.status_code, wrong_method.json["status"]) == (405, 405)

    ours = client.get("/api/chatwoot/webhooks/nothing-here")
    assert ours.status_code == 404
    assert ours.json == {"success": False, "error": "Not found", "code": "not_found"}
    assert client.get("/api/chatwoot/webhooks/account-created").json["code"] == "method_not_allowed"


def test_the_hosts_limiter_still_limits_its_own_routes_and_not_chatwoots(client):
    answers = [client.post("/api/chat", json={"company_id": HOST_OWN_COMPANY}) for _ in range(HOST_LIMIT + 1)]
    assert [answer.status_code for answer in answers] == [200] * HOST_LIMIT + [429]
    assert answers[0].headers["X-RateLimit-Limit"] == str(HOST_LIMIT)  # the host's RATELIMIT_HEADERS_ENABLED holds
    assert answers[-1].json == {"error": f"{HOST_LIMIT} per 1 minute", "status": 429}  # the host's error handler
    # the host exempts the auto-sync's blueprint from its default: Chatwoot is limited by the auto-sync's rules only
    assert [deliver(client, 104, "Hooli").status_code for _ in range(HOST_LIMIT + 1)] == [200] * (HOST_LIMIT + 1)
    assert [client.get(LOOKUP.format(104)).status_code for _ in range(HOST_LIMIT + 1)] == [200] * (HOST_LIMIT + 1)


def test_the_auto_sync_limiter_keeps_out_of_the_hosts_default_limit(client, redis_client):
    client.post("/api/chat", json={"company_id": HOST_OWN_COMPANY})
    assert not [key for key in redis_client.keys("*multibackend:ratelimit*") if "/api." in key]
    embed = [client.get("/api/chatwoot/webhooks/embed").status_code for _ in range(HOST_LIMIT + 1)]
    assert embed == [200] * (HOST_LIMIT + 1)


def test_the_hosts_own_company_is_never_provisioned_renamed_marked_or_announced(
    cli, database_url, chatwoot_database_url, redis_client
):
    run_sql(chatwoot_database_url, "INSERT INTO accounts (id, name) VALUES (%s, 'Seven, renamed in Chatwoot'), (301, 'Backfilled Co')"
            " ON CONFLICT DO NOTHING", (PREEXISTING_ACCOUNT,))
    columns = "company_name, plan, chatwoot_status, provisioning_status, provisioning_attempts, updated_at"
    host_row = f"SELECT {columns} FROM companies WHERE company_id = '{HOST_OWN_COMPANY}'"
    before = run_sql(database_url, host_row)

    reconciled = cli("chatwoot", "reconcile", CHATWOOT_DATABASE_URL=chatwoot_database_url)
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert "0 failed" in reconciled.stdout

    assert run_sql(database_url, host_row) == before
    assert redis_client.exists(f"{HOST_OWN_COMPANY}:tenant") == 0
    assert not redis_client.sismember("multibackend:vectorstore:indexes", f"{HOST_OWN_COMPANY}_documents")
    assert run_sql(database_url, "SELECT count(*) FROM vector_indexes WHERE company_id = %s", (HOST_OWN_COMPANY,)) == [(0,)]
    assert run_sql(database_url, "SELECT count(*) FROM chatwoot_tenant_announcements a JOIN companies c ON c.id = a.company_pk"
                                 " WHERE c.company_id = %s", (HOST_OWN_COMPANY,)) == [(0,)]
    # ...while the Chatwoot companies were: the old one renamed and provisioned, the missing one created
    assert run_sql(
        database_url,
        "SELECT c.company_id, c.company_name, c.plan, c.provisioning_status, v.index_name FROM companies c"
        " LEFT JOIN vector_indexes v ON v.company_id = c.company_id"
        " WHERE c.chatwoot_account_id IN (%s, '301') ORDER BY c.company_id",
        (str(PREEXISTING_ACCOUNT),),
    ) == [
        ("chatwoot_301", "Backfilled Co", "free", "ready", "chatwoot_301_documents"),
        (f"chatwoot_{PREEXISTING_ACCOUNT}", "Seven, renamed in Chatwoot", "pro", "ready", f"chatwoot_{PREEXISTING_ACCOUNT}_documents"),
    ]
    assert redis_client.hget("chatwoot_301:tenant", "company_name") == "Backfilled Co"  # REDIS_URL from the environment
