"""Clean-up for an older database that holds several companies per Chatwoot account and no unique constraint."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from multibackend.extensions import db
from multibackend.services.companies import company_write

UNIQUE_CONSTRAINT = "companies_chatwoot_account_id_key"

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
    """Whether companies.chatwoot_account_id is protected by its UNIQUE constraint."""
    return bool(
        db.session.execute(
            text("SELECT 1 FROM pg_constraint WHERE conrelid = 'companies'::regclass AND conname = :name"),
            {"name": UNIQUE_CONSTRAINT},
        ).first()
    )


def remove_duplicates_and_constrain() -> list[DuplicateRow]:
    """Delete the older duplicates and add the UNIQUE constraint, in one transaction (all or nothing)."""
    with company_write() as write:
        db.session.execute(text("LOCK TABLE companies IN SHARE ROW EXCLUSIVE MODE"))
        removed = duplicate_rows()
        if removed:
            write.remove([row.id for row in removed])
        if not has_unique_constraint():
            db.session.execute(
                text(f"ALTER TABLE companies ADD CONSTRAINT {UNIQUE_CONSTRAINT} UNIQUE (chatwoot_account_id)")
            )
    return removed
