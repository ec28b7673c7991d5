"""The company lookup's cache: answers held in each worker's memory, invalidated through Redis, with read-your-writes.

- A repeated lookup is answered from the worker's memory: no network round trip.
- Only companies that exist are held (never "exists: false"), so a company created anywhere is found by the very
  next lookup on any worker or instance: a lookup that is not held reads PostgreSQL (one round trip).
- Every commit that changes a company (services.companies.company_write) drops the held answers of those accounts
  in its own process at once, and PUBLISHes their ids on INVALIDATION_CHANNEL (one round trip); every worker
  subscribes and drops them when the message arrives (normally well under 1 ms after the commit).
- Each worker also knows which accounts have a delivery spooled while PostgreSQL was down (delivery_spool
  publishes them), so a lookup of an unknown account asks Redis for a spooled delivery only when there is one.
- An answer is held only while this process's subscription is up (dropped on a disconnect, everything forgotten
  on reconnect), at most HELD_SECONDS in any case (the bound if a writer could not reach Redis), and not at all
  without Redis. A reading that raced an invalidation is not stored (generation check)."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from flask import Flask, current_app

from multibackend.extensions import get_redis
from multibackend.services import delivery_spool

logger = logging.getLogger(__name__)

ABSENT_ANSWER = b'{"exists":false}'
INVALIDATION_CHANNEL = "multibackend:lookup:changed"
EVERY_ANSWER = "*"
HELD_SECONDS = 30.0
#: the most one process holds, in bytes: each answer counts its JSON (UTF-8, never `\\uXXXX`-inflated) plus what a
#: held entry costs in memory besides (its key, expiry, tuple and bytes object, dict slot); the oldest go first
HELD_BYTES = 128 * 1024 * 1024
HELD_ENTRY_OVERHEAD_BYTES = 200


class HeldAnswers:
    """One process's answers for one Redis (every app instance on that Redis shares them), kept valid by a
    subscriber thread."""

    def __init__(self, client: redis.Redis):
        self.answers: dict[int, tuple[float, bytes]] = {}
        self.held_bytes = 0
        self.spooled: set[int] = set()  # accounts with a spooled delivery, as far as this process knows
        self.generation = 0
        self.live = False
        self.lock = threading.Lock()
        self._client = client
        self._thread: threading.Thread | None = None

    def get(self, account_id: int) -> bytes | None:
        held = self.answers.get(account_id) if self.live else None
        if held is None or held[0] < time.monotonic():
            return None
        return held[1]

    def put(self, account_id: int, answer: bytes, generation: int) -> None:
        with self.lock:
            if not self.live or generation != self.generation:
                return  # an invalidation came in while PostgreSQL was being read: that reading may be stale
            self._forget(account_id)
            cost = held_cost(answer)
            while self.answers and self.held_bytes + cost > HELD_BYTES:
                self._forget(next(iter(self.answers)))  # the oldest held
            # spread over the last quarter of HELD_SECONDS: answers held together (a restart, a burst of iframes)
            # are not all read again in the same second
            self.answers[account_id] = (time.monotonic() + HELD_SECONDS * random.uniform(0.75, 1.0), answer)
            self.held_bytes += cost

    def _forget(self, account_id: int) -> None:
        held = self.answers.pop(account_id, None)
        if held is not None:
            self.held_bytes -= held_cost(held[1])

    def may_be_spooled(self, account_id: int) -> bool:
        """False only when this account surely has no spooled delivery (the subscription is up and said none)."""
        return not self.live or account_id in self.spooled

    def drop(self, account_ids: Iterable[int] | None) -> None:
        """Forget these accounts' answers (None: all of them); a changed company is no longer only spooled."""
        with self.lock:
            self.generation += 1
            if account_ids is None:
                self.answers.clear()
                self.held_bytes = 0
            else:
                for account_id in account_ids:
                    self._forget(account_id)
                    self.spooled.discard(account_id)

    def start(self) -> None:
        """Subscribe (synchronously, so the first lookup can already be held), then listen on a daemon thread."""
        try:
            pubsub = self._subscribe()
        except redis.RedisError:
            pubsub = None
        self._thread = threading.Thread(target=self._listen, args=(pubsub,), name="lookup-invalidations", daemon=True)
        self._thread.start()

    def _subscribe(self) -> Any:
        pubsub = self._client.pubsub(ignore_subscribe_messages=False)
        pubsub.subscribe(INVALIDATION_CHANNEL, delivery_spool.SPOOLED_CHANNEL)
        for _ in range(2):
            confirmation = pubsub.get_message(timeout=1.0)
            if not confirmation or confirmation.get("type") != "subscribe":
                pubsub.close()
                raise redis.ConnectionError("no subscription")
        self.drop(None)  # messages may have been missed before this subscription
        self.spooled = delivery_spool.pending_accounts(self._client)  # read after subscribing: none missed
        self.live = True
        return pubsub

    def _listen(self, pubsub: Any) -> None:
        while True:
            try:
                if pubsub is None:
                    pubsub = self._subscribe()
                message = pubsub.get_message(timeout=5.0)
                if message and message.get("type") == "message":
                    self._apply(message["channel"], message["data"])
            except (redis.RedisError, OSError, ValueError):
                self.live = False
                self.drop(None)
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
                pubsub = None
                time.sleep(1.0)

    def _apply(self, channel: Any, data: Any) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        if channel == delivery_spool.SPOOLED_CHANNEL:
            self.spooled.add(int(text))
        else:
            self.drop(None if text == EVERY_ANSWER else [int(part) for part in text.split(",") if part])


HELD_EXTENSION = "multibackend.held_answers"


def held_answers() -> HeldAnswers | None:
    """This app's held answers in this process (started on first use, and again after a fork); None without
    Redis."""
    held = started_held_answers(current_app)
    if held is not None:
        return held
    extensions = current_app.extensions
    client = get_redis()
    if client is None:
        return None
    with _held_lock:
        entry = extensions.get(HELD_EXTENSION)
        if entry is None or entry[0] != os.getpid():
            held = HeldAnswers(client)
            held.start()
            entry = extensions[HELD_EXTENSION] = (os.getpid(), held)
    return entry[1]


_held_lock = threading.Lock()


def started_held_answers(app: Flask) -> HeldAnswers | None:
    """This app's held answers if this process has started them (never starts them)."""
    entry = app.extensions.get(HELD_EXTENSION)
    return entry[1] if entry is not None and entry[0] == os.getpid() else None


def cached_answer(account_id: int) -> bytes | None:
    """The held `data` JSON of this (existing) company, or None: no network round trip either way."""
    held = held_answers()
    return held.get(account_id) if held is not None else None


def may_be_spooled(account_id: int) -> bool:
    """Whether a delivery for this account may wait in the spool (False: surely not, no round trip needed)."""
    held = held_answers()
    return held.may_be_spooled(account_id) if held is not None else True


def generation() -> int:
    """Taken before reading PostgreSQL and handed to remember_lookup (a reading that raced a change is not held)."""
    held = held_answers()
    return held.generation if held is not None else 0


def remember_lookup(account_id: int, data: dict[str, Any] | None, generation: int) -> bytes:
    """Hold what PostgreSQL said about an existing company; returns the `data` JSON to send."""
    if data is None:
        return ABSENT_ANSWER
    encoded = encode(data)
    held = held_answers()
    if held is not None:
        held.put(account_id, encoded, generation)
    return encoded


def publish(account_ids: Iterable[str] | None) -> None:
    """After the commit of a change to these accounts' companies (None: to any number of rows, such as a schema
    upgrade): drop their held answers in this process at once and tell every other worker and instance to drop
    theirs (one PUBLISH); the next lookup reads the committed row. Best effort: if Redis cannot be reached, other
    workers' held answers expire within HELD_SECONDS."""
    changed = None if account_ids is None else [str(account_id) for account_id in account_ids]
    if changed is not None and not changed:
        return
    held = started_held_answers(current_app)  # never started just for this (a CLI run holds nothing)
    if held is not None:
        held.drop(None if changed is None else [int(account_id) for account_id in changed if account_id.isdigit()])
    client = get_redis()
    if client is None:
        return
    try:
        client.publish(INVALIDATION_CHANNEL, EVERY_ANSWER if changed is None else ",".join(changed))
    except redis.RedisError as exc:
        logger.warning("[Chatwoot Sync] Lookup answers not invalidated (%s); other workers may lag up to %s s", type(exc).__name__, HELD_SECONDS)


def held_cost(answer: bytes) -> int:
    """What holding one answer costs against HELD_BYTES."""
    return len(answer) + HELD_ENTRY_OVERHEAD_BYTES


def encode(data: dict[str, Any]) -> bytes:
    """The answer's JSON as UTF-8: an emoji costs 4 bytes, not the 12 of `\\ud83d\\ude00`."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
