"""The doctor names each broken setup step with its fix; dedupe keeps the newest company per account and adds the constraint."""

from __future__ import annotations


import psycopg
import pytest

from multibackend.cli import apply_schema
from multibackend.services import dashboard_tabs, dedupe
from multibackend.services.delivery_spool import SPOOL_KEY
from tests.helpers import ROOT, SETUP_GUIDE_COMPANIES, WEBHOOK, companies_state, doctor_checks, free_port, run_command

SECRET = "doctor-secret"
BACKEND = "https://backend.example"
CHECK_NAMES = {
    "settings", "database reachable", "companies table", "Redis reachable", "webhook authentication",
    "recent sync success rate", "spool empty", "nothing stuck in pending",
    "Chatwoot INSTALLATION_EVENTS_WEBHOOK_URL", "every Chatwoot account has a company",
    "Chatwoot dashboard_apps writable", "every Chatwoot account has the company tab",
    "company tabs pass Chatwoot's validation",
}
WEBHOOK_URL_CHECK = "Chatwoot INSTALLATION_EVENTS_WEBHOOK_URL"


def lines_of(output: str) -> dict[str, str]:
    return {line[2:].split(":", 1)[0]: line[0] for line in output.splitlines() if line[:1] in "✓✗"}


def healthy_setup(make_app, chatwoot_db):
    chatwoot_db.add_accounts([(1, "One"), (2, "Two")])
    chatwoot_db.set_webhook_url(f"{BACKEND}/api/chatwoot/webhooks/account-created?token={SECRET}")
    app = make_app(CHATWOOT_WEBHOOK_SECRET=f"old,{SECRET}", CHATWOOT_DATABASE_URL=chatwoot_db.url, PUBLIC_URL=BACKEND)
    client = app.test_client()
    for account_id in (1, 2):
        client.post(f"{WEBHOOK}?token={SECRET}", json={"id": account_id, "name": f"Account {account_id}"})
    chatwoot_db.add_administrators([(1, 7), (2, 7)])
    with app.app_context():
        dashboard_tabs.ensure_tabs([1, 2])
    return app


def broken_setup(make_app, clean_database, redis_client, chatwoot_db):
    """No webhook secret, a delivery spooled, a company stuck in pending, failed syncs, two accounts missing here."""
    chatwoot_db.add_accounts([(1, "One"), (2, "Two"), (3, "Three")])
    chatwoot_db.set_webhook_url(f"{BACKEND}/api/chatwoot/webhooks/account-created")
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot_db.url, PUBLIC_URL=BACKEND)
    app.test_client().post(WEBHOOK, json={"id": 1, "name": "One"})
    redis_client.lpush(SPOOL_KEY, '{"id": 2, "name": "Two"}')
    with psycopg.connect(clean_database) as connection:
        connection.execute("UPDATE companies SET provisioning_status = 'pending', updated_at = now() - interval '1 hour'")
        connection.execute(
            "INSERT INTO chatwoot_sync_events (chatwoot_account_id, outcome, latency_ms, error)"
            " SELECT '9', 'failed', 1, 'database unavailable' FROM generate_series(1, 5)"
        )
    return app


# ---- the checks ------------------------------------------------------------------------------------------------


def test_doctor_passes_every_check_on_a_healthy_setup(make_app, clean_database, chatwoot_db):
    checks = doctor_checks(healthy_setup(make_app, chatwoot_db))
    assert set(checks) == CHECK_NAMES
    assert {name: check.ok for name, check in checks.items()} == dict.fromkeys(CHECK_NAMES, True)


def test_doctor_fails_exactly_the_broken_checks(make_app, clean_database, redis_client, chatwoot_db):
    checks = doctor_checks(broken_setup(make_app, clean_database, redis_client, chatwoot_db))
    failing = {"settings", "webhook authentication", "spool empty", "nothing stuck in pending", "recent sync success rate",
               "every Chatwoot account has a company"}
    assert {name for name, check in checks.items() if not check.ok} == failing
    assert checks["database reachable"].ok and checks["Redis reachable"].ok and checks["companies table"].ok


def test_doctor_names_each_problem(make_app, clean_database, redis_client, chatwoot_db):
    checks = doctor_checks(broken_setup(make_app, clean_database, redis_client, chatwoot_db))
    assert "not set: CHATWOOT_WEBHOOK_SECRET" in checks["settings"].detail
    assert checks["every Chatwoot account has a company"].detail == "2 Chatwoot accounts have no company here"


def test_every_failed_check_carries_its_fix(make_app, clean_database, redis_client, chatwoot_db):
    checks = doctor_checks(broken_setup(make_app, clean_database, redis_client, chatwoot_db))
    assert [name for name, check in checks.items() if check.fix] == [name for name, check in checks.items() if not check.ok]
    assert checks["every Chatwoot account has a company"].fix == "flask --app wsgi chatwoot reconcile"


@pytest.mark.parametrize(
    ("configured", "problem"),
    [
        (None, "not set"),
        (f"{BACKEND}/api/chatwoot/webhooks/account-created", "carries no valid ?token="),
        (f"{BACKEND}/api/chatwoot/webhooks/account-created?token=wrong", "carries no valid ?token="),
        (f"{BACKEND}/webhooks/chatwoot?token={SECRET}", "path is /webhooks/chatwoot"),
        (f"https://other.example/api/chatwoot/webhooks/account-created?token={SECRET}", "host is other.example"),
    ],
)
def test_doctor_checks_the_url_configured_in_chatwoot(make_app, clean_database, chatwoot_db, configured, problem):
    if configured:
        chatwoot_db.set_webhook_url(configured)
    app = make_app(CHATWOOT_WEBHOOK_SECRET=SECRET, CHATWOOT_DATABASE_URL=chatwoot_db.url, PUBLIC_URL=BACKEND)
    check = doctor_checks(app)[WEBHOOK_URL_CHECK]
    assert not check.ok and problem in check.detail
    assert "Super Admin → Installation Configs" in check.fix


def test_doctor_accepts_url_credentials(make_app, clean_database, chatwoot_db):
    chatwoot_db.set_webhook_url(f"https://chatwoot:{SECRET}@backend.example/api/chatwoot/webhooks/account-created")
    app = make_app(CHATWOOT_WEBHOOK_SECRET=SECRET, CHATWOOT_DATABASE_URL=chatwoot_db.url, PUBLIC_URL=BACKEND)
    assert doctor_checks(app)[WEBHOOK_URL_CHECK].ok


def test_doctor_reports_an_unreachable_database_as_a_failed_check(make_app):
    app = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert not doctor_checks(app)["database reachable"].ok


# ---- the doctor command -----------------------------------------------------------------------------------------


def test_doctor_command_prints_a_mark_per_check_and_the_count(make_app, clean_database, chatwoot_db):
    result = run_command(healthy_setup(make_app, chatwoot_db), "doctor")
    assert result.exit_code == 0, result.output
    assert lines_of(result.output) == dict.fromkeys(CHECK_NAMES, "✓")
    assert f"doctor: {len(CHECK_NAMES)} of {len(CHECK_NAMES)} checks passed" in result.output


def test_doctor_command_prints_the_fix_under_each_failed_check(make_app, clean_database, redis_client, chatwoot_db):
    result = run_command(broken_setup(make_app, clean_database, redis_client, chatwoot_db), "doctor")
    assert result.exit_code == 1
    marks = lines_of(result.output)
    assert "fix: flask --app wsgi chatwoot reconcile" in result.output
    assert result.output.count("fix:") == sum(mark == "✗" for mark in marks.values())


def test_doctor_command_exits_1_without_a_traceback_when_the_database_is_unreachable(make_app):
    app = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    result = run_command(app, "doctor")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert lines_of(result.output)["database reachable"] == "✗"


# ---- dedupe of an older database -------------------------------------------------------------------------------

LEGACY_TABLE = SETUP_GUIDE_COMPANIES + """
INSERT INTO companies (company_id, company_name, chatwoot_account_id, created_at) VALUES
    ('chatwoot_1', 'One (old)', '1', '2026-01-01'),
    ('chatwoot_1', 'One (newest)', '1', '2026-03-01'),
    ('chatwoot_1', 'One (middle)', '1', '2026-02-01'),
    ('chatwoot_2', 'Two', '2', '2026-01-01'),
    ('chatwoot_3', 'Three (old)', '3', '2026-01-01'),
    ('chatwoot_3', 'Three (new)', '3', '2026-01-02');
"""


@pytest.fixture
def legacy_database(app_on_own_database):
    """An older companies table with duplicates and no UNIQUE constraint: (app on it, its URL)."""
    return app_on_own_database(LEGACY_TABLE)


@pytest.fixture
def upgraded_legacy_database(legacy_database):
    """The older table after init-db (its columns brought up to the models), duplicates still there."""
    app, url = legacy_database
    with app.app_context():
        apply_schema()
    return app, url


def legacy_rows(url):
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT company_name FROM companies ORDER BY chatwoot_account_id, id").fetchall()


def removed_by_dedupe(app):
    with app.app_context():
        return dedupe.remove_duplicates_and_constrain()


def test_init_db_upgrades_a_legacy_table_without_failing(legacy_database):
    app, url = legacy_database
    with app.app_context():
        apply_schema()
        apply_schema()
    with psycopg.connect(url) as connection:
        prefixes = connection.execute("SELECT DISTINCT redis_prefix FROM companies ORDER BY 1").fetchall()
    assert [row[0] for row in prefixes] == ["chatwoot_1:", "chatwoot_2:", "chatwoot_3:"]


def test_doctor_flags_a_table_without_the_unique_constraint(upgraded_legacy_database):
    app, _ = upgraded_legacy_database
    check = doctor_checks(app)["companies table"]
    assert not check.ok and check.detail == "no UNIQUE constraint on chatwoot_account_id"


def test_duplicate_rows_are_the_older_rows_of_each_account(upgraded_legacy_database):
    app, url = upgraded_legacy_database
    with app.app_context():
        duplicates = dedupe.duplicate_rows()
        assert not dedupe.has_unique_constraint()
    assert [(row.company_id, row.chatwoot_account_id) for row in duplicates] == [
        ("chatwoot_1", "1"), ("chatwoot_1", "1"), ("chatwoot_3", "3"),
    ]
    assert len(legacy_rows(url)) == 6  # listing them writes nothing


def test_dedupe_keeps_the_newest_row_of_each_account(upgraded_legacy_database):
    app, url = upgraded_legacy_database
    assert len(removed_by_dedupe(app)) == 3
    assert [row[0] for row in legacy_rows(url)] == ["One (newest)", "Two", "Three (new)"]


def test_dedupe_adds_the_unique_constraint(upgraded_legacy_database):
    app, _ = upgraded_legacy_database
    removed_by_dedupe(app)
    with app.app_context():
        assert dedupe.has_unique_constraint()
        assert dedupe.duplicate_rows() == []
    assert doctor_checks(app)["companies table"].ok


def test_deliveries_after_dedupe_find_the_kept_company(upgraded_legacy_database):
    app, _ = upgraded_legacy_database
    removed_by_dedupe(app)
    client = app.test_client()
    assert client.post(WEBHOOK, json={"id": 1, "name": "One"}).json["data"]["created"] is False
    assert client.post(WEBHOOK, json={"id": 4, "name": "Four"}).json["data"]["created"] is True


# ---- the init-db and dedupe commands ---------------------------------------------------------------------------


def test_init_db_command_upgrades_a_legacy_table(legacy_database):
    app, _ = legacy_database
    result = run_command(app, "init-db")
    assert result.exit_code == 0, result.output


def test_dedupe_command_dry_run_lists_the_rows_it_would_remove(upgraded_legacy_database):
    app, url = upgraded_legacy_database
    result = run_command(app, "dedupe", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would remove 3 duplicate rows" in result.output and "missing" in result.output
    assert len(legacy_rows(url)) == 6


def test_dedupe_command_removes_the_duplicates(upgraded_legacy_database):
    app, _ = upgraded_legacy_database
    result = run_command(app, "dedupe")
    assert result.exit_code == 0, result.output
    assert "removed 3 duplicate rows" in result.output
    assert run_command(app, "dedupe", "--dry-run").output.count("would remove 0") == 1


def test_remove_test_companies_removes_only_the_smoke_tests(make_app, clean_database, redis_client):
    from multibackend.services.smoke_cleanup import SMOKE_TEST_ACCOUNT_IDS, remove_smoke_test_companies, smoke_test_name

    app = make_app()
    client = app.test_client()
    for account_id in (42, 900_000_001, 999_999_999, 1_000_000_000):
        client.post(WEBHOOK, json={"id": account_id, "name": smoke_test_name(account_id)})
    client.post(WEBHOOK, json={"id": 900_000_002, "name": "Real customer 900000002"})
    assert client.get("/api/chatwoot/webhooks/company/900000001").json["data"]["exists"] is True
    with app.app_context():
        removed = remove_smoke_test_companies()
    assert sorted(company.company_id for company in removed) == ["chatwoot_900000001", "chatwoot_999999999"]
    assert sorted(companies_state(clean_database)) == ["chatwoot_1000000000", "chatwoot_42", "chatwoot_900000002"]
    assert redis_client.exists("chatwoot_900000001:tenant") == 0 and redis_client.exists("chatwoot_42:tenant") == 1
    assert client.get("/api/chatwoot/webhooks/company/900000001").json["data"]["exists"] is False
    assert SMOKE_TEST_ACCOUNT_IDS == smoke_test_account_ids()
    assert smoke_test_name(900_000_001) == smoke_test_script().default_name(900_000_001)


def test_remove_test_companies_lists_them_and_asks_first(make_app, clean_database, redis_client):
    from multibackend.services.smoke_cleanup import smoke_test_name

    app = make_app()
    client = app.test_client()
    client.post(WEBHOOK, json={"id": 900_000_003, "name": smoke_test_name(900_000_003)})
    client.post(WEBHOOK, json={"id": 900_000_004, "name": "Real customer 900000004"})
    refused = app.test_cli_runner().invoke(args=["chatwoot", "remove-test-companies"], input="n\n")
    assert "chatwoot_900000003 (Smoke Test 900000003)" in refused.output and "900000004" not in refused.output
    assert refused.exit_code == 1 and len(companies_state(clean_database)) == 2
    accepted = run_command(app, "remove-test-companies", "--yes")
    assert accepted.exit_code == 0 and "removed 1" in accepted.output
    assert sorted(companies_state(clean_database)) == ["chatwoot_900000004"]


def smoke_test_account_ids():
    return smoke_test_script().TEST_ACCOUNT_IDS


def smoke_test_script():
    """test_chatwoot_webhook.py, loaded as a module."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("smoke_test_script", ROOT / "test_chatwoot_webhook.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module
