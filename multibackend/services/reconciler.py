"""The reconciler: brings companies and tenant services to what Chatwoot and PostgreSQL say they should be.

Safe to run repeatedly and from several instances at once: a PostgreSQL advisory lock lets one run at a time."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ContextManager, TypeVar

import redis
from flask import current_app
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from multibackend.clock import utcnow
from multibackend.extensions import db, get_redis, one_of
from multibackend.logging_setup import printable
from multibackend.models import Company, TenantAnnouncement
from multibackend.services import companies, dashboard_tabs, delivery_spool, sync_metrics, tenant_provisioning
from multibackend.services.companies import companies_in, company_row, company_write
from multibackend.services.doctor import chatwoot_command
from multibackend.services.chatwoot_source import ChatwootAccount, ChatwootDatabaseSource, ChatwootSource, SourceError, chatwoot_source

logger = logging.getLogger(__name__)
T = TypeVar("T")

RECONCILE_LOCK_KEY = 4242002
MAX_DELETION_CHECKS_PER_RUN = 200
LOGGED_IDS = 20  # company ids named in a backfill's log line

Advance = Callable[[int], None]
Progress = Callable[[str, "int | None"], ContextManager[Advance]]


def no_progress(label: str, total: int | None) -> ContextManager[Advance]:
    return contextlib.nullcontext(lambda amount: None)


@dataclass
class ReconcileSummary:
    dry_run: bool = False
    locked_out: bool = False
    replayed: int = 0
    created: int = 0
    renamed: int = 0
    marked: int = 0
    provisioned: int = 0
    announced: int = 0
    restored: int = 0
    tabs_created: int = 0
    tabs_updated: int = 0
    tabs_reowned: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    #: companies whose namespace this run has just written (restore_namespaces need not read Redis for them)
    written_namespaces: set[int] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.problems

    def problem(self, text_: str, failed: int = 1) -> None:
        self.problems.append(text_)
        self.failed += failed
        logger.error("[Chatwoot Sync] Error: %s", text_)

    def as_line(self) -> str:
        verb = "would be " if self.dry_run else ""
        counts = ", ".join(
            f"{getattr(self, name)} {verb}{name}"
            for name in ("replayed", "created", "renamed", "marked", "provisioned", "announced", "restored")
        )
        tabs = f"{self.tabs_created} {verb}created, {self.tabs_updated} {verb}updated"
        if self.tabs_reowned:
            tabs += f" ({self.tabs_reowned} given a current administrator as owner)"
        return f"{counts}, {self.failed} failed; company tabs: {tabs}"


def reconcile(dry_run: bool = False, progress: Progress = no_progress) -> ReconcileSummary:
    """Replay the spool, backfill/rename/mark from Chatwoot, finish provisioning, rebuild Redis namespaces."""
    summary = ReconcileSummary(dry_run=dry_run)
    try:
        with reconcile_lock() as acquired:
            if not acquired:
                summary.locked_out = True
                return summary
            for step in (replay_spool, sync_with_chatwoot, finish_provisioning, announce_owed, restore_namespaces, sync_dashboard_tabs, fold_metrics):
                _run_step(step, summary, dry_run, progress)
    except SQLAlchemyError as exc:
        summary.problem(f"database unavailable ({type(exc).__name__}): nothing reconciled, the spool is kept")
    logger.info("[Chatwoot Sync] Reconcile: %s", summary.as_line())
    return summary


def _run_step(step: Callable[[ReconcileSummary, bool, Progress], None], summary: ReconcileSummary, dry_run: bool, progress: Progress) -> None:
    """One step; its failure is reported and the next step still runs."""
    try:
        step(summary, dry_run, progress)
    except SQLAlchemyError as exc:
        db.session.rollback()
        summary.problem(f"{step.__name__}: database unavailable ({type(exc).__name__}: {_driver_message(exc)})")
    except redis.RedisError as exc:
        summary.problem(f"{step.__name__}: Redis unavailable ({type(exc).__name__})")
    except Exception as exc:  # a bad row must not stop the worker: report it, the next steps still run
        db.session.rollback()
        logger.exception("[Chatwoot Sync] Error: %s failed", step.__name__)
        summary.problem(f"{step.__name__}: {type(exc).__name__} (see the log)")


def _driver_message(exc: SQLAlchemyError) -> str:
    """The database's own words (first line), without the statement or its parameters."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return printable(lines[0], 160) if lines else type(original).__name__


@contextlib.contextmanager
def reconcile_lock() -> Iterator[bool]:
    """Hold PostgreSQL's advisory lock for the run (yields False when another instance holds it)."""
    if db.engine.dialect.name != "postgresql":
        yield True
        return
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        acquired = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": RECONCILE_LOCK_KEY}).scalar())
        try:
            yield acquired
        finally:
            if acquired:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RECONCILE_LOCK_KEY})


def replay_spool(summary: ReconcileSummary, dry_run: bool, progress: Progress) -> None:
    """Deliveries that arrived while PostgreSQL was down become companies now (idempotently)."""
    client = get_redis()
    if client is None:
        return
    if dry_run:
        summary.replayed = delivery_spool.spool_length(client)
        return

    def handle(delivery: delivery_spool.SpooledDelivery) -> None:
        pending = delivery_spool.spooled_name(client, delivery.account_id) is not None
        tenant_provisioning.provision_account(delivery.account_id, delivery.company_name, record_sync=pending)
        delivery_spool.forget_pending(client, delivery.account_id)

    replayed, failed = delivery_spool.replay_spool(client, handle)
    summary.replayed += replayed
    if failed:
        waiting = delivery_spool.spool_length(client)
        summary.problem(f"spool replay stopped: the database refused a write; {waiting} deliveries stay spooled")


def sync_with_chatwoot(summary: ReconcileSummary, dry_run: bool, progress: Progress) -> None:
    """Create the companies of Chatwoot accounts missing here, follow renames, mark suspended and gone accounts."""
    source = chatwoot_source()
    if source is None:
        return
    seen: set[int] = set()
    listing_started = utcnow()  # companies created after this may be missing from the listing: never "gone"
    try:
        with progress("Chatwoot accounts", source.count()) as advance:
            for batch in read_ahead(source.accounts(current_app.config["RECONCILE_BATCH_SIZE"])):
                seen.update(account.id for account in batch)
                _apply_accounts(batch, summary, dry_run)
                advance(len(batch))
    except SourceError as exc:
        summary.problem(f"{source.description} could not be read: {exc}")
        return
    _mark_gone_accounts(source, seen, listing_started, summary, dry_run)


def read_ahead(batches: Iterator[T]) -> Iterator[T]:
    """The same batches, in order, each next one read on a thread (in this app's context) while the caller writes
    the current one: Chatwoot is read while PostgreSQL and Redis are busy with the write."""
    app = current_app._get_current_object()

    def read_next() -> T | None:
        with app.app_context():
            return next(batches, None)

    pool = ThreadPoolExecutor(1, thread_name_prefix="chatwoot-read-ahead")
    try:
        pending = pool.submit(read_next)
        while (batch := pending.result()) is not None:
            pending = pool.submit(read_next)
            yield batch
    finally:
        pool.shutdown(wait=True)
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _apply_accounts(batch: list[ChatwootAccount], summary: ReconcileSummary, dry_run: bool) -> None:
    """One write per batch: follow renames and marks of known accounts, create (and provision) the missing ones."""
    with company_write(dry_run=dry_run) as write:
        existing = companies_in(str(account.id) for account in batch)
        for account in batch:
            company = existing.get(str(account.id))
            if company is not None:
                _follow_account(company, account, summary)
        now = utcnow()
        missing = [company_row(account.id, account.name, account.status, now) for account in batch if str(account.id) not in existing]
        if dry_run:
            summary.created += len(missing)
            return
        created = tenant_provisioning.create_provisioned(write, missing)
    summary.written_namespaces.update(pk for pk, company in created.items() if company.provisioning_status == "ready")
    if created:  # one line per batch: a backfill of thousands must not spend its time logging
        ids = [company.company_id for company in created.values()]
        shown = ", ".join(ids[:LOGGED_IDS]) + (f" and {len(ids) - LOGGED_IDS} more" if len(ids) > LOGGED_IDS else "")
        logger.info("[Chatwoot Sync] Backfilled %d companies whose webhook never arrived: %s", len(ids), shown)
    summary.created += len(created)
    _let_go(write.changed.values())


def _let_go(companies: Iterable[Company]) -> None:
    """Keep the session small on long runs by dropping our own objects (never the host's) from it."""
    companies = list(companies)
    if len(db.session.identity_map) <= len(companies) and not db.session.new and not db.session.dirty:
        db.session.expunge_all()  # the session holds nothing but these: one call instead of one per object
        return
    for company in companies:
        if company in db.session:
            db.session.expunge(company)


def _follow_account(company: Company, account: ChatwootAccount, summary: ReconcileSummary) -> None:
    old_name = company.company_name
    if company.rename(account.name):
        verb = "Would rename" if summary.dry_run else "Renamed"
        logger.info("[Chatwoot Sync] %s %s: %r -> %r", verb, company.company_id, old_name, account.name)
        summary.renamed += 1
    _mark(company, account.status, summary)


def _mark(company: Company, status: str, summary: ReconcileSummary) -> None:
    if company.mark(status):
        verb = "Would mark" if summary.dry_run else "Marked"
        logger.info("[Chatwoot Sync] %s %s: Chatwoot account is %s", verb, company.company_id, status)
        summary.marked += 1


def _mark_gone_accounts(
    source: ChatwootSource, seen: set[int], listed_at: datetime, summary: ReconcileSummary, dry_run: bool
) -> None:
    """Companies whose account Chatwoot no longer has are marked deleted (never removed)."""
    candidates = [company for company in _companies_not_deleted(listed_at) if company.account_number not in seen]
    if candidates and not seen:
        summary.problem(f"{source.description} lists no accounts at all: not marking {len(candidates)} companies deleted")
        return
    if not source.complete:
        checked = candidates[:MAX_DELETION_CHECKS_PER_RUN]
        gone = source.confirm_deleted([company.account_number for company in checked], timeout=5)
        candidates = [company for company in checked if company.account_number in gone]
    with company_write(dry_run=dry_run):
        for company in candidates:
            _mark(company, "deleted", summary)


def _companies_not_deleted(created_before: datetime) -> Iterator[Company]:
    last_id = 0
    batch_size = current_app.config["RECONCILE_BATCH_SIZE"]
    while True:
        batch = list(
            db.session.scalars(
                select(Company)
                .where(
                    Company.id > last_id,
                    Company.chatwoot_status != "deleted",
                    Company.chatwoot_account_id.is_not(None),
                    Company.created_at < created_before,
                )
                .order_by(Company.id)
                .limit(batch_size)
            )
        )
        if not batch:
            return
        last_id = batch[-1].id
        yield from (company for company in batch if company.account_number is not None)


def finish_provisioning(summary: ReconcileSummary, dry_run: bool, progress: Progress) -> None:
    """Retry the Chatwoot companies whose provisioning is unfinished and due (attempt counts and backoff apply);
    the host's own companies (no Chatwoot account) are never touched."""
    config = current_app.config
    due = Company.due_for_provisioning(config["RECONCILE_MAX_ATTEMPTS"], utcnow())
    last_id = 0
    while True:
        with company_write(dry_run=dry_run) as write:
            batch = list(
                db.session.scalars(
                    select(Company)
                    .where(due, Company.chatwoot_account_id.is_not(None), Company.id > last_id)
                    .order_by(Company.id)
                    .limit(config["RECONCILE_BATCH_SIZE"])
                    .with_for_update(skip_locked=True)
                )
            )
            if batch and not dry_run:
                tenant_provisioning.provision_services(batch)
                summary.written_namespaces.update(company.id for company in batch if company.is_ready)
        if not batch:
            break
        last_id = batch[-1].id
        if dry_run:
            summary.provisioned += len(batch)
            continue
        summary.provisioned += len(write.announced)
        not_ready = len(batch) - len(write.announced)
        if not_ready:
            summary.problem(f"{not_ready} companies could not be provisioned yet", failed=not_ready)
    _report_given_up(summary)


def _report_given_up(summary: ReconcileSummary) -> None:
    max_attempts = current_app.config["RECONCILE_MAX_ATTEMPTS"]
    given_up = db.session.scalar(select(func.count()).where(Company.gave_up(max_attempts)))
    db.session.rollback()
    if given_up:
        summary.problem(
            f"{given_up} companies gave up after {max_attempts} attempts "
            f"(see provisioning_error; retry with `{chatwoot_command()} reconcile --retry-failed`)",
            failed=0,
        )


def retry_failed() -> int:
    """Give companies that gave up a fresh set of attempts; returns how many."""
    with company_write():
        companies = list(db.session.scalars(select(Company).where(Company.provisioning_status == "failed")))
        for company in companies:
            company.restart_attempts()
    return len(companies)


def announce_owed(summary: ReconcileSummary, dry_run: bool, progress: Progress) -> None:
    """Send tenant_provisioned still owed by a process that died between its commit and the signal (outbox)."""
    if dry_run:
        summary.announced = db.session.scalar(select(func.count()).select_from(TenantAnnouncement)) or 0
        return
    announced, unannounced = companies.announce_owed()
    summary.announced += announced
    if unannounced:
        summary.problem(f"{unannounced} tenant_provisioned receivers failed; those companies will be retried", failed=unannounced)


def sync_dashboard_tabs(summary: ReconcileSummary, dry_run: bool, progress: Progress) -> None:
    """Our company tab in every Chatwoot account: created where missing, updated where the URL or title changed."""
    source = chatwoot_source()
    if dashboard_tabs.tabs_disabled_because() is not None or not isinstance(source, ChatwootDatabaseSource):
        return
    skipped: dict[int, str] = {}
    try:
        with progress("Company tabs", source.count()) as advance:
            for batch in read_ahead(source.accounts(current_app.config["RECONCILE_BATCH_SIZE"])):
                changes = dashboard_tabs.ensure_tabs([account.id for account in batch], dry_run=dry_run)
                summary.tabs_created += len(changes.created)
                summary.tabs_updated += len(changes.updated)
                summary.tabs_reowned += len(changes.reowned)
                skipped.update(changes.skipped)
                advance(len(batch))
    except (dashboard_tabs.TabError, SourceError) as exc:
        summary.problem(f"company tabs: {exc}")
        return
    for reason, accounts in dashboard_tabs.group_by_reason(skipped).items():
        logger.warning("[Chatwoot Sync] Company tabs: %s Chatwoot accounts skipped, %s: %s", len(accounts), reason,
                       ", ".join(map(str, accounts[:20])) + (" ..." if len(accounts) > 20 else ""))


def fold_metrics(summary: ReconcileSummary, dry_run: bool, progress: Progress) -> None:
    """Fold settled sync events into the running totals, so metrics reads stay cheap and never write."""
    if not dry_run:
        sync_metrics.fold_sync_totals()


def restore_namespaces(summary: ReconcileSummary, dry_run: bool, progress: Progress) -> None:
    """Rewrite every ready Chatwoot company's Redis namespace that is missing or differs from PostgreSQL (Redis is
    derived); the ones this run has just written are not read back."""
    client = get_redis()
    if client is None:
        return
    total = db.session.scalar(select(func.count()).where(*READY_CHATWOOT_COMPANY))
    with progress("Redis namespaces", total) as advance:
        for listed, companies in _ready_companies_to_check(summary.written_namespaces):
            stale = _stale_namespaces(client, companies)
            if stale and not dry_run:
                pipeline = client.pipeline(transaction=False)
                tenant_provisioning.write_tenant_namespaces(pipeline, stale)
                pipeline.execute()
            summary.restored += len(stale)
            advance(listed)
    db.session.rollback()


NAMESPACE_COLUMNS = (
    Company.id, Company.company_id, Company.company_name, Company.chatwoot_account_id, Company.redis_prefix,
    Company.vectorstore_index, Company.chatwoot_status, Company.created_at,
)


READY_CHATWOOT_COMPANY = (Company.provisioning_status == "ready", Company.chatwoot_account_id.is_not(None))


def _ready_companies_to_check(written: set[int]) -> Iterator[tuple[int, list[Any]]]:
    """Batches of ready Chatwoot companies as plain rows (what a namespace holds; no ORM objects): (how many the
    batch lists, the rows to check). Rows of the companies in `written` are never read: after a backfill, most of
    each batch are, so the batch's keys are listed first and only the others read."""
    batch_size = current_app.config["RECONCILE_BATCH_SIZE"]
    last_id = 0
    while True:
        after = (*READY_CHATWOOT_COMPANY, Company.id > last_id)
        if not written:
            rows = list(db.session.execute(select(*NAMESPACE_COLUMNS).where(*after).order_by(Company.id).limit(batch_size)))
            if not rows:
                return
            last_id = rows[-1].id
            yield len(rows), rows
            continue
        pks = list(db.session.scalars(select(Company.id).where(*after).order_by(Company.id).limit(batch_size)))
        if not pks:
            return
        last_id = pks[-1]
        unwritten = [pk for pk in pks if pk not in written]
        rows = list(db.session.execute(select(*NAMESPACE_COLUMNS).where(one_of(Company.id, unwritten)))) if unwritten else []
        yield len(pks), rows


def _stale_namespaces(client: redis.Redis, companies: list[Any]) -> list[Any]:
    if not companies:
        return []
    pipeline = client.pipeline(transaction=False)
    for company in companies:
        pipeline.hmget(tenant_provisioning.tenant_key_of(company), "company_name", "chatwoot_status")
    pipeline.smismember(tenant_provisioning.VECTORSTORE_REGISTRY_KEY, [c.vectorstore_index for c in companies])
    *stored, registered = pipeline.execute()
    return [
        company
        for company, (name, status), index_registered in zip(companies, stored, registered)
        if name != company.company_name or status != company.chatwoot_status or not index_registered
    ]
