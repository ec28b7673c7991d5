"""What happens to a valid, authenticated account_created delivery: stored, or spooled, or refused with 503."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from multibackend.errors import service_unavailable
from multibackend.extensions import once_more_if_disconnected
from multibackend.services import delivery_spool, sync_metrics, tenant_provisioning
from multibackend.services.tenant_naming import tenant_names

logger = logging.getLogger(__name__)


def accept_delivery(account_id: int, company_name: str) -> tuple[dict[str, Any], int]:
    """Provision the account (200), or keep the delivery in the spool when the database cannot take it (202);
    only when it can be stored nowhere raise 503 service_unavailable."""
    started = time.perf_counter()
    try:
        result = once_more_if_disconnected(lambda: tenant_provisioning.provision_account(account_id, company_name))
        return result.as_response(), 200
    except SQLAlchemyError as exc:
        reason = f"database unavailable ({type(exc).__name__})"
    if delivery_spool.spool_delivery(account_id, company_name):
        return queued_response(account_id, company_name), 202
    sync_metrics.record_failed_sync(account_id, (time.perf_counter() - started) * 1000, reason + ", not spooled")
    raise service_unavailable("The database")


def queued_response(account_id: int, company_name: str) -> dict[str, Any]:
    """The 202 answer: the names the company will have once the reconciler replays the spool."""
    names = tenant_names(account_id)
    return {
        "queued": True,
        "company_id": names.company_id,
        "company_name": company_name,
        "redis_prefix": names.redis_prefix,
        "vectorstore_index": names.vectorstore_index,
        "message": "Database unavailable: the delivery is spooled and will be replayed by the reconciler",
        "created": False,
        "provisioning_status": "queued",
    }
