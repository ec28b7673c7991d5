"""SQLAlchemy models (import them from here)."""

from multibackend.models.company import CHATWOOT_STATUSES, PROVISIONING_STATUSES, Company, CompanySnapshot, DashboardTab, TenantAnnouncement
from multibackend.models.sync_event import SyncEvent, SyncTotals, WebhookRejection

__all__ = [
    "CHATWOOT_STATUSES", "PROVISIONING_STATUSES", "Company", "CompanySnapshot", "DashboardTab", "SyncEvent", "SyncTotals", "TenantAnnouncement",
    "WebhookRejection",
]
