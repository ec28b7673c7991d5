"""The company lookup the iframe polls: the worker's held answers first (no round trip), then PostgreSQL (one round
trip, shared with the lookups that arrive meanwhile; and Chatwoot, when self-healing)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from multibackend.extensions import db, get_redis, once_more_if_disconnected
from multibackend.models import CompanySnapshot
from multibackend.round_trips import Ask, shared_round_trips
from multibackend.schemas import lookup_data
from multibackend.services import delivery_spool, lookup_cache, self_heal, tenant_provisioning


@dataclass(frozen=True)
class LookupAnswer:
    """The lookup's `data` as JSON bytes, and whether it names a company (exists: true) or not."""

    found: bool
    data: bytes

    @property
    def body(self) -> bytes:
        """The whole answer's JSON: {"success":true,"data":...}."""
        return b'{"success":true,"data":' + self.data + b"}"


def lookup_answer(account_id: int) -> LookupAnswer:
    """The lookup's answer; never exists: false for a company whose webhook was answered."""
    cached = lookup_cache.cached_answer(account_id)
    if cached is not None:  # only existing companies are held
        return LookupAnswer(found=True, data=cached)
    generation = lookup_cache.generation()
    found = once_more_if_disconnected(lambda: find_or_finish(account_id))
    data = lookup_data(found) if found else None
    return LookupAnswer(found is not None, lookup_cache.remember_lookup(account_id, data, generation))


def find_or_finish(account_id: int) -> CompanySnapshot | None:
    """The company; else the one a spooled delivery promised (202) now that PostgreSQL is back; else the one
    Chatwoot has (self-healing)."""
    return (
        read_company(account_id)
        or finish_spooled_delivery(account_id)
        or self_heal.heal_missing_company(account_id)
    )


def finish_spooled_delivery(account_id: int) -> CompanySnapshot | None:
    """Provision a delivery that was answered 202 (spooled) right away instead of waiting for the worker."""
    client = get_redis()
    if client is None or not lookup_cache.may_be_spooled(account_id):
        return None
    try:
        name = delivery_spool.spooled_name(client, account_id)
    except redis.RedisError:
        return None
    if name is None:
        return None
    tenant_provisioning.provision_account(account_id, name)
    try:
        delivery_spool.forget_pending(client, account_id)
    except redis.RedisError:
        pass  # the replay will find the company already there
    return tenant_provisioning.find_company(account_id)


def read_company(account_id: int) -> CompanySnapshot | None:
    """The company as committed when this call began (PostgreSQL: in one read shared with the lookups that arrive
    while another read is in flight)."""
    if db.engine.dialect.name != "postgresql":
        return tenant_provisioning.find_company(account_id)
    ask = shared_round_trips("company_reads", read_together).ask(account_id)
    if ask.alone:
        return tenant_provisioning.find_company(account_id)
    if ask.error is not None:
        raise ask.error
    return ask.result


def read_together(asks: list[Ask]) -> None:
    """Every asked account's company in one read (a lone one by equality, which PostgreSQL answers faster than
    `= ANY`); if it fails, every lookup in it fails as it would have alone."""
    try:
        if len(asks) == 1:
            company = tenant_provisioning.find_company(asks[0].key)
            found = {asks[0].key: company} if company is not None else {}
        else:
            found = tenant_provisioning.find_companies([ask.key for ask in asks])
    except Exception as exc:
        for ask in asks:
            ask.error = exc
        return
    for ask in asks:
        ask.result = found.get(ask.key)
