"""flask chatwoot doctor (the setup checklist) and flask chatwoot dedupe (older databases with duplicates)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from multibackend.cli import apply_schema
from multibackend.extensions import db
from multibackend.services.delivery_spool import SPOOL_KEY
from tests.conftest import WEBHOOK, _admin_url, run_command, with_database

SECRET = "doctor-secret"
BACKEND = "https://backend.example"


def lines_of(output: str) -> dict[str, str]:
    return {line[2:].split(":", 1)[0]: line[0] for line in output.splitlines() if line[:1] in "✓✗"}


def test_doctor_passes_on_a_healthy_setup(make_app, clean_database, chatwoot_db):
    chatwoot_db.add_accounts([(1, "One"), (2, "Two")])
    chatwoot_db.set_webhook_url(f"{BACKEND}/api/chatwoot/webhooks/account-created?token={SECRET}")
    app = make_app(CHATWOOT_WEBHOOK_SECRET=f"old,{SECRET}", CHATWOOT_DATABASE_URL=chatwoot_db.url, PUBLIC_URL=BACKEND)
    client = app.test_client()
    for account_id in (1, 2):
        client.post(f"{WEBHOOK}?token={SECRET}", json={"id": account_id, "name": f"Account {account_id}"})
    result = run_command(app, "doctor")
    assert result.exit_code == 0, result.output
    assert set(lines_of(result.output).values()) == {"✓"}
    assert set(lines_of(result.output)) == {
        "settings", "database reachable", "companies table", "Redis reachable", "webhook authentication",
        "recent sync success rate", "spool empty", "nothing stuck in pending",
        "Chatwoot INSTALLATION_EVENTS_WEBHOOK_URL", "every Chatwoot account has a company",
    }
    assert "doctor: 10 of 10 checks passed" in result.output


def test_doctor_names_every_problem_and_its_fix(make_app, clean_database, redis_client, chatwoot_db):
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
    result = run_command(app, "doctor")
    assert result.exit_code == 1
    marks = lines_of(result.output)
    assert marks["settings"] == marks["webhook authentication"] == marks["spool empty"] == "✗"
    assert marks["nothing stuck in pending"] == marks["recent sync success rate"] == "✗"
    assert marks["every Chatwoot account has a company"] == "✗"
    assert marks["database reachable"] == marks["Redis reachable"] == marks["companies table"] == "✓"
    assert "not set: CHATWOOT_WEBHOOK_SECRET" in result.output
    assert "2 Chatwoot accounts have no company here" in result.output
    assert "fix: flask --app wsgi chatwoot reconcile" in result.output
    assert result.output.count("fix:") == sum(mark == "✗" for mark in marks.values())


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
    result = run_command(app, "doctor")
    line = next(line for line in result.output.splitlines() if "INSTALLATION_EVENTS_WEBHOOK_URL" in line)
    assert line.startswith("✗") and problem in line
    assert "Super Admin → Installation Configs" in result.output


def test_doctor_accepts_url_credentials(make_app, clean_database, chatwoot_db):
    chatwoot_db.set_webhook_url(f"https://chatwoot:{SECRET}@backend.example/api/chatwoot/webhooks/account-created")
    app = make_app(CHATWOOT_WEBHOOK_SECRET=SECRET, CHATWOOT_DATABASE_URL=chatwoot_db.url, PUBLIC_URL=BACKEND)
    assert "✓ Chatwoot INSTALLATION_EVENTS_WEBHOOK_URL" in run_command(app, "doctor").output


def test_doctor_reports_an_unreachable_database_without_crashing(make_app):
    from tests.conftest import free_port

    app = make_app(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    result = run_command(app, "doctor")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert lines_of(result.output)["database reachable"] == "✗"


LEGACY_TABLE = """
CREATE TABLE companies (
    id SERIAL PRIMARY KEY,
    company_id VARCHAR(64) NOT NULL,
    company_name VARCHAR(255) NOT NULL,
    chatwoot_account_id VARCHAR(50),
    created_at TIMESTAMPTZ DEFAULT now()
);
INSERT INTO companies (company_id, company_name, chatwoot_account_id, created_at) VALUES
    ('chatwoot_1', 'One (old)', '1', '2026-01-01'),
    ('chatwoot_1', 'One (newest)', '1', '2026-03-01'),
    ('chatwoot_1', 'One (middle)', '1', '2026-02-01'),
    ('chatwoot_2', 'Two', '2', '2026-01-01'),
    ('chatwoot_3', 'Three (old)', '3', '2026-01-01'),
    ('chatwoot_3', 'Three (new)', '3', '2026-01-02');
"""


@pytest.fixture
def legacy_database(make_app):
    name = "multibackend_legacy"
    admin = _admin_url()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(admin, name)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(LEGACY_TABLE)
    app = make_app(DATABASE_URL=url)
    yield app, url
    with app.app_context():
        db.engine.dispose()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def legacy_rows(url):
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT company_name FROM companies ORDER BY chatwoot_account_id, id").fetchall()


def test_dedupe_keeps_the_newest_row_and_adds_the_constraint(legacy_database):
    app, url = legacy_database
    upgraded = run_command(app, "init-db")
    assert upgraded.exit_code == 0, upgraded.output
    doctor = run_command(app, "doctor")
    assert "no UNIQUE constraint on chatwoot_account_id" in doctor.output

    dry = run_command(app, "dedupe", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would remove 3 duplicate rows" in dry.output and "missing" in dry.output
    assert len(legacy_rows(url)) == 6

    result = run_command(app, "dedupe")
    assert result.exit_code == 0, result.output
    assert "removed 3 duplicate rows" in result.output
    assert [row[0] for row in legacy_rows(url)] == ["One (newest)", "Two", "Three (new)"]
    with app.app_context():
        from multibackend.services import dedupe

        assert dedupe.has_unique_constraint()
    assert run_command(app, "dedupe", "--dry-run").output.count("would remove 0") == 1
    response = app.test_client().post(WEBHOOK, json={"id": 1, "name": "One"})
    assert response.json["data"]["created"] is False
    assert app.test_client().post(WEBHOOK, json={"id": 4, "name": "Four"}).json["data"]["created"] is True
    assert "✓ companies table" in run_command(app, "doctor").output


def test_init_db_upgrades_a_legacy_table_without_failing(legacy_database):
    app, url = legacy_database
    with app.app_context():
        apply_schema()
        apply_schema()
    with psycopg.connect(url) as connection:
        prefixes = connection.execute("SELECT DISTINCT redis_prefix FROM companies ORDER BY 1").fetchall()
    assert [row[0] for row in prefixes] == ["chatwoot_1:", "chatwoot_2:", "chatwoot_3:"]
