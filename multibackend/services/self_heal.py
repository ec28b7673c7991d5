"""Self-healing lookup: a company the iframe asks for but whose webhook never arrived is created on the spot,
when (and only when) Chatwoot confirms the account exists."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis
from flask import current_app

from multibackend.extensions import get_redis
from multibackend.services import tenant_provisioning
from multibackend.services.chatwoot_source import SourceError, chatwoot_source
from multibackend.services.tenant_provisioning import CompanySnapshot

logger = logging.getLogger(__name__)

ABSENT_KEY = "multibackend:self_heal:absent:{}"
LOCAL_ABSENT_LIMIT = 10_000
UNANSWERED_TTL_SECONDS = 5

_source_calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="self-heal")
_local_absent: dict[int, float] = {}
_local_lock = threading.Lock()


def heal_missing_company(account_id: int) -> CompanySnapshot | None:
    """Ask Chatwoot (bounded by SELF_HEAL_TIMEOUT_SECONDS) and provision the account if it exists there."""
    source = chatwoot_source()
    if source is None or _recently_absent(account_id):
        return None
    timeout = current_app.config["SELF_HEAL_TIMEOUT_SECONDS"]
    try:
        account = _source_calls.submit(source.find, account_id, timeout).result(timeout=timeout)
    except (FutureTimeout, SourceError) as exc:
        logger.warning("[Chatwoot Sync] Self-heal of account %s: Chatwoot did not answer (%s)", account_id, type(exc).__name__)
        _remember_absent(account_id, UNANSWERED_TTL_SECONDS)  # ask again soon, but do not hammer a struggling Chatwoot
        return None
    if account is None:
        _remember_absent(account_id, current_app.config["SELF_HEAL_NEGATIVE_TTL_SECONDS"])
        return None
    tenant_provisioning.provision_account(account.id, account.name, chatwoot_status=account.status, record_sync=False)
    logger.warning("[Chatwoot Sync] Self-healed chatwoot_%s: the account exists in Chatwoot, its webhook never arrived", account_id)
    return tenant_provisioning.find_company(account_id)


def _recently_absent(account_id: int) -> bool:
    client = get_redis()
    if client is not None:
        try:
            return bool(client.exists(ABSENT_KEY.format(account_id)))
        except redis.RedisError:
            pass
    with _local_lock:
        return _local_absent.get(account_id, 0.0) > time.monotonic()


def _remember_absent(account_id: int, ttl: int) -> None:
    """Cache the negative answer briefly so polling iframes cannot hammer Chatwoot."""
    client = get_redis()
    if client is not None:
        try:
            client.set(ABSENT_KEY.format(account_id), "1", ex=ttl)
            return
        except redis.RedisError:
            pass
    with _local_lock:
        if len(_local_absent) >= LOCAL_ABSENT_LIMIT:
            _local_absent.clear()
        _local_absent[account_id] = time.monotonic() + ttl
