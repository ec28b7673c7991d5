"""The standalone service answers the iframe's repeated lookups before Flask dispatches them.

A `GET <prefix>/company/<id>` whose answer this worker already holds (services.lookup_cache) is answered by
HeldLookupsFirst. The answer's bytes and headers are the view's, it passes the same admission (a valid `sig`, or
RATELIMIT_LOOKUP) and it is observed in the same histogram; what it skips is Flask's request context, routing and
hooks (in-process 8 µs instead of about 140). Every other request, and every lookup that is not held, refused or
unusual in any way (HEAD, a query string other than one `sig` of 64 hex digits when lookups are signed, an invalid
id), goes to Flask unchanged, where the view answers or refuses it; so does every request of an app that routes by
host (TRUSTED_HOSTS, SERVER_NAME, host or subdomain matching).

create_app installs it. init_app does not: a host's hooks (its authentication, its logging) see every request
unless the host asks for this with multibackend.answer_held_lookups_first(app)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from multibackend import observability
from multibackend.errors import JSON_ANSWER_HEADERS
from multibackend.routes.auth import address_of, count_unsigned_lookup, valid_account_id
from multibackend.services import webhook_auth
from multibackend.services.company_lookup import LookupAnswer
from multibackend.services.lookup_cache import started_held_answers

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
LOOKUP_ENDPOINT = "chatwoot_webhooks.company"
ONE_SIGNATURE = re.compile(r"sig=([0-9a-fA-F]{64})")


class HeldLookupsFirst:
    """WSGI middleware right in front of Flask's own dispatch (inside ProxyFix, so REMOTE_ADDR is the client's)."""

    def __init__(self, app: Flask, wsgi_app: WsgiApp):
        self.app = app
        self.wsgi_app = wsgi_app
        rule = next(rule.rule for rule in app.url_map.iter_rules() if rule.endpoint == LOOKUP_ENDPOINT)
        self.lookup_path = rule[: rule.index("<")]  # as Flask routes it: "<prefix>/company/"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        body = self.held_answer(environ) if environ.get("REQUEST_METHOD") == "GET" else None
        if body is None:
            return self.wsgi_app(environ, start_response)
        observability.observe_lookup("hit", time.perf_counter() - started)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *JSON_ANSWER_HEADERS])
        return [body]

    def routes_by_host(self) -> bool:
        """Whether Flask looks at the Host header before routing (this middleware does not)."""
        config = self.app.config
        return bool(config.get("TRUSTED_HOSTS") or config.get("SERVER_NAME") or self.app.url_map.host_matching or self.app.subdomain_matching)

    def held_answer(self, environ: dict[str, Any]) -> bytes | None:
        """The answer's body if this is a lookup of a held company that the view would admit (and it is now
        counted as the view counts it); else None, and nothing was counted."""
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith(self.lookup_path) or self.routes_by_host():
            return None
        account_id = valid_account_id(path[len(self.lookup_path):])
        held = started_held_answers(self.app) if account_id is not None else None
        data = held.get(account_id) if held is not None else None
        if data is None or not self.admits(account_id, environ):
            return None
        return LookupAnswer(found=True, data=data).body

    def admits(self, account_id: int, environ: dict[str, Any]) -> bool:
        """What require_lookup_signature admits: a valid sig when CHATWOOT_EMBED_SECRET is set (the query string
        exactly `sig=<64 hex digits>`), else within RATELIMIT_LOOKUP (counted here)."""
        secret = self.app.config["CHATWOOT_EMBED_SECRET"]
        if not secret:
            return count_unsigned_lookup(self.app, address_of(environ)) is None
        signature = ONE_SIGNATURE.fullmatch(environ.get("QUERY_STRING", ""))
        return signature is not None and webhook_auth.lookup_signature_valid(secret, account_id, signature.group(1))
