"""postgresql_schema.sql and the SQLAlchemy models describe the same tables; the file applies twice."""

from __future__ import annotations

import re
import subprocess

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text

from multibackend.cli import SCHEMA_FILE
from multibackend.config import sqlalchemy_database_uri
from multibackend.extensions import db
import multibackend.models  # noqa: F401  (registers the tables on db.metadata)

SCHEMAS = ("from_sql", "from_models")


@pytest.fixture
def engine(database_url):
    engine = create_engine(sqlalchemy_database_uri(database_url, ""))
    with engine.begin() as connection:
        for schema in SCHEMAS:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
    yield engine
    with engine.begin() as connection:
        for schema in SCHEMAS:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def describe(inspector, schema: str) -> dict:
    """Everything about a schema's tables that should match, with the schema name taken out."""
    unqualify = lambda value: re.sub(rf"\b{schema}\.", "", str(value)) if value is not None else None  # noqa: E731
    tables = {}
    for table in sorted(inspector.get_table_names(schema=schema)):
        tables[table] = {
            "columns": [
                (c["name"], repr(c["type"]), c["nullable"], unqualify(c["default"]))
                for c in inspector.get_columns(table, schema=schema)
            ],
            "primary_key": inspector.get_pk_constraint(table, schema=schema)["constrained_columns"],
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table, schema=schema)),
            "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table, schema=schema)),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), i["unique"], str(i.get("dialect_options", {}).get("postgresql_where")))
                for i in inspector.get_indexes(table, schema=schema)
            ),
            "foreign_keys": inspector.get_foreign_keys(table, schema=schema),
        }
    return tables


def test_sql_file_and_models_describe_the_same_tables(engine):
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL search_path TO from_sql"))
        connection.exec_driver_sql(SCHEMA_FILE.read_text().replace("BEGIN;", "").replace("COMMIT;", ""))
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL search_path TO from_models"))
        db.metadata.create_all(connection)
    inspector = inspect(engine)
    from_sql, from_models = describe(inspector, "from_sql"), describe(inspector, "from_models")
    assert set(from_sql) == {"companies", "chatwoot_sync_events", "chatwoot_webhook_rejections", "chatwoot_sync_totals", "chatwoot_tenant_announcements", "chatwoot_dashboard_tabs"}
    assert from_sql == from_models
    companies = from_sql["companies"]
    assert ("companies_chatwoot_account_id_key", ("chatwoot_account_id",)) in companies["unique"]
    assert ("chatwoot_account_id", "VARCHAR(length=50)", True, None) in companies["columns"]


def test_schema_file_applies_twice_with_psql(database_url):
    for _ in range(2):
        result = subprocess.run(
            ["psql", database_url, "-v", "ON_ERROR_STOP=1", "-q", "-f", str(SCHEMA_FILE)],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
    with psycopg.connect(database_url) as connection:
        tables = {row[0] for row in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"companies", "chatwoot_sync_events", "chatwoot_webhook_rejections"} <= tables


def test_the_unique_constraint_refuses_a_second_row_per_account(database_url, clean_database):
    with psycopg.connect(database_url) as connection:
        insert = (
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index)"
            " VALUES (%s, 'x', '7', 'p', 'i')"
        )
        connection.execute(insert, ("chatwoot_7",))
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute(insert, ("chatwoot_7b",))
