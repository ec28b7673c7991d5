"""Tenant provisioning: one company per Chatwoot account, its Redis namespace and vector-store index name."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import redis
from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError

from multibackend.clock import iso_utc
from multibackend.extensions import db, get_redis, is_transient, rows_alone, run_alone
from multibackend.models import Company, CompanySnapshot
from multibackend.round_trips import Ask, shared_round_trips
from multibackend.services import sync_metrics
from multibackend.services.companies import (
    CompanyWrite,
    can_create_alone,
    companies_in,
    company_row,
    company_write,
    create_alone,
    create_together,
    record_failed_attempt,
    tenant_provisioned,
)
from multibackend.services.tenant_naming import tenant_key, tenant_names

logger = logging.getLogger(__name__)

__all__ = ["CompanySnapshot", "ProvisioningResult", "find_company", "provision_account", "tenant_provisioned"]

VECTORSTORE_REGISTRY_KEY = "multibackend:vectorstore:indexes"


@dataclass(frozen=True)
class ProvisioningResult:
    company: CompanySnapshot
    created: bool
    redis: str  # "ready", "skipped" (no REDIS_URL), "failed" or "unchanged" (already provisioned)


def provision_account(
    account_id: int, company_name: str, *, chatwoot_status: str = "active", record_sync: bool = True
) -> ProvisioningResult:
    """Create the company if absent and bring its tenant services up; safe to re-run, one commit.

    A delivery (record_sync) of a new account on PostgreSQL takes one Redis pipeline and one statement
    (create_alone); anything else takes the general write. Raises SQLAlchemyError, with nothing written (a
    namespace written for a company the database then refused is removed again), when the database cannot take it."""
    started = time.perf_counter()
    names = tenant_names(account_id)
    logger.info("[Chatwoot Sync] Creating company: %s", names.company_id)
    try:
        fast = record_sync and can_create_alone()
        result = _create_delivered(company_row(account_id, company_name, chatwoot_status), started) if fast else None
        if result is None:
            result = _provision_in_write(account_id, company_name, chatwoot_status, started if record_sync else None, namespace_written=fast)
    except SQLAlchemyError as exc:
        logger.error(
            "[Chatwoot Sync] Error: database error (%s) while creating %s", type(exc).__name__, names.company_id,
            extra={"account_id": account_id, "outcome": "database_error"},
        )
        raise
    _log_outcome(result.company, result.created)
    return result


def _create_delivered(row: dict[str, Any], started: float) -> ProvisioningResult | None:
    """The delivered account's company, created together with the other new accounts this process is creating at
    the same moment (one Redis pipeline, one statement and one durable commit for all of them; each delivery is
    still answered only after its own company is committed), or alone; None when the account already has one."""
    ask = None
    if get_redis() is not None:  # another delivery of the same account already waiting: this one creates alone
        ask = shared_round_trips("creations", create_together_now).ask(row["chatwoot_account_id"], (row, started), share_key=False)
    if ask is None or ask.alone:
        return _create_alone(row, started, ask.result if ask is not None else None)
    if ask.error is not None:
        raise ask.error
    return ask.result


def _create_alone(row: dict[str, Any], started: float, redis_failure: redis.RedisError | None = None) -> ProvisioningResult | None:
    """Services first (one pipeline), then the company with its sync event in one statement; None when the account
    already has a company."""
    draft, redis_step = _provisioned_draft(row, redis_failure)
    try:
        write = create_alone(draft, _elapsed_ms(started))
    except SQLAlchemyError as exc:
        if redis_step == "ready" and not is_transient(exc):  # a replay would fail the same way: leave nothing
            forget_namespaces([draft])
        raise
    if write is None:
        return None
    snapshot = next(iter(write.snapshots.values()))
    if write.unannounced:  # a receiver failed: the company is pending again
        snapshot = find_company(int(row["chatwoot_account_id"])) or snapshot
    return ProvisioningResult(snapshot, True, redis_step)


def _provisioned_draft(row: dict[str, Any], redis_failure: redis.RedisError | None = None) -> tuple[Any, str]:
    """A delivered company's draft once its services were provisioned, and how that went (see provision_services):
    plain attributes when its one pipeline goes through (no ORM object: the usual case costs less), else a Company
    whose status says why (redis_failure: Redis was just found unreachable for it, not tried again)."""
    client = get_redis()
    if client is None:
        company = Company(**row)
        return company, provision_services([company])
    if redis_failure is None:
        draft = _ready_draft(row)
        try:
            _send_namespaces(client, [draft])
            return draft, "ready"
        except redis.RedisError as exc:
            redis_failure = exc
    company = Company(**row)
    return company, _record_unreachable_redis([company], redis_failure)


def _ready_draft(row: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(**row, provisioning_error=None, provisioning_attempts=0, next_provisioning_at=None)


def create_together_now(asks: list[Ask]) -> None:
    """Create the asked accounts' companies (ask.value: row and start), setting each ask's result (None: the account
    already had a company), error, or `alone` with, as result, the Redis error its own creation must record."""
    try:
        if len(asks) == 1:
            asks[0].result = _create_alone(*asks[0].value)
            return
        drafts = [_ready_draft(row) for row, _ in (ask.value for ask in asks)]
        try:
            _send_namespaces(get_redis(), drafts)
        except redis.RedisError as exc:
            for ask in asks:
                ask.alone, ask.result = True, exc
            return
        try:
            write, created = create_together(drafts, [_elapsed_ms(started) for _, started in (ask.value for ask in asks)])
        except SQLAlchemyError as exc:
            for ask in asks:  # a transient failure is every delivery's; a refusal may be one row's: each tries alone
                ask.error, ask.alone = exc, not is_transient(exc)
            return
        unannounced = {snapshot.company_id for snapshot in write.unannounced}
        for ask, draft in zip(asks, drafts):
            pk = created.get(draft.chatwoot_account_id)
            if pk is not None:
                snapshot = write.snapshots[pk]
                if snapshot.company_id in unannounced:  # a receiver failed: the company is pending again
                    snapshot = find_company(int(draft.chatwoot_account_id)) or snapshot
                ask.result = ProvisioningResult(snapshot, True, "ready")
    except Exception as exc:
        for ask in asks:
            if ask.result is None and ask.error is None:
                ask.error = exc


def _provision_in_write(
    account_id: int, company_name: str, chatwoot_status: str, sync_started: float | None, namespace_written: bool
) -> ProvisioningResult:
    """The general write (one company_write()): insert if absent, provision what is not ready, record the sync."""
    with company_write() as write:
        company, created = _company_for(write, account_id, company_name, chatwoot_status)
        if created or not company.is_ready:
            redis_step = provision_services([company])
        else:
            redis_step = "unchanged"
            if namespace_written:  # by a delivery that lost the race: the company's own values win
                rewrite_namespaces([company])
        if sync_started is not None:
            sync_metrics.add_sync_event(
                account_id, company.company_id, "success", created, _elapsed_ms(sync_started), company.provisioning_error
            )
    snapshot = write.snapshot(company) if not write.unannounced else CompanySnapshot.of(company)
    return ProvisioningResult(snapshot, created, redis_step)


def _company_for(write: CompanyWrite, account_id: int, company_name: str, chatwoot_status: str) -> tuple[Company, bool]:
    """The account's company, inserted if absent: exactly one row per account, whatever runs concurrently."""
    inserted = write.insert_if_absent([company_row(account_id, company_name, chatwoot_status)])
    if inserted:
        return inserted[0], True
    existing = db.session.scalar(select(Company).where(Company.chatwoot_account_id == str(account_id)))
    if existing is None:  # the row that conflicted is a different account's company_id: never expected
        raise LookupError(f"company {tenant_names(account_id).company_id} conflicts with another account")
    return existing, False


SNAPSHOT_COLUMNS = (
    Company.company_id,
    Company.company_name,
    Company.chatwoot_account_id,
    Company.redis_prefix,
    Company.vectorstore_index,
    Company.provisioning_status,
    Company.chatwoot_status,
    Company.created_at,
)
FIND_COMPANY = select(*SNAPSHOT_COLUMNS).where(Company.chatwoot_account_id == bindparam("account_id"))
FIND_COMPANIES = select(*SNAPSHOT_COLUMNS).where(
    Company.chatwoot_account_id == any_(bindparam("account_ids", type_=postgresql.ARRAY(String)))
)


def find_company(account_id: int) -> CompanySnapshot | None:
    """The company of a Chatwoot account, or None: one round trip, no transaction to open or close."""
    row = run_alone(FIND_COMPANY, {"account_id": str(account_id)})
    return CompanySnapshot.of(row) if row is not None else None


def find_companies(account_ids: Sequence[int]) -> dict[int, CompanySnapshot]:
    """The companies of these Chatwoot accounts, by account id, in one round trip (PostgreSQL only)."""
    rows = rows_alone(FIND_COMPANIES, {"account_ids": [str(account_id) for account_id in account_ids]})
    return {int(row.chatwoot_account_id): CompanySnapshot.of(row) for row in rows}


def provision_services(companies: Sequence[Company]) -> str:
    """Write the tenants' Redis namespaces (one pipeline) and record each company's status, inside company_write().

    Returns "ready", "skipped" (no REDIS_URL) or "failed" (Redis unreachable: attempts and backoff recorded)."""
    if not companies:
        return "ready"
    for company in companies:
        company.assign_tenant_names()
    client = get_redis()
    if client is None:
        for company in companies:
            logger.info("[Chatwoot Sync] Redis step skipped for %s: REDIS_URL is not set", company.company_id)
            company.mark_ready()
        return "skipped"
    try:
        _send_namespaces(client, companies)
    except redis.RedisError as exc:
        return _record_unreachable_redis(companies, exc)
    for company in companies:
        company.mark_ready()
    return "ready"


def _record_unreachable_redis(companies: Sequence[Company], exc: redis.RedisError) -> str:
    """Say why, and count a failed attempt on each company (pending, retried with backoff); returns "failed"."""
    reason = f"Redis unavailable ({type(exc).__name__}); the company is kept and provisioning will be retried"
    for company in companies:
        logger.error("[Chatwoot Sync] Error: %s for %s", reason, company.company_id)
        record_failed_attempt(company, reason)
    return "failed"


def create_provisioned(write: CompanyWrite, rows: Sequence[dict[str, Any]]) -> dict[int, Any]:
    """Create many companies the way a delivery creates one (services first, then the rows with their status, no
    ORM objects): one Redis pipeline, one statement; inside company_write(). Without Redis, or when it fails, the
    general path records the outcome. A namespace written for an account whose company appeared meanwhile is
    written again from that company's row. Returns the companies created by primary key (their columns as
    attributes, as committed)."""
    if not rows:
        return {}
    drafts = [SimpleNamespace(**row) for row in rows]
    client = get_redis()
    if client is not None:
        try:
            _send_namespaces(client, drafts)
        except redis.RedisError:
            client = None
    if client is None:
        inserted = write.insert_if_absent(rows)
        provision_services(inserted)
        return {company.id: company for company in inserted}
    try:
        created = write.insert_provisioned(rows)
    except SQLAlchemyError as exc:
        if not is_transient(exc):  # a retry would be refused the same way: leave nothing
            forget_namespaces(drafts)
        raise
    if len(created) < len(rows):
        rewrite_namespaces(list(companies_in(row["chatwoot_account_id"] for row in rows if row["chatwoot_account_id"] not in created).values()))
    return {created[draft.chatwoot_account_id]: draft for draft in drafts if draft.chatwoot_account_id in created}


def _send_namespaces(client: redis.Redis, companies: Sequence[Any]) -> None:
    """One pipeline: the companies' namespaces, and the shared metrics dropped (they count companies)."""
    pipeline = client.pipeline(transaction=False)
    write_tenant_namespaces(pipeline, companies)
    sync_metrics.forget_shared_metrics(pipeline)
    pipeline.execute()


def write_tenant_namespaces(pipeline: Any, companies: Sequence[Any]) -> None:
    """Queue on a Redis pipeline: create or refresh each company's `<prefix>tenant` hash, and register their index
    names in one SADD; idempotent."""
    for company in companies:
        pipeline.hset(
            tenant_key_of(company),
            mapping={
                "company_id": company.company_id,
                "company_name": company.company_name,
                "chatwoot_account_id": company.chatwoot_account_id or "",
                "vectorstore_index": company.vectorstore_index,
                "chatwoot_status": company.chatwoot_status or "active",
                "created_at": iso_utc(company.created_at) or "",
            },
        )
    pipeline.sadd(VECTORSTORE_REGISTRY_KEY, *(company.vectorstore_index for company in companies))


def rewrite_namespaces(companies: Sequence[Company]) -> None:
    """Write the companies' namespaces again from their rows, in one pipeline (best effort: reconcile restores what
    this misses)."""
    if companies:
        _best_effort(lambda pipeline: write_tenant_namespaces(pipeline, companies), f"Namespaces of {len(companies)} companies left to reconcile")


def forget_namespaces(companies: Sequence[Any]) -> None:
    """Remove the namespaces written for companies the database refused (best effort)."""

    def remove(pipeline: Any) -> None:
        pipeline.delete(*(tenant_key_of(company) for company in companies))
        pipeline.srem(VECTORSTORE_REGISTRY_KEY, *(company.vectorstore_index for company in companies))

    _best_effort(remove, f"Namespaces of {len(companies)} refused companies not removed")


def _best_effort(queue: Callable[[Any], None], failure: str) -> None:
    """Send what `queue` puts on a pipeline; without Redis nothing, and a Redis error is only logged."""
    client = get_redis()
    if client is None:
        return
    try:
        pipeline = client.pipeline(transaction=False)
        queue(pipeline)
        pipeline.execute()
    except redis.RedisError as exc:
        logger.warning("[Chatwoot Sync] %s (%s)", failure, type(exc).__name__)


def tenant_key_of(company: Any) -> str:
    """The company's tenant hash, from its stored prefix (older rows may have no numeric account id)."""
    return tenant_key(company.redis_prefix)


def _log_outcome(company: CompanySnapshot, created: bool) -> None:
    extra = {"account_id": company.chatwoot_account_id, "company_id": company.company_id}
    if created:
        logger.info("[Chatwoot Sync] Company created successfully: %s", company.company_id, extra=extra | {"outcome": "created"})
    else:
        logger.info("[Chatwoot Sync] Company already exists: %s", company.company_id, extra=extra | {"outcome": "existing"})


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
