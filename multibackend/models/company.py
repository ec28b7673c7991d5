"""A company: one Chatwoot account and the names of its tenant services."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from multibackend.extensions import db
from multibackend.clock import utcnow

PROVISIONING_STATUSES = ("pending", "ready", "failed")


class Company(db.Model):
    __tablename__ = "companies"
    __table_args__ = (
        CheckConstraint(
            "provisioning_status IN ('pending', 'ready', 'failed')",
            name="companies_provisioning_status_check",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    company_id: Mapped[str] = mapped_column(String(64), unique=True)
    company_name: Mapped[str] = mapped_column(String(255))
    chatwoot_account_id: Mapped[str | None] = mapped_column(String(50), unique=True)
    redis_prefix: Mapped[str] = mapped_column(String(80))
    vectorstore_index: Mapped[str] = mapped_column(String(100))
    provisioning_status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    provisioning_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )
