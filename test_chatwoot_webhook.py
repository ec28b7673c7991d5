#!/usr/bin/env python3
"""Smoke test of a deployed backend's Chatwoot auto-sync (webhook, lookup, metrics); run with --help."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import re
import secrets as token_generator
import sys
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import requests

DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT_SECONDS = 5.0
SYSTEM_INFO_PATH = "/api/system/info"
WEBHOOKS_PATH = "/api/chatwoot/webhooks"
ACCOUNT_CREATED_PATH = f"{WEBHOOKS_PATH}/account-created"
METRICS_PATH = f"{WEBHOOKS_PATH}/metrics"
CHATWOOT_FEATURE = "chatwoot-auto-sync"
TEST_ACCOUNT_IDS = (900_000_000, 999_999_999)
UNKNOWN_ACCOUNT_IDS = (10**17, 9 * 10**17)
BIGINT_MAX = 2**63 - 1
PROVISIONING_STATUSES = ("ready", "pending", "failed")
REDIS_STEPS = ("ready", "skipped", "failed", "unchanged")
METRICS_KEYS = (
    "total_syncs",
    "success_count",
    "failed_count",
    "rejected_count",
    "success_rate",
    "avg_latency_ms",
    "last_sync",
    "recent_errors",
)
MASK = "***"
REASON_LIMIT = 160
USER_AGENT = "multibackend-chatwoot-smoke-test"


@dataclass(frozen=True)
class Reply:
    """One HTTP exchange: status (None when there was no answer), time taken, JSON body, raw text, transport error."""

    status: int | None
    elapsed_ms: float
    body: Any = None
    text: str = ""
    error: str | None = None


class Backend:
    """HTTP access to one deployed backend; the secret travels as ?token= where the API asks for it."""

    def __init__(self, base_url: str, secret: str | None, timeout: float, embed_secret: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.embed_secret = embed_secret
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    def company_path(self, account_id: int) -> str:
        """The lookup's path, signed with ?sig= when the backend has signed lookups (CHATWOOT_EMBED_SECRET)."""
        path = f"{WEBHOOKS_PATH}/company/{account_id}"
        if not self.embed_secret:
            return path
        signature = hmac.new(self.embed_secret.encode(), str(account_id).encode(), hashlib.sha256).hexdigest()
        return f"{path}?sig={signature}"

    def get(self, path: str, token: str | None = None) -> Reply:
        """GET path, with ?token= when a token is given."""
        return self.request("GET", path, token)

    def post(self, path: str, payload: Any, token: str | None = None) -> Reply:
        """POST a JSON payload to path, with ?token= when a token is given."""
        return self.request("POST", path, token, payload)

    def request(self, method: str, path: str, token: str | None = None, payload: Any = None) -> Reply:
        """Send one request without following redirects; transport failures become a Reply with an error."""
        params = {"token": token} if token else None
        started = time.perf_counter()
        try:
            response = self.session.request(
                method, self.base_url + path, params=params, json=payload, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            return Reply(None, elapsed_ms_since(started), error=self.describe_failure(exc))
        elapsed_ms = elapsed_ms_since(started)
        try:
            body = response.json()
        except ValueError:
            body = None
        return Reply(response.status_code, elapsed_ms, body, response.text, redirect_error(response))

    def describe_failure(self, exc: requests.RequestException) -> str:
        """A one-line reason for a request that got no HTTP answer."""
        if isinstance(exc, requests.ConnectTimeout):
            return f"could not connect within {self.timeout:g} s"
        if isinstance(exc, requests.Timeout):
            return f"no answer within {self.timeout:g} s"
        cause = exc.args[0] if exc.args else exc
        detail = re.sub(r"^\w+\([^)]*\): ", "", str(getattr(cause, "reason", cause)))
        if isinstance(exc, requests.ConnectionError):
            return f"connection failed: {detail}"
        return f"{type(exc).__name__}: {detail}"


class Report:
    """Prints one line per check, counts passes and failures, and masks the secrets in everything it prints."""

    def __init__(self, out: TextIO, hidden: list[str | None], time_limit_ms: float):
        self.out = out
        self.hidden: list[str] = []
        for text in hidden:
            self.hide(text)
        self.time_limit_ms = time_limit_ms
        self.passed = 0
        self.failed = 0

    def hide(self, text: str | None) -> None:
        """Mask this text (plain and URL-encoded) from now on."""
        if text:
            self.hidden = sorted(set(self.hidden) | encodings_of(text), key=len, reverse=True)

    def say(self, text: str) -> None:
        """Print one masked line."""
        print(self.masked(text), file=self.out, flush=True)

    def masked(self, text: str) -> str:
        """The text with every secret (plain or URL-encoded) replaced by ***."""
        for secret in self.hidden:
            text = text.replace(secret, MASK)
        return text

    def record(self, name: str, reply: Reply, reason: str | None) -> bool:
        """Print the check's line (✓/✗, name, status, time, reason) and count it; True when it passed."""
        if reason is None and reply.elapsed_ms > self.time_limit_ms:
            reason = f"slower than the {self.time_limit_ms / 1000:g} s limit"
        status = str(reply.status) if reply.status is not None else "---"
        line = f"{'✓' if reason is None else '✗'} {name:<36} {status:>3} {reply.elapsed_ms:>7.0f} ms"
        self.say(line if reason is None else f"{line}  {shortened(reason)}")
        if reason is None:
            self.passed += 1
        else:
            self.failed += 1
        return reason is None

    def summary(self) -> None:
        """Print `N passed, M failed` on a line of its own."""
        self.say(f"{self.passed} passed, {self.failed} failed")


class Suite:
    """The smoke-test checks for one test account, run in order against one backend."""

    def __init__(self, backend: Backend, report: Report, account_id: int, name: str, expect_new: bool):
        self.backend = backend
        self.report = report
        self.account_id = account_id
        self.name = name
        self.expected_name = normalised_name(name)
        self.expect_new = expect_new
        self.company_id = f"chatwoot_{account_id}"
        self.company_name = self.expected_name
        self.provisioning_status: str | None = None
        self.accepted_deliveries = 0

    def run(self) -> bool:
        """Run every check; True when all passed."""
        self.check_system_info()
        baseline = self.backend.get(METRICS_PATH, self.backend.secret)
        self.check_account_created()
        self.check_repeat_is_idempotent()
        self.check_lookup()
        self.check_unknown_lookup()
        self.check_metrics(baseline)
        if self.backend.secret:
            self.check_wrong_token_refused()
        self.report.summary()
        return self.report.failed == 0

    def check_system_info(self) -> bool:
        """System info names the service and announces the Chatwoot webhooks and auto-sync feature."""
        reply = self.backend.get(SYSTEM_INFO_PATH)
        data, reason = success_data(reply)
        if data is not None:
            authentication = data.get("chatwoot_webhook_authentication")
            reason = first_problem(
                (not data.get("name"), "name is missing"),
                (not data.get("version"), "version is missing"),
                (
                    not isinstance(data.get("endpoints"), dict)
                    or data["endpoints"].get("chatwoot_webhooks") != WEBHOOKS_PATH,
                    f"endpoints.chatwoot_webhooks is not {WEBHOOKS_PATH}",
                ),
                (
                    not isinstance(data.get("features"), list) or CHATWOOT_FEATURE not in data["features"],
                    f"features lacks {CHATWOOT_FEATURE}",
                ),
                (
                    not isinstance(authentication, dict) or not isinstance(authentication.get("enabled"), bool),
                    "chatwoot_webhook_authentication.enabled is not a boolean",
                ),
            )
        return self.report.record("system info", reply, reason)

    def check_account_created(self) -> bool:
        """The account_created webhook answers with the test account's company, provisioned."""
        reply = self.deliver(self.backend.secret)
        data, reason = success_data(reply)
        if data is not None:
            reason = self.company_problem(data, created_expected=True if self.expect_new else None)
            if isinstance(data.get("company_name"), str):
                self.company_name = data["company_name"]
        return self.report.record("account_created webhook", reply, self.auth_hint(reply) or reason)

    def check_repeat_is_idempotent(self) -> bool:
        """A second identical delivery answers created: false with the same company."""
        reply = self.deliver(self.backend.secret)
        data, reason = success_data(reply)
        if data is not None:
            reason = self.company_problem(data, created_expected=False)
        return self.report.record("repeated webhook is idempotent", reply, self.auth_hint(reply) or reason)

    def check_lookup(self) -> bool:
        """The company lookup finds the test account with the names the webhook gave."""
        reply = self.backend.get(self.backend.company_path(self.account_id))
        data, reason = success_data(reply)
        if data is not None:
            status = data.get("provisioning_status")
            reason = first_problem(
                (data.get("exists") is not True, "exists is not true"),
                *self.naming_problems(data),
                (data.get("company_name") != self.company_name, f"company_name is not {self.company_name!r}"),
                (
                    data.get("chatwoot_account_id") != str(self.account_id),
                    f"chatwoot_account_id is not the string {str(self.account_id)!r}",
                ),
                (status not in PROVISIONING_STATUSES, f"provisioning_status {status!r} is unknown"),
                (
                    self.provisioning_status is not None and status != self.provisioning_status,
                    f"provisioning_status {status!r} differs from the webhook's {self.provisioning_status!r}",
                ),
                (not isinstance(data.get("created_at"), str) or not data["created_at"], "created_at is missing"),
            )
        return self.report.record("lookup finds the company", reply, reason)

    def check_unknown_lookup(self) -> bool:
        """The lookup of an account that does not exist answers exists: false."""
        unknown_id = random.randint(*UNKNOWN_ACCOUNT_IDS)
        reply = self.backend.get(self.backend.company_path(unknown_id))
        data, reason = success_data(reply)
        if data is not None and data.get("exists") is not False:
            reason = f"exists is not false for unknown account {unknown_id}: {compact(data)}"
        return self.report.record("lookup of an unknown account", reply, reason)

    def check_metrics(self, baseline: Reply) -> bool:
        """The metrics have every documented key and total_syncs grew by this run's deliveries."""
        reply = self.backend.get(METRICS_PATH, self.backend.secret)
        data, reason = success_data(reply)
        if data is not None:
            reason = metrics_problem(data) or self.growth_problem(baseline, data)
        return self.report.record("metrics", reply, self.auth_hint(reply) or reason)

    def check_wrong_token_refused(self) -> bool:
        """A delivery with a wrong token is refused with 403 invalid_signature."""
        wrong_token = f"wrong-{token_generator.token_hex(8)}"
        self.report.hide(wrong_token)
        reply = self.deliver(wrong_token)
        reason = reply.error
        if reason is None and reply.status == 200:
            reason = "a wrong token was accepted: webhook authentication is off on the backend"
        elif reason is None and (reply.status != 403 or error_code(reply) != "invalid_signature"):
            reason = f"expected 403 invalid_signature: {describe_body(reply)}"
        return self.report.record("wrong token is refused", reply, reason)

    def deliver(self, token: str | None) -> Reply:
        """POST Chatwoot's account_created payload for the test account."""
        payload = {"id": self.account_id, "name": self.name, "event": "account_created", "users": []}
        reply = self.backend.post(ACCOUNT_CREATED_PATH, payload, token)
        if reply.status == 200 and token == self.backend.secret:
            self.accepted_deliveries += 1
        return reply

    def company_problem(self, data: dict[str, Any], created_expected: bool | None) -> str | None:
        """What is wrong with a webhook answer's company data, or None."""
        status, redis_step, created = data.get("provisioning_status"), data.get("redis"), data.get("created")
        if status in PROVISIONING_STATUSES:
            self.provisioning_status = status
        return first_problem(
            *self.naming_problems(data),
            (not isinstance(created, bool), f"created is not a boolean: {created!r}"),
            (
                created_expected is not None and created is not created_expected,
                f"created is {json.dumps(created)}, expected {json.dumps(created_expected)}",
            ),
            (
                created is True and data.get("company_name") != self.expected_name,
                f"company_name is {data.get('company_name')!r}, expected {self.expected_name!r}",
            ),
            (redis_step not in REDIS_STEPS, f"redis {redis_step!r} is unknown"),
            (status not in PROVISIONING_STATUSES, f"provisioning_status {status!r} is unknown"),
            (status != "ready", f"provisioning is {status}: {data.get('message')}"),
        )

    def naming_problems(self, data: dict[str, Any]) -> list[tuple[bool, str]]:
        """The company_id, redis_prefix and vectorstore_index checks for the test account."""
        expected = {
            "company_id": self.company_id,
            "redis_prefix": f"{self.company_id}:",
            "vectorstore_index": f"{self.company_id}_documents",
        }
        return [
            (data.get(key) != wanted, f"{key} is {data.get(key)!r}, expected {wanted!r}")
            for key, wanted in expected.items()
        ]

    def growth_problem(self, baseline: Reply, data: dict[str, Any]) -> str | None:
        """Why total_syncs did not grow by the deliveries accepted in this run, or None."""
        before, reason = success_data(baseline)
        if before is None or not is_integer(before.get("total_syncs")):
            return f"could not read the metrics before the webhook ({reason or 'no total_syncs'})"
        growth = data["total_syncs"] - before["total_syncs"]
        needed = max(self.accepted_deliveries, 1)
        if growth < needed:
            return f"total_syncs went from {before['total_syncs']} to {data['total_syncs']}, expected {needed}+ more"
        return None

    def auth_hint(self, reply: Reply) -> str | None:
        """For a refused secret (403 invalid_signature on the webhook, 401 unauthorized on the metrics): the reason
        plus what the operator should check."""
        refusal = {403: "invalid_signature", 401: "unauthorized"}.get(reply.status)
        if refusal is None or error_code(reply) != refusal:
            return None
        if self.backend.secret:
            return f"{reply.status} {refusal}: the backend does not accept this secret"
        return f"{reply.status} {refusal}: the backend requires a secret (--secret or CHATWOOT_WEBHOOK_SECRET)"


def success_data(reply: Reply) -> tuple[dict[str, Any] | None, str | None]:
    """The `data` object of a 200 `success: true` answer, else None and the reason."""
    if reply.error is not None:
        return None, reply.error
    if reply.status != 200:
        return None, f"expected HTTP 200: {describe_body(reply)}"
    body = reply.body
    if not isinstance(body, dict) or body.get("success") is not True:
        return None, f"success is not true: {describe_body(reply)}"
    if not isinstance(body.get("data"), dict):
        return None, f"data is not an object: {describe_body(reply)}"
    return body["data"], None


def metrics_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the shape of the metrics data, or None."""
    missing = [key for key in METRICS_KEYS if key not in data]
    counts = ("total_syncs", "success_count", "failed_count", "rejected_count")
    return first_problem(
        (bool(missing), f"missing keys: {', '.join(missing)}"),
        (not all(is_integer(data.get(key)) for key in counts), f"counts are not integers: {compact(data)}"),
        (
            not all(data.get(key) is None or is_number(data.get(key)) for key in ("success_rate", "avg_latency_ms")),
            "success_rate/avg_latency_ms are neither numbers nor null",
        ),
        (not isinstance(data.get("recent_errors"), list), "recent_errors is not a list"),
    )


def first_problem(*conditions: tuple[bool, str]) -> str | None:
    """The message of the first condition that holds, or None."""
    return next((message for failed, message in conditions if failed), None)


def error_code(reply: Reply) -> str | None:
    """The `code` of an error answer, or None."""
    return reply.body.get("code") if isinstance(reply.body, dict) else None


def describe_body(reply: Reply) -> str:
    """A short description of an answer's body: `code: error` for API errors, else the body itself."""
    body = reply.body
    if isinstance(body, dict) and body.get("success") is False and "code" in body:
        return f"{body.get('code')}: {body.get('error')}"
    if body is not None:
        return compact(body)
    return f"not JSON: {reply.text!r}" if reply.text else "empty body"


def redirect_error(response: requests.Response) -> str | None:
    """A reason for a redirect answer (the API never redirects; a proxy forcing https does)."""
    if response.is_redirect:
        return f"redirected to {response.headers.get('Location')} (use that URL with --url)"
    return None


def compact(value: Any) -> str:
    """JSON on one line."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def shortened(text: str, limit: int = REASON_LIMIT) -> str:
    """The text on one line, cut to limit characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_integer(value: Any) -> bool:
    """True for a JSON integer (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def elapsed_ms_since(started: float) -> float:
    """Milliseconds since a time.perf_counter() reading."""
    return (time.perf_counter() - started) * 1000


def encodings_of(secret: str) -> set[str]:
    """The secret as it may appear in printed text: plain and URL-encoded."""
    return {secret, quote(secret, safe=""), quote_plus(secret)}


def default_name(account_id: int) -> str:
    """The test account's name unless --name says otherwise; `flask chatwoot remove-test-companies` removes only
    companies with this name (and an id in TEST_ACCOUNT_IDS)."""
    return f"Smoke Test {account_id}"


def normalised_name(name: str) -> str:
    """The company name the backend stores for an account name: no control characters, trimmed, 255 at most."""
    visible = "".join(char for char in name if unicodedata.category(char) != "Cc")
    return visible.strip()[:255].rstrip()


def first_secret(value: str | None) -> str | None:
    """The first member of a comma-separated secret list (how the backend reads CHATWOOT_WEBHOOK_SECRET)."""
    members = [item.strip() for item in (value or "").split(",") if item.strip()]
    return members[0] if members else None


def display_url(url: str) -> str:
    """The URL with any password in it masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{netloc}"))


def run_suite(
    base_url: str,
    secret: str | None,
    account_id: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    out: TextIO | None = None,
    *,
    name: str | None = None,
    embed_secret: str | None = None,
) -> bool:
    """Run the full smoke test against base_url, printing to out (default sys.stdout); True when every check passed."""
    out = out if out is not None else sys.stdout
    secret = first_secret(secret)
    expect_new = account_id is None
    account_id = account_id if account_id is not None else random.randint(*TEST_ACCOUNT_IDS)
    name = name or default_name(account_id)
    with Backend(base_url, secret, timeout, embed_secret) as backend:
        report = Report(out, [secret, embed_secret], timeout * 1000)
        authentication = "with a secret" if secret else "without a secret"
        target = display_url(backend.base_url)
        report.say(f"Chatwoot webhook smoke test of {target}: account {account_id} ({name}), {authentication}")
        return Suite(backend, report, account_id, name, expect_new).run()


def print_answer(reply: Reply, out: TextIO, err: TextIO, secret: str | None) -> int:
    """Print an answer's JSON indented (masked); 0 on HTTP 200, else 1."""
    report = Report(out, [secret], float("inf"))
    if reply.error is not None:
        print(report.masked(f"✗ {reply.error}"), file=err)
        return 1
    if reply.body is not None:
        report.say(json.dumps(reply.body, indent=2, ensure_ascii=False))
    else:
        print(report.masked(f"✗ HTTP {reply.status}: {shortened(describe_body(reply))}"), file=err)
    return 0 if reply.status == 200 else 1


def positive_int(text: str) -> int:
    """argparse type: an account id from 1 to the bigint maximum."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 < value <= BIGINT_MAX:
        raise argparse.ArgumentTypeError(f"must be from 1 to {BIGINT_MAX}: {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number of seconds greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than zero: {text}")
    return value


def http_url(text: str) -> str:
    """argparse type: an http:// or https:// base URL."""
    if urlsplit(text).scheme not in ("http", "https") or not urlsplit(text).netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with defaults from BACKEND_URL and CHATWOOT_WEBHOOK_SECRET."""
    parser = argparse.ArgumentParser(
        description="Smoke-test a deployed backend's Chatwoot webhook, company lookup and metrics.",
        epilog="Exit code: 0 when every check passed (or --get/--metrics answered 200), 1 otherwise.",
    )
    parser.add_argument(
        "--url",
        type=http_url,
        default=os.environ.get("BACKEND_URL") or DEFAULT_URL,
        help="backend base URL (default: $BACKEND_URL or %(default)s)",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("CHATWOOT_WEBHOOK_SECRET"),
        help="webhook secret sent as ?token= (default: $CHATWOOT_WEBHOOK_SECRET, its first member when it is a "
        "comma-separated list; prefer the variable, arguments show up in the process list)",
    )
    parser.add_argument(
        "--embed-secret",
        default=os.environ.get("CHATWOOT_EMBED_SECRET") or None,
        help="signs lookups with ?sig= when the backend has signed lookups (default: $CHATWOOT_EMBED_SECRET)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="seconds allowed per request (default: %(default)g, Chatwoot's own limit)",
    )
    parser.add_argument(
        "--account-id",
        type=positive_int,
        help="Chatwoot account id of the test company (default: random in 900000000..999999999)",
    )
    parser.add_argument("--name", help='name of the test account (default: "Smoke Test <id>"; with another name, '
                        "`flask chatwoot remove-test-companies` does not remove it)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--get", type=positive_int, metavar="ID", help="only look up account ID and print the answer")
    mode.add_argument("--metrics", action="store_true", help="only print the sync metrics")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = parse_arguments(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    secret = first_secret(args.secret)
    if args.get is not None or args.metrics:
        with Backend(args.url, secret, args.timeout, args.embed_secret) as backend:
            if args.metrics:
                reply = backend.get(METRICS_PATH, secret)
            else:
                reply = backend.get(backend.company_path(args.get))
        return print_answer(reply, sys.stdout, sys.stderr, secret)
    return 0 if run_suite(args.url, secret, args.account_id, args.timeout, name=args.name, embed_secret=args.embed_secret) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
