"""The company lookup the iframe polls: Redis cache first, then PostgreSQL (and Chatwoot, when self-healing)."""

from __future__ import annotations

from multibackend.extensions import once_more_if_disconnected
from multibackend.services import lookup_cache, self_heal


def lookup_answer(account_id: int) -> bytes:
    """The lookup's `data` as JSON bytes; never says exists: false for a company whose webhook was answered."""
    cached = lookup_cache.cached_answer(account_id)
    if cached is not None:
        return cached
    found = once_more_if_disconnected(lambda: self_heal.lookup_company(account_id))
    return lookup_cache.remember_lookup(account_id, {"exists": True, **found.as_dict()} if found else None)
