"""The setup guide's final checklist, automated: one check per line, with the fix when it fails."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import SplitResult, parse_qs, urlsplit

import redis
from flask import current_app
from sqlalchemy import func, inspect, select, text

from multibackend.clock import utcnow
from multibackend.extensions import db, get_redis
from multibackend.models import Company, SyncEvent
from multibackend.services import delivery_spool
from multibackend.services.chatwoot_source import ChatwootDatabaseSource, SourceError, chatwoot_source

WEBHOOK_PATH = "/api/chatwoot/webhooks/account-created"
MIN_SUCCESS_RATE = 95.0
RECENT = timedelta(hours=24)
STUCK_AFTER = timedelta(minutes=15)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks() -> list[Check]:
    """Every check, in the order of the setup guide; a check that crashes is a failed check, not a crash."""
    checks: list[Check] = []
    for check in CHECKS:
        try:
            result = check()
        except Exception as exc:  # the doctor reports, it never dies
            db.session.rollback()
            result = Check(check.__name__.replace("check_", "").replace("_", " "), False, f"{type(exc).__name__}", "see the log")
        if result is not None:
            checks.append(result)
    return checks


def check_settings() -> Check:
    config = current_app.config
    missing = [name for name in ("DATABASE_URL", "REDIS_URL", "CHATWOOT_WEBHOOK_SECRET") if not config.get(name)]
    if not missing:
        return Check("settings", True, "DATABASE_URL, REDIS_URL and CHATWOOT_WEBHOOK_SECRET are set")
    return Check("settings", False, f"not set: {', '.join(missing)}", "set them in the environment (see the README's Configuration table)")


def check_database() -> Check:
    db.session.execute(text("SELECT 1"))
    return Check("database reachable", True, db.engine.url.render_as_string(hide_password=True))


def check_companies_table() -> Check:
    inspector = inspect(db.engine)
    if not inspector.has_table("companies"):
        return Check("companies table", False, "missing", "flask --app wsgi chatwoot init-db")
    unique = any(
        constraint["column_names"] == ["chatwoot_account_id"] for constraint in inspector.get_unique_constraints("companies")
    )
    if not unique:
        return Check(
            "companies table", False, "no UNIQUE constraint on chatwoot_account_id",
            "flask --app wsgi chatwoot dedupe --dry-run, then flask --app wsgi chatwoot dedupe",
        )
    return Check("companies table", True, "present, UNIQUE (chatwoot_account_id)")


def check_redis() -> Check:
    client = get_redis()
    if client is None:
        return Check("Redis reachable", False, "REDIS_URL is not set", "set REDIS_URL, then run reconcile to build the namespaces")
    try:
        client.ping()
    except redis.RedisError as exc:
        return Check("Redis reachable", False, type(exc).__name__, "check REDIS_URL and that Redis is running")
    return Check("Redis reachable", True, "PING answered")


def check_authentication() -> Check:
    if current_app.config["CHATWOOT_WEBHOOK_SECRETS"]:
        return Check("webhook authentication", True, "on (token, Basic auth or signature required)")
    return Check(
        "webhook authentication", False, "off: anyone can create companies",
        "set CHATWOOT_WEBHOOK_SECRET and add ?token=<secret> to Chatwoot's INSTALLATION_EVENTS_WEBHOOK_URL",
    )


def check_success_rate() -> Check:
    since = utcnow() - RECENT
    total, succeeded = db.session.execute(
        select(func.count(), func.count().filter(SyncEvent.outcome == "success")).where(SyncEvent.created_at >= since)
    ).one()
    if not total:
        return Check("recent sync success rate", True, "no deliveries in the last 24 h")
    rate = 100.0 * succeeded / total
    detail = f"{rate:.2f}% of {total} deliveries in the last 24 h"
    if rate >= MIN_SUCCESS_RATE:
        return Check("recent sync success rate", True, detail)
    return Check("recent sync success rate", False, detail, "see recent_errors in /api/chatwoot/webhooks/metrics and the [Chatwoot Sync] Error log lines")


def check_spool() -> Check | None:
    client = get_redis()
    if client is None:
        return None
    waiting = delivery_spool.spool_length(client)
    if waiting == 0:
        return Check("spool empty", True, "no delivery waiting")
    return Check("spool empty", False, f"{waiting} deliveries waiting for the database", "flask --app wsgi chatwoot reconcile")


def check_pending() -> Check:
    stuck_before = utcnow() - STUCK_AFTER
    stuck = db.session.scalar(
        select(func.count()).where(Company.provisioning_status != "ready", Company.updated_at < stuck_before)
    )
    if not stuck:
        return Check("nothing stuck in pending", True, "every company is provisioned (or was retried in the last 15 min)")
    return Check(
        "nothing stuck in pending", False, f"{stuck} companies not ready for over 15 min",
        "flask --app wsgi chatwoot reconcile (add --retry-failed for those that gave up)",
    )


def check_chatwoot_webhook_url() -> Check | None:
    source = chatwoot_source()
    if not isinstance(source, ChatwootDatabaseSource):
        return None
    name = "Chatwoot INSTALLATION_EVENTS_WEBHOOK_URL"
    try:
        url = source.installation_webhook_url()
    except SourceError as exc:
        return Check(name, False, str(exc), "check CHATWOOT_DATABASE_URL")
    fix = (
        "Super Admin → Installation Configs → INSTALLATION_EVENTS_WEBHOOK_URL = "
        f"{expected_webhook_url('<CHATWOOT_WEBHOOK_SECRET>')}"
    )
    if not url:
        return Check(name, False, "not set: Chatwoot sends no installation webhook", fix)
    problem = webhook_url_problem(url)
    if problem:
        return Check(name, False, problem, fix)
    return Check(name, True, "points at this backend and carries the secret")


def webhook_url_problem(url: str) -> str:
    """Why Chatwoot's configured URL would not reach this backend's authenticated webhook ('' when it would)."""
    parts = urlsplit(url)
    if parts.path.rstrip("/") != WEBHOOK_PATH:
        return f"path is {parts.path or '/'}, expected {WEBHOOK_PATH}"
    public = current_app.config["PUBLIC_URL"]
    if public and _host(urlsplit(public)) != _host(parts):
        return f"host is {_host(parts)}, this backend is {_host(urlsplit(public))} (PUBLIC_URL)"
    secrets = current_app.config["CHATWOOT_WEBHOOK_SECRETS"]
    if secrets:
        tokens = parse_qs(parts.query).get("token", [])
        if not (set(tokens) & set(secrets) or parts.password in secrets):
            return "carries no valid ?token= (or URL password) for CHATWOOT_WEBHOOK_SECRET"
    return ""


def _host(parts: SplitResult) -> str:
    return (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else "")


def expected_webhook_url(token: str) -> str:
    base = (current_app.config["PUBLIC_URL"] or "https://<backend>").rstrip("/")
    return f"{base}{WEBHOOK_PATH}?token={token}"


def check_chatwoot_accounts() -> Check | None:
    source = chatwoot_source()
    if not isinstance(source, ChatwootDatabaseSource):
        return None
    name = "every Chatwoot account has a company"
    missing = 0
    try:
        for batch in source.accounts(current_app.config["RECONCILE_BATCH_SIZE"]):
            ids = [str(account.id) for account in batch]
            found = db.session.scalar(select(func.count()).where(Company.chatwoot_account_id.in_(ids)))
            missing += len(ids) - int(found or 0)
    except SourceError as exc:
        return Check(name, False, str(exc), "check CHATWOOT_DATABASE_URL")
    if missing:
        return Check(name, False, f"{missing} Chatwoot accounts have no company here", "flask --app wsgi chatwoot reconcile")
    return Check(name, True, "all Chatwoot accounts have their company")


CHECKS: list[Callable[[], Check | None]] = [
    check_settings,
    check_database,
    check_companies_table,
    check_redis,
    check_authentication,
    check_success_rate,
    check_spool,
    check_pending,
    check_chatwoot_webhook_url,
    check_chatwoot_accounts,
]
