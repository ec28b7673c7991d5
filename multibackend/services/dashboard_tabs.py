"""The company tab in every Chatwoot account: a Dashboard App (Chatwoot's `dashboard_apps`, one row per account)
whose frame opens this backend's iframe page for that account, so no operator adds it by hand.

Written through CHATWOOT_DATABASE_URL, the only table of Chatwoot's the plugin ever writes, with the grant the
README names. Ours and only ours: the row ids we made are kept in `chatwoot_dashboard_tabs`, and a row whose only
frame opens our page for its account (any host: PUBLIC_URL may change) is ours too, so a crash between the two
databases never leaves a duplicate. A transaction-scoped advisory lock per account (no grant needed) makes
concurrent deliveries and reconcile runs on several instances agree on one tab. Operators' own tabs are never
read for anything else, never changed."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from flask import Flask, current_app
from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from multibackend.background import BackgroundBatches
from multibackend.extensions import conflict_aware_insert, db
from multibackend.logging_setup import printable
from multibackend.models import DashboardTab
from multibackend.services.chatwoot_source import chatwoot_engine
from multibackend.services.webhook_auth import lookup_signature
from multibackend.web_addresses import is_absolute_http_url

logger = logging.getLogger(__name__)

WRITER_EXTENSION = "multibackend.chatwoot_tabs"
TAB_LOCK_KEY = 4242011
EMBED_ENDPOINT_PATH = "/embed"
ADMINISTRATOR_ROLE = 1
#: what the role behind CHATWOOT_DATABASE_URL needs (besides SELECT on accounts, account_users, installation_configs);
#: SELECT on users' id alone tells a user deleted a moment ago (Chatwoot removes its account_users rows later)
WRITE_GRANTS = (
    "GRANT SELECT, INSERT, UPDATE ON dashboard_apps TO {role};",
    "GRANT USAGE ON SEQUENCE dashboard_apps_id_seq TO {role};",
    "GRANT SELECT (id) ON users TO {role};",
)
#: Chatwoot's DashboardApp model: every string column, title included, is at most 255 characters
TITLE_MAX_LENGTH = 255
NO_ADMINISTRATOR = "no administrator in account_users (the tab needs one as its user)"
NO_ACCOUNT = "no such account in Chatwoot's accounts"
ACCOUNT_GONE = "Chatwoot no longer has this account"



class TabError(Exception):
    """Chatwoot's database could not take the tab (unreachable, locked, or the role lacks the grant)."""


@dataclass(frozen=True)
class Tab:
    """What our tab in one account should say."""

    account_id: int
    title: str
    url: str

    @property
    def content(self) -> list[dict[str, str]]:
        return [{"type": "frame", "url": self.url}]

    def refused_because(self) -> str | None:
        """Why Chatwoot's DashboardApp model would refuse this tab (None: it accepts it)."""
        return title_refused_because(self.title) or content_refused_because(self.content)


@dataclass
class TabChanges:
    """What one pass did, by account id: created and updated rows (Chatwoot's ids), those already right, those
    it had to leave (and why)."""

    created: dict[int, int] = field(default_factory=dict)
    updated: dict[int, int] = field(default_factory=dict)
    unchanged: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    reowned: dict[int, int] = field(default_factory=dict)  # updated ones whose owner was gone or no administrator

    def add(self, other: TabChanges) -> None:
        for name in ("created", "updated", "unchanged", "skipped", "reowned"):
            getattr(self, name).update(getattr(other, name))


def group_by_reason(skipped: dict[int, str]) -> dict[str, list[int]]:
    """Skipped accounts by why, each list in account order."""
    grouped: dict[str, list[int]] = {}
    for account_id in sorted(skipped):
        grouped.setdefault(skipped[account_id], []).append(account_id)
    return grouped


def tabs_disabled_because() -> str | None:
    """Why tabs are not made here (None: they are)."""
    config = current_app.config
    if not config["CHATWOOT_DASHBOARD_APPS"]:
        return "CHATWOOT_DASHBOARD_APPS is off"
    if not config["CHATWOOT_DATABASE_URL"]:
        return "CHATWOOT_DATABASE_URL is not set"
    if not config["PUBLIC_URL"]:
        return "PUBLIC_URL is not set (the tab must open this backend's public address)"
    return None


def embed_path() -> str:
    """Where the iframe page is served, under the blueprint's prefix (the same in a host app)."""
    return current_app.config["CHATWOOT_WEBHOOKS_URL_PREFIX"].rstrip("/") + EMBED_ENDPOINT_PATH


def desired_tab(account_id: int) -> Tab:
    """The tab for an account: the configured title, and a URL that opens the company page by itself (the
    account id, and with signed lookups its signature)."""
    config = current_app.config
    query = {"accountId": str(account_id)}
    if config["CHATWOOT_EMBED_SECRET"]:
        query["sig"] = lookup_signature(config["CHATWOOT_EMBED_SECRET"], account_id)
    url = f"{config['PUBLIC_URL'].rstrip('/')}{embed_path()}?{urlencode(query)}"
    return Tab(account_id, config["CHATWOOT_DASHBOARD_APP_TITLE"], url)


def opens_our_page(content: Any, account_id: int, path: str) -> bool:
    """A row whose only frame opens our page for this account, on whatever host: ours."""
    if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict):
        return False
    parts = urlsplit(str(content[0].get("url", "")))
    return parts.path.rstrip("/") == path and parse_qs(parts.query).get("accountId") == [str(account_id)]


def ensure_tabs(account_ids: Sequence[int], admin_hints: dict[int, Sequence[int]] | None = None, dry_run: bool = False) -> TabChanges:
    """Exactly one tab of ours in each account, with the current title and URL: created where missing, updated
    in place where it differs; one Chatwoot transaction. Raises TabError when Chatwoot's database cannot take it."""
    if not account_ids:
        return TabChanges()
    tabs = [desired_tab(account_id) for account_id in sorted(set(account_ids))]
    recorded = dict(
        db.session.execute(
            select(DashboardTab.chatwoot_account_id, DashboardTab.dashboard_app_id).where(
                DashboardTab.chatwoot_account_id.in_([tab.account_id for tab in tabs])
            )
        ).all()
    )
    db.session.rollback()
    changes = tab_writer().write(tabs, recorded, admin_hints or {}, embed_path(), dry_run)
    if not dry_run:
        remember_tabs(tabs, changes)
    return changes


def remember_tabs(tabs: Iterable[Tab], changes: TabChanges) -> None:
    """Keep which Chatwoot rows are ours (one upsert), so a later pass finds them whatever their URL says."""
    ours = {**changes.unchanged, **changes.updated, **changes.created}
    rows = [{"chatwoot_account_id": tab.account_id, "dashboard_app_id": ours[tab.account_id], "title": tab.title, "url": tab.url} for tab in tabs if tab.account_id in ours]
    if not rows:
        return
    statement = conflict_aware_insert(DashboardTab.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["chatwoot_account_id"],
        set_={name: statement.excluded[name] for name in ("dashboard_app_id", "title", "url", "updated_at")},
    )
    db.session.execute(statement, rows)
    db.session.commit()


def ensure_tab_soon(account_id: int, admin_ids: Sequence[int] = ()) -> None:
    """After a delivery: the account's tab is made by a background thread, so the webhook's answer never waits on
    Chatwoot's database; deliveries that arrive together share one pass. A failure is logged, left to reconcile."""
    if tabs_disabled_because() is not None:
        return
    _queue.add(current_app._get_current_object(), {account_id: list(admin_ids)})


def _ensure_in_background(app: Flask, accounts: dict[int, list[int]]) -> None:
    with app.app_context():
        try:
            changes = ensure_tabs(list(accounts), accounts)
        except (TabError, SQLAlchemyError) as exc:
            logger.warning("[Chatwoot Sync] Dashboard tabs of accounts %s left to reconcile: %s", sorted(accounts), printable(str(exc), 300))
            return
        for account_id in changes.created:
            logger.info("[Chatwoot Sync] Dashboard tab created in account %s", account_id)
        for account_id, reason in changes.skipped.items():
            logger.warning("[Chatwoot Sync] Dashboard tab of account %s not created: %s", account_id, reason)


_queue = BackgroundBatches("dashboard-tabs", _ensure_in_background, window_seconds=0.05)


def missing_tabs_count() -> tuple[int, int]:
    """Chatwoot accounts without our tab: (due: they have an administrator; waiting: they have none yet)."""
    recorded = list(db.session.scalars(select(DashboardTab.dashboard_app_id)))
    db.session.rollback()
    return tab_writer().missing_tabs(recorded)


def refused_tabs() -> dict[int, tuple[int, str]]:
    """Our tabs that Chatwoot's DashboardApp model would refuse, by account: (the row's id, why)."""
    recorded = list(db.session.scalars(select(DashboardTab.dashboard_app_id)))
    db.session.rollback()
    return tab_writer().refused(recorded)


def title_refused_because(title: str | None) -> str | None:
    """Why Chatwoot's model refuses a dashboard app's title (None: it accepts it)."""
    return None if 1 <= len(title or "") <= TITLE_MAX_LENGTH else f"title must be 1 to {TITLE_MAX_LENGTH} characters"


def content_refused_because(content: Any) -> str | None:
    """Why Chatwoot's model refuses a dashboard app's content (None: it accepts it): an array of at least one
    {"type": "frame", "url": <http(s) URI>}."""
    if not isinstance(content, list) or not content:
        return "its content is not a list of frames"
    for item in content:
        if not isinstance(item, dict) or item.get("type") != "frame" or not is_absolute_http_url(str(item.get("url", ""))):
            return "its content has an item that is not a frame with an http(s) URL"
    return None


def tab_writer() -> ChatwootTabWriter:
    writer = current_app.extensions.get(WRITER_EXTENSION)
    if writer is None:
        raise TabError(tabs_disabled_because() or "CHATWOOT_DATABASE_URL is not set")
    return writer


def init_dashboard_tabs(app: Flask) -> None:
    """A writer on Chatwoot's database when tabs can be made (connects lazily)."""
    url = app.config["CHATWOOT_DATABASE_URL"]
    app.extensions[WRITER_EXTENSION] = ChatwootTabWriter(url) if url and app.config["CHATWOOT_DASHBOARD_APPS"] else None


class ChatwootTabWriter:
    """Chatwoot's `dashboard_apps`, written in short transactions that never wait long on a lock."""

    LOCK_TIMEOUT_MS = 500
    STATEMENT_TIMEOUT_MS = 2000

    def __init__(self, url: str):
        self.engine: Engine = chatwoot_engine(url, read_only=False, application_name="multibackend-dashboard-tabs")
        self._sees_user_ids: bool | None = None

    def write(self, tabs: Sequence[Tab], recorded: dict[int, int], admin_hints: dict[int, Sequence[int]], path: str, dry_run: bool) -> TabChanges:
        """Create or update our tab in each account, under per-account advisory locks, in one transaction."""
        ids = [tab.account_id for tab in tabs]
        try:
            with self.engine.connect() as connection:
                with connection.begin() as transaction:
                    connection.execute(text(f"SET LOCAL lock_timeout = {self.LOCK_TIMEOUT_MS}"))
                    connection.execute(text(f"SET LOCAL statement_timeout = {self.STATEMENT_TIMEOUT_MS}"))
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key, id) FROM unnest(CAST(:ids AS int[])) AS id ORDER BY id"),
                        {"key": TAB_LOCK_KEY, "ids": ids},
                    )
                    changes = self._apply(connection, tabs, recorded, admin_hints, path, dry_run)
                    if dry_run:
                        transaction.rollback()
                return changes
        except DBAPIError as exc:
            raise TabError(describe_database_error(exc)) from exc
        except SQLAlchemyError as exc:
            raise TabError(f"Chatwoot database: {type(exc).__name__}") from exc

    def _apply(
        self, connection: Connection, tabs: Sequence[Tab], recorded: dict[int, int], admin_hints: dict[int, Sequence[int]], path: str, dry_run: bool
    ) -> TabChanges:
        """Chatwoot's database decides: a tab only in an account it has, owned by one of that account's current
        administrators (a delivery's `users` only choose among them); ours re-owned when its owner is not one."""
        ids = [tab.account_id for tab in tabs]
        rows = connection.execute(
            text("SELECT id, account_id, title, content, user_id FROM dashboard_apps WHERE account_id = ANY(CAST(:ids AS bigint[])) ORDER BY id"),
            {"ids": ids},
        ).all()
        accounts, administrators = self._accounts_and_administrators(connection, ids)
        changes, to_create, to_update = TabChanges(), [], []
        for tab in tabs:
            row = ours_in(rows, tab.account_id, recorded.get(tab.account_id), path)
            owner = choose_owner(administrators.get(tab.account_id, []), admin_hints.get(tab.account_id, ()), row.user_id if row else None)
            refused = tab.refused_because()
            if tab.account_id not in accounts or owner is None or refused:
                changes.skipped[tab.account_id] = NO_ACCOUNT if tab.account_id not in accounts else refused or NO_ADMINISTRATOR
            elif row is None:
                to_create.append((tab, owner))
            elif (row.title, _as_list(row.content), row.user_id) == (tab.title, tab.content, owner):
                changes.unchanged[tab.account_id] = row.id
            else:
                changes.updated[tab.account_id] = row.id
                to_update.append((row.id, tab, owner))
                if row.user_id != owner:
                    changes.reowned[tab.account_id] = row.id
        if dry_run:
            changes.created.update({tab.account_id: 0 for tab, _ in to_create})
            return changes
        self._update(connection, to_update)
        changes.created.update(self._insert(connection, to_create))
        return changes

    def _accounts_and_administrators(self, connection: Connection, account_ids: list[int]) -> tuple[set[int], dict[int, list[int]]]:
        """The accounts Chatwoot has among these, and each one's administrators, oldest first (users that still
        exist, where the role may read users' ids)."""
        accounts = set(connection.execute(text("SELECT id FROM accounts WHERE id = ANY(CAST(:ids AS bigint[]))"), {"ids": account_ids}).scalars())
        existing_users = " AND EXISTS (SELECT 1 FROM users AS u WHERE u.id = au.user_id)" if self.sees_user_ids(connection) else ""
        administrators: dict[int, list[int]] = {}
        for account_id, user_id in connection.execute(
            text(
                "SELECT au.account_id, au.user_id FROM account_users AS au"
                f" WHERE au.account_id = ANY(CAST(:ids AS bigint[])) AND au.role = :role{existing_users} ORDER BY au.account_id, au.id"
            ),
            {"ids": account_ids, "role": ADMINISTRATOR_ROLE},
        ):
            administrators.setdefault(int(account_id), []).append(int(user_id))
        return accounts, administrators

    def sees_user_ids(self, connection: Connection) -> bool:
        """Whether this role may read users' ids (the optional grant), asked once."""
        if self._sees_user_ids is None:
            self._sees_user_ids = bool(connection.execute(text("SELECT has_column_privilege('users', 'id', 'SELECT')")).scalar())
        return self._sees_user_ids

    @staticmethod
    def _insert(connection: Connection, tabs: Sequence[tuple[Tab, int]]) -> dict[int, int]:
        if not tabs:
            return {}
        rows = connection.execute(
            text(
                "INSERT INTO dashboard_apps (title, content, account_id, user_id, created_at, updated_at)"
                " SELECT t.title, CAST(t.content AS jsonb), t.account_id, t.user_id, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'"
                " FROM unnest(CAST(:titles AS text[]), CAST(:contents AS text[]), CAST(:accounts AS bigint[]), CAST(:users AS bigint[]))"
                " AS t(title, content, account_id, user_id) RETURNING account_id, id"
            ),
            {
                "titles": [tab.title for tab, _ in tabs],
                "contents": [json.dumps(tab.content) for tab, _ in tabs],
                "accounts": [tab.account_id for tab, _ in tabs],
                "users": [owner for _, owner in tabs],
            },
        ).all()
        return {int(account_id): int(app_id) for account_id, app_id in rows}

    @staticmethod
    def _update(connection: Connection, changes: Sequence[tuple[int, Tab, int]]) -> None:
        if not changes:
            return
        connection.execute(
            text(
                "UPDATE dashboard_apps AS d SET title = t.title, content = CAST(t.content AS jsonb), user_id = t.user_id,"
                " updated_at = now() AT TIME ZONE 'UTC'"
                " FROM unnest(CAST(:ids AS bigint[]), CAST(:titles AS text[]), CAST(:contents AS text[]), CAST(:users AS bigint[]))"
                " AS t(id, title, content, user_id) WHERE d.id = t.id"
            ),
            {
                "ids": [app_id for app_id, _, _ in changes],
                "titles": [tab.title for _, tab, _ in changes],
                "contents": [json.dumps(tab.content) for _, tab, _ in changes],
                "users": [owner for _, _, owner in changes],
            },
        )

    def refused(self, app_ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        """Which of these dashboard apps Chatwoot's model would refuse, by account: (row id, why)."""
        with self.engine.connect() as connection:
            connection.execute(text(f"SET LOCAL statement_timeout = {self.STATEMENT_TIMEOUT_MS}"))
            rows = connection.execute(
                text("SELECT id, account_id, user_id, title, content FROM dashboard_apps WHERE id = ANY(CAST(:ids AS bigint[]))"),
                {"ids": list(app_ids)},
            ).all()
            accounts, administrators = self._accounts_and_administrators(connection, sorted({row.account_id for row in rows}))
        refused = {}
        for app_id, account_id, user_id, title, content in rows:
            why = (
                (ACCOUNT_GONE if account_id not in accounts else None)
                or ("its owner was deleted from Chatwoot" if user_id is None else None)
                or (None if user_id in administrators.get(account_id, []) else f"its owner (user {user_id}) is not an administrator of the account")
                or title_refused_because(title)
                or content_refused_because(_as_list(content))
            )
            if why:
                refused[int(account_id)] = (int(app_id), why)
        return refused

    def missing_tabs(self, recorded: Sequence[int]) -> tuple[int, int]:
        """Chatwoot accounts without a tab of ours: (those with an administrator, whose tab is due; those without
        one yet, whose tab waits for one). One query, bounded by the statement timeout."""
        with self.engine.connect() as connection:
            connection.execute(text(f"SET LOCAL statement_timeout = {self.STATEMENT_TIMEOUT_MS}"))
            due, waiting = connection.execute(
                text(
                    "SELECT count(*) FILTER (WHERE has_admin), count(*) FILTER (WHERE NOT has_admin) FROM ("
                    " SELECT EXISTS (SELECT 1 FROM account_users AS u WHERE u.account_id = a.id AND u.role = :role) AS has_admin"
                    " FROM accounts AS a WHERE NOT EXISTS (SELECT 1 FROM dashboard_apps AS d"
                    " WHERE d.account_id = a.id AND d.id = ANY(CAST(:ours AS bigint[])))) AS without_tab"
                ),
                {"ours": list(recorded), "role": ADMINISTRATOR_ROLE},
            ).one()
            return int(due), int(waiting)

    def missing_grants(self) -> list[str]:
        """The privileges on dashboard_apps (and its id sequence) that this role lacks, by name."""
        with self.engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT current_user, has_table_privilege('dashboard_apps', 'SELECT'), has_table_privilege('dashboard_apps', 'INSERT'),"
                    " has_table_privilege('dashboard_apps', 'UPDATE'), has_sequence_privilege('dashboard_apps_id_seq', 'USAGE'),"
                    " has_column_privilege('users', 'id', 'SELECT')"
                )
            ).one()
        role, *granted = row
        names = ("SELECT on dashboard_apps", "INSERT on dashboard_apps", "UPDATE on dashboard_apps",
                 "USAGE on sequence dashboard_apps_id_seq", "SELECT on users (id)")
        return [name for name, ok in zip(names, granted) if not ok]

    def role(self) -> str:
        with self.engine.connect() as connection:
            return str(connection.execute(text("SELECT current_user")).scalar_one())


def choose_owner(administrators: Sequence[int], hints: Sequence[Any], current: int | None) -> int | None:
    """Who owns the tab: its current owner while an administrator, else the first administrator a delivery named,
    else the oldest; None when the account has none. A hint is never taken on its word."""
    if current in administrators:
        return current
    named = [hint for hint in hints if isinstance(hint, int) and hint in administrators]
    return named[0] if named else next(iter(administrators), None)


def ours_in(rows: Sequence[Any], account_id: int, recorded_id: int | None, path: str) -> Any:
    """Our row among an account's dashboard apps: the one we recorded, else one that opens our page."""
    rows = [row for row in rows if row.account_id == account_id]
    for row in rows:
        if row.id == recorded_id:
            return row
    return next((row for row in rows if opens_our_page(_as_list(row.content), account_id, path)), None)


def _as_list(content: Any) -> Any:
    return json.loads(content) if isinstance(content, str) else content


def describe_database_error(exc: DBAPIError) -> str:
    """Operator words for what Chatwoot's database said: the missing grant, a lock held too long, or its first line."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code == "42501":
        grants = " ".join(grant.format(role="<role of CHATWOOT_DATABASE_URL>") for grant in WRITE_GRANTS)
        return f"permission denied on dashboard_apps: {grants}"
    if code == "55P03":
        return "dashboard_apps is locked in Chatwoot's database (lock_timeout); reconcile will try again"
    if code == "57014":
        return "Chatwoot's database did not answer in time (statement_timeout); reconcile will try again"
    lines = str(exc.orig).strip().splitlines()
    return f"Chatwoot database: {printable(lines[0], 200) if lines else type(exc.orig).__name__}"


def rails_runner_script() -> str:
    """Ruby for `rails runner` on the Chatwoot server: the same tabs, made by Chatwoot itself (idempotent), for
    operators who will not grant writes on dashboard_apps."""
    config = current_app.config
    base = f"{config['PUBLIC_URL'].rstrip('/') or 'https://<backend>'}{embed_path()}"
    secret = config["CHATWOOT_EMBED_SECRET"]
    return RAILS_RUNNER.format(
        base=json.dumps(base), path=json.dumps(embed_path()), title=json.dumps(config["CHATWOOT_DASHBOARD_APP_TITLE"]),
        secret=json.dumps(secret) if secret else "nil",
    )


RAILS_RUNNER = """# The company tab (Dashboard App) in every Chatwoot account, made by Chatwoot itself.
# Run on the Chatwoot server, in its directory:  bundle exec rails runner /path/to/this_file.rb
# Safe to run again: an account that has the tab (any host, same page) gets it updated in place, never twice;
# its owner is always a current administrator of the account; other dashboard apps are not touched.
# Every account is tried on its own: one that fails is listed at the end, and the others go on.
require 'openssl'
base = {base}
path = {path}
title = {title}
secret = {secret}
made = updated = reowned = 0
skipped = {{}}
failed = {{}}
Account.find_each do |account|
  begin
    url = "#{{base}}?accountId=#{{account.id}}"
    url += "&sig=#{{OpenSSL::HMAC.hexdigest('SHA256', secret, account.id.to_s)}}" if secret
    content = [{{ 'type' => 'frame', 'url' => url }}]
    ours = account.dashboard_apps.detect do |app|
      items = app.content.is_a?(Array) ? app.content : []
      next false unless items.size == 1 && items.first.is_a?(Hash)
      uri = URI.parse(items.first['url'].to_s) rescue nil
      uri && uri.path.to_s.chomp('/') == path && URI.decode_www_form(uri.query.to_s).to_h['accountId'] == account.id.to_s
    end
    administrators = account.account_users.where(role: :administrator).order(:id).includes(:user).map(&:user).compact
    owner = administrators.detect {{ |user| ours && user.id == ours.user_id }} || administrators.first
    if owner.nil?
      skipped[account.id] = 'no administrator to own the tab'
      next
    end
    if ours
      changes = {{}}
      changes[:title] = title if ours.title != title
      changes[:content] = content if ours.content != content
      changes[:user] = owner if ours.user_id != owner.id
      next if changes.empty?
      ours.update!(changes)
      updated += 1
      reowned += 1 if changes.key?(:user)
    else
      account.dashboard_apps.create!(title: title, content: content, user: owner)
      made += 1
    end
  rescue StandardError => e
    failed[account.id] = "#{{e.class}}: #{{e.message}}"
  end
end
puts "company tabs: #{{made}} created, #{{updated}} updated (#{{reowned}} given a current administrator as owner), " \\
     "#{{skipped.size}} skipped, #{{failed.size}} failed"
skipped.each {{ |id, why| puts "  account #{{id}}: skipped, #{{why}}" }}
failed.each {{ |id, why| puts "  account #{{id}}: failed, #{{why}}" }}
"""
