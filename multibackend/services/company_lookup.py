"""The company lookup the iframe polls: the worker's held answers first (no round trip), then PostgreSQL (one round
trip, shared with the lookups that arrive meanwhile; and Chatwoot, when self-healing)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from flask import current_app

from multibackend.extensions import db, get_redis, once_more_if_disconnected
from multibackend.models import CompanySnapshot
from multibackend.schemas import lookup_data
from multibackend.services import delivery_spool, lookup_cache, self_heal, tenant_provisioning


@dataclass(frozen=True)
class LookupAnswer:
    """The lookup's `data` as JSON bytes, and whether it names a company (exists: true) or not."""

    found: bool
    data: bytes


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
    """The company as committed when this call began (PostgreSQL: in a read shared with concurrent lookups)."""
    if db.engine.dialect.name != "postgresql":
        return tenant_provisioning.find_company(account_id)
    extensions = current_app.extensions
    entry = extensions.get(COMBINED_READS_EXTENSION)
    if entry is None or entry[0] != os.getpid():
        entry = extensions[COMBINED_READS_EXTENSION] = (os.getpid(), CombinedReads())
    return entry[1].find(account_id, tenant_provisioning.find_companies)


COMBINED_READS_EXTENSION = "multibackend.combined_reads"


@dataclass
class _Read:
    done: bool = False
    found: CompanySnapshot | None = None
    error: Exception | None = None


class CombinedReads:
    """Cold lookups of one process share round trips: one read is in flight at a time, and every account asked for
    meanwhile goes into the next read together. A read starts only after all of its accounts were asked for, so it
    sees every commit that came before the asking (read-your-writes holds)."""

    def __init__(self) -> None:
        self._turn = threading.Lock()  # held by the one read in flight
        self._guard = threading.Lock()  # guards _asked
        self._asked: dict[int, _Read] = {}

    def find(self, account_id: int, read_many: Callable[[Sequence[int]], dict[int, CompanySnapshot]]) -> CompanySnapshot | None:
        """The account's company as read_many finds it, in a read that started after this call began."""
        with self._guard:
            read = self._asked.setdefault(account_id, _Read())
        with self._turn:
            if not read.done:
                with self._guard:
                    asked, self._asked = self._asked, {}
                _read_together(asked, read_many)
        if read.error is not None:
            raise read.error
        return read.found


def _read_together(asked: dict[int, _Read], read_many: Callable[[Sequence[int]], dict[int, CompanySnapshot]]) -> None:
    try:
        found = read_many(list(asked))
    except Exception as exc:  # every lookup of this read fails as it would have alone
        for read in asked.values():
            read.error, read.done = exc, True
        return
    for account_id, read in asked.items():
        read.found, read.done = found.get(account_id), True
