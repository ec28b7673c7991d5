"""Clean-up for an older database that holds several companies per Chatwoot account and no unique constraint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from multibackend import schema_upgrade
from multibackend.extensions import db, engine_connect_args
from multibackend.online_ddl import Report
from multibackend.services.companies import company_write

logger = logging.getLogger(__name__)

DEDUPE_ROUNDS = 3

DUPLICATES_SQL = text(
    """
    SELECT id, company_id, chatwoot_account_id, created_at FROM (
        SELECT id, company_id, chatwoot_account_id, created_at,
               row_number() OVER (PARTITION BY chatwoot_account_id ORDER BY created_at DESC NULLS LAST, id DESC) AS rank
        FROM companies WHERE chatwoot_account_id IS NOT NULL
    ) ranked
    WHERE rank > 1
    ORDER BY chatwoot_account_id, created_at DESC NULLS LAST, id DESC
    """
)


@dataclass(frozen=True)
class DuplicateRow:
    id: int
    company_id: str
    chatwoot_account_id: str
    created_at: object


def duplicate_rows() -> list[DuplicateRow]:
    """Every company row that is not the newest of its Chatwoot account."""
    return [DuplicateRow(*row) for row in db.session.execute(DUPLICATES_SQL)]


def has_unique_constraint() -> bool:
    """Whether a valid UNIQUE index (under any name) protects companies.chatwoot_account_id."""
    return schema_upgrade.has_unique_index(read_in_session, "companies", "chatwoot_account_id")


def deferred_unique_constraints() -> list[str]:
    """DEFERRABLE UNIQUE constraints on companies: INSERT ... ON CONFLICT fails while one exists."""
    return schema_upgrade.deferred_unique_indexes(read_in_session, "companies")


def read_in_session(statement: Any, parameters: dict[str, Any]) -> list[Any]:
    return list(db.session.execute(statement, parameters))


def remove_duplicates_and_constrain(report: Report = logger.info) -> list[DuplicateRow]:
    """Delete the older duplicates, then build the UNIQUE index online (no table lock); a duplicate written
    meanwhile makes the build fail, and is removed in the next round."""
    removed: list[DuplicateRow] = []
    for _ in range(DEDUPE_ROUNDS):
        with company_write() as write:
            rows = duplicate_rows()
            if rows:
                write.remove([row.id for row in rows])
        removed += rows
        if schema_upgrade.protect_account_ids(db.engine, report, engine_connect_args()):
            return removed
    raise RuntimeError(f"duplicates of chatwoot_account_id kept arriving during {DEDUPE_ROUNDS} rounds of dedupe")
