"""Tenant provisioning: one company per Chatwoot account, its Redis namespace and vector-store index name."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
from blinker import Namespace
from flask import current_app
from sqlalchemy import select

from multibackend.extensions import conflict_aware_insert, db, get_redis
from multibackend.models import Company
from multibackend.clock import iso_utc, utcnow
from multibackend.services import sync_metrics
from multibackend.services.tenant_naming import tenant_names

logger = logging.getLogger(__name__)

signals = Namespace()
#: Sent after a company's tenant services are ready; receivers (the host backend) create their own
#: per-tenant resources, e.g. the real vector index, and must be idempotent: a retry sends it again.
tenant_provisioned = signals.signal("tenant-provisioned")

VECTORSTORE_REGISTRY_KEY = "multibackend:vectorstore:indexes"


@dataclass(frozen=True)
class CompanySnapshot:
    """A company as callers see it, detached from the database session."""

    company_id: str
    company_name: str
    chatwoot_account_id: str
    redis_prefix: str
    vectorstore_index: str
    provisioning_status: str
    created_at: str | None

    @classmethod
    def of(cls, company: Company) -> CompanySnapshot:
        return cls(
            company_id=company.company_id,
            company_name=company.company_name,
            chatwoot_account_id=company.chatwoot_account_id or "",
            redis_prefix=company.redis_prefix,
            vectorstore_index=company.vectorstore_index,
            provisioning_status=company.provisioning_status,
            created_at=iso_utc(company.created_at),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def provision_account(account_id: int, company_name: str) -> ProvisioningResult:
    """Create the company if absent and bring its tenant services up; safe to re-run, one commit."""
    started = time.perf_counter()
    names = tenant_names(account_id)
    logger.info("[Chatwoot Sync] Creating company: %s", names.company_id)
    try:
        company, created = _insert_company_if_absent(account_id, company_name)
        redis_step = _provision_services(company) if company.provisioning_status != "ready" else "unchanged"
        sync_metrics.add_sync_event(
            account_id, company.company_id, "success", created, _elapsed_ms(started), company.provisioning_error
        )
        db.session.commit()
    except Exception as exc:
        reason = f"database error ({type(exc).__name__})"
        logger.error("[Chatwoot Sync] Error: %s while creating %s", reason, names.company_id)
        sync_metrics.record_failed_sync(account_id, _elapsed_ms(started), reason)
        raise
    _log_outcome(company, created)
    snapshot = CompanySnapshot.of(company)
    if redis_step != "unchanged" and snapshot.provisioning_status == "ready":
        snapshot = _announce(company, snapshot)
    return ProvisioningResult(snapshot, created, redis_step)


def find_company(account_id: int) -> CompanySnapshot | None:
    """The company of a Chatwoot account, or None."""
    company = db.session.scalar(select(Company).where(Company.chatwoot_account_id == str(account_id)))
    return CompanySnapshot.of(company) if company is not None else None


def _insert_company_if_absent(account_id: int, company_name: str) -> tuple[Company, bool]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: exactly one row per account, whatever runs concurrently."""
    names = tenant_names(account_id)
    now = utcnow()
    statement = (
        conflict_aware_insert(Company.__table__)
        .values(
            company_id=names.company_id,
            company_name=company_name,
            chatwoot_account_id=str(account_id),
            redis_prefix=names.redis_prefix,
            vectorstore_index=names.vectorstore_index,
            provisioning_status="pending",
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["chatwoot_account_id"])
        .returning(Company.id)
    )
    inserted_id = db.session.execute(statement).scalar_one_or_none()
    if inserted_id is not None:
        return db.session.get_one(Company, inserted_id), True
    existing = db.session.scalar(select(Company).where(Company.chatwoot_account_id == str(account_id)))
    if existing is None:  # the row that conflicted is a different account's company_id: never expected
        raise LookupError(f"company {names.company_id} conflicts with another account")
    return existing, False


def _provision_services(company: Company) -> str:
    """Write the tenant's Redis namespace and register its index name; record the status on the company."""
    client = get_redis()
    if client is None:
        logger.info("[Chatwoot Sync] Redis step skipped for %s: REDIS_URL is not set", company.company_id)
        _set_status(company, "ready", None)
        return "skipped"
    try:
        write_tenant_namespace(client, company)
    except redis.RedisError as exc:
        reason = f"Redis unavailable ({type(exc).__name__}); the company is kept and provisioning will be retried"
        logger.error("[Chatwoot Sync] Error: %s for %s", reason, company.company_id)
        _set_status(company, "pending", reason)
        return "failed"
    _set_status(company, "ready", None)
    return "ready"


def write_tenant_namespace(client: redis.Redis, company: Company) -> None:
    """Create or refresh `<prefix>tenant` and the vector-store index registry; idempotent."""
    names = tenant_names(company.chatwoot_account_id or "")
    pipeline = client.pipeline(transaction=True)
    pipeline.hset(
        names.redis_tenant_key,
        mapping={
            "company_id": company.company_id,
            "company_name": company.company_name,
            "chatwoot_account_id": company.chatwoot_account_id or "",
            "vectorstore_index": company.vectorstore_index,
            "created_at": iso_utc(company.created_at) or "",
        },
    )
    pipeline.sadd(VECTORSTORE_REGISTRY_KEY, company.vectorstore_index)
    pipeline.execute()


def _announce(company: Company, snapshot: CompanySnapshot) -> CompanySnapshot:
    """Send tenant_provisioned; a failing receiver leaves the company pending, with the reason, for a retry."""
    try:
        tenant_provisioned.send(current_app._get_current_object(), company=snapshot)
        return snapshot
    except Exception as exc:
        reason = f"tenant_provisioned receiver failed ({type(exc).__name__})"
        logger.error("[Chatwoot Sync] Error: %s for %s", reason, company.company_id)
        _set_status(company, "pending", reason)
        db.session.commit()
        return CompanySnapshot.of(company)


def _set_status(company: Company, status: str, error: str | None) -> None:
    company.provisioning_status = status
    company.provisioning_error = error
    company.updated_at = utcnow()


def _log_outcome(company: Company, created: bool) -> None:
    if created:
        logger.info("[Chatwoot Sync] Company created successfully: %s", company.company_id)
    else:
        logger.info("[Chatwoot Sync] Company already exists: %s", company.company_id)


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
