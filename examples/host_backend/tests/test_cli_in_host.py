"""`flask chatwoot ...` and `flask db ...` through the host's own `flask` command, and the Procfile's lines."""

import os
import shutil
import signal
import subprocess
import sys

import multibackend.migrations
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from host_backend.extensions import database
from tests.helpers import EXAMPLE, HOST_OWN_COMPANY, cli_env, create_database, drop_database, run_sql, url_of

AUTO_SYNC_TABLES = {
    "chatwoot_dashboard_tabs", "chatwoot_sync_events", "chatwoot_sync_totals", "chatwoot_tenant_announcements",
    "chatwoot_webhook_rejections",
}


def public_columns(url: str) -> list[tuple]:
    return run_sql(url, "SELECT table_name, column_name, data_type FROM information_schema.columns"
                        " WHERE table_schema = 'public' ORDER BY table_name, column_name")


def test_init_db_is_repeatable_and_leaves_the_hosts_schema_alone(cli, database_url):
    before = public_columns(database_url)
    for _ in range(2):
        result = cli("chatwoot", "init-db")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Schema up to date on PostgreSQL: nothing to do" in result.stdout
    assert public_columns(database_url) == before
    assert ("companies", "plan", "character varying") in before
    assert {table for table, _, _ in before} >= {"companies", "vector_indexes", "alembic_version"} | AUTO_SYNC_TABLES


def test_doctor_passes_through_the_hosts_flask(cli):
    result = cli("chatwoot", "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✓ companies table: present, UNIQUE (chatwoot_account_id)" in result.stdout


def test_doctor_is_not_bothered_by_the_hosts_own_companies(cli, database_url):
    (updated_at,) = run_sql(database_url, "SELECT updated_at FROM companies WHERE company_id = %s", (HOST_OWN_COMPANY,))[0]
    run_sql(database_url, "UPDATE companies SET updated_at = now() - interval '1 hour' WHERE company_id = %s", (HOST_OWN_COMPANY,))
    try:
        result = cli("chatwoot", "doctor")
        assert result.returncode == 0, result.stdout
    finally:
        run_sql(database_url, "UPDATE companies SET updated_at = %s WHERE company_id = %s", (updated_at, HOST_OWN_COMPANY))


def test_db_migrate_after_init_db_proposes_no_changes(cli, tmp_path):
    migrations = tmp_path / "migrations"
    shutil.copytree(EXAMPLE / "migrations", migrations, ignore=shutil.ignore_patterns("__pycache__"))
    revisions = set(os.listdir(migrations / "versions"))
    result = cli("db", "migrate", "--directory", str(migrations), "-m", "should be empty")
    assert result.returncode == 0, result.stderr
    assert "No changes in schema detected" in result.stdout + result.stderr
    assert set(os.listdir(migrations / "versions")) - {"__pycache__"} == revisions


def test_include_object_is_what_keeps_autogenerate_from_dropping_the_auto_syncs_schema(app):
    include_object = app.extensions["migrate"].configure_args["include_object"]
    assert include_object is multibackend.migrations.include_object  # installed by init_app on the host's Migrate
    with app.app_context(), database.engine.connect() as connection:
        def proposed(**options):
            context = MigrationContext.configure(connection, opts={"compare_type": True, **options})
            return compare_metadata(context, database.metadata)

        assert proposed(include_object=include_object) == []
        unfiltered = proposed()
    assert {diff[1].name for diff in unfiltered if diff[0] == "remove_table"} == AUTO_SYNC_TABLES
    dropped_columns = {diff[3].name for diff in unfiltered if diff[0] == "remove_column"}
    assert {"redis_prefix", "vectorstore_index", "provisioning_status", "updated_at"} <= dropped_columns


def procfile() -> dict[str, str]:
    lines = (EXAMPLE / "Procfile").read_text().splitlines()
    return {name: command.strip() for name, command in (line.split(":", 1) for line in lines if line.strip())}


def procfile_env(database_name: str, redis_url: str) -> dict[str, str]:
    """The environment of a platform running the Procfile in this folder (the installed `flask` on PATH)."""
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, **cli_env(database_name, redis_url), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONUNBUFFERED": "1"}


def test_procfile_release_sets_up_an_empty_database(redis_url):
    name = create_database("host_example_release")
    try:
        release = subprocess.run(["bash", "-c", procfile()["release"]], cwd=EXAMPLE, env=procfile_env(name, redis_url),
                                 capture_output=True, text=True, timeout=120)
        assert release.returncode == 0, release.stdout + release.stderr
        columns = {(table, column) for table, column, _ in public_columns(url_of(name))}
        assert {("companies", "plan"), ("companies", "provisioning_status"), ("vector_indexes", "index_name")} <= columns
        assert {table for table, _ in columns} >= AUTO_SYNC_TABLES
    finally:
        drop_database(name)


def test_procfile_worker_reconciles_then_stops_on_sigterm(database_name, redis_url):
    worker = subprocess.Popen(["bash", "-c", "exec " + procfile()["worker"]], cwd=EXAMPLE,
                              env=procfile_env(database_name, redis_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        lines = []
        for line in worker.stdout:
            lines.append(line)
            if "[Chatwoot Sync] Reconcile:" in line and line.startswith(("✓", "✗")):
                break
        assert lines and lines[-1].startswith("✓"), "".join(lines)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
