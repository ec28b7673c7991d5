"""`init-db` on PostgreSQL: the plugin's tables brought up to the models on a live database, one short step at a time.

Every step reads the catalog first and does only what is missing, so a run with nothing to do locks nothing.
What exists already is adopted by what it does, under any name: a UNIQUE index on the column, a CHECK that allows
the same values. Missing tables are created whole; on existing ones columns are added (metadata only), rows the
new columns describe are filled in batches, CHECKs are added NOT VALID then validated, UNIQUE and other indexes
are built CONCURRENTLY. How each change takes its locks is `online_ddl`'s business."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CheckConstraint, Column, Index, Table, UniqueConstraint, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable

from multibackend.extensions import Base
from multibackend.online_ddl import UNIQUE_VIOLATION, LockPolicy, OnlineDDL, Report, ddl_engine, sqlstate

logger = logging.getLogger(__name__)

Read = Callable[[Any, dict[str, Any]], list[Any]]

COMPANIES = "companies"
ACCOUNT_ID_UNIQUE = "companies_chatwoot_account_id_key"
SCHEMA_LOCK_KEY = 4242001  # postgresql_schema.sql takes the same one: a psql -f and an init-db never overlap
BACKFILL_BATCH_ROWS = 5000
DEDUPE_ADVICE = "run `flask --app wsgi chatwoot dedupe --dry-run`, then without --dry-run"

COLUMNS_SQL = text(
    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:table) AND attnum > 0 AND NOT attisdropped"
)
CHECKS_SQL = text(
    """
    SELECT c.conname, c.convalidated, pg_get_constraintdef(c.oid),
           ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey))
    FROM pg_constraint c WHERE c.conrelid = to_regclass(:table) AND c.contype = 'c'
    """
)
# a UNIQUE index on exactly this one column, neither partial nor on an expression: what ON CONFLICT can use
UNIQUE_INDEXES_SQL = text(
    """
    SELECT x.relname, i.indisvalid, EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid
                                            AND c.contype IN ('u', 'p'))
    FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
    WHERE i.indrelid = to_regclass(:table) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
      AND i.indnkeyatts = 1
      AND i.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = i.indrelid AND attname = :column)
    ORDER BY 3 DESC, 2 DESC, 1
    """
)
# the tenant names of Chatwoot companies written before the columns existed (or by code that knows nothing of them)
UNNAMED_COMPANIES = "chatwoot_account_id IS NOT NULL AND (redis_prefix IS NULL OR vectorstore_index IS NULL)"
FILL_TENANT_NAMES_BATCH = (
    "UPDATE companies SET redis_prefix = COALESCE(redis_prefix, company_id || ':'),"
    " vectorstore_index = COALESCE(vectorstore_index, company_id || '_documents')"
    " WHERE id IN (SELECT id FROM companies"
    f" WHERE id > :after AND id <= :last AND {UNNAMED_COMPANIES} ORDER BY id LIMIT :batch)"
    " RETURNING id"
)


@dataclass(frozen=True)
class UniqueIndex:
    name: str
    valid: bool
    is_constraint: bool


def upgrade(engine: Engine, report: Report, policy: LockPolicy | None = None, dry_run: bool = False) -> list[str]:
    """Bring every plugin table up to the models; idempotent, resumable, no lock held across work. Returns the
    statements it ran (dry: would run). Raises online_ddl.LockHeld when a lock stayed held too long."""
    with online(engine, report, policy, dry_run) as ddl, ddl.one_run_at_a_time(SCHEMA_LOCK_KEY):
        for table in Base.metadata.sorted_tables:
            upgrade_table(ddl, table)
        return ddl.statements


def protect_account_ids(engine: Engine, report: Report, policy: LockPolicy | None = None) -> bool:
    """The UNIQUE index on companies.chatwoot_account_id, built online where missing; False while rows break it."""
    with online(engine, report, policy) as ddl, ddl.one_run_at_a_time(SCHEMA_LOCK_KEY):
        return ensure_unique(ddl, COMPANIES, "chatwoot_account_id", ACCOUNT_ID_UNIQUE)


@contextmanager
def online(engine: Engine, report: Report, policy: LockPolicy | None = None, dry_run: bool = False) -> Iterator[OnlineDDL]:
    ddl = OnlineDDL(ddl_engine(engine), report, policy or LockPolicy(), dry_run)
    try:
        yield ddl
    finally:
        ddl.engine.dispose()


def upgrade_table(ddl: OnlineDDL, table: Table) -> None:
    """One table: created whole when missing; otherwise each missing piece added online."""
    present = {row[0] for row in ddl.read(COLUMNS_SQL, {"table": table.name})}
    if not present:
        create_table(ddl, table)
        return
    add_missing_columns(ddl, table, present)
    if table.name == COMPANIES:
        fill_tenant_names(ddl, columns_were_missing=not {"redis_prefix", "vectorstore_index"} <= present)
    for constraint in sorted(table.constraints, key=lambda c: str(c.name)):
        if isinstance(constraint, CheckConstraint):
            ensure_check(ddl, table, constraint)
        elif isinstance(constraint, UniqueConstraint):
            ensure_unique(ddl, table.name, single_column(constraint), str(constraint.name))
    for index in sorted(table.indexes, key=lambda i: str(i.name)):
        ensure_index(ddl, table, index)


def create_table(ddl: OnlineDDL, table: Table) -> None:
    """A table nobody uses yet: created with its constraints and indexes in one transaction."""
    dialect = ddl.engine.dialect
    statements = [str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)).strip()]
    statements += [str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)) for index in table.indexes]
    ddl.report(f"creating table {table.name}")
    ddl.change(table.name, statements)


def add_missing_columns(ddl: OnlineDDL, table: Table, present: set[str]) -> None:
    """One ALTER TABLE for every missing column: metadata only (their defaults are constants or now())."""
    missing = [column for column in table.columns if column.name not in present]
    if not missing:
        return
    dialect = ddl.engine.dialect
    clauses = [f"ADD COLUMN IF NOT EXISTS {CreateColumn(addable(column)).compile(dialect=dialect)}" for column in missing]
    ddl.report(f"adding columns to {table.name}: {', '.join(column.name for column in missing)}")
    ddl.change(table.name, [f"ALTER TABLE {table.name} " + ", ".join(clauses)])


def addable(column: Column[Any]) -> Column[Any]:
    """The column as it can be added to a table that has rows (a host's among them): NOT NULL only where a
    server default fills the existing rows."""
    default = column.server_default.arg if column.server_default is not None else None  # type: ignore[attr-defined]
    return Column(column.name, column.type, server_default=default, nullable=column.nullable or default is None)


def fill_tenant_names(ddl: OnlineDDL, columns_were_missing: bool) -> None:
    """Chatwoot companies without tenant names get them, in batches that commit. Rows inserted meanwhile by code
    that knows nothing of the names (the old deployment, during a release) are left to the next run."""
    # a dry run has not added the columns: every Chatwoot company would be filled
    condition = "chatwoot_account_id IS NOT NULL" if columns_were_missing and ddl.dry_run else UNNAMED_COMPANIES
    total, first_key, last_key = ddl.read(text(f"SELECT count(*), min(id), max(id) FROM companies WHERE {condition}"), {})[0]
    if total:
        ddl.backfill(COMPANIES, "filling the tenant names of existing companies", FILL_TENANT_NAMES_BATCH, total,
                     (first_key - 1, last_key), BACKFILL_BATCH_ROWS)


def ensure_check(ddl: OnlineDDL, table: Table, check: CheckConstraint) -> None:
    """A CHECK allowing what ours allows, under any name, validated; else ours added NOT VALID, then validated."""
    wanted = check_signature(str(check.sqltext), set(table.columns.keys()))
    found = next(
        ((name, validated) for name, validated, definition, columns in ddl.read(CHECKS_SQL, {"table": table.name})
         if set(columns) == wanted[0] and check_signature(definition, set(columns))[1] == wanted[1]),
        None,
    )
    if found and found[1]:
        return
    name = found[0] if found else str(check.name)
    if not found:
        ddl.report(f"adding CHECK {name} to {table.name} (NOT VALID, then validated)")
        ddl.change(table.name, [f"ALTER TABLE {table.name} ADD CONSTRAINT {name} CHECK ({check.sqltext}) NOT VALID"])
    ddl.change(table.name, [f"ALTER TABLE {table.name} VALIDATE CONSTRAINT {name}"], mode="ShareUpdateExclusiveLock")


def check_signature(definition: str, columns: set[str]) -> tuple[set[str], frozenset[str]]:
    """What a CHECK constrains, however PostgreSQL spells it: the columns it names and the literals it allows."""
    named = {word for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"'(?:[^']|'')*'", "", definition)) if word in columns}
    literals = re.findall(r"'((?:[^']|'')*)'", definition) + re.findall(r"(?<![\w'.])-?\d+(?:\.\d+)?(?![\w'])", re.sub(r"'(?:[^']|'')*'", "", definition))
    return named, frozenset(literals)


def ensure_unique(ddl: OnlineDDL, table: str, column: str, name: str) -> bool:
    """A valid UNIQUE index on the column, under any name, counts; else ours is built CONCURRENTLY and attached
    as a constraint. False (with a warning) when the rows hold duplicates."""
    existing = unique_indexes(ddl.read, table, column)
    adopted = next((index for index in existing if index.valid), None)
    if adopted and (adopted.is_constraint or adopted.name != name):
        return True
    if not adopted:
        try:
            ddl.build_index(table, name, f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({column})")
        except DBAPIError as exc:
            if sqlstate(exc) != UNIQUE_VIOLATION:
                raise
            ddl.concurrently(f"dropping index {name}", f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            advice = f": {DEDUPE_ADVICE}" if column == "chatwoot_account_id" else ""
            ddl.report(f"WARNING: {table} holds duplicate {column} rows, so it has no UNIQUE index on it{advice}")
            return False
    ddl.change(table, [f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}"])
    return True


def unique_indexes(read: Read, table: str, column: str) -> list[UniqueIndex]:
    """Every UNIQUE index on exactly this column (constraints first, then valid ones)."""
    return [UniqueIndex(*row) for row in read(UNIQUE_INDEXES_SQL, {"table": table, "column": column})]


def has_unique_index(read: Read, table: str, column: str) -> bool:
    """Whether a valid UNIQUE index (a constraint's or not, under any name) protects the column."""
    return any(index.valid for index in unique_indexes(read, table, column))


def ensure_index(ddl: OnlineDDL, table: Table, index: Index) -> None:
    """The model's index, built CONCURRENTLY when missing or left invalid."""
    if ddl.index_state(str(index.name)) == "valid":
        return
    create = str(CreateIndex(index, if_not_exists=True).compile(dialect=ddl.engine.dialect))
    ddl.build_index(table.name, str(index.name), create.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1))


def single_column(constraint: UniqueConstraint) -> str:
    (column,) = constraint.columns.keys()
    return column
