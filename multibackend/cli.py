"""`flask --app wsgi chatwoot ...` commands: init-db, reconcile, doctor, dedupe."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import event, inspect, text
from sqlalchemy.schema import CreateColumn

from multibackend import schema_upgrade
from multibackend.extensions import db, engine_connect_args
from multibackend.online_ddl import LockHeld, LockPolicy, Report, SchemaConflict
from multibackend.services.companies import STATEMENT_TIMEOUT_EXTENSION, schema_change

logger = logging.getLogger(__name__)

SCHEMA_FILE = Path(__file__).resolve().parent / "sql" / "postgresql_schema.sql"
CLI_STATEMENT_TIMEOUT_MS = 120_000
PROGRESS_THRESHOLD = 2000


@click.group("chatwoot")
def chatwoot_cli() -> None:
    """Chatwoot auto-sync maintenance."""
    leave_objects_to_the_os_at_exit()


@functools.cache  # once per process
def leave_objects_to_the_os_at_exit() -> None:
    """When the command's process exits, Python's last garbage collections skip every object alive by then
    (gc.freeze): with Flask, SQLAlchemy, psycopg and redis loaded they cost about 0.2 s of a command's run, to free
    memory the OS frees anyway. Every atexit handler still runs; only what a __del__ in a reference cycle would have
    done at exit is left undone, which Python never promised."""
    atexit.register(gc.freeze)


@chatwoot_cli.command("init-db")
@click.option("--dry-run", is_flag=True, help="Print the statements it would run on this database; change nothing.")
@click.option("--lock-timeout", default=LockPolicy.lock_timeout_ms, show_default=True, type=click.IntRange(10, 10_000),
              help="Milliseconds one try waits for a lock before letting the queue behind it go (PostgreSQL).")
@click.option("--max-lock-wait", default=LockPolicy.max_wait_seconds, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds to keep trying for a lock before giving up and naming who holds it (PostgreSQL).")
@click.option("--max-build-wait", default=LockPolicy.max_build_wait_seconds, show_default=True,
              type=click.FloatRange(0, 86400), help="Seconds an index build (which blocks nobody) may wait for one "
              "other transaction before it is cancelled and its holder named (PostgreSQL).")
@with_appcontext
def init_db_command(dry_run: bool, lock_timeout: int, max_lock_wait: float, max_build_wait: float) -> None:
    """Create or upgrade the tables online (PostgreSQL: no lock held across work); safe to run on every release."""
    policy = LockPolicy(lock_timeout_ms=lock_timeout, max_wait_seconds=max_lock_wait, max_build_wait_seconds=max_build_wait)
    if dry_run:
        print_upgrade_plan(policy)
        return
    try:
        outcome = apply_schema(policy, report=lambda message: click.echo(f"[Chatwoot Sync] init-db: {message}"))
    except LockHeld as exc:
        raise click.ClickException(
            f"[Chatwoot Sync] init-db stopped: {exc}. Every change before it is committed and the table stays "
            "usable; run init-db again once that session ends (or end it: SELECT pg_terminate_backend(<pid>)); it "
            "resumes where it stopped."
        ) from None
    except SchemaConflict as exc:
        raise click.ClickException(f"[Chatwoot Sync] init-db stopped, nothing changed past this point: {exc}") from None
    click.echo(f"[Chatwoot Sync] {outcome}")


def print_upgrade_plan(policy: LockPolicy) -> None:
    """The statements init-db would run on this database, as SQL on stdout (what it says, on stderr)."""
    if db.engine.dialect.name != "postgresql":
        raise click.ClickException("--dry-run lists PostgreSQL statements; the embedded SQLite database needs none")
    say = lambda message: click.echo(f"-- {message}", err=True)  # noqa: E731
    try:
        statements = schema_upgrade.upgrade(db.engine, say, policy, dry_run=True, connect_args=engine_connect_args())
    except SchemaConflict as exc:
        raise click.ClickException(f"init-db could not run: {exc}") from None
    for statement in statements:
        click.echo(f"{statement}\n")
    say(f"{len(statements)} statements would run" if statements else "the schema is up to date: nothing would run")


def apply_schema(policy: LockPolicy | None = None, report: Report | None = None) -> str:
    """Bring the database's tables up to the models; idempotent. Returns what was done, for operators."""
    engine = db.engine
    if engine.dialect.name == "postgresql":
        with schema_change():
            statements = schema_upgrade.upgrade(engine, report or log_progress, policy, connect_args=engine_connect_args())
        if not statements:
            return "Schema up to date on PostgreSQL: nothing to do"
        return f"Schema upgraded on PostgreSQL online: {len(statements)} changes"
    db.metadata.create_all(engine)
    added = add_missing_sqlite_columns()
    note = f" ({len(added)} columns added: {', '.join(added)})" if added else ""
    return f"Tables created in {engine.url.render_as_string(hide_password=True)}{note}"


def log_progress(message: str) -> None:
    logger.info("[Chatwoot Sync] init-db: %s", message)


def add_missing_sqlite_columns() -> list[str]:
    """An embedded SQLite file from an older version gets the columns added since (they all have defaults)."""
    inspector = inspect(db.engine)
    added = []
    with db.engine.begin() as connection:
        for table in db.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    ddl = CreateColumn(column).compile(dialect=db.engine.dialect)
                    connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
                    added.append(f"{table.name}.{column.name}")
    return added


def allow_long_statements() -> None:
    """Maintenance commands may run longer than a web request's statement timeout."""
    current_app.extensions[STATEMENT_TIMEOUT_EXTENSION] = CLI_STATEMENT_TIMEOUT_MS
    if db.is_own and db.engine.dialect.name == "postgresql":
        event.listen(
            db.engine,
            "connect",
            lambda connection, record: _set_statement_timeout(connection, CLI_STATEMENT_TIMEOUT_MS),
        )
        db.engine.dispose()


def _set_statement_timeout(connection, milliseconds: int) -> None:  # type: ignore[no-untyped-def]
    """On a new DBAPI connection (psycopg 3 or psycopg2): SET statement_timeout, committed."""
    cursor = connection.cursor()
    try:
        cursor.execute(f"SET statement_timeout = {int(milliseconds)}")
    finally:
        cursor.close()
    connection.commit()


@contextlib.contextmanager
def progress_bar(label: str, total: int | None) -> Iterator:
    """A progress bar on long runs (more than a few thousand items); silent otherwise."""
    if total is None or total < PROGRESS_THRESHOLD:
        yield lambda amount: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


@chatwoot_cli.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option("--watch", is_flag=True, help="Keep running: reconcile every --interval seconds (the Procfile worker).")
@click.option("--interval", default=300.0, show_default=True, type=click.FloatRange(min=1), help="Seconds between runs with --watch.")
@click.option("--retry-failed", is_flag=True, help="Give companies that gave up a fresh set of attempts first.")
@with_appcontext
def reconcile_command(dry_run: bool, watch: bool, interval: float, retry_failed: bool) -> None:
    """Replay the spool, backfill/rename/mark from Chatwoot, finish provisioning, rebuild Redis namespaces."""
    from multibackend.services import reconciler

    allow_long_statements()
    if retry_failed and not dry_run:
        click.echo(f"[Chatwoot Sync] {reconciler.retry_failed()} companies get a fresh set of attempts")
    stopping = _stop_on_signals() if watch else []
    json_logs = current_app.config["LOG_FORMAT"] == "json"
    while True:
        with _summary_said_once(reconciler.logger, json_logs):
            summary = reconciler.reconcile(dry_run=dry_run, progress=progress_bar)
        if not json_logs or summary.locked_out:  # with LOG_FORMAT=json the reconciler's JSON line is the summary
            _print_summary(summary)
        if not watch:
            sys.exit(0 if summary.ok else 1)
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline and not stopping:
            time.sleep(min(1.0, interval))
        if stopping:
            return


SUMMARY_LOG_MESSAGES = ("[Chatwoot Sync] Reconcile: %s", "[Chatwoot Sync] Error: %s")


@contextlib.contextmanager
def _summary_said_once(reconciler_logger: logging.Logger, json_logs: bool) -> Iterator[None]:
    """Readable logs: the reconciler's summary and problem lines are left out, the command's ✓/✗ lines say them."""
    def not_the_summary(record: logging.LogRecord) -> bool:
        return json_logs or record.msg not in SUMMARY_LOG_MESSAGES

    reconciler_logger.addFilter(not_the_summary)
    try:
        yield
    finally:
        reconciler_logger.removeFilter(not_the_summary)


def _print_summary(summary) -> None:  # type: ignore[no-untyped-def]
    if summary.locked_out:
        click.echo("[Chatwoot Sync] Another reconcile is running (advisory lock held); nothing done")
        return
    mark = "✓" if summary.ok else "✗"
    click.echo(f"{mark} [Chatwoot Sync] Reconcile{' (dry run)' if summary.dry_run else ''}: {summary.as_line()}")
    for problem in summary.problems:
        click.echo(f"  ✗ {problem}")


def _stop_on_signals() -> list[int]:
    """Let SIGTERM/SIGINT end --watch between runs; the returned list fills when one arrives."""
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
    return received


@chatwoot_cli.command("dedupe")
@click.option("--dry-run", is_flag=True, help="Only list the rows that would be removed.")
@with_appcontext
def dedupe_command(dry_run: bool) -> None:
    """Keep the newest company of each Chatwoot account, remove the others, then add the UNIQUE constraint."""
    from multibackend.services import dedupe

    if db.engine.dialect.name != "postgresql":
        raise click.ClickException("dedupe works on PostgreSQL (the embedded SQLite database always had the constraint)")
    allow_long_statements()
    rows = dedupe.duplicate_rows() if dry_run else dedupe.remove_duplicates_and_constrain()
    verb = "would remove" if dry_run else "removed"
    for row in rows:
        click.echo(f"  {verb} id={row.id} {row.company_id} (account {row.chatwoot_account_id}, created {row.created_at})")
    click.echo(f"[Chatwoot Sync] Dedupe: {verb} {len(rows)} duplicate rows")
    if dry_run:
        state = "present" if dedupe.has_unique_constraint() else "missing: run without --dry-run to add it"
        click.echo(f"[Chatwoot Sync] Unique constraint on chatwoot_account_id: {state}")
    else:
        click.echo(f"[Chatwoot Sync] {apply_schema()}; unique constraint on chatwoot_account_id: present")


@chatwoot_cli.command("doctor")
@with_appcontext
def doctor_command() -> None:
    """Check the whole setup, one ✓/✗ line each with the fix; exit code 0 only when everything passes."""
    from multibackend.services import doctor

    checks = doctor.run_checks()
    for check in checks:
        click.echo(f"{'✓' if check.ok else '✗'} {check.name}: {check.detail}")
        if not check.ok and check.fix:
            click.echo(f"    fix: {check.fix}")
    failed = sum(not check.ok for check in checks)
    click.echo(f"doctor: {len(checks) - failed} of {len(checks)} checks passed")
    sys.exit(1 if failed else 0)


@chatwoot_cli.command("embed-url")
@click.argument("account_id", type=click.IntRange(min=1, max=2**63 - 1))
@with_appcontext
def embed_url_command(account_id: int) -> None:
    """Print the URL of one account's company tab, exactly as the automatic tabs carry it (signed with
    CHATWOOT_EMBED_SECRET): a tab made by hand with it is recognised as ours, never doubled."""
    from multibackend.services import dashboard_tabs

    config = current_app.config
    url = dashboard_tabs.desired_tab(account_id).url
    if not config["PUBLIC_URL"]:
        url = f"http://localhost:8000{url}"
        click.echo("note: PUBLIC_URL is not set; the URL uses http://localhost:8000", err=True)
    if not config["CHATWOOT_EMBED_SECRET"]:
        click.echo("note: CHATWOOT_EMBED_SECRET is not set, lookups are open and the URL needs no signature", err=True)
    click.echo(url)


@chatwoot_cli.command("dashboard-apps")
@click.option("--script", is_flag=True, help="Print a Rails runner script that makes the tabs inside Chatwoot instead.")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@with_appcontext
def dashboard_apps_command(script: bool, dry_run: bool) -> None:
    """The company tab (a Chatwoot Dashboard App) in every Chatwoot account: create missing, update changed."""
    from multibackend.services import dashboard_tabs
    from multibackend.services.chatwoot_source import ChatwootDatabaseSource, SourceError, chatwoot_source

    if script:
        click.echo(dashboard_tabs.rails_runner_script(), nl=False)
        return
    reason = dashboard_tabs.tabs_disabled_because()
    source = chatwoot_source()
    if reason is not None or not isinstance(source, ChatwootDatabaseSource):
        raise click.ClickException(f"company tabs are not made here: {reason or 'CHATWOOT_DATABASE_URL is not set'}")
    totals = dashboard_tabs.TabChanges()
    try:
        for batch in source.accounts(current_app.config["RECONCILE_BATCH_SIZE"]):
            totals.add(dashboard_tabs.ensure_tabs([account.id for account in batch], dry_run=dry_run))
    except (dashboard_tabs.TabError, SourceError) as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would be " if dry_run else ""
    click.echo(
        f"[Chatwoot Sync] Company tabs: {len(totals.created)} {verb}created, {len(totals.updated)} {verb}updated "
        f"({len(totals.reowned)} given a current administrator as owner), {len(totals.unchanged)} already right, "
        f"{len(totals.skipped)} skipped"
    )
    for reason, accounts in dashboard_tabs.group_by_reason(totals.skipped).items():
        click.echo(f"  skipped, {reason}: accounts {', '.join(map(str, accounts))}")


@chatwoot_cli.command("remove-test-companies")
@click.option("--dry-run", is_flag=True, help="Only list the companies that would be removed.")
@click.option("--yes", is_flag=True, help="Remove without asking (for scripts).")
@with_appcontext
def remove_test_companies_command(dry_run: bool, yes: bool) -> None:
    """Remove the smoke test's companies ("Smoke Test <id>", account ids 900000000-999999999) and their Redis
    namespaces, after listing them and asking."""
    from multibackend.services.smoke_cleanup import remove_smoke_test_companies

    listed = remove_smoke_test_companies(dry_run=True)
    for company in listed:
        click.echo(f"  {company.company_id} ({company.company_name})")
    if dry_run or not listed:
        click.echo(f"[Chatwoot Sync] Smoke-test companies: would remove {len(listed)}")
        return
    if not yes:
        click.confirm(f"Remove these {len(listed)} companies?", abort=True)
    removed = remove_smoke_test_companies()
    click.echo(f"[Chatwoot Sync] Smoke-test companies: removed {len(removed)}")
