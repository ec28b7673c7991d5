"""Readiness: can this instance reach what it needs right now."""

from __future__ import annotations

import redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from multibackend.extensions import db, get_redis


def readiness() -> dict[str, str]:
    """{"database": ..., "redis": ...}, each "ok", "not configured" or "unreachable (<error class>)"."""
    return {"database": _database_state(), "redis": _redis_state()}


def _database_state() -> str:
    try:
        db.session.execute(text("SELECT 1"))
        return "ok"
    except SQLAlchemyError as exc:
        db.session.rollback()
        return f"unreachable ({type(exc).__name__})"


def _redis_state() -> str:
    client = get_redis()
    if client is None:
        return "not configured"
    try:
        client.ping()
        return "ok"
    except redis.RedisError as exc:
        return f"unreachable ({type(exc).__name__})"
