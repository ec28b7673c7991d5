"""The setup guide's final checklist, automated: one check per line, with the fix when it fails."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import SplitResult, parse_qs, urlsplit

import redis
from flask import current_app
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from multibackend.clock import utcnow
from multibackend.extensions import db, get_redis
from multibackend.logging_setup import printable
from multibackend.models import Company, SyncEvent
from multibackend.services import dashboard_tabs, dedupe, delivery_spool
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


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str
    fix: str = ""


def chatwoot_command() -> str:
    """How operators run the plugin's commands here: `flask --app wsgi chatwoot` standalone, `flask chatwoot` in
    a host backend (whose FLASK_APP is its own)."""
    return "flask --app wsgi chatwoot" if current_app.import_name == "multibackend" else "flask chatwoot"


def passed(detail: str) -> Outcome:
    return Outcome(True, detail)


def failed(detail: str, fix: str) -> Outcome:
    return Outcome(False, detail, fix)


def run_checks() -> list[Check]:
    """Every check, in the order of the setup guide; a check that crashes is a failed check, not a crash."""
    checks: list[Check] = []
    for name, check in CHECKS:
        try:
            outcome = check()
        except Exception as exc:  # the doctor reports, it never dies
            db.session.rollback()
            outcome = failed(f"{type(exc).__name__}: {printable(str(exc).splitlines()[0] if str(exc) else '', 160)}", "check the settings and that the service is running")
        if outcome is not None:
            checks.append(Check(name, outcome.ok, outcome.detail, outcome.fix))
    return checks


def check_settings() -> Outcome:
    config = current_app.config
    required = ("DATABASE_URL", "REDIS_URL", "CHATWOOT_WEBHOOK_SECRET") if db.is_own else ("REDIS_URL", "CHATWOOT_WEBHOOK_SECRET")
    missing = [name for name in required if not config.get(name)]
    if not missing:
        database = "" if db.is_own else " (the database is the host app's)"
        return passed(f"{', '.join(required[:-1])} and {required[-1]} are set{database}")
    return failed(f"not set: {', '.join(missing)}", "set them in the environment (see the README's Configuration table)")


def check_database() -> Outcome:
    db.session.execute(text("SELECT 1"))
    return passed(db.engine.url.render_as_string(hide_password=True))


def check_companies_table() -> Outcome:
    inspector = inspect(db.engine)
    if not inspector.has_table("companies"):
        return failed("missing", f"{chatwoot_command()} init-db")
    if db.engine.dialect.name != "postgresql":
        return passed("present, UNIQUE (chatwoot_account_id)")
    if deferred := dedupe.deferred_unique_constraints():
        return failed(f"{', '.join(deferred)} is DEFERRABLE: INSERT ... ON CONFLICT fails on every new company",
                      "drop it and add it back without DEFERRABLE")
    if not dedupe.has_unique_constraint():
        return failed("no UNIQUE constraint on chatwoot_account_id",
            f"{chatwoot_command()} dedupe --dry-run, then {chatwoot_command()} dedupe",
        )
    return passed("present, UNIQUE (chatwoot_account_id)")


def check_redis() -> Outcome:
    client = get_redis()
    if client is None:
        return failed("REDIS_URL is not set", "set REDIS_URL, then run reconcile to build the namespaces")
    try:
        client.ping()
    except redis.RedisError as exc:
        return failed(type(exc).__name__, "check REDIS_URL and that Redis is running")
    return passed("PING answered")


def check_authentication() -> Outcome:
    if current_app.config["CHATWOOT_WEBHOOK_SECRETS"]:
        return passed("on (token, Basic auth or signature required)")
    return failed("off: anyone can create companies",
        "set CHATWOOT_WEBHOOK_SECRET and add ?token=<secret> to Chatwoot's INSTALLATION_EVENTS_WEBHOOK_URL",
    )


def check_success_rate() -> Outcome:
    since = utcnow() - RECENT
    total, succeeded = db.session.execute(
        select(func.count(), func.count().filter(SyncEvent.outcome == "success")).where(SyncEvent.created_at >= since)
    ).one()
    if not total:
        return passed("no deliveries in the last 24 h")
    rate = 100.0 * succeeded / total
    detail = f"{rate:.2f}% of {total} deliveries in the last 24 h"
    if rate >= MIN_SUCCESS_RATE:
        return passed(detail)
    return failed(detail, "see recent_errors in /api/chatwoot/webhooks/metrics and the [Chatwoot Sync] Error log lines")


def check_spool() -> Outcome | None:
    client = get_redis()
    if client is None:
        return None
    waiting = delivery_spool.spool_length(client)
    if waiting == 0:
        return passed("no delivery waiting")
    return failed(f"{waiting} deliveries waiting for the database", f"{chatwoot_command()} reconcile")


def check_pending() -> Outcome:
    stuck_before = utcnow() - STUCK_AFTER
    stuck = db.session.scalar(
        select(func.count()).where(
            Company.provisioning_status != "ready", Company.chatwoot_account_id.is_not(None), Company.updated_at < stuck_before
        )
    )
    if not stuck:
        return passed("every company is provisioned (or was retried in the last 15 min)")
    return failed(f"{stuck} companies not ready for over 15 min",
        f"{chatwoot_command()} reconcile (add --retry-failed for those that gave up)",
    )


def check_chatwoot_webhook_url() -> Outcome | None:
    source = chatwoot_source()
    if not isinstance(source, ChatwootDatabaseSource):
        return None
    try:
        url = source.installation_webhook_url()
    except SourceError as exc:
        return failed(str(exc), "check CHATWOOT_DATABASE_URL")
    fix = (
        "Super Admin → Installation Configs → INSTALLATION_EVENTS_WEBHOOK_URL = "
        f"{expected_webhook_url('<CHATWOOT_WEBHOOK_SECRET>')}"
    )
    if not url:
        return failed("not set: Chatwoot sends no installation webhook", fix)
    problem = webhook_url_problem(url)
    if problem:
        return failed(problem, fix)
    return passed("points at this backend and carries the secret")


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


def check_chatwoot_accounts() -> Outcome | None:
    source = chatwoot_source()
    if not isinstance(source, ChatwootDatabaseSource):
        return None
    missing = 0
    try:
        for batch in source.accounts(current_app.config["RECONCILE_BATCH_SIZE"]):
            ids = [str(account.id) for account in batch]
            found = db.session.scalar(select(func.count()).where(Company.chatwoot_account_id.in_(ids)))
            missing += len(ids) - int(found or 0)
    except SourceError as exc:
        return failed(str(exc), "check CHATWOOT_DATABASE_URL")
    if missing:
        return failed(f"{missing} Chatwoot accounts have no company here", f"{chatwoot_command()} reconcile")
    return passed("all Chatwoot accounts have their company")


def check_dashboard_apps_grant() -> Outcome | None:
    if not current_app.config["CHATWOOT_DATABASE_URL"] or not current_app.config["CHATWOOT_DASHBOARD_APPS"]:
        return None
    reason = dashboard_tabs.tabs_disabled_because()
    if reason is not None:
        return failed(reason, "set PUBLIC_URL to this backend's public address, e.g. https://backend.example")
    writer = dashboard_tabs.tab_writer()
    try:
        missing = writer.missing_grants()
        role = writer.role()
    except SQLAlchemyError as exc:
        return failed(f"Chatwoot database: {type(exc).__name__}", "check CHATWOOT_DATABASE_URL")
    if not missing:
        return passed(f"role {role} may read and write dashboard_apps (the company tab)")
    grants = " ".join(grant.format(role=role) for grant in dashboard_tabs.WRITE_GRANTS)
    return failed(
        f"role {role} lacks {', '.join(missing)}: company tabs cannot be made",
        f"in Chatwoot's database, as its owner: {grants} (or run `{chatwoot_command()} dashboard-apps --script` in Chatwoot)",
    )


def check_dashboard_tabs() -> Outcome | None:
    if dashboard_tabs.tabs_disabled_because() is not None:
        return None
    try:
        missing, waiting = dashboard_tabs.missing_tabs_count()
    except (SQLAlchemyError, dashboard_tabs.TabError) as exc:
        return failed(f"Chatwoot database: {type(exc).__name__}", "check CHATWOOT_DATABASE_URL")
    note = f"; {waiting} accounts have no administrator yet (their tab waits for one)" if waiting else ""
    if missing:
        return failed(f"{missing} Chatwoot accounts have no company tab{note}", f"{chatwoot_command()} reconcile")
    return passed(f"every Chatwoot account with an administrator has the company tab{note}")


def check_tabs_accepted() -> Outcome | None:
    if dashboard_tabs.tabs_disabled_because() is not None:
        return None
    try:
        refused = dashboard_tabs.refused_tabs()
    except (SQLAlchemyError, dashboard_tabs.TabError) as exc:
        return failed(f"Chatwoot database: {type(exc).__name__}", "check CHATWOOT_DATABASE_URL")
    if not refused:
        return passed("every company tab is one Chatwoot's DashboardApp model accepts (owner, title, URL)")
    named = "; ".join(f"account {account_id}: {why}" for account_id, (_, why) in sorted(refused.items())[:5])
    more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
    gone = sorted(app_id for app_id, why in refused.values() if why == dashboard_tabs.ACCOUNT_GONE)
    fix = f"{chatwoot_command()} reconcile (gives each tab a current administrator of its account)"
    if gone:
        fix += f"; rows of accounts Chatwoot no longer has, as its database owner: DELETE FROM dashboard_apps WHERE id IN ({', '.join(map(str, gone))})"
    return failed(f"{len(refused)} company tabs would be refused by Chatwoot: {named}{more}", fix)


CHECKS: list[tuple[str, Callable[[], Outcome | None]]] = [
    ("settings", check_settings),
    ("database reachable", check_database),
    ("companies table", check_companies_table),
    ("Redis reachable", check_redis),
    ("webhook authentication", check_authentication),
    ("recent sync success rate", check_success_rate),
    ("spool empty", check_spool),
    ("nothing stuck in pending", check_pending),
    ("Chatwoot INSTALLATION_EVENTS_WEBHOOK_URL", check_chatwoot_webhook_url),
    ("every Chatwoot account has a company", check_chatwoot_accounts),
    ("Chatwoot dashboard_apps writable", check_dashboard_apps_grant),
    ("every Chatwoot account has the company tab", check_dashboard_tabs),
    ("company tabs pass Chatwoot's validation", check_tabs_accepted),
]
