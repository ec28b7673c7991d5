"""The three ways a delivery authenticates over HTTP, and everything else getting 403 with nothing written."""

from __future__ import annotations

import base64
import logging
import time

import pytest

from multibackend.services.webhook_auth import sign
from tests.helpers import WEBHOOK, count_rows, payload, tenant_data_keys

SECRETS = "old-secret,new-secret"
BODY = payload("account_created.json")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def signature_headers(secret: str, timestamp: int, body: bytes = BODY) -> dict[str, str]:
    return {"X-Chatwoot-Signature": sign(secret, timestamp, body), "X-Chatwoot-Timestamp": str(timestamp)}


@pytest.fixture
def secured_client(make_app):
    return make_app(CHATWOOT_WEBHOOK_SECRET=SECRETS).test_client()


ACCEPTED = [
    ("token", "?token=new-secret", {}),
    ("token of the older secret", "?token=old-secret", {}),
    ("basic auth, any user", "", basic("chatwoot", "new-secret")),
    ("basic auth, empty user", "", basic("", "old-secret")),
    ("signature", "", "signed:new-secret:0"),
    ("signature 295 s old", "", "signed:old-secret:-295"),
    ("signature 295 s ahead", "", "signed:new-secret:295"),
]

REFUSED = [
    ("nothing", "", {}),
    ("wrong token", "?token=wrong", {}),
    ("empty token", "?token=", {}),
    ("token twice", "?token=new-secret&token=new-secret", {}),
    ("token in another parameter", "?secret=new-secret", {}),
    ("basic auth with the secret as user", "", basic("new-secret", "x")),
    ("basic auth, wrong password", "", basic("chatwoot", "wrong")),
    ("bearer token", "", {"Authorization": "Bearer new-secret"}),
    ("signature 305 s old", "", "signed:new-secret:-305"),
    ("signature 305 s ahead", "", "signed:new-secret:305"),
    ("signature, wrong secret", "", "signed:wrong:0"),
    ("signature without timestamp", "", {"X-Chatwoot-Signature": sign("new-secret", 0, BODY)}),
]


def resolve_headers(spec, body=BODY):
    if isinstance(spec, str):
        _, secret, skew = spec.split(":")
        return signature_headers(secret, int(time.time()) + int(skew), body)
    return spec


@pytest.mark.parametrize(("case", "query", "headers"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted_credentials(secured_client, clean_database, case, query, headers):
    response = secured_client.post(WEBHOOK + query, data=BODY, content_type="application/json", headers=resolve_headers(headers))
    assert response.status_code == 200, response.json
    assert response.json["data"]["company_id"] == "chatwoot_42"


@pytest.mark.parametrize(("case", "query", "headers"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_credentials_write_nothing(secured_client, clean_database, redis_client, case, query, headers):
    response = secured_client.post(WEBHOOK + query, data=BODY, content_type="application/json", headers=resolve_headers(headers))
    assert response.status_code == 403
    assert response.json == {"success": False, "error": "Invalid webhook signature", "code": "invalid_signature"}
    assert count_rows(clean_database, "companies") == 0
    assert count_rows(clean_database, "chatwoot_sync_events") == 0
    assert tenant_data_keys(redis_client) == []


def test_body_only_hmac_is_refused_over_http(secured_client, clean_database):
    import hashlib
    import hmac

    headers = {
        "X-Chatwoot-Signature": "sha256=" + hmac.new(b"new-secret", BODY, hashlib.sha256).hexdigest(),
        "X-Chatwoot-Timestamp": str(int(time.time())),
    }
    assert secured_client.post(WEBHOOK, data=BODY, content_type="application/json", headers=headers).status_code == 403


def test_signature_of_a_modified_body_is_refused(secured_client, clean_database):
    headers = signature_headers("new-secret", int(time.time()))
    tampered = BODY.replace(b"Acme Corp", b"Evil Corp")
    assert secured_client.post(WEBHOOK, data=tampered, content_type="application/json", headers=headers).status_code == 403


def test_authentication_comes_before_parsing(secured_client, clean_database):
    response = secured_client.post(WEBHOOK, data=b"{not json", content_type="application/json")
    assert response.status_code == 403


def test_signature_tolerance_is_configurable(make_app, clean_database):
    client = make_app(CHATWOOT_WEBHOOK_SECRET="s", CHATWOOT_SIGNATURE_TOLERANCE_SECONDS=10).test_client()
    stale = signature_headers("s", int(time.time()) - 60)
    assert client.post(WEBHOOK, data=BODY, content_type="application/json", headers=stale).status_code == 403
    fresh = signature_headers("s", int(time.time()) - 5)
    assert client.post(WEBHOOK, data=BODY, content_type="application/json", headers=fresh).status_code == 200


def test_unauthenticated_deliveries_are_accepted_without_a_secret(client, clean_database):
    assert client.post(WEBHOOK, data=BODY, content_type="application/json").status_code == 200


def test_missing_secret_is_warned_at_start_up(make_app, caplog):
    caplog.set_level(logging.WARNING, logger="multibackend")
    make_app(CHATWOOT_WEBHOOK_SECRET="")
    assert any("CHATWOOT_WEBHOOK_SECRET is not set" in record.getMessage() for record in caplog.records)


def test_a_set_secret_is_not_warned_about(make_app, caplog):
    caplog.set_level(logging.WARNING, logger="multibackend")
    make_app(CHATWOOT_WEBHOOK_SECRET="set")
    assert not any("CHATWOOT_WEBHOOK_SECRET" in record.getMessage() for record in caplog.records)


def test_secret_never_reaches_a_log_line(secured_client, clean_database, caplog):
    caplog.set_level(logging.DEBUG)
    secured_client.post(WEBHOOK + "?token=new-secret", data=BODY, content_type="application/json")
    secured_client.post(WEBHOOK + "?token=old-secret-guess", data=BODY, content_type="application/json")
    secured_client.post(WEBHOOK, data=BODY, content_type="application/json", headers=basic("u", "new-secret"))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Account created: 42" in logged
    assert "new-secret" not in logged and "old-secret" not in logged


def test_rejections_are_counted(secured_client, clean_database):
    for _ in range(3):
        secured_client.post(WEBHOOK + "?token=nope", data=BODY, content_type="application/json")
    metrics = secured_client.get("/api/chatwoot/webhooks/metrics?token=new-secret").json["data"]
    assert metrics["rejected_count"] == 3
    assert metrics["total_syncs"] == 0


METRICS = "/api/chatwoot/webhooks/metrics"


def test_metrics_need_the_secret_when_one_is_set(secured_client, clean_database):
    refused = secured_client.get(METRICS)
    assert refused.status_code == 401
    assert refused.json == {"success": False, "error": "Authentication required", "code": "unauthorized"}
    assert refused.headers["WWW-Authenticate"].startswith("Basic ")


def test_metrics_open_with_the_secret_as_basic_password_or_token(secured_client, clean_database):
    assert secured_client.get(METRICS, headers=basic("ops", "old-secret")).status_code == 200
    assert secured_client.get(METRICS + "?token=new-secret").status_code == 200


@pytest.mark.parametrize("path", [METRICS, "/api/chatwoot/webhooks/dashboard/data", "/metrics"])
def test_operator_endpoints_share_one_rule(make_app, clean_database, path):
    """The admin token opens every metrics endpoint; a Chatwoot signature (good for deliveries) opens none."""
    client = make_app(CHATWOOT_WEBHOOK_SECRET=SECRETS, CHATWOOT_ADMIN_TOKEN="admin-token").test_client()
    assert client.get(f"{path}?token=admin-token").status_code == 200
    assert client.get(path, headers=basic("ops", "admin-token")).status_code == 200
    signed = client.get(path, headers=signature_headers("new-secret", int(time.time()), b""))
    assert signed.status_code == 401 and signed.json["code"] == "unauthorized"
    assert client.get(f"{path}?token=wrong").status_code == 401
