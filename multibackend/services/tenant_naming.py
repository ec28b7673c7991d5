"""The one place that knows how a Chatwoot account's tenant resources are named."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TenantNames:
    company_id: str
    redis_prefix: str
    vectorstore_index: str

    @property
    def redis_tenant_key(self) -> str:
        """The hash that holds the tenant's data inside its namespace."""
        return tenant_key(self.redis_prefix)


def tenant_key(redis_prefix: str) -> str:
    """The tenant hash inside a namespace."""
    return f"{redis_prefix}tenant"


def tenant_names(account_id: int | str) -> TenantNames:
    """Names for account 42: chatwoot_42, chatwoot_42: (the colon keeps 1 apart from 12), chatwoot_42_documents."""
    base = f"chatwoot_{int(account_id)}"
    return TenantNames(company_id=base, redis_prefix=f"{base}:", vectorstore_index=f"{base}_documents")
