"""Tenant provisioning: one company per Chatwoot account, its Redis namespace and vector-store index name."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import redis
from blinker import Namespace
from flask import current_app
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import SQLAlchemyError

from multibackend.extensions import conflict_aware_insert, db, get_redis
from multibackend.models import Company
from multibackend.clock import iso_utc, utcnow
from multibackend.services import lookup_cache, sync_metrics
from multibackend.services.tenant_naming import tenant_key, tenant_names

logger = logging.getLogger(__name__)

signals = Namespace()
#: Sent after a company's tenant services are ready; receivers (the host backend) create their own
#: per-tenant resources, e.g. the real vector index, and must be idempotent: a retry sends it again.
tenant_provisioned = signals.signal("tenant-provisioned")

VECTORSTORE_REGISTRY_KEY = "multibackend:vectorstore:indexes"
MAX_BACKOFF_SECONDS = 3600


@dataclass(frozen=True)
class CompanySnapshot:
    """A company as callers see it, detached from the database session."""

    company_id: str
    company_name: str
    chatwoot_account_id: str
    redis_prefix: str
    vectorstore_index: str
    provisioning_status: str
    chatwoot_status: str
    created_at: str | None

    @classmethod
    def of(cls, company: Any) -> CompanySnapshot:
        """From a Company, or from a row with the same column names."""
        return cls(
            company_id=company.company_id,
            company_name=company.company_name,
            chatwoot_account_id=company.chatwoot_account_id or "",
            redis_prefix=company.redis_prefix,
            vectorstore_index=company.vectorstore_index,
            provisioning_status=company.provisioning_status,
            chatwoot_status=company.chatwoot_status or "active",
            created_at=iso_utc(company.created_at),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lookup_answer_of(obj: Any) -> tuple[str, dict[str, Any]] | None:
    """(account id, lookup answer) for a company with an account id; None for anything else."""
    if not isinstance(obj, Company) or not obj.chatwoot_account_id:
        return None
    return obj.chatwoot_account_id, {"exists": True, **CompanySnapshot.of(obj).as_dict()}


lookup_cache.track_company_changes(db.session, lookup_answer_of)


@dataclass(frozen=True)
class ProvisioningResult:
    company: CompanySnapshot
    created: bool
    redis: str  # "ready", "skipped" (no REDIS_URL), "failed" or "unchanged" (already provisioned)

    def as_response(self) -> dict[str, Any]:
        company = self.company
        message = "Company created and provisioned" if self.created else "Company already exists"
        if self.redis == "skipped":
            message += "; Redis step skipped (REDIS_URL is not set)"
        if company.provisioning_status != "ready":
            message += "; provisioning is pending and will be retried"
        return {
            "company_id": company.company_id,
            "company_name": company.company_name,
            "redis_prefix": company.redis_prefix,
            "vectorstore_index": company.vectorstore_index,
            "message": message,
            "created": self.created,
            "provisioning_status": company.provisioning_status,
            "redis": self.redis,
        }


def provision_account(
    account_id: int, company_name: str, *, chatwoot_status: str = "active", record_sync: bool = True
) -> ProvisioningResult:
    """Create the company if absent and bring its tenant services up; safe to re-run, one commit.

    Raises SQLAlchemyError, with nothing written, when the database cannot take the write."""
    started = time.perf_counter()
    names = tenant_names(account_id)
    logger.info("[Chatwoot Sync] Creating company: %s", names.company_id)
    try:
        company, created = _insert_company_if_absent(account_id, company_name, chatwoot_status)
        redis_step = provision_services([company]) if created or company.provisioning_status != "ready" else "unchanged"
        if record_sync:
            sync_metrics.add_sync_event(
                account_id, company.company_id, "success", created, _elapsed_ms(started), company.provisioning_error
            )
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        logger.error(
            "[Chatwoot Sync] Error: database error (%s) while creating %s", type(exc).__name__, names.company_id,
            extra={"account_id": account_id, "outcome": "database_error"},
        )
        raise
    _log_outcome(company, created)
    if redis_step != "unchanged":
        lookup_cache.publish([lookup_answer_of(company)])  # inserted by SQL, so the flush hook did not see it
        announce_ready([company])
    return ProvisioningResult(CompanySnapshot.of(company), created, redis_step)


def create_companies(accounts: Sequence[tuple[int, str, str]]) -> list[Company]:
    """Create the missing companies of (account id, name, chatwoot status) in one statement and provision them
    together; one commit. Returns the companies this call created (none for accounts that already had one)."""
    if not accounts:
        return []
    now = utcnow()
    rows = [_company_row(account_id, name, now, status) for account_id, name, status in accounts]
    statement = (
        conflict_aware_insert(Company.__table__)
        .values(rows)
        .on_conflict_do_nothing()
        .returning(Company.id)
    )
    inserted = db.session.execute(statement).scalars().all()
    companies = list(db.session.scalars(select(Company).where(Company.id.in_(inserted)).order_by(Company.id)))
    provision_services(companies)
    db.session.commit()
    lookup_cache.publish(lookup_answer_of(company) for company in companies)
    for company in companies:
        logger.info("[Chatwoot Sync] Company created successfully: %s", company.company_id)
    announce_ready(companies)
    return companies


FIND_COMPANY = select(
    Company.company_id,
    Company.company_name,
    Company.chatwoot_account_id,
    Company.redis_prefix,
    Company.vectorstore_index,
    Company.provisioning_status,
    Company.chatwoot_status,
    Company.created_at,
).where(Company.chatwoot_account_id == bindparam("account_id"))


def find_company(account_id: int) -> CompanySnapshot | None:
    """The company of a Chatwoot account, or None: one round trip, no transaction to open or close."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        row = connection.execute(FIND_COMPANY, {"account_id": str(account_id)}).first()
    return CompanySnapshot.of(row) if row is not None else None


def _company_row(account_id: int, company_name: str, now: Any, chatwoot_status: str = "active") -> dict[str, Any]:
    names = tenant_names(account_id)
    return {
        "company_id": names.company_id,
        "company_name": company_name,
        "chatwoot_account_id": str(account_id),
        "redis_prefix": names.redis_prefix,
        "vectorstore_index": names.vectorstore_index,
        # optimistic: provisioning runs before the commit and marks the company pending if it fails
        "provisioning_status": "ready",
        "chatwoot_status": chatwoot_status,
        "created_at": now,
        "updated_at": now,
    }


# Hand-written so that it is compiled once (SQLAlchemy cannot cache an ORM INSERT ... ON CONFLICT): ~2 ms a call.
# No conflict target on purpose: with one, a concurrent duplicate can still fail on the other unique index
# (company_id) instead of doing nothing. Valid on PostgreSQL and SQLite alike.
INSERT_COMPANY = select(Company).from_statement(
    text(
        "INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index,"
        " provisioning_status, provisioning_attempts, chatwoot_status, created_at, updated_at)"
        " VALUES (:company_id, :company_name, :chatwoot_account_id, :redis_prefix, :vectorstore_index,"
        " :provisioning_status, 0, :chatwoot_status, :created_at, :updated_at)"
        " ON CONFLICT DO NOTHING RETURNING *"
    )
)


def _insert_company_if_absent(account_id: int, company_name: str, chatwoot_status: str) -> tuple[Company, bool]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: exactly one row per account, whatever runs concurrently."""
    row = _company_row(account_id, company_name, utcnow(), chatwoot_status)
    inserted = db.session.scalars(INSERT_COMPANY, row).one_or_none()
    if inserted is not None:
        return inserted, True
    existing = db.session.scalar(select(Company).where(Company.chatwoot_account_id == str(account_id)))
    if existing is None:  # the row that conflicted is a different account's company_id: never expected
        raise LookupError(f"company {tenant_names(account_id).company_id} conflicts with another account")
    return existing, False


def provision_services(companies: Sequence[Company]) -> str:
    """Write the tenants' Redis namespaces (one pipeline) and record each company's status; the caller commits.

    Returns "ready", "skipped" (no REDIS_URL) or "failed" (Redis unreachable: attempts and backoff recorded)."""
    if not companies:
        return "ready"
    client = get_redis()
    if client is None:
        for company in companies:
            logger.info("[Chatwoot Sync] Redis step skipped for %s: REDIS_URL is not set", company.company_id)
            _mark_ready(company)
        return "skipped"
    try:
        pipeline = client.pipeline(transaction=False)
        for company in companies:
            write_tenant_namespace(pipeline, company)
        pipeline.execute()
    except redis.RedisError as exc:
        reason = f"Redis unavailable ({type(exc).__name__}); the company is kept and provisioning will be retried"
        for company in companies:
            logger.error("[Chatwoot Sync] Error: %s for %s", reason, company.company_id)
            record_failed_attempt(company, reason)
        return "failed"
    for company in companies:
        _mark_ready(company)
    return "ready"


def write_tenant_namespace(pipeline: Any, company: Company) -> None:
    """Queue on a Redis pipeline: create or refresh `<prefix>tenant` and register the index name; idempotent."""
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
    pipeline.sadd(VECTORSTORE_REGISTRY_KEY, company.vectorstore_index)


def tenant_key_of(company: Any) -> str:
    """The company's tenant hash, from its stored prefix (older rows may have no numeric account id)."""
    return tenant_key(company.redis_prefix)


def announce_ready(companies: Sequence[Company]) -> list[Company]:
    """Send tenant_provisioned for each ready company; a failing receiver leaves that company pending, with the
    reason, for a retry. Returns the companies that stayed ready."""
    announced, broken = [], []
    for company in companies:
        if company.provisioning_status != "ready":
            continue
        try:
            tenant_provisioned.send(current_app._get_current_object(), company=CompanySnapshot.of(company))
            announced.append(company)
        except Exception as exc:
            reason = f"tenant_provisioned receiver failed ({type(exc).__name__})"
            logger.error("[Chatwoot Sync] Error: %s for %s", reason, company.company_id)
            record_failed_attempt(company, reason)
            broken.append(company)
    if broken:
        db.session.commit()
    return announced


def record_failed_attempt(company: Company, reason: str) -> None:
    """Count a failed provisioning attempt: pending with a backoff, or failed for good after the last attempt."""
    config = current_app.config
    attempts = (company.provisioning_attempts or 0) + 1
    company.provisioning_attempts = attempts
    if attempts >= config["RECONCILE_MAX_ATTEMPTS"]:
        _set_status(company, "failed", f"gave up after {attempts} attempts: {reason}")
        company.next_provisioning_at = None
        return
    _set_status(company, "pending", reason)
    company.next_provisioning_at = utcnow() + timedelta(seconds=retry_delay(attempts, config["RECONCILE_BACKOFF_SECONDS"]))


def retry_delay(failed_attempts: int, base_seconds: float) -> float:
    """The next reconcile retries at once after the first failure, then waits base, 2×base, 4×base... (max 1 h)."""
    if failed_attempts <= 1:
        return 0.0
    return min(base_seconds * 2 ** (failed_attempts - 2), MAX_BACKOFF_SECONDS)


def _mark_ready(company: Company) -> None:
    if (company.provisioning_status, company.provisioning_error, company.provisioning_attempts) == ("ready", None, 0):
        return  # already so (a new company is inserted ready): no UPDATE to send
    _set_status(company, "ready", None)
    company.provisioning_attempts = 0
    company.next_provisioning_at = None


def _set_status(company: Company, status: str, error: str | None) -> None:
    company.provisioning_status = status
    company.provisioning_error = error
    company.updated_at = utcnow()


def _log_outcome(company: Company, created: bool) -> None:
    extra = {"account_id": company.chatwoot_account_id, "company_id": company.company_id}
    if created:
        logger.info("[Chatwoot Sync] Company created successfully: %s", company.company_id, extra=extra | {"outcome": "created"})
    else:
        logger.info("[Chatwoot Sync] Company already exists: %s", company.company_id, extra=extra | {"outcome": "existing"})


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
