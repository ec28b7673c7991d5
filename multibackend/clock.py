"""Time in UTC: for defaults and for every timestamp we show."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime | str | None) -> str | None:
    """ISO 8601 in UTC with a Z; naive values (SQLite) are taken as UTC."""
    if moment is None:
        return None
    if isinstance(moment, str):  # SQLite aggregates come back as text
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
