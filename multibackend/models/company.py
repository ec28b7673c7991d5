"""A company: one Chatwoot account and the names of its tenant services."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Index, Integer, String, Text, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from multibackend.extensions import db
from multibackend.clock import utcnow

PROVISIONING_STATUSES = ("pending", "ready", "failed")
#: What Chatwoot says of the account: companies are marked, never deleted, when it goes away.
CHATWOOT_STATUSES = ("active", "suspended", "deletion_pending", "deleted")


class Company(db.Model):
    __tablename__ = "companies"
    __table_args__ = (
        UniqueConstraint("company_id", name="companies_company_id_key"),
        UniqueConstraint("chatwoot_account_id", name="companies_chatwoot_account_id_key"),
        CheckConstraint(
            "provisioning_status IN ('pending', 'ready', 'failed')",
            name="companies_provisioning_status_check",
        ),
        CheckConstraint(
            "chatwoot_status IN ('active', 'suspended', 'deletion_pending', 'deleted')",
            name="companies_chatwoot_status_check",
        ),
        Index(
            "ix_companies_unfinished_provisioning",
            "next_provisioning_at",
            postgresql_where=text("provisioning_status <> 'ready'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    company_id: Mapped[str] = mapped_column(String(64))
    company_name: Mapped[str] = mapped_column(String(255))
    chatwoot_account_id: Mapped[str | None] = mapped_column(String(50))
    redis_prefix: Mapped[str] = mapped_column(String(80))
    vectorstore_index: Mapped[str] = mapped_column(String(100))
    provisioning_status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    provisioning_error: Mapped[str | None] = mapped_column(Text)
    provisioning_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    next_provisioning_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    chatwoot_status: Mapped[str] = mapped_column(String(20), default="active", server_default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )
