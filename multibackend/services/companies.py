"""The one write path for companies.

Every change to a company (insert, status change, rename, mark, restore, removal of a duplicate) happens inside
`company_write()`, which commits once and then, after the commit, publishes the lookup answer of every company
it changed and sends `tenant_provisioned` for every company that became ready. Inside the block, change
companies through the ORM (the Company methods) or through the block's own insert and delete methods; anything
else that writes our `companies` table through the session (a bulk UPDATE, a raw INSERT) is refused, and the
tests watch every statement for writes that bypass this module."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from types import SimpleNamespace
from typing import Any

from blinker import Namespace
from flask import Flask, current_app, has_request_context
from sqlalchemy import delete, event, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import ORMExecuteState, Session

from multibackend.background import BackgroundBatches
from multibackend.clock import utcnow
from multibackend.extensions import db, one_of, rows_alone
from multibackend.models import Company, CompanySnapshot, SyncEvent, TenantAnnouncement
from multibackend.services import lookup_cache
from multibackend.services.tenant_naming import tenant_names

logger = logging.getLogger(__name__)

signals = Namespace()
#: Sent after a company's tenant services are ready (sender: the app; `company`: a CompanySnapshot). Receivers
#: (the host backend) create their own per-tenant resources, e.g. the real vector index, and must be
#: idempotent: a failing receiver leaves the company pending, and the retry sends the signal again.
tenant_provisioned = signals.signal("tenant-provisioned")

WRITE_PATH_OPTION = "multibackend_company_write"
STATEMENT_TIMEOUT_EXTENSION = "multibackend.statement_timeout_ms"
#: how old an outbox row must be before the reconciler takes it over from the process that wrote it
ANNOUNCE_GRACE_SECONDS = 30.0

# plain text: compiled once (an INSERT ... ON CONFLICT built per call costs more than its round trip)
OWE_ANNOUNCEMENT = text(
    f"INSERT INTO {TenantAnnouncement.__tablename__} (company_pk, created_at) VALUES (:company_pk, :created_at)"
    " ON CONFLICT DO NOTHING"
)

OWE_ANNOUNCEMENTS = text(
    f"INSERT INTO {TenantAnnouncement.__tablename__} (company_pk, created_at)"
    " SELECT unnest(CAST(:company_pks AS bigint[])), :created_at ON CONFLICT DO NOTHING"
)

_current_write: ContextVar[CompanyWrite | None] = ContextVar("multibackend_company_write", default=None)


class WriteOutsideWritePath(RuntimeError):
    """Our companies were changed without company_write(): their lookup answers would go stale."""


@dataclass
class CompanyWrite:
    """What one write changed; after the block, also what it announced and which receivers failed."""

    dry_run: bool = False
    changed: dict[int, Company] = field(default_factory=dict)
    ready_before: dict[int, bool] = field(default_factory=dict)
    removed_accounts: set[str] = field(default_factory=set)
    forget_every_answer: bool = False
    inserted: set[int] = field(default_factory=set)
    outbox_written: bool = False  # rows owed in this commit (none while no receiver is connected)
    snapshots: dict[int, CompanySnapshot] = field(default_factory=dict)
    inserted_ready: list[tuple[int, CompanySnapshot]] = field(default_factory=list)  # by insert_provisioned
    owed: list[tuple[int, CompanySnapshot]] = field(default_factory=list)
    announced: list[CompanySnapshot] = field(default_factory=list)
    unannounced: list[CompanySnapshot] = field(default_factory=list)

    def insert_if_absent(self, rows: Sequence[dict[str, Any]]) -> list[Company]:
        """INSERT ... ON CONFLICT DO NOTHING RETURNING: the companies this statement created (none for accounts
        that already have one), whatever runs concurrently. Columns of a host's own leave to their defaults."""
        if not rows:
            return []
        if len(rows) > SET_BASED_FROM and self._set_based():
            statement, parameters = select(Company).from_statement(SET_INSERT), _set_insert_parameters(rows)
        else:
            statement, parameters = _insert_statement(len(rows)), _flatten(rows)
        inserted = list(db.session.scalars(statement, parameters, execution_options={WRITE_PATH_OPTION: True}))
        for company in inserted:
            self._track(company, was_ready=False)
            self.inserted.add(id(company))
        return inserted

    def insert_provisioned(self, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Like insert_if_absent, for companies whose services were provisioned before (rows as company_row()
        makes them, status included): no ORM object is loaded, so thousands cost one statement and little more.
        Returns the primary keys of the companies created, by Chatwoot account id."""
        if not rows:
            return {}
        if not self._set_based():
            return {company.chatwoot_account_id: company.id for company in self.insert_if_absent(rows)}
        result = db.session.execute(SET_INSERT_KEYS, _set_insert_parameters(rows), execution_options={WRITE_PATH_OPTION: True})
        created: dict[str, int] = dict(result.tuples().all())
        self.inserted.update(created.values())
        if tenant_provisioned.receivers:  # what is owed to them, as committed (nobody to announce to: nothing owed)
            self.inserted_ready.extend(
                (created[row["chatwoot_account_id"]], CompanySnapshot.of(SimpleNamespace(**row)))
                for row in rows
                if row["chatwoot_account_id"] in created and row["provisioning_status"] == "ready"
            )
        return created

    @staticmethod
    def _set_based() -> bool:
        return db.session.get_bind().dialect.name == "postgresql"

    def remove(self, company_ids: Sequence[int]) -> None:
        """Delete these rows (duplicates only: companies are otherwise marked, never removed)."""
        rows = db.session.execute(
            delete(Company).where(Company.id.in_(company_ids)).returning(Company.chatwoot_account_id),
            execution_options={WRITE_PATH_OPTION: True, "synchronize_session": False},
        )
        self.removed_accounts.update(account for (account,) in rows if account)

    def snapshot(self, company: Company) -> CompanySnapshot:
        """The company as this write committed it (read without a round trip, whatever the session expires)."""
        return self.snapshots.get(id(company)) or CompanySnapshot.of(company)

    def _track(self, company: Company, was_ready: bool) -> None:
        self.ready_before.setdefault(id(company), was_ready)
        self.changed[id(company)] = company

    def _prepare_commit(self) -> None:
        """Snapshot what is about to be committed; owe tenant_provisioned (outbox rows, same commit) for every
        Chatwoot company that became ready. The host's own companies (no account id) are never announced."""
        self.snapshots.update((key, CompanySnapshot.of(company)) for key, company in self.changed.items())
        self.owed = [
            (company.id, self.snapshots[key])
            for key, company in self.changed.items()
            if company.is_ready and not self.ready_before[key] and company.chatwoot_account_id
        ] + self.inserted_ready
        if self.owed and not self.dry_run and tenant_provisioned.receivers:  # nobody to announce to: nothing owed
            self.outbox_written = True
            now = utcnow()
            if self._set_based():  # one statement however many (arrays)
                db.session.execute(OWE_ANNOUNCEMENTS, {"company_pks": [pk for pk, _ in self.owed], "created_at": now})
            else:
                db.session.execute(OWE_ANNOUNCEMENT, [{"company_pk": pk, "created_at": now} for pk, _ in self.owed])


@contextlib.contextmanager
def company_write(dry_run: bool = False) -> Iterator[CompanyWrite]:
    """The one write path: commit once (roll back for a dry run or on error); after the commit publish every
    changed company's lookup answer and announce the ones that became ready."""
    if _current_write.get() is not None:
        raise RuntimeError("company_write() blocks do not nest: do the whole change in one block")
    write = CompanyWrite(dry_run=dry_run)
    token = _current_write.set(write)
    try:
        _bound_statements()
        yield write
        db.session.flush()
        write._prepare_commit()
        if dry_run:
            db.session.rollback()
        else:
            db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    finally:
        _current_write.reset(token)
    if not dry_run:
        _after_commit(write)


@contextlib.contextmanager
def schema_change() -> Iterator[None]:
    """init-db's upgrade of companies (its columns, the tenant names of older rows), which writes through its own
    connections and opens no transaction here: every worker's cached lookup answers are dropped after it."""
    if _current_write.get() is not None:
        raise RuntimeError("a schema change does not run inside a company_write() block")
    write = CompanyWrite(forget_every_answer=True)
    token = _current_write.set(write)
    try:
        yield
    finally:
        _current_write.reset(token)
        _after_commit(write)


def write_in_progress() -> bool:
    """Whether this thread is inside company_write() (the tests' statement watch asks)."""
    return _current_write.get() is not None


def _bound_statements() -> None:
    """On the host's engine (whose connect options are not ours) bound this transaction's statements, so a hung
    database cannot hold a webhook past Chatwoot's 5 s."""
    milliseconds = host_statement_timeout_ms()
    if milliseconds is not None:
        db.session.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))


def host_statement_timeout_ms() -> int | None:
    """The statement_timeout a write on the host's PostgreSQL engine must set itself (None: the plugin's own engine
    has it in its connect options, or the database is not PostgreSQL)."""
    if db.is_own or db.engine.dialect.name != "postgresql":
        return None
    return int(current_app.extensions.get(STATEMENT_TIMEOUT_EXTENSION) or current_app.config["DATABASE_STATEMENT_TIMEOUT_MS"])


def can_create_alone() -> bool:
    """Whether create_alone() can run here (PostgreSQL: data-modifying WITH)."""
    return db.engine.dialect.name == "postgresql"


def create_alone(draft: Company, latency_ms: float) -> CompanyWrite | None:
    """The creation of a delivered account's company in one statement (PostgreSQL, see can_create_alone): the
    company as `draft` stands (never added to a session: its services were provisioned before, and its status set
    by them), the delivery's sync event and, when ready, the outbox row owed for it, committed together in one
    round trip; then announced, as every write is. Returns the write (`snapshots` holds the company), or None when
    the account already has a company (nothing written). Raises SQLAlchemyError, with nothing written, when the
    database cannot take it."""
    parameters = {column: getattr(draft, column) for column in CREATED_ALONE_COLUMNS}
    parameters["provisioning_attempts"] = draft.provisioning_attempts or 0
    write, _ = _create_in_one_statement(CREATE_ALONE, {**parameters, "latency_ms": round(latency_ms, 3)})
    return write if write.snapshots else None


def create_together(drafts: Sequence[Any], latencies_ms: Sequence[float]) -> tuple[CompanyWrite, dict[str, int]]:
    """create_alone() for several delivered accounts at once (distinct accounts, drafts ready): one statement writes
    every company that has none yet, with its sync event (the matching latency) and its outbox row, in one commit;
    then announced. Returns the write and the primary key of each company created, by account id (an account
    missing there already had a company: nothing written for it). Raises SQLAlchemyError, with nothing written."""
    parameters = _set_insert_parameters([vars(draft) for draft in drafts], latencies_ms)
    write, rows = _create_in_one_statement(CREATE_TOGETHER, parameters)
    return write, {row.chatwoot_account_id: row.id for row in rows}


def _create_in_one_statement(statement: Any, parameters: dict[str, Any]) -> tuple[CompanyWrite, list[Any]]:
    """Run a creating statement (companies, sync events and, when `owe`, outbox rows) in one round trip; the write
    it makes (the companies it returned, those ready owed to receivers) is then announced. Also returns the rows."""
    write = CompanyWrite()
    token = _current_write.set(write)
    try:
        owe = bool(tenant_provisioned.receivers)  # nobody to announce to: nothing owed
        rows = rows_alone(statement, {**parameters, "owe": owe}, host_statement_timeout_ms())
    finally:
        _current_write.reset(token)
    if rows:
        write.snapshots = {row.id: CompanySnapshot.of(row) for row in rows}
        write.inserted = set(write.snapshots)
        write.owed = [(row.id, write.snapshots[row.id]) for row in rows if row.provisioning_status == "ready"]
        write.outbox_written = owe and bool(write.owed)
        _after_commit(write)
    return write, rows


def _after_commit(write: CompanyWrite) -> None:
    # a company this write inserted had no row before it, so no worker holds an answer for it: nothing to drop
    changed = {
        snapshot.chatwoot_account_id
        for key, snapshot in write.snapshots.items()
        if snapshot.chatwoot_account_id and key not in write.inserted
    }
    lookup_cache.publish(None if write.forget_every_answer else changed | write.removed_accounts)
    write.announced, write.unannounced = _announce(write.owed, settle=write.outbox_written)


def _announce(owed: Sequence[tuple[int, CompanySnapshot]], settle: bool = True) -> tuple[list[CompanySnapshot], list[CompanySnapshot]]:
    """Send tenant_provisioned for each owed company, then settle its outbox row (if one was written); a failing
    receiver leaves that company pending, with the reason, for a retry. Returns (announced, not announced)."""
    if not owed:
        return [], []
    app = current_app._get_current_object()
    sent: list[tuple[int, CompanySnapshot]] = []
    failed: list[tuple[int, CompanySnapshot, str]] = []
    for pk, snapshot in owed:
        try:
            tenant_provisioned.send(app, company=snapshot)
            sent.append((pk, snapshot))
        except Exception as exc:
            reason = f"tenant_provisioned receiver failed ({type(exc).__name__})"
            logger.error("[Chatwoot Sync] Error: %s for %s", reason, snapshot.company_id)
            failed.append((pk, snapshot, reason))
    if failed:
        _record_failed_announcements(failed, [pk for pk, _ in sent])
    elif settle:
        _settle_announcements([pk for pk, _ in sent])
    return [snapshot for _, snapshot in sent], [snapshot for _, snapshot, _ in failed]


def _settle_announcements(company_pks: Sequence[int]) -> None:
    """Remove the outbox rows of signals that were sent: right after a request, in batches, by a background thread
    (off the request path); at once elsewhere (a command, the worker)."""
    if not company_pks:
        return
    if has_request_context():
        _settling.add(current_app._get_current_object(), dict.fromkeys(company_pks))
    else:
        _settle_now(company_pks)


def _settle_in_background(app: Flask, company_pks: dict[int, None]) -> None:
    with app.app_context():
        _settle_now(list(company_pks))


def _settle_now(company_pks: Sequence[int]) -> None:
    """One round trip without a durable commit: losing it in a crash only means the signal is sent once more
    (by the reconciler, after ANNOUNCE_GRACE_SECONDS), which receivers must accept anyway."""
    listed = ", ".join(str(int(pk)) for pk in company_pks)
    delete_sent = f"DELETE FROM {TenantAnnouncement.__tablename__} WHERE company_pk IN ({listed})"
    try:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"BEGIN; SET LOCAL synchronous_commit TO OFF; {delete_sent}; COMMIT")
            else:
                connection.exec_driver_sql(delete_sent)
    except SQLAlchemyError as exc:
        logger.warning("[Chatwoot Sync] Announcements sent but not settled (%s): reconcile sends them again", type(exc).__name__)


_settling = BackgroundBatches("outbox-settle", _settle_in_background, window_seconds=0.1)


def _record_failed_announcements(failed: Sequence[tuple[int, CompanySnapshot, str]], sent: Sequence[int]) -> None:
    reasons = {pk: reason for pk, _, reason in failed}
    with company_write():
        for company in db.session.scalars(select(Company).where(Company.id.in_(reasons))):
            record_failed_attempt(company, reasons[company.id])
        db.session.execute(delete(TenantAnnouncement).where(TenantAnnouncement.company_pk.in_([*reasons, *sent])))


def announce_owed(settled_seconds: float = ANNOUNCE_GRACE_SECONDS, batch_size: int = 1000) -> tuple[int, int]:
    """The reconciler's repair: send tenant_provisioned still owed from commits whose process died before sending
    it (outbox rows older than settled_seconds); returns (announced, not announced)."""
    announced = unannounced = 0
    cutoff = utcnow() - timedelta(seconds=settled_seconds)
    while True:
        pks = list(
            db.session.scalars(
                select(TenantAnnouncement.company_pk).where(TenantAnnouncement.created_at < cutoff).order_by(TenantAnnouncement.company_pk).limit(batch_size)
            )
        )
        if not pks:
            return announced, unannounced
        companies = db.session.scalars(select(Company).where(Company.id.in_(pks), Company.chatwoot_account_id.is_not(None)))
        owed = [(company.id, CompanySnapshot.of(company)) for company in companies if company.is_ready]
        stale = set(pks) - {pk for pk, _ in owed}  # no longer ready, or gone: nothing is owed
        if stale:
            db.session.execute(delete(TenantAnnouncement).where(TenantAnnouncement.company_pk.in_(stale)))
        db.session.commit()
        sent, failed = _announce(owed)
        announced += len(sent)
        unannounced += len(failed)


def record_failed_attempt(company: Company, reason: str) -> None:
    """Count a failed provisioning attempt with the configured limits (inside company_write())."""
    config = current_app.config
    company.record_failed_attempt(reason, config["RECONCILE_MAX_ATTEMPTS"], config["RECONCILE_BACKOFF_SECONDS"])


def company_row(account_id: int, company_name: str, chatwoot_status: str = "active", now: datetime | None = None) -> dict[str, Any]:
    """The columns of a new company for a Chatwoot account, created `now` (default: this moment); inserted ready
    (its services are provisioned before the commit, which marks it pending if they fail)."""
    names = tenant_names(account_id)
    now = now or utcnow()
    return {
        "company_id": names.company_id,
        "company_name": company_name,
        "chatwoot_account_id": str(account_id),
        "redis_prefix": names.redis_prefix,
        "vectorstore_index": names.vectorstore_index,
        "provisioning_status": "ready",
        "chatwoot_status": chatwoot_status,
        "created_at": now,
        "updated_at": now,
    }


ROW_COLUMNS = (
    "company_id", "company_name", "chatwoot_account_id", "redis_prefix", "vectorstore_index",
    "provisioning_status", "chatwoot_status", "created_at", "updated_at",
)
_insert_statements: dict[int, Any] = {}


def _insert_statement(count: int) -> Any:
    """INSERT of `count` rows, compiled once per count (SQLAlchemy cannot cache an ORM INSERT ... ON CONFLICT).
    No conflict target on purpose: with one, a concurrent duplicate can still fail on the other unique index
    (company_id) instead of doing nothing. Valid on PostgreSQL and SQLite alike."""
    statement = _insert_statements.get(count)
    if statement is None:
        values = ", ".join(
            "(" + ", ".join(f":{column}_{row}" for column in ROW_COLUMNS[:6]) + f", 0, :chatwoot_status_{row}, :created_at_{row}, :updated_at_{row})"
            for row in range(count)
        )
        statement = select(Company).from_statement(
            text(
                f"INSERT INTO companies ({', '.join(ROW_COLUMNS[:6])}, provisioning_attempts, chatwoot_status, created_at, updated_at)"
                f" VALUES {values} ON CONFLICT DO NOTHING RETURNING {', '.join(Company.__table__.columns.keys())}"
            )
        )
        if count <= 8 or count % 100 == 0:
            _insert_statements[count] = statement
    return statement


SET_BASED_FROM = 8  # more rows than this: one set-based statement of constant text (the rows as one JSON value)
_SET_INSERT_KEYS = tuple(f"c{index}" for index in range(len(ROW_COLUMNS)))  # short JSON keys, in ROW_COLUMNS order
_ROWS_AS_RECORDS = (
    "json_to_recordset(CAST(:rows AS json)) AS r("
    + ", ".join(f"{key} {'timestamptz' if column.endswith('_at') else 'text'}" for key, column in zip(_SET_INSERT_KEYS, ROW_COLUMNS))
)
_SET_INSERT = (
    f"INSERT INTO companies ({', '.join(ROW_COLUMNS[:6])}, provisioning_attempts, chatwoot_status, created_at, updated_at)"
    f" SELECT {', '.join(_SET_INSERT_KEYS[:6])}, 0, {', '.join(_SET_INSERT_KEYS[6:])}"
    f" FROM {_ROWS_AS_RECORDS}) ON CONFLICT DO NOTHING RETURNING "
)
SET_INSERT = text(_SET_INSERT + ", ".join(Company.__table__.columns.keys()))
SET_INSERT_KEYS = text(_SET_INSERT + "chatwoot_account_id, id")


def _set_insert_parameters(rows: Sequence[dict[str, Any]], latencies_ms: Sequence[float] | None = None) -> dict[str, str]:
    """The rows as one JSON value, short keys (json_to_recordset reads them faster than array elements, and they
    cost less to encode than column names); datetimes as ISO 8601, which PostgreSQL reads as timestamptz. With
    latencies_ms, each row also carries its delivery's latency (key "l")."""
    isoformat = cache(datetime.isoformat)  # a batch shares one moment: formatted once
    values = [
        dict(zip(_SET_INSERT_KEYS, (*(row[column] for column in ROW_COLUMNS[:7]), isoformat(row["created_at"]), isoformat(row["updated_at"]))))
        for row in rows
    ]
    for value, latency_ms in zip(values, latencies_ms or ()):
        value["l"] = round(latency_ms, 3)
    return {"rows": json.dumps(values, separators=(",", ":"))}


# create_alone() for many rows; inserted in account order, so two such statements sharing accounts cannot deadlock
CREATE_TOGETHER = text(
    f"WITH input AS (SELECT * FROM {_ROWS_AS_RECORDS}, l float8)),"
    f" company AS (INSERT INTO companies ({', '.join(ROW_COLUMNS[:6])}, provisioning_attempts, chatwoot_status, created_at, updated_at)"
    f"  SELECT {', '.join(_SET_INSERT_KEYS[:6])}, 0, {', '.join(_SET_INSERT_KEYS[6:])} FROM input ORDER BY c2"
    "  ON CONFLICT DO NOTHING RETURNING *),"
    f" event AS (INSERT INTO {SyncEvent.__tablename__} (chatwoot_account_id, company_id, outcome, created, latency_ms, error, created_at)"
    "  SELECT company.chatwoot_account_id, company.company_id, 'success', true, input.l, company.provisioning_error,"
    "  company.created_at FROM company JOIN input ON input.c2 = company.chatwoot_account_id),"
    f" owed AS (INSERT INTO {TenantAnnouncement.__tablename__} (company_pk, created_at)"
    "  SELECT id, created_at FROM company WHERE provisioning_status = 'ready' AND :owe)"
    f" SELECT {', '.join('company.' + name for name in Company.__table__.columns.keys())} FROM company"
)


CREATED_ALONE_COLUMNS = (
    "company_id", "company_name", "chatwoot_account_id", "redis_prefix", "vectorstore_index", "provisioning_status",
    "provisioning_error", "provisioning_attempts", "next_provisioning_at", "chatwoot_status", "created_at", "updated_at",
)

# the company, its first sync event (with the error its services met, if any) and the outbox row when it is ready
# and a receiver is connected:
# data-modifying WITH clauses all run, once, in the one statement; nothing is written for an account that has one
CREATE_ALONE = text(
    f"WITH company AS (INSERT INTO companies ({', '.join(CREATED_ALONE_COLUMNS)})"
    f" VALUES ({', '.join(':' + column for column in CREATED_ALONE_COLUMNS)}) ON CONFLICT DO NOTHING RETURNING *),"
    f" event AS (INSERT INTO {SyncEvent.__tablename__} (chatwoot_account_id, company_id, outcome, created, latency_ms, error, created_at)"
    "  SELECT chatwoot_account_id, company_id, 'success', true, :latency_ms, provisioning_error, created_at FROM company),"
    f" owed AS (INSERT INTO {TenantAnnouncement.__tablename__} (company_pk, created_at)"
    "  SELECT id, created_at FROM company WHERE provisioning_status = 'ready' AND :owe)"
    f" SELECT {', '.join('company.' + name for name in Company.__table__.columns.keys())} FROM company"
)


def _flatten(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {f"{column}_{index}": row[column] for index, row in enumerate(rows) for column in ROW_COLUMNS}


def attach_write_path(session: Any) -> None:
    """Attach, once per session factory, the hooks that track ORM changes of companies inside company_write()
    and refuse them outside it."""
    if event.contains(session, "before_flush", _track_flushed_companies):
        return
    event.listen(session, "before_flush", _track_flushed_companies)
    event.listen(session, "do_orm_execute", _refuse_untracked_statements)


def _track_flushed_companies(session: Session, flush_context: Any, instances: Any) -> None:
    touched = [obj for obj in (*session.new, *session.dirty, *session.deleted) if isinstance(obj, Company)]
    if not touched:
        return
    write = _current_write.get()
    if write is None:
        raise WriteOutsideWritePath(f"{len(touched)} companies changed outside company_write()")
    for company in touched:
        if company in session.deleted:
            raise WriteOutsideWritePath("delete companies with CompanyWrite.remove()")
        history = inspect(company).attrs.provisioning_status.history
        was = history.deleted[0] if history.deleted else company.provisioning_status
        write._track(company, was_ready=company not in session.new and was == "ready")


def _refuse_untracked_statements(state: ORMExecuteState) -> None:
    if state.execution_options.get(WRITE_PATH_OPTION) or not (state.is_insert or state.is_update or state.is_delete):
        return
    if any(mapper.class_ is Company for mapper in state.all_mappers) or _writes_table(state.statement):
        raise WriteOutsideWritePath("bulk statements on companies bypass the lookup cache: use company_write()")


def _writes_table(statement: Any) -> bool:
    table = getattr(statement, "table", None)
    return table is Company.__table__


def companies_in(account_ids: Iterable[str]) -> dict[str, Company]:
    """The companies of these Chatwoot accounts, by account id (for a write to change)."""
    ids = list(account_ids)
    return {company.chatwoot_account_id: company for company in db.session.scalars(select(Company).where(one_of(Company.chatwoot_account_id, ids)))}
