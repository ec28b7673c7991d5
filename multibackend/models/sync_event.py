"""What the sync metrics read: one row per processed delivery, one counter per rejection code."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Float, Index, Integer, SmallInteger, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from multibackend.extensions import Base
from multibackend.clock import utcnow


class SyncEvent(Base):
    """One authenticated, valid account_created delivery and how it ended."""

    __tablename__ = "chatwoot_sync_events"
    __table_args__ = (
        CheckConstraint("outcome IN ('success', 'failed')", name="chatwoot_sync_events_outcome_check"),
        # recent_errors reads the newest few rows with an error: O(10) however long the history
        Index(
            "ix_chatwoot_sync_events_errors",
            "created_at",
            postgresql_where=text("error IS NOT NULL"),
            sqlite_where=text("error IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    chatwoot_account_id: Mapped[str] = mapped_column(String(50))
    company_id: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    created: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    latency_ms: Mapped[float] = mapped_column(Float(53))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), index=True
    )


class WebhookRejection(Base):
    """How many deliveries were refused with one error code, and when the last one was."""

    __tablename__ = "chatwoot_webhook_rejections"

    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    last_rejected_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now()
    )


class SyncTotals(Base):
    """Running totals of every sync event up to through_event_id, so metrics never scan the history."""

    __tablename__ = "chatwoot_sync_totals"
    __table_args__ = (CheckConstraint("id = 1", name="chatwoot_sync_totals_single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, default=1, autoincrement=False)
    through_event_id: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    total_syncs: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    success_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    latency_sum_ms: Mapped[float] = mapped_column(Float(53), default=0.0, server_default=text("0"))
    last_sync: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
