"""The verifier on its own: token, Basic password, HMAC signature; every malformed input is a plain False."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from multibackend.services.webhook_auth import DeliveryCredentials, is_authentic, sign, verify_signature
from tests.helpers import payload

SECRET = "test-webhook-secret-123"
NOW = 1767225600
BODY = b'{"id":42,"name":"Acme Corp","event":"account_created","users":[]}'


def signed(body: bytes = BODY, secret: str = SECRET, timestamp: int | str = NOW) -> dict[str, str]:
    return {"signature": sign(secret, timestamp, body), "timestamp": str(timestamp)}


def test_known_answer_vector_from_chatwoot_facts():
    body = payload("contact_created.signed.json")
    expected = "sha256=fda1e8cecbe0875d30942f659078a7215e54d6dc63ac5a60acd8f92b7782fb8f"
    assert sign(SECRET, 1767225600, body) == expected
    assert verify_signature([SECRET], expected, "1767225600", body, NOW, 300)


def test_signature_within_tolerance_both_ways_is_accepted():
    for skew in (-300, -1, 0, 1, 300):
        headers = signed(timestamp=NOW + skew)
        assert verify_signature([SECRET], headers["signature"], headers["timestamp"], BODY, NOW, 300)


@pytest.mark.parametrize("skew", [-301, 301, -86400, 86400 * 365])
def test_stale_and_future_timestamps_are_refused(skew):
    headers = signed(timestamp=NOW + skew)
    assert not verify_signature([SECRET], headers["signature"], headers["timestamp"], BODY, NOW, 300)


def test_tolerance_is_configurable():
    headers = signed(timestamp=NOW - 500)
    assert not verify_signature([SECRET], headers["signature"], headers["timestamp"], BODY, NOW, 300)
    assert verify_signature([SECRET], headers["signature"], headers["timestamp"], BODY, NOW, 600)


def test_body_only_hmac_is_refused():
    body_only = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert not verify_signature([SECRET], body_only, str(NOW), BODY, NOW, 300)


def test_signature_of_another_body_is_refused():
    headers = signed(body=b'{"id":43}')
    assert not verify_signature([SECRET], headers["signature"], headers["timestamp"], BODY, NOW, 300)


def test_right_signature_with_the_wrong_secret_is_refused():
    headers = signed(secret="another-secret")
    assert not verify_signature([SECRET], headers["signature"], headers["timestamp"], BODY, NOW, 300)


def test_any_secret_of_a_rotation_list_is_accepted():
    for secret in ("old-secret", "new-secret"):
        headers = signed(secret=secret)
        assert verify_signature(["old-secret", "new-secret"], headers["signature"], headers["timestamp"], BODY, NOW, 300)


def test_a_secret_retired_from_the_rotation_list_is_refused():
    retired = signed(secret="retired-secret")
    assert not verify_signature(["old-secret", "new-secret"], retired["signature"], retired["timestamp"], BODY, NOW, 300)


def test_uppercase_hex_is_the_same_signature():
    headers = signed()
    upper = "sha256=" + headers["signature"][len("sha256="):].upper()
    assert verify_signature([SECRET], upper, headers["timestamp"], BODY, NOW, 300)


def _malformed_signatures() -> list[str | None]:
    good = sign(SECRET, NOW, BODY)
    digest = good[len("sha256="):]
    return [
        None,
        "",
        digest,  # no sha256= prefix
        "sha1=" + digest,
        "SHA256=" + digest,
        "sha256=" + digest[:-1],  # wrong length
        "sha256=" + digest + "0",
        "sha256=" + digest[:-1] + "g",  # not hex
        "sha256=" + digest + ",",  # extra comma
        "sha256=," + digest,
        "sha256=" + digest + ",sha256=" + digest,  # several values
        "sha256=" + digest + " sha256=" + digest,
        " sha256=" + digest,  # spaces
        "sha256= " + digest,
        "sha256=" + digest + " ",
        "sha256=" + digest + "\n",
        "sha256=" + "ａ" * 64,  # non-ASCII look-alikes
    ]


@pytest.mark.parametrize("signature", _malformed_signatures())
def test_malformed_signature_headers_are_refused(signature):
    assert not verify_signature([SECRET], signature, str(NOW), BODY, NOW, 300)


@pytest.mark.parametrize("timestamp", [None, "", "abc", "1767225600.0", "-1767225600", " 1767225600", "1767225600 ", "١٧٦٧٢٢٥٦٠٠", "9" * 40])
def test_missing_or_malformed_timestamps_are_refused(timestamp):
    good = sign(SECRET, NOW, BODY)
    assert not verify_signature([SECRET], good, timestamp, BODY, NOW, 300)


def test_non_utf8_and_empty_bodies_verify_like_any_bytes():
    for body in (b"\xff\xfe\x00garbage", b""):
        headers = signed(body=body)
        assert verify_signature([SECRET], headers["signature"], headers["timestamp"], body, NOW, 300)
        assert not verify_signature([SECRET], headers["signature"], headers["timestamp"], body + b"x", NOW, 300)


def test_the_token_must_equal_a_secret():
    secrets = ["old-secret", "new-secret"]
    assert is_authentic(DeliveryCredentials(tokens=["new-secret"]), secrets, NOW, 300)
    for wrong in (["new-secre"], ["new-secret "], ["NEW-SECRET"], [""], ["new-secret", "new-secret"], []):
        assert not is_authentic(DeliveryCredentials(tokens=wrong), secrets, NOW, 300)


def test_the_basic_password_must_equal_a_secret():
    secrets = ["old-secret", "new-secret"]
    assert is_authentic(DeliveryCredentials(basic_password="old-secret"), secrets, NOW, 300)
    for wrong in (None, "", "new-secret\x00", "ñ-secret"):
        assert not is_authentic(DeliveryCredentials(basic_password=wrong), secrets, NOW, 300)


def test_no_credentials_are_refused():
    assert not is_authentic(DeliveryCredentials(), ["secret"], NOW, 300)
