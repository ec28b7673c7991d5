"""Fuzzing (Schemathesis) and properties (Hypothesis): every answer is documented, the schema and verifiers accept exactly the valid."""

from __future__ import annotations

import json
import string
import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from multibackend.schemas import AccountCreatedSchema
from multibackend.services.webhook_auth import DeliveryCredentials, is_authentic, sign, verify_signature
from tests.helpers import ROOT, WEBHOOK, count_rows

SECRET = "fuzz-secret"
STATS = Counter()
FUZZ_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "fuzz-stats.json").write_text(json.dumps(STATS, indent=2, sort_keys=True))
    print(f"\nfuzz/property examples: {dict(STATS)}")


@pytest.fixture
def fuzz_app(make_app):
    return make_app(
        CHATWOOT_WEBHOOK_SECRET=SECRET, RATELIMIT_LOOKUP="1000000 per minute", RATELIMIT_AUTH_FAILURES="1000000 per minute"
    )


@pytest.fixture
def api_schema(fuzz_app):
    return schemathesis.openapi.from_wsgi("/api/chatwoot/webhooks/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_authenticated(case):
    """Correctly authenticated requests: never a 5xx, every answer as documented."""
    case.query = {**(case.query or {}), "token": SECRET}
    response = case.call_and_validate()
    STATS["schemathesis_authenticated"] += 1
    assert response.status_code < 500 or response.status_code == 503


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_unauthenticated(case):
    """Requests without credentials: refused where a secret is required, never a 5xx, always as documented."""
    response = case.call_and_validate()
    STATS["schemathesis_unauthenticated"] += 1
    assert response.status_code < 500


def test_the_description_covers_every_route(fuzz_app):
    documented = fuzz_app.test_client().get("/api/chatwoot/webhooks/openapi.json").json["paths"]
    routes = {rule.rule for rule in fuzz_app.url_map.iter_rules() if not rule.endpoint.endswith("static")}
    as_openapi = {rule.replace("<account_id>", "{account_id}") for rule in routes}
    assert as_openapi == set(documented)


def test_the_description_lists_every_answer_of_the_webhook(fuzz_app):
    documented = fuzz_app.test_client().get("/api/chatwoot/webhooks/openapi.json").json["paths"]
    error_codes = documented["/api/chatwoot/webhooks/account-created"]["post"]["responses"]
    assert {"200", "202", "400", "403", "413", "415", "422", "429", "503"} <= set(error_codes)


# --- Hypothesis: the payload schema -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
payload_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.integers(min_value=-(2**70), max_value=2**70),
        "name": json_values | st.text(alphabet=st.characters(codec="utf-8"), max_size=400),
        "event": json_values | st.sampled_from(["account_created", "contact_created", ""]),
        "users": json_values,
    },
)


@given(json_values | payload_like)
@settings(max_examples=2000, deadline=None, database=None)
def test_payload_schema_accepts_exactly_the_valid_payloads(payload):
    STATS["hypothesis_payload_schema"] += 1
    try:
        account = AccountCreatedSchema().load(payload)
    except ValidationError:
        assert not _valid(payload)
        return
    assert _valid(payload)
    assert 1 <= account["id"] <= 2**63 - 1
    assert 0 < len(account["name"]) <= 255 and account["name"] == account["name"].strip()
    assert not any(ord(char) < 32 or 127 <= ord(char) < 160 for char in account["name"])


def _valid(payload) -> bool:
    if not isinstance(payload, dict):
        return False
    account_id, name = payload.get("id"), payload.get("name")
    users, event = payload.get("users", []), payload.get("event", "account_created")
    return (
        type(account_id) is int and 1 <= account_id <= 2**63 - 1
        and isinstance(name, str) and any(not char.isspace() and not (ord(char) < 32 or 127 <= ord(char) < 160) for char in name)
        and isinstance(event, str)
        and isinstance(users, list) and all(_valid_user(user) for user in users)
    )


def _valid_user(user) -> bool:
    return isinstance(user, dict) and (user.get("id") is None or type(user.get("id")) is int) and all(
        user.get(key) is None or isinstance(user.get(key), str) for key in ("name", "email", "type")
    )


# --- Hypothesis: the signature verifier -------------------------------------------------------------------

header_text = st.text(alphabet=st.characters(codec="latin-1"), max_size=80)
secrets_lists = st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=3)


@given(secrets_lists, header_text | st.none(), header_text | st.none(), st.binary(max_size=300), st.integers(0, 2**40))
@settings(max_examples=3000, deadline=None, database=None)
def test_verifier_never_raises_and_refuses_arbitrary_headers(secrets, signature, timestamp, body, now):
    STATS["hypothesis_verifier_arbitrary"] += 1
    accepted = verify_signature(secrets, signature, timestamp, body, now, 300)
    assert accepted is False or any(sign(secret, timestamp, body) == signature.lower() for secret in secrets)


@given(secrets_lists, st.binary(max_size=500), st.integers(0, 2**34), st.integers(-300, 300), st.data())
@settings(max_examples=2000, deadline=None, database=None)
def test_verifier_accepts_exactly_the_valid_signatures(secrets, body, timestamp, skew, data):
    STATS["hypothesis_verifier_valid"] += 1
    secret = data.draw(st.sampled_from(secrets))
    signature = sign(secret, timestamp, body)
    assert verify_signature(secrets, signature, str(timestamp), body, timestamp + skew, 300)
    position = data.draw(st.integers(len("sha256="), len(signature) - 1))
    flipped = signature[:position] + ("0" if signature[position] != "0" else "1") + signature[position + 1 :]
    assert not verify_signature(secrets, flipped, str(timestamp), body, timestamp + skew, 300)
    assert not verify_signature(secrets, signature, str(timestamp), body + b"x", timestamp + skew, 300)
    assert not verify_signature(secrets, signature, str(timestamp), body, timestamp + 301 + abs(skew), 300)
    assert not verify_signature([s + "x" for s in secrets], signature, str(timestamp), body, timestamp, 300)


@given(st.lists(st.text(max_size=20), max_size=3), st.text(max_size=20) | st.none(), secrets_lists)
@settings(max_examples=1000, deadline=None, database=None)
def test_token_and_password_checks_never_raise(tokens, password, secrets):
    STATS["hypothesis_tokens"] += 1
    result = is_authentic(DeliveryCredentials(tokens=tokens, basic_password=password), secrets, time.time(), 300)
    assert result == ((len(tokens) == 1 and tokens[0] in secrets) or (bool(password) and password in secrets))


# --- Thousands of random bodies over HTTP: documented 4xx, nothing written, still healthy -------------------

DOCUMENTED_REFUSALS = {400: "invalid_json", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_payload"}


@given(
    st.binary(max_size=400)
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.text(alphabet=string.printable, max_size=200).map(str.encode),
    st.sampled_from(["application/json", "application/json; charset=utf-8", None, "text/plain", "application/x-www-form-urlencoded"]),
)
@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_random_bodies_get_documented_refusals(fuzz_client_state, body, content_type):
    client, database_url = fuzz_client_state
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(f"{WEBHOOK}?token={SECRET}", data=body, headers=headers)
    STATS["http_random_bodies"] += 1
    assert response.status_code in (200, *DOCUMENTED_REFUSALS), (response.status_code, body[:100])
    if response.status_code != 200:
        assert response.json["code"] == DOCUMENTED_REFUSALS[response.status_code]
        assert response.json["success"] is False


@pytest.fixture(scope="module")
def fuzz_client_state(request):
    """One app for thousands of examples (function fixtures do not mix with @given)."""
    make_app = request.getfixturevalue("module_app_factory")
    app, database_url = make_app
    yield app.test_client(), database_url
    assert app.test_client().get("/readyz").status_code == 200
    assert count_rows(database_url, "companies") >= 0


@pytest.fixture(scope="module")
def module_app_factory(database_url, redis_url):
    from multibackend import create_app
    from multibackend.extensions import db

    app = create_app({
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "CHATWOOT_WEBHOOK_SECRET": SECRET,
        "RATELIMIT_AUTH_FAILURES": "1000000 per minute",
    })
    yield app, database_url
    with app.app_context():
        db.engine.dispose()
