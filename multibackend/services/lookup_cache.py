"""The company lookup's cache in Redis, shared by every worker and instance, with read-your-writes:

- every commit that changes a company publishes its answer (SET) before the request that made it answers
  (services.companies.company_write does it, for every write);
- a lookup that reads PostgreSQL stores a hit only if nothing newer is there (SET NX), and a miss for 2 s;
- a stored answer wins over a stored miss, so a miss cached just before a commit is never served after it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import redis

from multibackend.extensions import get_redis
from multibackend.models import CompanySnapshot
from multibackend.schemas import lookup_data

logger = logging.getLogger(__name__)

ANSWER_KEY = "multibackend:lookup:{}"
ABSENT_KEY = "multibackend:lookup:absent:{}"
ANSWER_TTL_SECONDS = 3600
ABSENT_TTL_SECONDS = 2
ABSENT_ANSWER = b'{"exists":false}'


def cached_answer(account_id: int) -> bytes | None:
    """The cached `data` JSON of this lookup, or None (not cached, or Redis unavailable)."""
    client = get_redis()
    if client is None:
        return None
    try:
        answer, absent = client.mget(ANSWER_KEY.format(account_id), ABSENT_KEY.format(account_id))
    except redis.RedisError:
        return None
    found = answer or absent
    return found.encode() if isinstance(found, str) else found


def remember_lookup(account_id: int, data: dict[str, Any] | None) -> bytes:
    """Store what PostgreSQL said (a hit only if no newer answer is there); returns the `data` JSON to send."""
    encoded = encode(data) if data is not None else ABSENT_ANSWER
    client = get_redis()
    if client is not None:
        try:
            if data is None:
                client.set(ABSENT_KEY.format(account_id), encoded, ex=ABSENT_TTL_SECONDS)
            else:
                client.set(ANSWER_KEY.format(account_id), encoded, ex=ANSWER_TTL_SECONDS, nx=True)
        except redis.RedisError:
            pass
    return encoded


def publish(answers: Iterable[tuple[str, CompanySnapshot]]) -> None:
    """Overwrite the cached answers of companies whose change was just committed (best effort)."""
    client = get_redis()
    answers = list(answers)
    if client is None or not answers:
        return
    try:
        pipeline = client.pipeline(transaction=False)
        for account_id, company in answers:
            pipeline.set(ANSWER_KEY.format(account_id), encode(lookup_data(company)), ex=ANSWER_TTL_SECONDS)
            pipeline.delete(ABSENT_KEY.format(account_id))
        pipeline.execute()
    except redis.RedisError as exc:
        logger.warning("[Chatwoot Sync] Lookup cache not updated (%s); answers may lag up to %s s", type(exc).__name__, ANSWER_TTL_SECONDS)


def forget(account_ids: Iterable[str]) -> None:
    """Drop the cached answers of these accounts (their rows were removed); the next lookup reads PostgreSQL."""
    client = get_redis()
    keys = [ANSWER_KEY.format(account_id) for account_id in account_ids]
    if client is None or not keys:
        return
    try:
        client.delete(*keys)
    except redis.RedisError as exc:
        logger.warning("[Chatwoot Sync] Lookup cache not updated (%s); answers may lag up to %s s", type(exc).__name__, ANSWER_TTL_SECONDS)


def forget_all() -> None:
    """Drop every cached answer (after a change to many rows, such as a schema upgrade); best effort."""
    client = get_redis()
    if client is None:
        return
    try:
        keys = list(client.scan_iter(ANSWER_KEY.format("*"), count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    except redis.RedisError as exc:
        logger.warning("[Chatwoot Sync] Lookup cache not cleared (%s); answers may lag up to %s s", type(exc).__name__, ANSWER_TTL_SECONDS)


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
