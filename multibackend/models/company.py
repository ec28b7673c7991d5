"""A company: one Chatwoot account, the names of its tenant services, and the rules of its life cycle.

Provisioning status: a company is `ready` once its tenant services are up; a failed attempt makes it `pending`
with a backoff, and after the last allowed attempt it stays `failed` (it "gave up") until an operator restarts
its attempts. What Chatwoot says of the account (`chatwoot_status`) is followed, never deleted."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ColumnElement, DateTime, Index, Integer, String, Text, UniqueConstraint, and_, func, or_, text
from sqlalchemy.orm import Mapped, mapped_column

from multibackend.clock import iso_utc, utcnow
from multibackend.extensions import Base
from multibackend.services.tenant_naming import tenant_names

PROVISIONING_STATUSES = ("pending", "ready", "failed")
#: What Chatwoot says of the account: companies are marked, never deleted, when it goes away.
CHATWOOT_STATUSES = ("active", "suspended", "deletion_pending", "deleted")
MAX_BACKOFF_SECONDS = 3600


def retry_delay(failed_attempts: int, base_seconds: float) -> float:
    """The next reconcile retries at once after the first failure, then waits base, 2×base, 4×base... (max 1 h)."""
    if failed_attempts <= 1:
        return 0.0
    return min(base_seconds * 2 ** (failed_attempts - 2), MAX_BACKOFF_SECONDS)


class Company(Base):
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
    # every change through the ORM stamps it (onupdate): the methods below never set it by hand
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now()
    )

    # --- provisioning status -------------------------------------------------------------------------------

    def assign_tenant_names(self) -> None:
        """A row the host wrote with only an account id gets the tenant names the plugin gives every account."""
        if (self.redis_prefix and self.vectorstore_index) or self.account_number is None:
            return
        names = tenant_names(self.account_number)
        self.redis_prefix = self.redis_prefix or names.redis_prefix
        self.vectorstore_index = self.vectorstore_index or names.vectorstore_index

    @property
    def is_ready(self) -> bool:
        return self.provisioning_status == "ready"

    def mark_ready(self) -> None:
        """Tenant services are up: ready, with no error and a fresh attempt count (no change if already so)."""
        if (self.provisioning_status, self.provisioning_error, self.provisioning_attempts) == ("ready", None, 0):
            return
        self._set_status("ready", None)
        self.provisioning_attempts = 0
        self.next_provisioning_at = None

    def record_failed_attempt(self, reason: str, max_attempts: int, backoff_seconds: float) -> None:
        """Count a failed attempt: pending until the next retry, or failed for good after the last attempt."""
        attempts = (self.provisioning_attempts or 0) + 1
        self.provisioning_attempts = attempts
        if attempts >= max_attempts:
            self._set_status("failed", f"gave up after {attempts} attempts: {reason}")
            self.next_provisioning_at = None
            return
        self._set_status("pending", reason)
        self.next_provisioning_at = utcnow() + timedelta(seconds=retry_delay(attempts, backoff_seconds))

    def restart_attempts(self) -> None:
        """An operator's --retry-failed: pending again, with every attempt available."""
        self.provisioning_attempts = 0
        self.next_provisioning_at = None
        self._set_status("pending", self.provisioning_error)

    @classmethod
    def due_for_provisioning(cls, max_attempts: int, now: datetime) -> ColumnElement[bool]:
        """Not ready, attempts left, and its backoff over."""
        return and_(
            cls.provisioning_status != "ready",
            cls.provisioning_attempts < max_attempts,
            or_(cls.next_provisioning_at.is_(None), cls.next_provisioning_at <= now),
        )

    @classmethod
    def gave_up(cls, max_attempts: int) -> ColumnElement[bool]:
        """Failed after the last allowed attempt: only an operator's --retry-failed brings it back."""
        return and_(cls.provisioning_status == "failed", cls.provisioning_attempts >= max_attempts)

    def _set_status(self, status: str, error: str | None) -> None:
        self.provisioning_status = status
        self.provisioning_error = error

    # --- what Chatwoot says of the account -----------------------------------------------------------------

    @property
    def account_number(self) -> int | None:
        """The Chatwoot account id as a number; None for rows without one (the host's own, or older rows)."""
        value = self.chatwoot_account_id or ""
        return int(value) if value.isdigit() else None

    def rename(self, name: str) -> bool:
        """Follow the account's name in Chatwoot; True when it changed."""
        if self.company_name == name:
            return False
        self.company_name = name
        return True

    def mark(self, chatwoot_status: str) -> bool:
        """Follow the account's state in Chatwoot (suspended, deleted...); True when it changed."""
        if self.chatwoot_status == chatwoot_status:
            return False
        self.chatwoot_status = chatwoot_status
        return True


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
        return {name: getattr(self, name) for name in SNAPSHOT_FIELDS}


SNAPSHOT_FIELDS = tuple(field.name for field in fields(CompanySnapshot))


class TenantAnnouncement(Base):
    """Outbox: a company became ready and tenant_provisioned is still owed for it. Written in the same commit as
    the status, removed once the signal was sent, so a crash in between is repaired by the reconciler."""

    __tablename__ = "chatwoot_tenant_announcements"

    company_pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


class DashboardTab(Base):
    """The company tab (a Chatwoot Dashboard App) that the plugin made in one Chatwoot account: which row of
    Chatwoot's `dashboard_apps` is ours, and what it was last written with."""

    __tablename__ = "chatwoot_dashboard_tabs"

    chatwoot_account_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)
    dashboard_app_id: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now())
