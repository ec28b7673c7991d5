"""SQLAlchemy models (import them from here)."""

from multibackend.models.company import PROVISIONING_STATUSES, Company
from multibackend.models.sync_event import SyncEvent, SyncTotals, WebhookRejection

__all__ = ["PROVISIONING_STATUSES", "Company", "SyncEvent", "SyncTotals", "WebhookRejection"]
