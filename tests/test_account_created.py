"""POST account-created: real Chatwoot payloads make exactly one company; anything else gets its documented refusal."""

from __future__ import annotations

import json
import logging

import psycopg
import pytest

from tests.helpers import FIXTURES, SHARED_PAYLOADS, WEBHOOK, count_rows, payload, tenant_data_keys


def post(client, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    kwargs.setdefault("content_type", "application/json")
    return client.post(WEBHOOK, data=data, **kwargs)


def company_rows(database_url):
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index, provisioning_status"
            " FROM companies ORDER BY id"
        ).fetchall()


def test_real_chatwoot_payload_creates_the_company(client, clean_database, redis_client):
    response = post(client, payload("account_created.json"))
    assert response.status_code == 200
    assert response.json == {
        "success": True,
        "data": {
            "company_id": "chatwoot_42",
            "company_name": "Acme Corp",
            "redis_prefix": "chatwoot_42:",
            "vectorstore_index": "chatwoot_42_documents",
            "message": "Company created and provisioned",
            "created": True,
            "provisioning_status": "ready",
            "redis": "ready",
        },
    }
    assert company_rows(clean_database) == [
        ("chatwoot_42", "Acme Corp", "42", "chatwoot_42:", "chatwoot_42_documents", "ready")
    ]
    assert redis_client.hgetall("chatwoot_42:tenant")["company_name"] == "Acme Corp"


def test_ruby_escapes_are_decoded_and_stored(client, clean_database):
    response = post(client, payload("account_created.escaped.json"))
    assert response.status_code == 200
    assert response.json["data"]["company_name"] == "Café & Co <Ltda>"
    assert company_rows(clean_database)[0][1] == "Café & Co <Ltda>"


def test_platform_api_account_without_users(client, clean_database):
    response = post(client, payload("account_created.platform_api.json"))
    assert response.status_code == 200
    assert response.json["data"]["company_id"] == "chatwoot_43"


def test_missing_content_type_is_read_as_json(client, clean_database):
    response = client.post(WEBHOOK, data=payload("account_created.json"))
    assert response.status_code == 200
    assert response.json["data"]["created"] is True


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.chatwoot+json"])
def test_json_content_types_are_accepted(client, clean_database, content_type):
    assert post(client, payload("account_created.json"), content_type=content_type).status_code == 200


def test_repeats_are_idempotent(client, clean_database):
    first = post(client, payload("account_created.json")).json["data"]
    repeats = [post(client, payload("account_created.json")).json["data"] for _ in range(3)]
    assert first["created"] is True
    assert [repeat["created"] for repeat in repeats] == [False, False, False]
    assert {repeat["company_id"] for repeat in repeats} == {"chatwoot_42"}
    assert repeats[0]["message"] == "Company already exists"
    assert count_rows(clean_database, "companies") == 1


def test_a_repeat_under_another_name_leaves_the_namespace_as_the_company_is(client, clean_database, redis_client):
    post(client, {"id": 42, "name": "Acme Corp"})
    before = redis_client.hgetall("chatwoot_42:tenant")
    assert post(client, {"id": 42, "name": "Renamed Meanwhile"}).json["data"]["company_name"] == "Acme Corp"
    assert redis_client.hgetall("chatwoot_42:tenant") == before  # created_at and name: the company's, not the repeat's


def test_unknown_fields_are_ignored(client, clean_database):
    body = json.loads(payload("account_created.json")) | {"locale": "es", "feature_flags": 7, "nested": {"a": [1]}}
    body["users"][0]["role"] = "administrator"
    assert post(client, body).status_code == 200


def test_event_may_be_missing(client, clean_database):
    assert post(client, {"id": 7, "name": "No Event Inc"}).json["data"]["company_id"] == "chatwoot_7"


@pytest.mark.parametrize("event", ["contact_created", "conversation_created", "message_created", "account_updated", ""])
def test_other_events_are_ignored_and_write_nothing(client, clean_database, event):
    body = {"id": 5, "name": "Ann", "event": event, "account": {"id": 42, "name": "Acme Corp"}}
    response = post(client, body)
    assert response.status_code == 200
    assert response.json["data"]["ignored"] is True
    assert count_rows(clean_database, "companies") == 0
    assert count_rows(clean_database, "chatwoot_sync_events") == 0


def test_signed_account_webhook_sent_here_by_mistake_is_ignored(client, clean_database):
    response = post(client, payload("contact_created.signed.json"))
    assert response.json["data"]["ignored"] is True
    assert count_rows(clean_database, "companies") == 0


NAME_CASES = [
    ("  Acme Corp  ", "Acme Corp"),
    ("Acme\x00Corp", "AcmeCorp"),
    ("Acme\nCorp\r\t", "AcmeCorp"),
    ("\x1b[31mRed\x1b[0m", "[31mRed[0m"),
    ("x" * 300, "x" * 255),
    (" " + "y" * 254 + "   z", "y" * 254),
    ("株式会社テスト 🚀", "株式会社テスト 🚀"),
    ("שלום עולם", "שלום עולם"),
    ("O'Brien & Sons <b>", "O'Brien & Sons <b>"),
    ("Robert'); DROP TABLE companies;--", "Robert'); DROP TABLE companies;--"),
]


@pytest.mark.parametrize(("sent", "stored"), NAME_CASES)
def test_odd_names_are_normalised_and_stored_never_refused(client, clean_database, sent, stored):
    response = post(client, {"id": 99, "name": sent, "event": "account_created", "users": []})
    assert response.status_code == 200
    assert response.json["data"]["company_name"] == stored
    assert company_rows(clean_database)[0][1] == stored


BIGINT_MAX = 2**63 - 1

BAD_BODIES = [
    ("empty body", b"", 400, "invalid_json"),
    ("not json", b"{id: 42}", 400, "invalid_json"),
    ("truncated json", b'{"id": 42, "name": "Acme"', 400, "invalid_json"),
    ("NaN", b'{"id": NaN, "name": "Acme"}', 400, "invalid_json"),
    ("Infinity", b'{"id": Infinity, "name": "Acme"}', 400, "invalid_json"),
    ("not utf-8", b'{"id": 42, "name": "\xff\xfe"}', 400, "invalid_json"),
    ("deep nesting", b'{"id": 42, "name": "A", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, "invalid_json"),
    ("huge number", b'{"id": ' + b"9" * 5000 + b', "name": "Acme"}', 400, "invalid_json"),
    ("array", b'[{"id": 42, "name": "Acme"}]', 422, "invalid_payload"),
    ("string", b'"hello"', 422, "invalid_payload"),
    ("null", b"null", 422, "invalid_payload"),
    ("number", b"42", 422, "invalid_payload"),
    ("missing id", {"name": "Acme"}, 422, "invalid_payload"),
    ("missing name", {"id": 42}, 422, "invalid_payload"),
    ("id string", {"id": "42", "name": "Acme"}, 422, "invalid_payload"),
    ("id float", {"id": 42.0, "name": "Acme"}, 422, "invalid_payload"),
    ("id fraction", {"id": 42.5, "name": "Acme"}, 422, "invalid_payload"),
    ("id true", {"id": True, "name": "Acme"}, 422, "invalid_payload"),
    ("id null", {"id": None, "name": "Acme"}, 422, "invalid_payload"),
    ("id zero", {"id": 0, "name": "Acme"}, 422, "invalid_payload"),
    ("id negative", {"id": -1, "name": "Acme"}, 422, "invalid_payload"),
    ("id past bigint", {"id": BIGINT_MAX + 1, "name": "Acme"}, 422, "invalid_payload"),
    ("id object", {"id": {"id": 42}, "name": "Acme"}, 422, "invalid_payload"),
    ("id list", {"id": [42], "name": "Acme"}, 422, "invalid_payload"),
    ("name number", {"id": 42, "name": 42}, 422, "invalid_payload"),
    ("name null", {"id": 42, "name": None}, 422, "invalid_payload"),
    ("name list", {"id": 42, "name": ["Acme"]}, 422, "invalid_payload"),
    ("name object", {"id": 42, "name": {"first": "Acme"}}, 422, "invalid_payload"),
    ("name empty", {"id": 42, "name": ""}, 422, "invalid_payload"),
    ("name whitespace", {"id": 42, "name": " \t\n "}, 422, "invalid_payload"),
    ("name only controls", {"id": 42, "name": "\x00\x01\x7f"}, 422, "invalid_payload"),
    ("name lone surrogate", b'{"id": 42, "name": "Acme \\ud800"}', 422, "invalid_payload"),
    ("event number", {"id": 42, "name": "Acme", "event": 1}, 422, "invalid_payload"),
    ("event null", {"id": 42, "name": "Acme", "event": None}, 422, "invalid_payload"),
    ("users string", {"id": 42, "name": "Acme", "users": "jane"}, 422, "invalid_payload"),
    ("users objects of wrong type", {"id": 42, "name": "Acme", "users": [1, 2]}, 422, "invalid_payload"),
]


@pytest.mark.parametrize(("case", "body", "status", "code"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_bad_bodies_get_their_code_and_write_nothing(client, clean_database, redis_client, case, body, status, code):
    response = post(client, body)
    assert response.status_code == status
    assert response.json["success"] is False
    assert response.json["code"] == code
    assert isinstance(response.json["error"], str) and "Traceback" not in response.get_data(as_text=True)
    if code == "invalid_payload":
        assert response.json["details"]
    assert count_rows(clean_database, "companies") == 0
    assert count_rows(clean_database, "chatwoot_sync_events") == 0
    assert tenant_data_keys(redis_client) == []


def test_field_errors_name_the_fields(client, clean_database):
    details = post(client, {"id": "x", "name": ""}).json["details"]
    assert set(details) == {"id", "name"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"])
def test_non_json_content_types_get_415(client, clean_database, content_type):
    response = client.post(WEBHOOK, data=payload("account_created.json"), content_type=content_type)
    assert response.status_code == 415
    assert response.json["code"] == "unsupported_media_type"
    assert count_rows(clean_database, "companies") == 0


def test_body_over_the_limit_gets_413(make_app, clean_database):
    client = make_app(CHATWOOT_WEBHOOK_MAX_BODY_BYTES=1000).test_client()
    body = json.dumps({"id": 42, "name": "Acme", "padding": "x" * 2000})
    response = post(client, body)
    assert response.status_code == 413
    assert response.json["code"] == "payload_too_large"
    assert count_rows(clean_database, "companies") == 0
    assert post(client, payload("account_created.json")).status_code == 200


def test_default_body_limit_is_one_mebibyte(client, clean_database):
    just_over = json.dumps({"id": 42, "name": "Acme", "padding": "x" * (1024 * 1024)})
    assert post(client, just_over).status_code == 413
    just_under = json.dumps({"id": 42, "name": "Acme", "padding": "x" * (1024 * 1024 - 100)})
    assert post(client, just_under).status_code == 200


def test_body_limit_is_checked_before_authentication(make_app, clean_database):
    client = make_app(CHATWOOT_WEBHOOK_SECRET="s3cret", CHATWOOT_WEBHOOK_MAX_BODY_BYTES=100).test_client()
    assert post(client, {"id": 42, "name": "x" * 200}).status_code == 413


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405_json(client, method):
    response = client.open(WEBHOOK, method=method)
    assert response.status_code == 405
    assert response.json == {"success": False, "error": "Method not allowed", "code": "method_not_allowed"}
    assert "POST" in response.headers["Allow"]


def test_log_lines_operators_grep_for(client, clean_database, caplog):
    caplog.set_level(logging.INFO, logger="multibackend")
    post(client, payload("account_created.json"))
    post(client, payload("account_created.json"))
    messages = [record.getMessage() for record in caplog.records]
    assert "[Chatwoot Webhook] Account created: 42 - Acme Corp" in messages
    assert "[Chatwoot Sync] Creating company: chatwoot_42" in messages
    assert messages.count("[Chatwoot Sync] Company created successfully: chatwoot_42") == 1
    assert "[Chatwoot Sync] Company already exists: chatwoot_42" in messages


def test_rejected_deliveries_are_counted_not_synced(client, clean_database, redis_client):
    from multibackend.services.sync_metrics import REJECTIONS_KEY

    post(client, b"{nope")
    post(client, {"id": "x", "name": "Acme"})
    counts = {code: int(count) for code, count in redis_client.hgetall(REJECTIONS_KEY).items()}
    assert counts == {"invalid_json": 1, "invalid_payload": 1}  # in Redis: a flood of refusals writes no row
    assert count_rows(clean_database, "chatwoot_webhook_rejections") == 0
    assert count_rows(clean_database, "chatwoot_sync_events") == 0


def test_fixture_payloads_are_the_shared_chatwoot_samples():
    if not SHARED_PAYLOADS.is_dir():
        pytest.skip("../shared/chatwoot/payloads is not beside this checkout")
    for sample in SHARED_PAYLOADS.iterdir():
        assert (FIXTURES / sample.name).read_bytes() == sample.read_bytes(), sample.name


def _snapshot(status: str):
    from multibackend.models import CompanySnapshot

    return CompanySnapshot("chatwoot_42", "Acme <Corp>", "42", "chatwoot_42:", "chatwoot_42_documents", status, "active", "2026-11-28T10:00:00Z")


def _outcomes():
    from multibackend.services.deliveries import Ignored, Provisioned, Queued
    from multibackend.services.tenant_naming import tenant_names
    from multibackend.services.tenant_provisioning import ProvisioningResult

    return {
        "created": Provisioned(ProvisioningResult(_snapshot("ready"), True, "ready")),
        "existing": Provisioned(ProvisioningResult(_snapshot("ready"), False, "unchanged")),
        "pending": Provisioned(ProvisioningResult(_snapshot("pending"), True, "failed")),
        "without redis": Provisioned(ProvisioningResult(_snapshot("ready"), True, "skipped")),
        "queued": Queued(42, "Acme <Corp>", tenant_names(42)),
        "ignored": Ignored("conversation_created"),
    }


@pytest.mark.parametrize("outcome", ["created", "existing", "pending", "without redis", "queued", "ignored"])
def test_the_webhook_answer_is_what_its_documented_schema_dumps(outcome):
    from multibackend.schemas import webhook_answer, webhook_response_schema

    delivery = _outcomes()[outcome]
    answer = webhook_answer(delivery)
    assert answer == webhook_response_schema.dump({"success": True, "data": delivery})
    assert webhook_response_schema.validate(answer) == {}
    assert answer["data"]["message"]
