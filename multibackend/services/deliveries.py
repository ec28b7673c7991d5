"""What becomes of an account_created delivery: provisioned, spooled, or stored nowhere (and other events: ignored).

The outcomes are plain values; the view picks the HTTP status and the response schema words the answer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy.exc import SQLAlchemyError

from multibackend.extensions import is_transient, once_more_if_disconnected
from multibackend.services import dashboard_tabs, delivery_spool, sync_metrics, tenant_provisioning
from multibackend.services.tenant_naming import TenantNames, tenant_names
from multibackend.services.tenant_provisioning import ProvisioningResult


@dataclass(frozen=True)
class Provisioned:
    """The company exists (created by this delivery, or by an earlier one) and its provisioning ran."""

    result: ProvisioningResult

    @property
    def outcome(self) -> str:
        return "created" if self.result.created else "existing"


@dataclass(frozen=True)
class Queued:
    """PostgreSQL could not take the delivery: it waits in the spool, and the company will have these names."""

    account_id: int
    company_name: str
    names: TenantNames
    outcome: ClassVar[str] = "queued"


@dataclass(frozen=True)
class Refused:
    """Neither PostgreSQL nor the spool could take the delivery: nothing is stored (the failed sync is recorded)."""

    reason: str
    outcome: ClassVar[str] = "refused"


@dataclass(frozen=True)
class Ignored:
    """An event other than account_created: nothing is read or written."""

    event: str
    outcome: ClassVar[str] = "ignored"


Delivery = Provisioned | Queued | Refused | Ignored


def accept_delivery(account_id: int, company_name: str, administrator_ids: Sequence[int] = ()) -> Provisioned | Queued | Refused:
    """Provisioned when PostgreSQL takes the delivery (and the account's company tab follows in the background),
    Queued when only the spool can, Refused when neither can."""
    started = time.perf_counter()
    try:
        result = once_more_if_disconnected(lambda: tenant_provisioning.provision_account(account_id, company_name))
    except SQLAlchemyError as exc:
        if not is_transient(exc):  # the schema refuses the row: a replay would fail the same way
            reason = f"database refused the company ({type(exc).__name__})"
            sync_metrics.record_failed_sync(account_id, (time.perf_counter() - started) * 1000, reason)
            return Refused(reason)
        reason = f"database unavailable ({type(exc).__name__})"
    else:
        dashboard_tabs.ensure_tab_soon(account_id, administrator_ids)
        return Provisioned(result)
    if delivery_spool.spool_delivery(account_id, company_name):
        return Queued(account_id, company_name, tenant_names(account_id))
    reason += ", not spooled"
    sync_metrics.record_failed_sync(account_id, (time.perf_counter() - started) * 1000, reason)
    return Refused(reason)
