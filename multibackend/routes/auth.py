"""Who may call what: Chatwoot deliveries (webhook secret: token, Basic or signature) and operators, for the
metrics, the dashboard and Prometheus (the same secret or CHATWOOT_ADMIN_TOKEN: token or Basic, never a signature)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache, wraps
from typing import Any, Callable, NoReturn

from flask import Flask, current_app, request
from limits import parse_many

from multibackend.errors import ApiError
from multibackend.extensions import LIMITS_EXTENSION, window_limits
from multibackend.routes.request_bodies import limited_body
from multibackend.schemas import BIGINT_MAX
from multibackend.services import webhook_auth


def require_chatwoot_auth(view: Callable[..., Any]) -> Callable[..., Any]:
    """Refuse with 403 invalid_signature unless the request proves a configured secret (when any is set)."""

    @wraps(view)
    def authenticated_view(*args: Any, **kwargs: Any) -> Any:
        secrets = current_app.config["CHATWOOT_WEBHOOK_SECRETS"]
        if secrets and not proves_a_secret(secrets):
            refuse_failed_authentication(403, "invalid_signature", "Invalid webhook signature")
        return view(*args, **kwargs)

    return authenticated_view


def proves_a_secret(secrets: Sequence[str]) -> bool:
    """The token or Basic password, from the URL and headers alone; only a request that carries a Chatwoot
    signature has its body read (the signature covers it), so an anonymous body is refused unread."""
    tolerance, now = current_app.config["CHATWOOT_SIGNATURE_TOLERANCE_SECONDS"], time.time()
    without_body = replace(credentials_of_request(b""), signature=None)
    if webhook_auth.is_authentic(without_body, secrets, now, tolerance):
        return True
    if request.headers.get("X-Chatwoot-Signature") is None:
        return False
    return webhook_auth.is_authentic(credentials_of_request(limited_body()), secrets, now, tolerance)


def credentials_of_request(body: bytes) -> webhook_auth.DeliveryCredentials:
    """The token, Basic password and signature headers this request carries."""
    authorization = request.authorization
    return webhook_auth.DeliveryCredentials(
        tokens=query_values("token"),
        basic_password=authorization.password if authorization and authorization.type == "basic" else None,
        signature=request.headers.get("X-Chatwoot-Signature"),
        timestamp=request.headers.get("X-Chatwoot-Timestamp"),
        body=body,
    )


def require_operator(view: Callable[..., Any]) -> Callable[..., Any]:
    """Operators only (metrics, dashboard, Prometheus): the webhook secret or CHATWOOT_ADMIN_TOKEN, by ?token= or HTTP
    Basic (browsers prompt); a Chatwoot signature does not open them. Refuses with 401 unauthorized."""

    @wraps(view)
    def operator_view(*args: Any, **kwargs: Any) -> Any:
        accepted = operator_secrets()
        if accepted and not carries_secret(accepted):
            refuse_failed_authentication(
                401, "unauthorized", "Authentication required",
                headers={"WWW-Authenticate": 'Basic realm="multibackend operators", charset="UTF-8"'},
            )
        return view(*args, **kwargs)

    return operator_view


def query_values(name: str) -> list[str]:
    """The query string's values of `name`; 400 bad_request for a query string that is not UTF-8 (werkzeug cannot
    decode it)."""
    try:
        return request.args.getlist(name)
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "Query string is not valid UTF-8") from None


def operator_secrets() -> tuple[str, ...]:
    """The secrets that open operator pages (empty: open, like everything else without a secret)."""
    config = current_app.config
    admin = (config["CHATWOOT_ADMIN_TOKEN"],) if config["CHATWOOT_ADMIN_TOKEN"] else ()
    return tuple(config["CHATWOOT_WEBHOOK_SECRETS"]) + admin


def carries_secret(secrets: tuple[str, ...]) -> bool:
    """The request's ?token= or Basic password is one of these secrets (cheap: the body is not read)."""
    unsigned = replace(credentials_of_request(b""), signature=None)
    return webhook_auth.is_authentic(unsigned, secrets, time.time(), 0)


def refuse_failed_authentication(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> NoReturn:
    """Count a failed authentication against the client address's RATELIMIT_AUTH_FAILURES (shared by every door a
    secret opens: webhook, metrics, dashboard, Prometheus, signed lookups); refuse with 429 once over it, else
    with the given answer. Requests with valid credentials are never counted, so they are never blocked."""
    limit = parse_limit(current_app.config["RATELIMIT_AUTH_FAILURES"])
    retry_after = window_limits().count_now("auth", client_address(), limit)
    if retry_after is not None:
        raise too_many_requests(retry_after)
    raise ApiError(status, code, message, headers=headers)


def admit_lookup() -> None:
    """RATELIMIT_LOOKUP per client address for unsigned lookups, counted without a round trip (see WindowLimits)."""
    retry_after = count_unsigned_lookup(current_app, client_address())
    if retry_after is not None:
        raise too_many_requests(retry_after)


def count_unsigned_lookup(app: Flask, address: str) -> int | None:
    """Count one unsigned lookup of this client against RATELIMIT_LOOKUP; Retry-After seconds if over it (then
    nothing was counted)."""
    return app.extensions[LIMITS_EXTENSION].count_later("lookup", address, parse_limit(app.config["RATELIMIT_LOOKUP"]))


def too_many_requests(retry_after: int) -> ApiError:
    return ApiError(429, "rate_limited", "Too many requests", headers={"Retry-After": str(retry_after)})


def client_address() -> str:
    return address_of(request.environ)


def address_of(environ: dict[str, Any]) -> str:
    """The client the rate limits count against: the address ProxyFix took from X-Forwarded-For when it is an IP
    address, else the peer's (a spoofed entry that is not an address is ignored); an IPv6 client by its /64."""
    key = limit_key(environ.get("REMOTE_ADDR") or "")
    if key is None:
        key = limit_key((environ.get("werkzeug.proxy_fix.orig") or {}).get("REMOTE_ADDR") or "")
    return key or "unknown"


@lru_cache(maxsize=4096)
def limit_key(address: str) -> str | None:
    """The rate-limit key of an address: itself for IPv4, its /64 for IPv6; None when it is not an IP address."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False)) if parsed.version == 6 else str(parsed)


@lru_cache(maxsize=32)
def parse_limit(text: str) -> Any:
    """The strictest window of a limit such as "20 per minute" (the setting was checked at start-up)."""
    return min(parse_many(text), key=lambda item: item.amount / item.get_expiry())


def require_lookup_signature(view: Callable[..., Any]) -> Callable[..., Any]:
    """With CHATWOOT_EMBED_SECRET set, a lookup needs ?sig=<hex HMAC of the account id> (403 otherwise, counted as
    a failed authentication); a valid signature is never rate limited (enumeration is impossible). Unsigned
    lookups count against RATELIMIT_LOOKUP."""

    @wraps(view)
    def signed_view(account_id: str, *args: Any, **kwargs: Any) -> Any:
        secret = current_app.config["CHATWOOT_EMBED_SECRET"]
        if not secret:
            admit_lookup()
        elif not webhook_auth.lookup_signature_valid(secret, account_id_of(account_id), next(iter(query_values("sig")), None)):
            refuse_failed_authentication(403, "invalid_signature", "Invalid lookup signature")
        return view(account_id, *args, **kwargs)

    return signed_view


def account_id_of(text: str) -> int:
    """A positive integer that fits a bigint, or 400 invalid_account_id."""
    account_id = valid_account_id(text)
    if account_id is None:
        raise ApiError(400, "invalid_account_id", "Account id must be a positive integer")
    return account_id


def valid_account_id(text: str) -> int | None:
    """The account id this text spells (a positive integer that fits a bigint, digits only), else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not 0 < int(text) <= BIGINT_MAX:
        return None
    return int(text)
