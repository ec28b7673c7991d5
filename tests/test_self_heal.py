"""The lookup heals itself: an account Chatwoot has but whose webhook never arrived is provisioned on the spot."""

from __future__ import annotations

import time

from tests.helpers import companies_state, count_rows, free_port

LOOKUP = "/api/chatwoot/webhooks/company/"


def test_account_in_the_chatwoot_database_is_provisioned_on_lookup(make_app, clean_database, redis_client, chatwoot_db):
    chatwoot_db.add_accounts([(77, "Lost Webhook Inc")])
    client = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url).test_client()
    data = client.get(LOOKUP + "77").json["data"]
    assert data["exists"] is True
    assert (data["company_id"], data["company_name"], data["provisioning_status"]) == ("chatwoot_77", "Lost Webhook Inc", "ready")
    assert redis_client.hget("chatwoot_77:tenant", "company_name") == "Lost Webhook Inc"
    assert count_rows(clean_database, "chatwoot_sync_events") == 0  # not a delivery


def test_suspended_account_is_provisioned_and_marked(make_app, clean_database, chatwoot_db):
    chatwoot_db.add_accounts([(78, "Suspended Co")])
    chatwoot_db.execute("UPDATE accounts SET status = 1")
    data = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url).test_client().get(LOOKUP + "78").json["data"]
    assert (data["exists"], data["chatwoot_status"]) == (True, "suspended")


def test_unknown_account_is_never_created(make_app, clean_database, chatwoot_db):
    client = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url).test_client()
    assert client.get(LOOKUP + "79").json["data"] == {"exists": False}
    assert count_rows(clean_database, "companies") == 0


def test_the_unknown_answer_is_cached_for_its_ttl(make_app, clean_database, chatwoot_db):
    client = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url, SELF_HEAL_NEGATIVE_TTL_SECONDS=2).test_client()
    assert client.get(LOOKUP + "79").json["data"] == {"exists": False}
    chatwoot_db.add_accounts([(79, "Created Just Now")])
    assert client.get(LOOKUP + "79").json["data"] == {"exists": False}  # negative answer cached
    time.sleep(2.2)
    assert client.get(LOOKUP + "79").json["data"]["exists"] is True


def test_platform_api_heals_visible_accounts_only(make_app, clean_database, platform_api):
    platform_api.add(80, "Visible")
    platform_api.add(81, "Invisible", visible=False)
    client = make_app(CHATWOOT_API_URL=platform_api.url, CHATWOOT_PLATFORM_TOKEN=platform_api.token).test_client()
    assert client.get(LOOKUP + "80").json["data"]["company_name"] == "Visible"
    assert client.get(LOOKUP + "81").json["data"] == {"exists": False}  # 401 Non permissible resource
    assert client.get(LOOKUP + "82").json["data"] == {"exists": False}  # 404
    assert set(companies_state(clean_database)) == {"chatwoot_80"}


def test_polling_does_not_hammer_chatwoot(make_app, clean_database, platform_api):
    client = make_app(CHATWOOT_API_URL=platform_api.url, CHATWOOT_PLATFORM_TOKEN=platform_api.token).test_client()
    for _ in range(20):
        assert client.get(LOOKUP + "83").json["data"] == {"exists": False}
    assert platform_api.requests.count("/platform/api/v1/accounts/83") == 1


def test_a_slow_chatwoot_cannot_hold_the_lookup(make_app, clean_database, platform_api):
    platform_api.add(84, "Slow")
    platform_api.delay = 3.0
    client = make_app(CHATWOOT_API_URL=platform_api.url, CHATWOOT_PLATFORM_TOKEN=platform_api.token).test_client()
    started = time.perf_counter()
    response = client.get(LOOKUP + "84")
    elapsed = time.perf_counter() - started
    assert response.status_code == 200 and response.json["data"] == {"exists": False}
    assert elapsed < 1.5


def test_unreachable_chatwoot_database_is_a_plain_miss(make_app, clean_database):
    client = make_app(CHATWOOT_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/chatwoot").test_client()
    response = client.get(LOOKUP + "85")
    assert response.status_code == 200 and response.json["data"] == {"exists": False}


def test_without_a_source_the_lookup_is_plain(client, clean_database):
    assert client.get(LOOKUP + "86").json["data"] == {"exists": False}
