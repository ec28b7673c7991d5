"""Removing what the smoke test (test_chatwoot_webhook.py) left: its companies use account ids no real Chatwoot
account has yet (900000000 to 999999999), so they can be told apart and removed whole."""

from __future__ import annotations

import redis
from sqlalchemy import func, select

from multibackend.extensions import db, get_redis
from multibackend.models import Company, CompanySnapshot
from multibackend.services.companies import company_write
from multibackend.services.tenant_provisioning import VECTORSTORE_REGISTRY_KEY, tenant_key_of

SMOKE_TEST_ACCOUNT_IDS = (900_000_000, 999_999_999)


def remove_smoke_test_companies(dry_run: bool = False) -> list[CompanySnapshot]:
    """Delete the smoke test's companies (one commit), their Redis namespaces, index names and cached lookups;
    returns them. Real companies are never in that range, so nothing else is touched."""
    first, last = SMOKE_TEST_ACCOUNT_IDS
    with company_write(dry_run=dry_run) as write:
        nine_digits = (func.length(Company.chatwoot_account_id) == 9, Company.chatwoot_account_id.between(str(first), str(last)))
        companies = [
            company
            for company in db.session.scalars(select(Company).where(*nine_digits))
            if company.account_number is not None and first <= company.account_number <= last
        ]
        removed = [CompanySnapshot.of(company) for company in companies]
        if companies and not dry_run:
            write.remove([company.id for company in companies])
    client = get_redis()
    if removed and client is not None and not dry_run:
        try:
            pipeline = client.pipeline(transaction=False)
            for company in removed:
                pipeline.delete(tenant_key_of(company))
                pipeline.srem(VECTORSTORE_REGISTRY_KEY, company.vectorstore_index)
            pipeline.execute()
        except redis.RedisError:
            pass  # reconcile never rebuilds a namespace for a company that is gone; the next run may clean up
    return removed
