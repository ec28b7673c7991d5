"""Tenant provisioning: one company per Chatwoot account, its Redis namespace and vector-store index name."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import bindparam, select
from sqlalchemy.exc import SQLAlchemyError

from multibackend.clock import iso_utc
from multibackend.extensions import db, get_redis, read_one
from multibackend.models import Company, CompanySnapshot
from multibackend.services import sync_metrics
from multibackend.services.companies import CompanyWrite, company_row, company_write, record_failed_attempt, tenant_provisioned
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

    Raises SQLAlchemyError, with nothing written, when the database cannot take the write."""
    started = time.perf_counter()
    names = tenant_names(account_id)
    logger.info("[Chatwoot Sync] Creating company: %s", names.company_id)
    try:
        with company_write() as write:
            company, created = _company_for(write, account_id, company_name, chatwoot_status, started if record_sync else None)
            redis_step = provision_services([company]) if created or not company.is_ready else "unchanged"
            if record_sync and not created:
                sync_metrics.add_sync_event(
                    account_id, company.company_id, "success", False, _elapsed_ms(started), company.provisioning_error
                )
    except SQLAlchemyError as exc:
        logger.error(
            "[Chatwoot Sync] Error: database error (%s) while creating %s", type(exc).__name__, names.company_id,
            extra={"account_id": account_id, "outcome": "database_error"},
        )
        raise
    snapshot = write.snapshot(company) if not write.unannounced else CompanySnapshot.of(company)
    _log_outcome(snapshot, created)
    return ProvisioningResult(snapshot, created, redis_step)


def _company_for(
    write: CompanyWrite, account_id: int, company_name: str, chatwoot_status: str, sync_started: float | None
) -> tuple[Company, bool]:
    """The account's company, inserted if absent: exactly one row per account, whatever runs concurrently. With
    sync_started, a company this call inserts comes with its sync event (the delivery's)."""
    row = company_row(account_id, company_name, chatwoot_status)
    if sync_started is not None:
        inserted = write.insert_with_first_sync(row, _elapsed_ms(sync_started))
        if inserted is not None:
            return inserted, True
    elif inserted_rows := write.insert_if_absent([row]):
        return inserted_rows[0], True
    existing = db.session.scalar(select(Company).where(Company.chatwoot_account_id == str(account_id)))
    if existing is None:  # the row that conflicted is a different account's company_id: never expected
        raise LookupError(f"company {tenant_names(account_id).company_id} conflicts with another account")
    return existing, False


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
    row = read_one(FIND_COMPANY, {"account_id": str(account_id)})
    return CompanySnapshot.of(row) if row is not None else None


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
        pipeline = client.pipeline(transaction=False)
        for company in companies:
            write_tenant_namespace(pipeline, company)
        sync_metrics.forget_shared_metrics(pipeline)
        pipeline.execute()
    except redis.RedisError as exc:
        reason = f"Redis unavailable ({type(exc).__name__}); the company is kept and provisioning will be retried"
        for company in companies:
            logger.error("[Chatwoot Sync] Error: %s for %s", reason, company.company_id)
            record_failed_attempt(company, reason)
        return "failed"
    for company in companies:
        company.mark_ready()
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


def _log_outcome(company: CompanySnapshot, created: bool) -> None:
    extra = {"account_id": company.chatwoot_account_id, "company_id": company.company_id}
    if created:
        logger.info("[Chatwoot Sync] Company created successfully: %s", company.company_id, extra=extra | {"outcome": "created"})
    else:
        logger.info("[Chatwoot Sync] Company already exists: %s", company.company_id, extra=extra | {"outcome": "existing"})


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
