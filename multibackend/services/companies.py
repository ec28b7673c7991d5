"""The one write path for companies.

Every change to a company (insert, status change, rename, mark, restore, removal of a duplicate) happens inside
`company_write()`, which commits once and then, after the commit, publishes the lookup answer of every company
it changed and sends `tenant_provisioned` for every company that became ready. Inside the block, change
companies through the ORM (the Company methods) or through the block's own insert and delete methods; anything
else that writes our `companies` table through the session (a bulk UPDATE, a raw INSERT) is refused, and the
tests watch every statement for writes that bypass this module."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from blinker import Namespace
from flask import current_app
from sqlalchemy import delete, event, inspect, select, text
from sqlalchemy.orm import ORMExecuteState, Session

from multibackend.clock import utcnow
from multibackend.extensions import db
from multibackend.models import Company, CompanySnapshot
from multibackend.services import lookup_cache
from multibackend.services.tenant_naming import tenant_names

logger = logging.getLogger(__name__)

signals = Namespace()
#: Sent after a company's tenant services are ready (sender: the app; `company`: a CompanySnapshot). Receivers
#: (the host backend) create their own per-tenant resources, e.g. the real vector index, and must be
#: idempotent: a failing receiver leaves the company pending, and the retry sends the signal again.
tenant_provisioned = signals.signal("tenant-provisioned")

WRITE_PATH_OPTION = "multibackend_company_write"

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
    announced: list[Company] = field(default_factory=list)
    unannounced: list[Company] = field(default_factory=list)

    def insert_if_absent(self, rows: Sequence[dict[str, Any]]) -> list[Company]:
        """INSERT ... ON CONFLICT DO NOTHING RETURNING: the companies this statement created (none for accounts
        that already have one), whatever runs concurrently."""
        if not rows:
            return []
        inserted = list(db.session.scalars(_insert_statement(len(rows)), _flatten(rows), execution_options={WRITE_PATH_OPTION: True}))
        for company in inserted:
            self._track(company, was_ready=False)
        return inserted

    def remove(self, company_ids: Sequence[int]) -> None:
        """Delete these rows (duplicates only: companies are otherwise marked, never removed)."""
        rows = db.session.execute(
            delete(Company).where(Company.id.in_(company_ids)).returning(Company.chatwoot_account_id),
            execution_options={WRITE_PATH_OPTION: True, "synchronize_session": False},
        )
        self.removed_accounts.update(account for (account,) in rows if account)

    def changes_schema(self) -> None:
        """The block runs DDL and upgrade statements on companies: every cached lookup answer is dropped after it."""
        self.forget_every_answer = True

    def _track(self, company: Company, was_ready: bool) -> None:
        self.ready_before.setdefault(id(company), was_ready)
        self.changed[id(company)] = company

    @property
    def became_ready(self) -> list[Company]:
        return [company for key, company in self.changed.items() if company.is_ready and not self.ready_before[key]]


@contextlib.contextmanager
def company_write(dry_run: bool = False) -> Iterator[CompanyWrite]:
    """The one write path: commit once (roll back for a dry run or on error); after the commit publish every
    changed company's lookup answer and announce the ones that became ready."""
    if _current_write.get() is not None:
        raise RuntimeError("company_write() blocks do not nest: do the whole change in one block")
    write = CompanyWrite(dry_run=dry_run)
    token = _current_write.set(write)
    try:
        yield write
        db.session.flush()
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


def write_in_progress() -> bool:
    """Whether this thread is inside company_write() (the tests' statement watch asks)."""
    return _current_write.get() is not None


def _after_commit(write: CompanyWrite) -> None:
    if write.forget_every_answer:
        lookup_cache.forget_all()
    lookup_cache.forget(write.removed_accounts)
    lookup_cache.publish(
        (company.chatwoot_account_id, CompanySnapshot.of(company)) for company in write.changed.values() if company.chatwoot_account_id
    )
    _announce(write)


def _announce(write: CompanyWrite) -> None:
    """Send tenant_provisioned for each company that became ready; a failing receiver leaves that company
    pending, with the reason, for a retry."""
    app = current_app._get_current_object()
    failures: list[tuple[Company, str]] = []
    for company in write.became_ready:
        try:
            tenant_provisioned.send(app, company=CompanySnapshot.of(company))
            write.announced.append(company)
        except Exception as exc:
            reason = f"tenant_provisioned receiver failed ({type(exc).__name__})"
            logger.error("[Chatwoot Sync] Error: %s for %s", reason, company.company_id)
            failures.append((company, reason))
    if failures:
        write.unannounced.extend(company for company, _ in failures)
        with company_write():
            for company, reason in failures:
                record_failed_attempt(company, reason)


def record_failed_attempt(company: Company, reason: str) -> None:
    """Count a failed provisioning attempt with the configured limits (inside company_write())."""
    config = current_app.config
    company.record_failed_attempt(reason, config["RECONCILE_MAX_ATTEMPTS"], config["RECONCILE_BACKOFF_SECONDS"])


def company_row(account_id: int, company_name: str, chatwoot_status: str = "active") -> dict[str, Any]:
    """The columns of a new company for a Chatwoot account; inserted ready (its services are provisioned before
    the commit, which marks it pending if they fail)."""
    names = tenant_names(account_id)
    now = utcnow()
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
                f" VALUES {values} ON CONFLICT DO NOTHING RETURNING *"
            )
        )
        if count <= 8 or count % 100 == 0:
            _insert_statements[count] = statement
    return statement


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
    return {company.chatwoot_account_id: company for company in db.session.scalars(select(Company).where(Company.chatwoot_account_id.in_(ids)))}
