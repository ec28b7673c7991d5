"""Removing what the smoke test (test_chatwoot_webhook.py) left: its companies use account ids no real Chatwoot
account has yet (900000000 to 999999999) and its own name for them, "Smoke Test <id>"; only a company with both is
the smoke test's, so a real customer whose account reaches that range is never touched."""

from __future__ import annotations

import redis
from sqlalchemy import func, select

from multibackend.extensions import db, get_redis
from multibackend.models import Company, CompanySnapshot
from multibackend.services.companies import company_write
from multibackend.services.tenant_provisioning import VECTORSTORE_REGISTRY_KEY, tenant_key_of

SMOKE_TEST_ACCOUNT_IDS = (900_000_000, 999_999_999)


def smoke_test_name(account_id: int) -> str:
    """The name the smoke test gives its account (its default; test_chatwoot_webhook.py's --name changes it)."""
    return f"Smoke Test {account_id}"


def remove_smoke_test_companies(dry_run: bool = False) -> list[CompanySnapshot]:
    """Delete the smoke test's companies (one commit), their Redis namespaces, index names and cached lookups;
    returns them. A company in the range with any other name is a real one and stays."""
    first, last = SMOKE_TEST_ACCOUNT_IDS
    with company_write(dry_run=dry_run) as write:
        nine_digits = (func.length(Company.chatwoot_account_id) == 9, Company.chatwoot_account_id.between(str(first), str(last)))
        companies = [
            company
            for company in db.session.scalars(select(Company).where(*nine_digits))
            if company.account_number is not None and first <= company.account_number <= last
            and company.company_name == smoke_test_name(company.account_number)
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
