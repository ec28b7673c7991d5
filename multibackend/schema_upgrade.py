"""`init-db` on PostgreSQL: the plugin's tables brought up to the models on a live database, one short step at a time.

Every step reads the catalog first and does only what is missing, so a run with nothing to do takes no lock
stronger than a reader's. What exists already is adopted by what it does, under any name: a UNIQUE index on the
column that ON CONFLICT can use, a CHECK that PostgreSQL spells as ours. Missing tables are created whole; on
existing ones columns are added (metadata only), the tenant names of older rows are filled in batches, CHECKs are
added NOT VALID then validated, UNIQUE and other indexes are built CONCURRENTLY. How each change takes its locks
is `online_ddl`'s business."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CheckConstraint, Column, Index, Table, UniqueConstraint, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable

from multibackend.extensions import Base
from multibackend.online_ddl import UNIQUE_VIOLATION, LockPolicy, OnlineDDL, Report, SchemaConflict, ddl_engine, sqlstate

Read = Callable[[Any, Mapping[str, Any]], list[Any]]

COMPANIES = "companies"
ACCOUNT_ID_UNIQUE = "companies_chatwoot_account_id_key"
SCHEMA_LOCK_KEY = 4242001  # postgresql_schema.sql takes the same one: a psql -f and an init-db never overlap
BACKFILL_BATCH_ROWS = 5000
DEDUPE_ADVICE = "run `flask --app wsgi chatwoot dedupe --dry-run`, then without --dry-run"
CAST = re.compile(r"::[a-z_ ]+(?:\(\d+\))?(?:\[\])?")
LITERAL = re.compile(r"'(?:[^']|'')*'|(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")

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
# a UNIQUE index on exactly this one column that ON CONFLICT can use: not partial, not on an expression, not
# deferred, NULLs distinct (PostgreSQL 15's NULLS NOT DISTINCT would refuse a second company without an account)
UNIQUE_INDEXES_SQL = text(
    """
    SELECT x.relname, i.indisvalid, EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid
                                            AND c.contype IN ('u', 'p'))
    FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
    WHERE i.indrelid = to_regclass(:table) AND i.indisunique AND i.indimmediate AND i.indpred IS NULL
      AND i.indexprs IS NULL AND i.indnkeyatts = 1
      AND NOT coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false)
      AND i.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = i.indrelid AND attname = :column)
    ORDER BY 3 DESC, 2 DESC, 1
    """
)
# ON CONFLICT (how deliveries create companies) refuses to run on a table with one of these, whatever its columns
DEFERRED_UNIQUE_SQL = text(
    "SELECT x.relname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
    " WHERE i.indrelid = to_regclass(:table) AND i.indisunique AND NOT i.indimmediate ORDER BY 1"
)
# the tenant names of Chatwoot companies written before the columns existed (or by code that knows nothing of them)
UNNAMED_COMPANIES = "chatwoot_account_id IS NOT NULL AND (redis_prefix IS NULL OR vectorstore_index IS NULL)"
# a batch is the next BACKFILL_BATCH_ROWS keys (found on the primary key's index), whatever gaps the keys have
BATCH_UPPER_KEY = text(
    "SELECT id FROM companies WHERE id > :after AND id <= :last ORDER BY id OFFSET :rows - 1 LIMIT 1"
)
FILL_TENANT_NAMES = text(
    "UPDATE companies SET redis_prefix = COALESCE(redis_prefix, company_id || ':'),"
    " vectorstore_index = COALESCE(vectorstore_index, company_id || '_documents')"
    f" WHERE id > :after AND id <= :upper AND {UNNAMED_COMPANIES}"
)


@dataclass(frozen=True)
class UniqueIndex:
    name: str
    valid: bool
    is_constraint: bool


@dataclass(frozen=True)
class ExistingCheck:
    name: str
    validated: bool
    definition: str
    columns: frozenset[str]


def upgrade(engine: Engine, report: Report, policy: LockPolicy | None = None, dry_run: bool = False,
            connect_args: Mapping[str, Any] | None = None) -> list[str]:
    """Bring every plugin table up to the models; idempotent, resumable, no lock held across work. Returns the
    statements it ran (dry: would run). Raises LockHeld when a lock stayed held too long, SchemaConflict when
    something under one of its names is not what it would make."""
    with online(engine, report, policy, dry_run, connect_args) as ddl, ddl.one_run_at_a_time(SCHEMA_LOCK_KEY):
        for table in Base.metadata.sorted_tables:
            upgrade_table(ddl, table)
        return ddl.statements


def protect_account_ids(engine: Engine, report: Report, connect_args: Mapping[str, Any] | None = None) -> bool:
    """The UNIQUE index on companies.chatwoot_account_id, built online where missing; False while rows break it."""
    with online(engine, report, connect_args=connect_args) as ddl, ddl.one_run_at_a_time(SCHEMA_LOCK_KEY):
        return ensure_unique(ddl, COMPANIES, "chatwoot_account_id", ACCOUNT_ID_UNIQUE)


@contextmanager
def online(engine: Engine, report: Report, policy: LockPolicy | None = None, dry_run: bool = False,
           connect_args: Mapping[str, Any] | None = None) -> Iterator[OnlineDDL]:
    ddl = OnlineDDL(ddl_engine(engine, connect_args), report, policy or LockPolicy(), dry_run)
    try:
        yield ddl
    finally:
        ddl.engine.dispose()


def upgrade_table(ddl: OnlineDDL, table: Table) -> None:
    """One table: created whole when missing; otherwise each missing piece added online."""
    present = columns(ddl, table.name)
    if not present:
        create_table(ddl, table)
        return
    if table.name == COMPANIES and "id" not in present:
        raise SchemaConflict("companies has no `id` column: the auto-sync needs an integer primary key named id")
    add_missing_columns(ddl, table, present)
    if table.name == COMPANIES:
        fill_tenant_names(ddl, columns_were_missing=not {"redis_prefix", "vectorstore_index", "chatwoot_account_id"} <= present)
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
    """One ALTER TABLE for every missing column: metadata only (tests/test_online_upgrade.py checks that every
    server default is a constant or now(), which PostgreSQL stores in the catalog instead of rewriting the rows)."""
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
    if columns_were_missing and ddl.dry_run:  # not added yet: every Chatwoot company would be filled
        condition = "chatwoot_account_id IS NOT NULL" if "chatwoot_account_id" in columns(ddl, COMPANIES) else "false"
    else:
        condition = UNNAMED_COMPANIES
    total, first, last = ddl.read(f"SELECT count(*), min(id), max(id) FROM companies WHERE {condition}")[0]
    if not total:
        return
    first_batch = [with_values(ddl, BATCH_UPPER_KEY, after=first - 1, last=last, rows=BACKFILL_BATCH_ROWS),
                   with_values(ddl, FILL_TENANT_NAMES, after=first - 1, upper=last)]
    ddl.statements.append(ddl.framed(first_batch) + f"\n-- in batches of {BACKFILL_BATCH_ROWS} keys up to {last} ({total} rows)")
    if not ddl.dry_run:
        ddl.backfill(COMPANIES, "filling the tenant names of existing companies", fill_one_batch, (first - 1, last), total)


def fill_one_batch(connection: Connection, after: int, last: int) -> tuple[int, int]:
    """The tenant names of the companies among the next BACKFILL_BATCH_ROWS keys: (the batch's last key, rows filled)."""
    upper = connection.execute(BATCH_UPPER_KEY, {"after": after, "last": last, "rows": BACKFILL_BATCH_ROWS}).scalar()
    upper = last if upper is None else upper
    return upper, connection.execute(FILL_TENANT_NAMES, {"after": after, "upper": upper}).rowcount


def with_values(ddl: OnlineDDL, statement: Any, **values: int) -> str:
    """The statement with its parameters written in, as the dry run lists it."""
    return str(statement.bindparams(**values).compile(dialect=ddl.engine.dialect, compile_kwargs={"literal_binds": True}))


def columns(ddl: OnlineDDL, table: str) -> set[str]:
    return {row[0] for row in ddl.read(COLUMNS_SQL, {"table": table}, table)}


def ensure_check(ddl: OnlineDDL, table: Table, check: CheckConstraint) -> None:
    """A CHECK that PostgreSQL spells as ours (its allowed values in any order), under any name, validated; else
    ours added NOT VALID, then validated. A CHECK of another meaning under our name is a SchemaConflict."""
    existing = [ExistingCheck(name, validated, definition, frozenset(names))
                for name, validated, definition, names in ddl.read(CHECKS_SQL, {"table": table.name}, table.name)]
    ours = rendered_check(ddl, table.name, str(check.sqltext)) if existing else None
    found = next((each for each in existing if ours and same_check(each.definition, ours)), None)
    if found is None and any(each.name == check.name for each in existing):
        raise SchemaConflict(f"{table.name} has a CHECK named {check.name} that allows other values than "
                             f"({check.sqltext}): rename or drop it, then run init-db again")
    if found is not None and found.validated:
        return
    name = found.name if found else str(check.name)
    if found is None:
        ddl.report(f"adding CHECK {name} to {table.name} (NOT VALID, then validated)")
        ddl.change(table.name, [f"ALTER TABLE {table.name} ADD CONSTRAINT {name} CHECK ({check.sqltext}) NOT VALID"])
    ddl.change(table.name, [f"ALTER TABLE {table.name} VALIDATE CONSTRAINT {name}"], mode="ShareUpdateExclusiveLock")


def rendered_check(ddl: OnlineDDL, table: str, expression: str) -> str | None:
    """How PostgreSQL spells the CHECK on this table's columns (on a temporary copy of their types, dropped at the
    end of its transaction); None when the columns are not there yet."""

    def attempt(connection: Connection) -> str | None:
        with ddl.short_transaction(connection):
            connection.exec_driver_sql(f"CREATE TEMPORARY TABLE multibackend_probe (LIKE {table}) ON COMMIT DROP")
            try:
                with connection.begin_nested():
                    connection.exec_driver_sql(f"ALTER TABLE multibackend_probe ADD CONSTRAINT probe CHECK ({expression})")
            except DBAPIError:
                return None
            return connection.exec_driver_sql(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'multibackend_probe'::regclass AND conname = 'probe'"
            ).scalar()

    return ddl.with_retries("reading the catalog", table, "AccessShareLock", attempt)


def same_check(definition: str, ours: str) -> bool:
    """The same expression with the same literals, whatever their order (IN ('a', 'b') allows what IN ('b', 'a')
    does) and whatever casts PostgreSQL wrote in (`= ANY (ARRAY['a'])` on a varchar column is `IN ('a')`)."""
    definition = definition.removesuffix(" NOT VALID")
    theirs_shape, our_shape = (re.sub(r"[()\s]", "", LITERAL.sub("?", CAST.sub("", each))) for each in (definition, ours))
    return theirs_shape == our_shape and sorted(LITERAL.findall(CAST.sub("", definition))) == sorted(LITERAL.findall(CAST.sub("", ours)))


def ensure_unique(ddl: OnlineDDL, table: str, column: str, name: str) -> bool:
    """A UNIQUE index on the column that ON CONFLICT can use, under any name, counts; else ours is built
    CONCURRENTLY and attached as a constraint. False (with a warning) when the rows hold duplicates."""
    for deferred in deferred_unique_indexes(ddl.read, table):
        ddl.report(f"WARNING: {deferred} on {table} is DEFERRABLE: INSERT ... ON CONFLICT, which creates companies, "
                   "fails while it exists; drop it and add it back without DEFERRABLE")
    existing = unique_indexes(ddl.read, table, column)
    adopted = next((index for index in existing if index.valid), None)
    if adopted and (adopted.is_constraint or adopted.name != name):
        return True
    if not adopted:
        if has_duplicates(ddl, table, column):
            return warn_duplicates(ddl, table, column)
        try:
            ddl.build_index(table, name, f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({column})")
        except DBAPIError as exc:  # a duplicate written while the index was built
            if sqlstate(exc) != UNIQUE_VIOLATION:
                raise
            ddl.concurrently(f"dropping index {name}", f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            return warn_duplicates(ddl, table, column)
    ddl.change(table, [f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}"])
    return True


def has_duplicates(ddl: OnlineDDL, table: str, column: str) -> bool:
    """Whether two rows share a value of the column (a reader's scan: cheaper than a UNIQUE build that fails)."""
    if ddl.dry_run and column not in columns(ddl, table):
        return False
    duplicate = f"SELECT 1 FROM {table} WHERE {column} IS NOT NULL GROUP BY {column} HAVING count(*) > 1 LIMIT 1"
    return bool(ddl.read(duplicate, {}, table))


def warn_duplicates(ddl: OnlineDDL, table: str, column: str) -> bool:
    advice = f": {DEDUPE_ADVICE}" if column == "chatwoot_account_id" else ""
    ddl.report(f"WARNING: {table} holds duplicate {column} rows, so it has no UNIQUE index on it{advice}")
    return False


def unique_indexes(read: Read, table: str, column: str) -> list[UniqueIndex]:
    """Every UNIQUE index on exactly this column that ON CONFLICT can use (constraints first, then valid ones)."""
    return [UniqueIndex(*row) for row in read(UNIQUE_INDEXES_SQL, {"table": table, "column": column})]


def deferred_unique_indexes(read: Read, table: str) -> list[str]:
    """UNIQUE constraints declared DEFERRABLE: while one exists, INSERT ... ON CONFLICT on the table fails."""
    return [row[0] for row in read(DEFERRED_UNIQUE_SQL, {"table": table})]


def has_unique_index(read: Read, table: str, column: str) -> bool:
    """Whether a valid UNIQUE index (a constraint's or not, under any name) protects the column."""
    return any(index.valid for index in unique_indexes(read, table, column))


def ensure_index(ddl: OnlineDDL, table: Table, index: Index) -> None:
    """The model's index, built CONCURRENTLY when missing or left invalid."""
    if ddl.index_state(table.name, str(index.name)) == "valid":
        return
    create = str(CreateIndex(index, if_not_exists=True).compile(dialect=ddl.engine.dialect))
    ddl.build_index(table.name, str(index.name), re.sub(r"^CREATE (UNIQUE )?INDEX", r"CREATE \1INDEX CONCURRENTLY", create))


def single_column(constraint: UniqueConstraint) -> str:
    (column,) = constraint.columns.keys()
    return column
