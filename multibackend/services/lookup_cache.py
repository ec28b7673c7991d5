"""The company lookup's cache in Redis, shared by every worker and instance, with read-your-writes:

- every commit that changes a company publishes its answer (SET) before the request that made it answers;
- a lookup that reads PostgreSQL stores a hit only if nothing newer is there (SET NX), and a miss for 2 s;
- a stored answer wins over a stored miss, so a miss cached just before a commit is never served after it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from multibackend.extensions import get_redis

logger = logging.getLogger(__name__)

ANSWER_KEY = "multibackend:lookup:{}"
ABSENT_KEY = "multibackend:lookup:absent:{}"
ANSWER_TTL_SECONDS = 3600
ABSENT_TTL_SECONDS = 2
ABSENT_ANSWER = b'{"exists":false}'
PENDING_INFO_KEY = "multibackend.lookup_cache.pending"


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


def publish(answers: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Overwrite the cached answers of companies whose change was just committed (best effort)."""
    client = get_redis()
    answers = list(answers)
    if client is None or not answers:
        return
    try:
        pipeline = client.pipeline(transaction=False)
        for account_id, data in answers:
            pipeline.set(ANSWER_KEY.format(account_id), encode(data), ex=ANSWER_TTL_SECONDS)
            pipeline.delete(ABSENT_KEY.format(account_id))
        pipeline.execute()
    except redis.RedisError as exc:
        logger.warning("[Chatwoot Sync] Lookup cache not updated (%s); answers may lag up to %s s", type(exc).__name__, ANSWER_TTL_SECONDS)


def forget_all() -> None:
    """Drop every cached answer (after a bulk change such as dedupe)."""
    client = get_redis()
    if client is None:
        return
    keys = list(client.scan_iter(ANSWER_KEY.format("*"), count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def track_company_changes(session_class: Any, answer_of: Callable[[Any], tuple[str, dict[str, Any]] | None]) -> None:
    """Publish the lookup answer of every object a commit inserted or changed through the ORM, right after that
    commit; answer_of gives (account id, answer) for objects that have one, None for others."""

    @event.listens_for(session_class, "after_flush")
    def collect(session: Session, flush_context: Any) -> None:
        answers = [answer for obj in (*session.new, *session.dirty) if (answer := answer_of(obj)) is not None]
        if answers:
            session.info.setdefault(PENDING_INFO_KEY, {}).update(answers)

    @event.listens_for(session_class, "after_commit")
    def publish_committed(session: Session) -> None:
        pending = session.info.pop(PENDING_INFO_KEY, None)
        if pending:
            publish(pending.items())

    @event.listens_for(session_class, "after_rollback")
    def discard(session: Session) -> None:
        session.info.pop(PENDING_INFO_KEY, None)
