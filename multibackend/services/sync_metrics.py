"""Sync metrics, stored in the database so that every worker and instance shares them."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import bindparam, func, insert, select

from multibackend.extensions import conflict_aware_insert, db
from multibackend.logging_setup import printable
from multibackend.models import PROVISIONING_STATUSES, Company, SyncEvent, SyncTotals, WebhookRejection
from multibackend.models.company import CHATWOOT_STATUSES
from multibackend.clock import iso_utc, utcnow

logger = logging.getLogger(__name__)

RECENT_ERRORS_LIMIT = 10
FOLD_SETTLE_SECONDS = 60
FOLD_LOCK_KEY = 4242003


def add_sync_event(
    account_id: int, company_id: str | None, outcome: str, created: bool, latency_ms: float, error: str | None = None
) -> None:
    """Write one sync event in the current transaction (a plain INSERT, no unit of work); the caller commits."""
    db.session.execute(
        insert(SyncEvent.__table__),
        {
            "chatwoot_account_id": str(account_id),
            "company_id": company_id,
            "outcome": outcome,
            "created": created,
            "latency_ms": round(latency_ms, 3),
            "error": error,
            "created_at": utcnow(),
        },
    )


def record_failed_sync(account_id: int, latency_ms: float, error: str) -> None:
    """Record a failed sync in a transaction of its own; when even that is impossible, log it and go on."""
    try:
        db.session.rollback()
        add_sync_event(account_id, None, "failed", False, latency_ms, error)
        db.session.commit()
    except Exception as exc:  # the database that just failed may still be down
        db.session.rollback()
        logger.error("[Chatwoot Sync] Error: could not record the failed sync of %s (%s)", account_id, type(exc).__name__)


def record_rejection(code: str) -> None:
    """Count one refused delivery under its error code (an upsert, so concurrent workers never lose a count)."""
    now = utcnow()
    statement = conflict_aware_insert(WebhookRejection.__table__).values(code=code, count=1, last_rejected_at=now)
    statement = statement.on_conflict_do_update(
        index_elements=["code"],
        set_={"count": WebhookRejection.__table__.c.count + 1, "last_rejected_at": now},
    )
    try:
        db.session.execute(statement)
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        logger.warning("[Chatwoot Webhook] Could not count a rejected delivery (%s)", type(exc).__name__)


TOTALS = select(SyncTotals.__table__).where(SyncTotals.id == 1)
TAIL = select(
    func.count(),
    func.count().filter(SyncEvent.outcome == "success"),
    func.sum(SyncEvent.latency_ms),
    func.max(SyncEvent.created_at),
).where(SyncEvent.id > bindparam("after"))
REJECTED = select(func.coalesce(func.sum(WebhookRejection.count), 0))
RECENT_ERRORS = (
    select(SyncEvent.created_at, SyncEvent.chatwoot_account_id, SyncEvent.error)
    .where(SyncEvent.error.is_not(None))
    .order_by(SyncEvent.created_at.desc(), SyncEvent.id.desc())
    .limit(RECENT_ERRORS_LIMIT)
)


def sync_metrics() -> dict[str, Any]:
    """Totals, success rate, average latency, last sync and the latest errors, across all workers.

    Cost does not grow with history: running totals plus the events recorded since the reconciler last folded
    them, read on one connection without a transaction to open or close; never writes."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        totals = connection.execute(TOTALS).first()
        tail_count, tail_success, tail_latency, tail_last = connection.execute(
            TAIL, {"after": totals.through_event_id if totals else 0}
        ).one()
        rejected = connection.execute(REJECTED).scalar_one()
        errors = connection.execute(RECENT_ERRORS).all()
    total = (totals.total_syncs if totals else 0) + tail_count
    success_count = (totals.success_count if totals else 0) + tail_success
    latency_sum = (totals.latency_sum_ms if totals else 0.0) + float(tail_latency or 0.0)
    last_syncs = [moment for moment in (_as_utc(totals.last_sync if totals else None), _as_utc(tail_last)) if moment]
    return {
        "total_syncs": total,
        "success_count": success_count,
        "failed_count": total - success_count,
        "rejected_count": int(rejected),
        "success_rate": round(100.0 * success_count / total, 2) if total else None,
        "avg_latency_ms": round(latency_sum / total, 2) if total else None,
        "last_sync": iso_utc(max(last_syncs)) if last_syncs else None,
        "recent_errors": [
            {"time": iso_utc(created_at), "account_id": account_id, "error": printable(error or "")}
            for created_at, account_id, error in errors
        ],
    }


def fold_sync_totals() -> int:
    """Fold settled events (older than FOLD_SETTLE_SECONDS, so no transaction still holds a lower id) into the
    running totals; one folder at a time. Returns how many events were folded."""
    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql" and not connection.execute(
            select(func.pg_try_advisory_xact_lock(FOLD_LOCK_KEY))
        ).scalar():
            return 0
        connection.execute(conflict_aware_insert(SyncTotals.__table__).values(id=1).on_conflict_do_nothing())
        totals = connection.execute(select(SyncTotals.__table__).where(SyncTotals.id == 1)).one()
        settled_before = utcnow() - timedelta(seconds=FOLD_SETTLE_SECONDS)
        upto = connection.execute(
            select(func.max(SyncEvent.id)).where(
                SyncEvent.id > totals.through_event_id, SyncEvent.created_at < settled_before
            )
        ).scalar()
        if upto is None:
            return 0
        count, success, latency, last = connection.execute(
            select(
                func.count(),
                func.count().filter(SyncEvent.outcome == "success"),
                func.coalesce(func.sum(SyncEvent.latency_ms), 0.0),
                func.max(SyncEvent.created_at),
            ).where(SyncEvent.id > totals.through_event_id, SyncEvent.id <= upto)
        ).one()
        newest = max(moment for moment in (_as_utc(totals.last_sync), _as_utc(last)) if moment is not None)
        connection.execute(
            SyncTotals.__table__.update()
            .where(SyncTotals.id == 1)
            .values(
                through_event_id=upto,
                total_syncs=totals.total_syncs + count,
                success_count=totals.success_count + success,
                latency_sum_ms=totals.latency_sum_ms + float(latency),
                last_sync=newest,
            )
        )
    return int(count)


def _as_utc(moment: Any) -> datetime | None:
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def hour_bucket(column: Any) -> Any:
    """The hour a timestamp falls in, as the database can group by it (PostgreSQL or SQLite)."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("hour", column)
    return func.strftime("%Y-%m-%dT%H:00:00", column)


def latency_series(hours: int = 24) -> list[dict[str, Any]]:
    """Deliveries per hour over the last `hours`: count, failures, average and worst latency."""
    bucket = hour_bucket(SyncEvent.created_at).label("bucket")
    rows = db.session.execute(
        select(
            bucket,
            func.count(),
            func.count().filter(SyncEvent.outcome == "failed"),
            func.avg(SyncEvent.latency_ms),
            func.max(SyncEvent.latency_ms),
        )
        .where(SyncEvent.created_at >= utcnow() - timedelta(hours=hours))
        .group_by(bucket)
        .order_by(bucket)
    )
    return [
        {
            "hour": iso_utc(hour),
            "deliveries": total,
            "failed": failed,
            "avg_latency_ms": round(float(average), 2),
            "max_latency_ms": round(float(worst), 2),
        }
        for hour, total, failed, average, worst in rows
    ]


def recent_deliveries(limit: int = 20) -> list[dict[str, Any]]:
    """The latest deliveries, newest first."""
    rows = db.session.scalars(select(SyncEvent).order_by(SyncEvent.created_at.desc(), SyncEvent.id.desc()).limit(limit))
    return [
        {
            "time": iso_utc(row.created_at),
            "account_id": row.chatwoot_account_id,
            "company_id": row.company_id,
            "outcome": row.outcome,
            "created": row.created,
            "latency_ms": row.latency_ms,
            "error": printable(row.error) if row.error else None,
        }
        for row in rows
    ]


def companies_by_status() -> dict[str, dict[str, int]]:
    """How many Chatwoot companies are in each provisioning state and each Chatwoot state."""
    of_chatwoot = Company.chatwoot_account_id.is_not(None)  # a host's own companies are not the auto-sync's
    provisioning = dict(
        db.session.execute(select(Company.provisioning_status, func.count()).where(of_chatwoot).group_by(Company.provisioning_status)).all()
    )
    chatwoot = dict(db.session.execute(select(Company.chatwoot_status, func.count()).where(of_chatwoot).group_by(Company.chatwoot_status)).all())
    return {
        "provisioning": {status: int(provisioning.get(status, 0)) for status in PROVISIONING_STATUSES},
        "chatwoot": {status: int(chatwoot.get(status, 0)) for status in CHATWOOT_STATUSES},
    }


def dashboard_data() -> dict[str, Any]:
    """Everything the operator page shows."""
    return {
        "metrics": sync_metrics(),
        "latency_series": latency_series(),
        "companies": companies_by_status(),
        "recent_deliveries": recent_deliveries(),
        "company_tabs": company_tabs_state(),
    }


def company_tabs_state() -> dict[str, Any]:
    """How many Chatwoot accounts lack the company tab: {missing, detail}; missing is None when it cannot be known."""
    from multibackend.services import dashboard_tabs

    reason = dashboard_tabs.tabs_disabled_because()
    if reason is not None:
        return {"missing": None, "detail": f"not made here: {reason}"}
    try:
        missing, waiting = dashboard_tabs.missing_tabs_count()
    except Exception as exc:  # Chatwoot's database is someone else's: the page still shows everything else
        return {"missing": None, "detail": f"Chatwoot database: {type(exc).__name__}"}
    note = f"; {waiting} more wait for an administrator" if waiting else ""
    return {"missing": missing, "detail": f"Chatwoot accounts without the company tab{note}"}

