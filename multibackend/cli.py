"""`flask --app wsgi chatwoot ...` commands."""

from __future__ import annotations

from pathlib import Path

import click
from flask.cli import with_appcontext

from multibackend.extensions import db

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "postgresql_schema.sql"


@click.group("chatwoot")
def chatwoot_cli() -> None:
    """Chatwoot auto-sync maintenance."""


@chatwoot_cli.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the tables (PostgreSQL: apply postgresql_schema.sql); safe to run on every release."""
    click.echo(f"[Chatwoot Sync] {apply_schema()}")


def apply_schema() -> str:
    """Bring the database's tables up to the models; idempotent. Returns what was done, for operators."""
    engine = db.engine
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("SET statement_timeout = 0")
            connection.exec_driver_sql(SCHEMA_FILE.read_text(encoding="utf-8"))
        return f"Schema applied from {SCHEMA_FILE.name} to PostgreSQL"
    db.create_all()
    return f"Tables created in {engine.url.render_as_string(hide_password=True)}"
