"""Authentication of Chatwoot deliveries: URL token, HTTP Basic password, or a signed body. Never raises."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

SIGNATURE_PATTERN = re.compile(r"\Asha256=([0-9a-fA-F]{64})\Z")
TIMESTAMP_PATTERN = re.compile(r"\A[0-9]{1,15}\Z")


@dataclass(frozen=True)
class DeliveryCredentials:
    """Everything in a request that can prove it came from our Chatwoot."""

    tokens: Sequence[str] = ()
    basic_password: str | None = None
    signature: str | None = None
    timestamp: str | None = None
    body: bytes = b""


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """Chatwoot's X-Chatwoot-Signature value for this timestamp and raw body."""
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def is_authentic(credentials: DeliveryCredentials, secrets: Sequence[str], now: float, tolerance_seconds: int) -> bool:
    """True when any one method proves knowledge of any configured secret; constant-time comparisons throughout."""
    return (
        _token_matches(credentials.tokens, secrets)
        or _secret_matches(credentials.basic_password, secrets)
        or verify_signature(
            secrets, credentials.signature, credentials.timestamp, credentials.body, now, tolerance_seconds
        )
    )


def verify_signature(
    secrets: Sequence[str],
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: float,
    tolerance_seconds: int,
) -> bool:
    """True only for `sha256=<hex HMAC(secret, "<timestamp>.<body>")>` with a timestamp within tolerance of now."""
    if not isinstance(signature, str) or not isinstance(timestamp, str) or not isinstance(body, bytes):
        return False
    signature_match = SIGNATURE_PATTERN.match(signature)
    if signature_match is None or TIMESTAMP_PATTERN.match(timestamp) is None:
        return False
    if abs(now - int(timestamp)) > tolerance_seconds:
        return False
    received = signature_match.group(1).lower().encode("ascii")
    matches = [
        hmac.compare_digest(received, sign(secret, timestamp, body)[len("sha256="):].encode("ascii"))
        for secret in secrets
    ]
    return any(matches)


def _token_matches(tokens: Sequence[str], secrets: Sequence[str]) -> bool:
    return len(tokens) == 1 and _secret_matches(tokens[0], secrets)


def _secret_matches(candidate: str | None, secrets: Sequence[str]) -> bool:
    if not candidate:
        return False
    candidate_bytes = candidate.encode("utf-8", "surrogatepass")
    matches = [hmac.compare_digest(candidate_bytes, secret.encode("utf-8")) for secret in secrets]
    return any(matches)


def lookup_signature(secret: str, account_id: int) -> str:
    """The `sig` of a signed company lookup: hex HMAC-SHA256(secret, "<account id>")."""
    return hmac.new(secret.encode("utf-8"), str(account_id).encode("ascii"), hashlib.sha256).hexdigest()


def lookup_signature_valid(secret: str, account_id: int, signature: str | None) -> bool:
    """Constant-time check of a lookup's `sig`; anything malformed is simply invalid."""
    if not isinstance(signature, str) or SIGNATURE_PATTERN.match("sha256=" + signature) is None:
        return False
    return hmac.compare_digest(signature.lower().encode("ascii"), lookup_signature(secret, account_id).encode("ascii"))
