"""Abuse is rate limited (never Chatwoot itself), lookups can require a signature, and nothing internal leaks into answers or logs."""

from __future__ import annotations

import logging

import pytest

from multibackend.services import dashboard_tabs
from multibackend.services.webhook_auth import lookup_signature, lookup_signature_valid
from tests.helpers import WEBHOOK, count_rows, free_port, run_command

LOOKUP = "/api/chatwoot/webhooks/company/"
BODY = {"id": 42, "name": "Acme Corp", "event": "account_created", "users": []}


def guessing_workers(make_app):
    """Two app instances (workers) sharing a limit of 3 failed authentications a minute, sent 6 wrong tokens in
    turn: (the statuses of those 6 answers, the first instance's client)."""
    settings = {"CHATWOOT_WEBHOOK_SECRET": "s3cret", "RATELIMIT_AUTH_FAILURES": "3 per minute"}
    first, second = make_app(**settings).test_client(), make_app(**settings).test_client()
    statuses = [client.post(f"{WEBHOOK}?token=guess{i}", json=BODY).status_code for i, client in enumerate([first, second] * 3)]
    return statuses, first


def test_failed_authentication_is_rate_limited_across_workers(make_app, clean_database):
    statuses, _ = guessing_workers(make_app)
    assert statuses == [403, 403, 403, 429, 429, 429]  # the limit holds across app instances (Redis)


def test_a_rate_limited_answer_is_json_with_retry_after(make_app, clean_database):
    _, client = guessing_workers(make_app)
    limited = client.post(f"{WEBHOOK}?token=guess", json=BODY)
    assert limited.json == {"success": False, "error": "Too many requests", "code": "rate_limited"}
    assert int(limited.headers["Retry-After"]) > 0


def test_chatwoot_itself_is_never_blocked_by_the_limit(make_app, clean_database):
    _, client = guessing_workers(make_app)
    assert client.post(f"{WEBHOOK}?token=s3cret", json=BODY).status_code == 200
    assert count_rows(clean_database, "companies") == 1


def test_valid_deliveries_do_not_count_against_the_limit(make_app, clean_database):
    client = make_app(CHATWOOT_WEBHOOK_SECRET="s3cret", RATELIMIT_AUTH_FAILURES="2 per minute").test_client()
    for account_id in range(1, 11):
        assert client.post(f"{WEBHOOK}?token=s3cret", json=BODY | {"id": account_id}).status_code == 200


def test_lookups_are_rate_limited(make_app, clean_database):
    client = make_app(RATELIMIT_LOOKUP="5 per minute").test_client()
    statuses = [client.get(LOOKUP + str(account_id)).status_code for account_id in range(1, 9)]
    assert statuses == [200] * 5 + [429] * 3
    assert client.get(LOOKUP + "1").json["code"] == "rate_limited"


def test_limits_can_be_switched_off(make_app, clean_database):
    client = make_app(RATELIMIT_LOOKUP="1 per minute", RATELIMIT_ENABLED="false").test_client()
    assert {client.get(LOOKUP + "1").status_code for _ in range(5)} == {200}


def test_limits_work_without_redis(make_app, clean_database):
    client = make_app(REDIS_URL="", RATELIMIT_LOOKUP="2 per minute").test_client()
    assert [client.get(LOOKUP + "1").status_code for _ in range(3)] == [200, 200, 429]


def test_a_redis_outage_never_fails_a_request(make_app, clean_database):
    client = make_app(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", RATELIMIT_LOOKUP="100 per minute").test_client()
    assert client.get(LOOKUP + "1").status_code == 200


@pytest.mark.parametrize("value", ["lots", "20 per fortnight", ""])
def test_rate_limit_settings_are_checked_at_start_up(value):
    from multibackend import create_app
    from multibackend.config import ConfigError

    with pytest.raises(ConfigError):
        create_app({"RATELIMIT_LOOKUP": value})


def signed_lookup_client(make_app):
    """A client of an app whose lookups must be signed with embed-secret; company 42 exists."""
    client = make_app(CHATWOOT_EMBED_SECRET="embed-secret").test_client()
    client.post(WEBHOOK, json=BODY)
    return client


def test_a_signed_lookup_is_answered(make_app, clean_database):
    client = signed_lookup_client(make_app)
    good = lookup_signature("embed-secret", 42)
    assert client.get(f"{LOOKUP}42?sig={good}").json["data"]["company_id"] == "chatwoot_42"
    assert client.get(f"{LOOKUP}42?sig={good.upper()}").status_code == 200


def test_a_wrong_lookup_signature_is_403(make_app, clean_database):
    client = signed_lookup_client(make_app)
    good = lookup_signature("embed-secret", 42)
    for bad in ("", "0" * 64, lookup_signature("embed-secret", 43), lookup_signature("other", 42), good[:-1], good + "0", "zz"):
        response = client.get(f"{LOOKUP}42?sig={bad}")
        assert response.status_code == 403
        assert response.json == {"success": False, "error": "Invalid lookup signature", "code": "invalid_signature"}


def test_an_unsigned_lookup_is_403_when_signatures_are_required(make_app, clean_database):
    assert signed_lookup_client(make_app).get(f"{LOOKUP}42").status_code == 403


def test_an_invalid_account_id_is_400_even_with_a_signature(make_app, clean_database):
    client = signed_lookup_client(make_app)
    assert client.get(f"{LOOKUP}abc?sig={lookup_signature('embed-secret', 42)}").status_code == 400


def test_lookup_signature_verifier_never_raises():
    for signature in (None, "", "é" * 64, "\x00" * 64, "a" * 10_000):
        assert lookup_signature_valid("secret", 1, signature) is False


def test_embed_url_command_prints_the_signed_url(make_app, clean_database):
    app = make_app(CHATWOOT_EMBED_SECRET="embed-secret", PUBLIC_URL="https://backend.example/")
    result = run_command(app, "embed-url", "42")
    assert result.exit_code == 0
    url = f"https://backend.example/api/chatwoot/webhooks/embed?accountId=42&sig={lookup_signature('embed-secret', 42)}"
    assert result.stdout.strip() == url
    assert dashboard_tabs.opens_our_page([{"type": "frame", "url": url}], 42, "/api/chatwoot/webhooks/embed")  # the tab writer's own


def test_embed_url_command_prints_an_unsigned_url_without_the_secret(make_app, clean_database):
    assert run_command(make_app(), "embed-url", "42").stdout.strip() == "http://localhost:8000/api/chatwoot/webhooks/embed?accountId=42"


def test_embed_url_command_refuses_an_invalid_account_id(make_app, clean_database):
    assert run_command(make_app(), "embed-url", "0").exit_code != 0


def test_unsigned_lookups_stay_open_without_the_setting(client, clean_database):
    assert client.get(LOOKUP + "42").status_code == 200


@pytest.mark.parametrize(
    "name",
    ["Evil\nCorp [Chatwoot Sync] Company created successfully: chatwoot_1", "A\r\nB", "Line\u2028Separator"],
)
def test_user_text_cannot_forge_log_lines(client, clean_database, caplog, name):
    caplog.set_level(logging.INFO, logger="multibackend")
    client.post(WEBHOOK, json=BODY | {"name": name})
    client.post(WEBHOOK, json={"id": 5, "name": "x", "event": name})
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message and "\u2028" not in message


def test_errors_never_carry_exception_text_or_sql(make_app, clean_database):
    client = make_app(DATABASE_URL=f"postgresql://postgres:pw@127.0.0.1:{free_port()}/x", REDIS_URL="").test_client()
    for response in (client.post(WEBHOOK, json=BODY), client.get(LOOKUP + "42"), client.get("/api/chatwoot/webhooks/metrics")):
        text = response.get_data(as_text=True)
        assert response.status_code == 503
        for leak in ("Traceback", "psycopg", "SELECT", "INSERT", "127.0.0.1", "pw", "OperationalError"):
            assert leak not in text


@pytest.mark.parametrize("path", [f"{LOOKUP}42?sig=", WEBHOOK + "?token=", "/api/chatwoot/webhooks/metrics?token=", "/metrics?token="])
def test_a_query_string_that_is_not_utf8_is_400_not_500(make_app, clean_database, path):
    app = make_app(CHATWOOT_EMBED_SECRET="embed-secret", CHATWOOT_WEBHOOK_SECRET="s3cret")
    base, query = path.split("?")
    method = app.test_client().post if base == WEBHOOK else app.test_client().get
    response = method(base, environ_overrides={"QUERY_STRING": query + "\xff\xfe"}, json={"id": 1, "name": "One"})
    assert (response.status_code, response.json) == (400, {"success": False, "error": "Query string is not valid UTF-8", "code": "bad_request"})
    assert count_rows(clean_database, "companies") == 0


@pytest.mark.parametrize(("remote", "original", "key"), [
    ("203.0.113.9", "10.0.0.1", "203.0.113.9"),
    ("not-an-address", "10.0.0.1", "10.0.0.1"),
    ("x" * 4096, "10.0.0.1", "10.0.0.1"),
    ("2001:db8:1:2:aaaa::1", None, "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::7", None, "2001:db8:1:2::/64"),
    ("", None, "unknown"),
])
def test_the_limit_counts_an_ip_address_never_a_spoofed_string_and_ipv6_by_its_64(remote, original, key):
    from multibackend.routes.auth import address_of

    environ = {"REMOTE_ADDR": remote}
    if original:
        environ["werkzeug.proxy_fix.orig"] = {"REMOTE_ADDR": original}
    assert address_of(environ) == key


def test_spoofed_forwarded_entries_that_are_not_addresses_count_against_the_peer(make_app):
    client = make_app(RATELIMIT_LOOKUP="3 per minute", TRUSTED_PROXY_COUNT=1).test_client()
    statuses = [client.get("/api/chatwoot/webhooks/company/42", headers={"X-Forwarded-For": f"spoof-{n}-" + "x" * 500}).status_code
                for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
