"""init-db is an online upgrade of a live `companies` table: the other connections' statements never wait long
and never fail, a re-run with nothing to do locks nothing, a held lock is reported with its holder, what exists is
adopted under any name, and an interrupted concurrent build is repaired by the next run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from multibackend.services import dedupe
from tests.helpers import ROOT, SETUP_GUIDE_COMPANIES, ConcurrentLoad, doctor_checks, run_command

SEED_ROWS = 40_000
MAX_OTHER_WAIT_SECONDS = 1.0
# the setup guide's table, and the constraint its troubleshooting section tells operators to add
SEED_TABLE = SETUP_GUIDE_COMPANIES + "ALTER TABLE companies ADD CONSTRAINT unique_chatwoot_account UNIQUE (chatwoot_account_id);"
SEED_ROWS_SQL = (
    "INSERT INTO companies (company_id, company_name, chatwoot_account_id)"
    " SELECT 'chatwoot_' || i, 'Company ' || i, i::text FROM generate_series(1, %d) AS i"
)
UNIQUE_INDEXES_ON = """
SELECT x.relname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
WHERE i.indrelid = 'companies'::regclass AND i.indisunique AND i.indnkeyatts = 1
  AND i.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = 'companies'::regclass AND attname = %s)
ORDER BY 1
"""


@pytest.fixture
def seed_database(app_on_own_database):
    """A database whose companies table is the setup guide's, with SEED_ROWS companies: (app on it, its URL)."""
    return app_on_own_database(SEED_TABLE, SEED_ROWS_SQL % SEED_ROWS, "VACUUM ANALYZE companies")


def init_db(app, *options):
    return run_command(app, "init-db", *options)


def query(url, statement, *parameters):
    """The rows of a statement (none for one that returns none), in its own transaction."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, parameters or None)
        return cursor.fetchall() if cursor.description else []


def upgraded_state(url):
    """What the upgrade must leave: unique indexes per column, CHECKs and whether they are validated, invalid
    indexes, and Chatwoot companies still without tenant names."""
    return {
        "account_unique": [row[0] for row in query(url, UNIQUE_INDEXES_ON, "chatwoot_account_id")],
        "company_unique": [row[0] for row in query(url, UNIQUE_INDEXES_ON, "company_id")],
        "checks": sorted(query(url, "SELECT conname, convalidated FROM pg_constraint"
                                    " WHERE conrelid = 'companies'::regclass AND contype = 'c'")),
        "invalid_indexes": query(url, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid"),
        "unnamed": query(url, "SELECT count(*) FROM companies WHERE chatwoot_account_id IS NOT NULL"
                              " AND (redis_prefix IS NULL OR vectorstore_index IS NULL)")[0][0],
    }


OUR_CHECKS = [("companies_chatwoot_status_check", True), ("companies_provisioning_status_check", True)]


@pytest.fixture
def held_transaction(seed_database):
    """Another session's long transaction that has read companies (ACCESS SHARE), until the test ends it."""
    _, url = seed_database
    connection = psycopg.connect(url)
    pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
    connection.execute("SELECT count(*) FROM companies")
    yield connection, pid
    connection.rollback()
    connection.close()


# ---- the first run on a live seed-era table ------------------------------------------------------------------


def test_first_init_db_under_readers_and_writers_makes_no_statement_wait_and_none_fail(seed_database):
    app, url = seed_database
    with ConcurrentLoad(url, connections=4) as load:
        result = init_db(app)
    assert result.exit_code == 0, result.output
    assert load.statements > 200 and load.failures == []
    assert load.max_wait < MAX_OTHER_WAIT_SECONDS, load.slowest
    state = upgraded_state(url)
    assert state["account_unique"] == ["unique_chatwoot_account"]  # the seed's constraint adopted: no second index
    assert state["company_unique"] == ["companies_company_id_key"]
    assert state["checks"] == OUR_CHECKS and state["invalid_indexes"] == []
    assert query(url, "SELECT count(*) FROM companies")[0][0] == SEED_ROWS + load.inserted


def test_the_first_run_fills_every_seed_companys_tenant_names_and_says_how(seed_database):
    app, url = seed_database
    result = init_db(app)
    assert result.exit_code == 0, result.output
    assert upgraded_state(url)["unnamed"] == 0
    assert query(url, "SELECT redis_prefix, vectorstore_index, provisioning_status FROM companies WHERE id = 7") == [
        ("chatwoot_7:", "chatwoot_7_documents", "pending")
    ]
    for step in ("adding columns to companies", f"filling the tenant names of existing companies: {SEED_ROWS:,} rows done",
                 "building index companies_company_id_key", "adding CHECK companies_provisioning_status_check"):
        assert step in result.output
    assert "Schema upgraded on PostgreSQL online" in result.output


def test_rows_the_old_deployment_inserts_after_the_upgrade_are_named_by_the_next_run(seed_database):
    app, url = seed_database
    assert init_db(app).exit_code == 0
    query(url, "INSERT INTO companies (company_id, company_name, chatwoot_account_id) VALUES ('chatwoot_0', 'Old code', '0')")
    result = init_db(app)
    assert result.exit_code == 0, result.output
    assert "filling the tenant names of existing companies: 1 rows done" in result.output
    assert upgraded_state(url)["unnamed"] == 0


# ---- the every-release re-run ------------------------------------------------------------------------------


def test_a_rerun_with_nothing_to_do_takes_no_lock_stronger_than_a_readers(seed_database):
    app, url = seed_database
    assert init_db(app).exit_code == 0
    with psycopg.connect(url) as blocker:  # EXCLUSIVE admits only ACCESS SHARE: any stronger lock would wait
        blocker.execute("LOCK TABLE companies, chatwoot_sync_events, chatwoot_sync_totals, chatwoot_webhook_rejections,"
                        " chatwoot_tenant_announcements, chatwoot_dashboard_tabs IN EXCLUSIVE MODE")
        started = time.monotonic()
        result = init_db(app, "--max-lock-wait", "1")
        took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "Schema up to date on PostgreSQL: nothing to do" in result.output
    assert took < 1.0


def test_a_rerun_under_load_is_quick_and_nothing_waits(seed_database):
    app, url = seed_database
    assert init_db(app).exit_code == 0
    with ConcurrentLoad(url, connections=4) as load:
        started = time.monotonic()
        result = init_db(app)
        took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert load.failures == [] and load.max_wait < 0.2, load.slowest
    assert took < 5.0
    # what the old deployment inserted without tenant names during the previous block: filled, nothing else to do
    assert re.findall(r"init-db: (\w+)", result.output) in ([], ["filling"])


def test_the_dry_run_lists_what_it_would_do_and_changes_nothing(seed_database):
    app, url = seed_database
    result = init_db(app, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "-- 14 statements would run" in result.stderr
    assert "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS companies_company_id_key ON companies (company_id);" in result.output
    assert "UNIQUE (chatwoot_account_id)" not in result.output  # the seed's constraint is adopted
    assert query(url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'chatwoot_%%'")[0][0] == 0
    assert query(url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'companies'")[0][0] == 5


# ---- a lock that stays held --------------------------------------------------------------------------------


def test_behind_a_long_transaction_it_names_the_holder_and_nobody_queues_behind_it(seed_database, held_transaction):
    app, url = seed_database
    _, holder_pid = held_transaction
    with ConcurrentLoad(url, connections=4) as load:
        result = init_db(app, "--max-lock-wait", "2")
    assert result.exit_code == 1
    assert f"pid {holder_pid} (transaction open" in result.output and "SELECT count(*) FROM companies" in result.output
    assert "it resumes where it stopped" in result.output
    assert load.failures == [] and load.max_wait < MAX_OTHER_WAIT_SECONDS, load.slowest
    assert query(url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'companies'")[0][0] == 5


def test_after_the_holder_lets_go_the_next_run_resumes_and_finishes(seed_database, held_transaction):
    app, url = seed_database
    connection, _ = held_transaction
    assert init_db(app, "--max-lock-wait", "1").exit_code == 1
    connection.rollback()
    result = init_db(app)
    assert result.exit_code == 0, result.output
    state = upgraded_state(url)
    assert state["checks"] == OUR_CHECKS and state["unnamed"] == 0 and state["invalid_indexes"] == []


def test_it_waits_out_a_short_holder_and_says_who_it_waits_for(seed_database, held_transaction):
    app, url = seed_database
    connection, holder_pid = held_transaction
    threading.Timer(1.5, connection.rollback).start()
    result = init_db(app, "--max-lock-wait", "20")
    assert result.exit_code == 0, result.output
    assert re.search(rf"waiting for a lock on companies, held by pid {holder_pid} .*; trying again in", result.output)


def test_an_index_build_waiting_on_an_old_snapshot_is_cancelled_and_rebuilt_by_the_next_run(seed_database):
    app, url = seed_database
    assert init_db(app).exit_code == 0
    query(url, "DROP INDEX ix_companies_unfinished_provisioning")
    with psycopg.connect(url) as snapshot_holder:
        snapshot_holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        snapshot_holder.execute("SELECT count(*) FROM chatwoot_sync_events")
        pid = snapshot_holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        with ConcurrentLoad(url, connections=2) as load:
            result = init_db(app, "--max-build-wait", "1")
        snapshot_holder.rollback()
    assert result.exit_code == 1 and f"pid {pid}" in result.output, result.output
    assert "index ix_companies_unfinished_provisioning: waiting" in result.output
    assert "is left invalid: the next init-db drops it and builds it again" in result.output
    assert load.failures == [] and load.max_wait < MAX_OTHER_WAIT_SECONDS, load.slowest
    assert upgraded_state(url)["invalid_indexes"] == [("ix_companies_unfinished_provisioning",)]
    result = init_db(app)
    assert "left invalid by an interrupted build: dropping it to build it again" in result.output
    assert upgraded_state(url)["invalid_indexes"] == []


# ---- adopted by what it does, repaired when interrupted ----------------------------------------------------


def test_constraints_under_other_names_are_adopted_and_an_unvalidated_one_validated(seed_database):
    app, url = seed_database
    query(url, "ALTER TABLE companies ADD COLUMN provisioning_status VARCHAR(16) NOT NULL DEFAULT 'pending',"
               " ADD COLUMN chatwoot_status VARCHAR(20) NOT NULL DEFAULT 'active',"
               " ADD CONSTRAINT host_status_ck CHECK (provisioning_status IN ('failed', 'pending', 'ready')),"
               " ADD CONSTRAINT host_chatwoot_ck CHECK (chatwoot_status = ANY (ARRAY['active', 'suspended',"
               " 'deletion_pending', 'deleted'])) NOT VALID")
    query(url, "CREATE UNIQUE INDEX host_company_id_idx ON companies (company_id)")
    result = init_db(app)
    assert result.exit_code == 0, result.output
    state = upgraded_state(url)
    assert state["checks"] == [("host_chatwoot_ck", True), ("host_status_ck", True)]
    assert state["company_unique"] == ["host_company_id_idx"] and state["account_unique"] == ["unique_chatwoot_account"]


def test_a_check_that_allows_other_values_is_not_taken_for_ours(seed_database):
    app, url = seed_database
    query(url, "ALTER TABLE companies ADD COLUMN provisioning_status VARCHAR(16) NOT NULL DEFAULT 'pending',"
               " ADD CONSTRAINT host_status_ck CHECK (provisioning_status IN ('pending', 'ready', 'failed', 'archived'))")
    assert init_db(app).exit_code == 0
    assert ("companies_provisioning_status_check", True) in upgraded_state(url)["checks"]


@pytest.mark.parametrize("meaning", [
    "provisioning_status NOT IN ('pending', 'ready', 'failed')",
    "provisioning_status IN ('pending', 'ready', 'failed') OR provisioning_status IS NULL",
    "provisioning_status IN ('pending', 'ready')",
])
def test_a_check_on_the_same_column_that_means_something_else_is_not_taken_for_ours(seed_database, meaning):
    app, url = seed_database
    query(url, f"ALTER TABLE companies ADD COLUMN provisioning_status VARCHAR(16), ADD CONSTRAINT host_ck CHECK ({meaning})")
    assert init_db(app).exit_code == 0
    assert ("companies_provisioning_status_check", True) in upgraded_state(url)["checks"]


def test_a_check_of_another_meaning_under_our_name_stops_init_db_with_what_to_do(seed_database):
    app, url = seed_database
    query(url, "ALTER TABLE companies ADD COLUMN chatwoot_status VARCHAR(20) NOT NULL DEFAULT 'active',"
               " ADD CONSTRAINT companies_chatwoot_status_check CHECK (chatwoot_status IN ('active', 'suspended'))")
    result = init_db(app)
    assert result.exit_code == 1
    assert "has a CHECK named companies_chatwoot_status_check that allows other values" in result.output
    assert "Traceback" not in result.output


def test_a_table_without_an_id_column_is_refused_with_a_clear_message(app_on_own_database):
    app, url = app_on_own_database("CREATE TABLE companies (company_id VARCHAR(64) PRIMARY KEY, company_name TEXT)")
    for options in ((), ("--dry-run",)):
        result = init_db(app, *options)
        assert result.exit_code == 1 and "companies has no `id` column" in result.output, result.output
    assert query(url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'companies'") == [(2,)]


def test_our_index_name_on_another_table_is_reported_not_mistaken_for_ours(seed_database):
    app, url = seed_database
    query(url, "CREATE TABLE companies_old (next_provisioning_at TIMESTAMPTZ)")
    query(url, "CREATE INDEX ix_companies_unfinished_provisioning ON companies_old (next_provisioning_at)")
    result = init_db(app)
    assert result.exit_code == 1
    assert "ix_companies_unfinished_provisioning is taken by an index on companies_old" in result.output


def test_every_server_default_is_one_postgresql_keeps_in_the_catalog():
    """ADD COLUMN with a volatile default (random(), clock_timestamp()) would rewrite the table under its lock."""
    from multibackend.extensions import Base

    defaults = {str(column.server_default.arg) for table in Base.metadata.tables.values() for column in table.columns
                if column.server_default is not None}
    assert all(re.fullmatch(r"-?\d+|\w+|now\(\)|false|true", default) for default in defaults), defaults


def test_an_invalid_unique_index_left_by_an_interrupted_build_is_rebuilt(seed_database):
    app, url = seed_database
    query(url, "INSERT INTO companies (company_id, company_name, chatwoot_account_id) VALUES ('chatwoot_1', 'Twin', NULL)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        query(url, "CREATE UNIQUE INDEX CONCURRENTLY companies_company_id_key ON companies (company_id)")
    query(url, "DELETE FROM companies WHERE company_name = 'Twin'")
    assert query(url, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid") == [("companies_company_id_key",)]
    result = init_db(app)
    assert result.exit_code == 0, result.output
    assert "index companies_company_id_key was left invalid by an interrupted build" in result.output
    state = upgraded_state(url)
    assert state["invalid_indexes"] == [] and state["company_unique"] == ["companies_company_id_key"]
    assert query(url, "SELECT contype FROM pg_constraint WHERE conname = 'companies_company_id_key'") == [("u",)]


def test_two_release_steps_at_once_both_succeed_and_leave_one_schema(seed_database):
    _, url = seed_database
    environment = {**os.environ, "DATABASE_URL": url, "REDIS_URL": ""}
    runs = [subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "init-db"], cwd=ROOT,
                             env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    state = upgraded_state(url)
    assert state["checks"] == OUR_CHECKS and state["invalid_indexes"] == [] and state["unnamed"] == 0
    assert state["company_unique"] == ["companies_company_id_key"]


# ---- duplicates ------------------------------------------------------------------------------------------


def test_duplicate_accounts_leave_no_unique_index_and_dedupe_builds_it_online(seed_database):
    app, url = seed_database
    query(url, "ALTER TABLE companies DROP CONSTRAINT unique_chatwoot_account")
    query(url, "INSERT INTO companies (company_id, company_name, chatwoot_account_id) VALUES ('chatwoot_5b', 'Dup', '5')")
    result = init_db(app)
    assert result.exit_code == 0, result.output
    assert "WARNING: companies holds duplicate chatwoot_account_id rows" in result.output and "dedupe --dry-run" in result.output
    assert upgraded_state(url)["account_unique"] == [] and upgraded_state(url)["invalid_indexes"] == []
    assert not doctor_checks(app)["companies table"].ok
    with ConcurrentLoad(url, connections=2) as load, app.app_context():
        removed = dedupe.remove_duplicates_and_constrain()
    assert [row.chatwoot_account_id for row in removed] == ["5"]
    assert upgraded_state(url)["account_unique"] == ["companies_chatwoot_account_id_key"]
    assert load.failures == [] and load.max_wait < MAX_OTHER_WAIT_SECONDS, load.slowest
    assert doctor_checks(app)["companies table"].ok


# ---- the migration linter ---------------------------------------------------------------------------------

# Column types are the models' (VARCHAR(n), INTEGER, SERIAL on a host's table): squawk's type-style rules are about
# choosing types, not about locking, and changing a live column's type is exactly what an upgrade must not do.
SQUAWK_EXCLUDED = "prefer-text-field,prefer-bigint-over-int,prefer-bigint-over-smallint,prefer-identity"


def squawk(path):
    """squawk-cli (requirements-dev.txt) on one SQL file."""
    return subprocess.run([str(Path(sys.executable).parent / "squawk"), "--pg-version", "15", f"--exclude={SQUAWK_EXCLUDED}",
                           str(path)], capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})


def test_squawk_finds_nothing_in_the_statements_init_db_runs_on_a_seed_era_table(seed_database, tmp_path):
    app, _ = seed_database
    result = init_db(app, "--dry-run")
    assert result.exit_code == 0, result.output
    plan = tmp_path / "upgrade.sql"
    plan.write_text(result.stdout)
    assert "CONCURRENTLY" in plan.read_text() and "NOT VALID" in plan.read_text()
    linted = squawk(plan)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_squawk_would_catch_the_old_way(tmp_path):
    old = tmp_path / "old.sql"
    old.write_text("ALTER TABLE companies ADD CONSTRAINT companies_chatwoot_account_id_key UNIQUE (chatwoot_account_id);\n"
                   "CREATE INDEX ix_companies_unfinished_provisioning ON companies (next_provisioning_at);\n")
    linted = squawk(old)
    assert linted.returncode != 0
    assert "disallowed-unique-constraint" in linted.stdout and "require-concurrent-index-creation" in linted.stdout


def test_an_older_plugin_table_gets_its_missing_column_and_index_online(seed_database):
    app, url = seed_database
    assert init_db(app).exit_code == 0
    query(url, "DROP INDEX ix_chatwoot_sync_events_errors")
    query(url, "ALTER TABLE chatwoot_sync_events DROP COLUMN error")
    result = init_db(app)
    assert result.exit_code == 0, result.output
    assert "adding columns to chatwoot_sync_events: error" in result.output
    assert "building index ix_chatwoot_sync_events_errors on chatwoot_sync_events (CONCURRENTLY" in result.output
    assert query(url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_chatwoot_sync_events_errors'::regclass") == [(True,)]


def test_a_deferrable_unique_constraint_is_not_taken_for_one_on_conflict_can_use(seed_database):
    app, url = seed_database
    query(url, "ALTER TABLE companies DROP CONSTRAINT unique_chatwoot_account, ADD CONSTRAINT unique_chatwoot_account"
               " UNIQUE (chatwoot_account_id) DEFERRABLE INITIALLY DEFERRED")
    result = init_db(app)
    assert result.exit_code == 0, result.output
    assert "WARNING: unique_chatwoot_account on companies is DEFERRABLE" in result.output
    assert upgraded_state(url)["account_unique"] == ["companies_chatwoot_account_id_key", "unique_chatwoot_account"]
    assert doctor_checks(app)["companies table"].detail.startswith("unique_chatwoot_account is DEFERRABLE")
    query(url, "ALTER TABLE companies DROP CONSTRAINT unique_chatwoot_account")  # what the warning tells operators
    insert = ("INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index)"
              " VALUES ('chatwoot_7', 'Again', '7', 'p', 'i') ON CONFLICT DO NOTHING RETURNING id")
    assert query(url, insert) == [] and doctor_checks(app)["companies table"].ok
