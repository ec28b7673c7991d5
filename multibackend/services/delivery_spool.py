"""The spool: deliveries that PostgreSQL could not take, kept in a Redis list until the reconciler replays them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from multibackend.clock import iso_utc, utcnow
from multibackend.extensions import get_redis, is_transient

logger = logging.getLogger(__name__)

SPOOL_KEY = "multibackend:spool:account_created"
IN_FLIGHT_KEY = f"{SPOOL_KEY}:in_flight"
DEAD_LETTER_KEY = f"{SPOOL_KEY}:dead"
#: account id -> name of every spooled delivery not yet provisioned, so a lookup can finish it at once
PENDING_ACCOUNTS_KEY = f"{SPOOL_KEY}:accounts"
#: the account id of every delivery spooled, published when it is spooled (so lookups know without asking)
SPOOLED_CHANNEL = f"{SPOOL_KEY}:spooled"


@dataclass(frozen=True)
class SpooledDelivery:
    account_id: int
    company_name: str
    received_at: str

    def encode(self) -> str:
        return json.dumps({"id": self.account_id, "name": self.company_name, "received_at": self.received_at})

    @classmethod
    def decode(cls, raw: str) -> SpooledDelivery:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("id"), int) or not isinstance(data.get("name"), str):
            raise ValueError("not a spooled delivery")
        return cls(data["id"], data["name"], str(data.get("received_at", "")))


def spool_delivery(account_id: int, company_name: str) -> bool:
    """Keep a validated delivery for a later replay; False when Redis cannot take it either."""
    client = get_redis()
    if client is None:
        return False
    delivery = SpooledDelivery(account_id, company_name, iso_utc(utcnow()) or "")
    try:
        pipeline = client.pipeline(transaction=True)
        pipeline.lpush(SPOOL_KEY, delivery.encode())
        pipeline.hset(PENDING_ACCOUNTS_KEY, str(account_id), company_name)
        pipeline.publish(SPOOLED_CHANNEL, str(account_id))
        pipeline.execute()
    except redis.RedisError as exc:
        logger.error("[Chatwoot Sync] Error: cannot spool account %s either (%s)", account_id, type(exc).__name__)
        return False
    logger.warning(
        "[Chatwoot Sync] Database unavailable: account %s spooled for replay", account_id,
        extra={"account_id": account_id, "outcome": "queued"},
    )
    return True


def spool_length(client: redis.Redis) -> int:
    """Deliveries waiting for a replay (including any a crashed replay left in flight)."""
    return int(client.llen(SPOOL_KEY)) + int(client.llen(IN_FLIGHT_KEY))


def spooled_name(client: redis.Redis, account_id: int) -> str | None:
    """The name of a spooled, not yet provisioned delivery for this account, or None."""
    return client.hget(PENDING_ACCOUNTS_KEY, str(account_id))


def pending_accounts(client: redis.Redis) -> set[int]:
    """Every account with a spooled delivery not yet provisioned."""
    return {int(account_id) for account_id in client.hkeys(PENDING_ACCOUNTS_KEY) if account_id.isdigit()}


def forget_pending(client: redis.Redis, account_id: int) -> bool:
    """The account's spooled delivery is provisioned; True if this call was the one to record that."""
    return bool(client.hdel(PENDING_ACCOUNTS_KEY, str(account_id)))


def replay_spool(client: redis.Redis, handle: Callable[[SpooledDelivery], Any]) -> tuple[int, int]:
    """Replay every spooled delivery through handle, oldest first; returns (replayed, failed).

    A delivery leaves the spool only once handled. When the database is unreachable or Redis fails it goes back
    and the replay stops, so a database that is still down leaves everything queued; a delivery that fails for any
    other reason (the database refuses the row, a malformed entry) goes to the dead-letter list (logged) and the
    others go on. Runs under the reconciler's lock."""
    while client.lmove(IN_FLIGHT_KEY, SPOOL_KEY, "RIGHT", "RIGHT") is not None:
        pass  # a replay that crashed left these in flight: they are due again
    replayed = 0
    while (raw := client.lmove(SPOOL_KEY, IN_FLIGHT_KEY, "RIGHT", "LEFT")) is not None:
        try:
            handle(SpooledDelivery.decode(raw))
        except (SQLAlchemyError, redis.RedisError) as exc:
            if isinstance(exc, redis.RedisError) or is_transient(exc):
                client.lmove(IN_FLIGHT_KEY, SPOOL_KEY, "LEFT", "RIGHT")
                return replayed, 1
            logger.error("[Chatwoot Sync] Error: the database refused a spooled delivery (%s), kept in %s", type(exc).__name__, DEAD_LETTER_KEY)
            client.lpush(DEAD_LETTER_KEY, raw)
            client.lrem(IN_FLIGHT_KEY, 1, raw)
            continue
        except Exception:
            logger.exception("[Chatwoot Sync] Error: spooled delivery could not be replayed, kept in %s", DEAD_LETTER_KEY)
            client.lpush(DEAD_LETTER_KEY, raw)
            client.lrem(IN_FLIGHT_KEY, 1, raw)
            continue
        client.lrem(IN_FLIGHT_KEY, 1, raw)
        replayed += 1
    return replayed, 0
