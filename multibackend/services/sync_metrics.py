"""Sync metrics, stored in the database so that every worker and instance shares them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
from sqlalchemy import func, insert, select, true

from multibackend.extensions import conflict_aware_insert, db, get_redis
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
        return
    client = get_redis()
    try:
        if client is not None:
            forget_shared_metrics(client)
    except redis.RedisError:
        pass  # the shared metrics show it within SHARED_METRICS_SECONDS


REJECTIONS_KEY = "multibackend:rejections"  # Redis hash: error code -> refused deliveries counted there


def record_rejection(code: str) -> None:
    """Count one refused delivery under its error code: a Redis HINCRBY (a flood of refusals costs no database
    write), or, without Redis or when it fails, an upsert; either way concurrent workers never lose a count."""
    client = get_redis()
    if client is not None:
        try:
            pipeline = client.pipeline(transaction=False)
            pipeline.hincrby(REJECTIONS_KEY, code, 1)
            forget_shared_metrics(pipeline)
            pipeline.execute()
            return
        except Exception as exc:  # redis.RedisError, or an outage: the database still counts it
            logger.warning("[Chatwoot Webhook] Could not count a rejected delivery in Redis (%s)", type(exc).__name__)
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


def rejections_in_redis() -> int:
    """Refused deliveries counted in Redis (0 without Redis; when it cannot answer, only the database's count)."""
    client = get_redis()
    if client is None:
        return 0
    try:
        return sum(int(count) for count in client.hvals(REJECTIONS_KEY))
    except Exception:
        return 0


REJECTED = select(func.coalesce(func.sum(WebhookRejection.count), 0))
def _metrics_statement(correlated: bool) -> Any:
    """Everything sync_metrics() shows in one round trip: one row per recent error (at least one row).

    `correlated` (PostgreSQL): the tail is a LATERAL subquery on the folded-through id, so the planner runs it as the
    short index range it is (with that id as a plain parameter it guesses a third of the table and starts parallel
    workers, 20 ms); SQLite has no LATERAL and needs no such care."""
    totals = SyncTotals.__table__.c

    def of_totals(column: Any) -> Any:
        return select(column).where(totals.id == 1).scalar_subquery()

    through = select(func.coalesce(func.max(totals.through_event_id), 0).label("through")).where(totals.id == 1).subquery()
    tail = select(
        func.count().label("tail_count"),
        func.count().filter(SyncEvent.outcome == "success").label("tail_success"),
        func.sum(SyncEvent.latency_ms).label("tail_latency"),
        func.max(SyncEvent.created_at).label("tail_last"),
    ).where(SyncEvent.id > through.c.through)
    tail = tail.lateral() if correlated else tail.subquery()
    errors = (
        select(SyncEvent.id, SyncEvent.created_at, SyncEvent.chatwoot_account_id, SyncEvent.error)
        .where(SyncEvent.error.is_not(None))
        .order_by(SyncEvent.created_at.desc(), SyncEvent.id.desc())
        .limit(RECENT_ERRORS_LIMIT)
        .subquery()
    )
    return (
        select(
            of_totals(totals.through_event_id).label("through_event_id"),
            of_totals(totals.total_syncs).label("total_syncs"),
            of_totals(totals.success_count).label("success_count"),
            of_totals(totals.latency_sum_ms).label("latency_sum_ms"),
            of_totals(totals.last_sync).label("last_sync"),
            tail.c.tail_count, tail.c.tail_success, tail.c.tail_latency, tail.c.tail_last,
            REJECTED.scalar_subquery().label("rejected"),
            errors.c.created_at.label("error_at"), errors.c.chatwoot_account_id.label("error_account"), errors.c.error,
        )
        .select_from(through.join(tail, true()) if correlated else tail)
        .outerjoin(errors, true())
        .order_by(errors.c.created_at.desc(), errors.c.id.desc())
    )


METRICS = {True: _metrics_statement(correlated=True), False: _metrics_statement(correlated=False)}


def sync_metrics() -> dict[str, Any]:
    """Totals, success rate, average latency, last sync and the latest errors, across all workers and instances.

    One statement, whatever the history's size: the running totals plus the events recorded since the reconciler
    last folded them (an index range), the rejections and the latest errors (an index); never writes."""
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        rows = connection.execute(METRICS[connection.dialect.name == "postgresql"]).all()
    first = rows[0]
    totals = first if first.through_event_id is not None else None
    tail_count, tail_success, tail_latency, tail_last, rejected = (
        first.tail_count, first.tail_success, first.tail_latency, first.tail_last, first.rejected,
    )
    errors = [(row.error_at, row.error_account, row.error) for row in rows if row.error_at is not None]
    total = (totals.total_syncs if totals else 0) + tail_count
    success_count = (totals.success_count if totals else 0) + tail_success
    latency_sum = (totals.latency_sum_ms if totals else 0.0) + float(tail_latency or 0.0)
    last_syncs = [moment for moment in (_as_utc(totals.last_sync if totals else None), _as_utc(tail_last)) if moment]
    return {
        "total_syncs": total,
        "success_count": success_count,
        "failed_count": total - success_count,
        "rejected_count": int(rejected) + rejections_in_redis(),
        "success_rate": round(100.0 * success_count / total, 2) if total else None,
        "avg_latency_ms": round(latency_sum / total, 2) if total else None,
        "last_sync": iso_utc(max(last_syncs)) if last_syncs else None,
        "recent_errors": [
            {"time": iso_utc(created_at), "account_id": account_id, "error": printable(error or "")}
            for created_at, account_id, error in errors
        ],
    }


SHARED_METRICS_KEY = "multibackend:metrics:sync"
SHARED_METRICS_LOCK_KEY = f"{SHARED_METRICS_KEY}:refreshing"
#: the oldest shared metrics any request sees; one worker refreshes them once they are half that old
SHARED_METRICS_SECONDS = 1.0


def shared_answer(render: Callable[[dict[str, Any]], str]) -> str:
    """render(sync_metrics()) as any worker or instance made it less than SHARED_METRICS_SECONDS ago (one Redis
    GET, nothing recomputed or re-rendered); once it is half that old one request (a Redis lock) makes it again for
    everyone. Without Redis, or when it fails, made for this request. Deliveries drop it (forget_shared_metrics)
    in their own pipeline."""
    client = get_redis()
    if client is None:
        return render(sync_metrics())
    try:
        made_at, _, answer = (client.get(SHARED_METRICS_KEY) or "").partition("|")
        if answer and (
            time.time() - float(made_at) < SHARED_METRICS_SECONDS / 2
            or not client.set(SHARED_METRICS_LOCK_KEY, "1", nx=True, px=int(SHARED_METRICS_SECONDS * 1000))
        ):
            return answer
    except (redis.RedisError, ValueError):
        return render(sync_metrics())
    answer = render(sync_metrics())
    try:
        pipeline = client.pipeline(transaction=False)
        pipeline.set(SHARED_METRICS_KEY, f"{time.time():.6f}|{answer}", px=int(SHARED_METRICS_SECONDS * 1000))
        pipeline.delete(SHARED_METRICS_LOCK_KEY)
        pipeline.execute()
    except redis.RedisError:
        pass
    return answer


def forget_shared_metrics(pipeline: Any) -> None:
    """On a Redis pipeline (one a delivery sends anyway) or client: the next metrics request computes them afresh."""
    pipeline.delete(SHARED_METRICS_KEY)


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

