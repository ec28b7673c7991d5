"""The company tab (a Chatwoot Dashboard App) in every Chatwoot account: made for each new account, one per account
whatever runs at once, operators' own tabs untouched, updated in place, never in the webhook's way."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from multibackend.services import dashboard_tabs
from multibackend.services.webhook_auth import lookup_signature
from tests.helpers import TABS_PUBLIC_URL, WEBHOOK, doctor_checks, reconcile, run_command, wait_for

PUBLIC_URL = TABS_PUBLIC_URL
EMBED = "/api/chatwoot/webhooks/embed"
ADMIN = 7


def frame(url: str) -> list[dict[str, str]]:
    return [{"type": "frame", "url": url}]


def our_url(account_id: int, base: str = PUBLIC_URL, sig: str | None = None) -> str:
    return f"{base}{EMBED}?accountId={account_id}" + (f"&sig={sig}" if sig else "")



@pytest.fixture
def chatwoot(chatwoot_db):
    """Chatwoot with accounts 1..3 and 42, each with an administrator, and a role that has the documented grants."""
    chatwoot_db.add_accounts([(1, "One"), (2, "Two"), (3, "Three"), (42, "Acme Corp")])
    chatwoot_db.add_administrators([(1, ADMIN), (2, ADMIN), (3, ADMIN), (42, ADMIN)])
    chatwoot_db.writer_url = chatwoot_db.role_url()
    return chatwoot_db



def test_a_new_account_gets_one_tab_within_seconds(tabs_app, chatwoot):
    response = tabs_app().test_client().post(WEBHOOK, json={"id": 42, "name": "Acme Corp", "users": [{"id": ADMIN}]})
    assert response.status_code == 200
    rows = wait_for(lambda: chatwoot.dashboard_apps(42))
    [(_, account_id, title, content, user_id, created_at)] = rows
    assert (account_id, title, content, user_id) == (42, "Empresa", frame(our_url(42)), ADMIN)
    assert created_at is not None


def test_the_tab_url_is_signed_when_lookups_are(tabs_app, chatwoot):
    tabs_app(CHATWOOT_EMBED_SECRET="embed-secret").test_client().post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    rows = wait_for(lambda: chatwoot.dashboard_apps(42))
    assert rows[0][3] == frame(our_url(42, sig=lookup_signature("embed-secret", 42)))


def test_the_title_comes_from_the_setting(tabs_app, chatwoot):
    app = tabs_app(CHATWOOT_DASHBOARD_APP_TITLE="Ficha de empresa")
    with app.app_context():
        dashboard_tabs.ensure_tabs([42])
    assert chatwoot.dashboard_apps(42)[0][2] == "Ficha de empresa"


def test_repeated_deliveries_make_one_tab(tabs_app, chatwoot):
    client = tabs_app().test_client()
    for _ in range(5):
        client.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    wait_for(lambda: chatwoot.dashboard_apps(42))
    time.sleep(0.5)  # let every background pass finish
    assert len(chatwoot.dashboard_apps(42)) == 1


def test_a_concurrent_burst_of_twenty_makes_one_tab(tabs_app, chatwoot):
    app = tabs_app()
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            barrier.wait()
            assert app.test_client().post(WEBHOOK, json={"id": 42, "name": "Acme Corp"}).status_code == 200
            with app.app_context():
                dashboard_tabs.ensure_tabs([42])
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.5)
    assert errors == [] and len(chatwoot.dashboard_apps(42)) == 1


def test_reconcile_fills_every_account(tabs_app, chatwoot):
    summary = reconcile(tabs_app())
    assert summary.ok, summary.problems
    assert summary.tabs_created == 4
    assert sorted(row[1] for row in chatwoot.dashboard_apps()) == [1, 2, 3, 42]


def test_a_second_reconcile_changes_nothing(tabs_app, chatwoot):
    app = tabs_app()
    reconcile(app)
    again = reconcile(app)
    assert (again.tabs_created, again.tabs_updated) == (0, 0)
    assert len(chatwoot.dashboard_apps()) == 4


def test_an_operators_own_tab_is_never_touched(tabs_app, chatwoot):
    chatwoot.execute(
        "INSERT INTO dashboard_apps (title, content, account_id, user_id, created_at, updated_at)"
        " VALUES ('CRM', '[{\"type\": \"frame\", \"url\": \"https://crm.example/?account=42\"}]', 42, 7, now(), now())"
    )
    before = chatwoot.dashboard_apps(42)[0]
    reconcile(tabs_app())
    rows = chatwoot.dashboard_apps(42)
    assert rows[0] == before and len(rows) == 2 and rows[1][3] == frame(our_url(42))


def test_a_public_url_change_updates_the_tabs_in_place(tabs_app, chatwoot):
    reconcile(tabs_app())
    ids = [row[0] for row in chatwoot.dashboard_apps()]
    summary = reconcile(tabs_app(PUBLIC_URL="https://new-backend.example"))
    rows = chatwoot.dashboard_apps()
    assert summary.tabs_updated == 4 and [row[0] for row in rows] == ids
    assert rows[-1][3] == frame(our_url(42, base="https://new-backend.example"))


def test_a_title_change_updates_the_tabs_in_place(tabs_app, chatwoot):
    reconcile(tabs_app())
    summary = reconcile(tabs_app(CHATWOOT_DASHBOARD_APP_TITLE="Cliente"))
    assert summary.tabs_updated == 4 and {row[2] for row in chatwoot.dashboard_apps()} == {"Cliente"}


def test_a_tab_made_inside_chatwoot_is_adopted_not_duplicated(tabs_app, chatwoot):
    chatwoot.execute(
        "INSERT INTO dashboard_apps (title, content, account_id, user_id, created_at, updated_at) VALUES (%s, %s, 42, 7, now(), now())",
        ("Empresa", psycopg.types.json.Jsonb(frame(our_url(42, base="https://old-host.example")))),
    )
    summary = reconcile(tabs_app())
    assert summary.tabs_updated == 1 and len(chatwoot.dashboard_apps(42)) == 1


def test_an_account_without_an_administrator_waits(tabs_app, chatwoot):
    chatwoot.add_accounts([(50, "No admin yet")])
    summary = reconcile(tabs_app())
    assert summary.ok and chatwoot.dashboard_apps(50) == []


def test_a_locked_table_leaves_the_webhook_fast_and_reconcile_makes_the_tab(tabs_app, chatwoot):
    app = tabs_app()
    with psycopg.connect(chatwoot.url) as holder:
        holder.execute("LOCK TABLE dashboard_apps IN ACCESS EXCLUSIVE MODE")
        started = time.perf_counter()
        response = app.test_client().post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
        elapsed = time.perf_counter() - started
        time.sleep(1.5)  # the background pass gives up at its lock_timeout
    assert response.status_code == 200 and elapsed < 1.0
    assert chatwoot.dashboard_apps(42) == []
    assert reconcile(app).tabs_created == 4
    assert len(chatwoot.dashboard_apps(42)) == 1


def test_without_the_grant_the_webhook_is_unaffected(make_app, chatwoot):
    url = chatwoot.role_url(grants=("GRANT SELECT ON accounts, account_users, installation_configs, dashboard_apps TO {role}",))
    app = make_app(CHATWOOT_DATABASE_URL=url, PUBLIC_URL=PUBLIC_URL)
    response = app.test_client().post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    assert (response.status_code, response.json["data"]["created"]) == (200, True)
    time.sleep(0.5)
    assert chatwoot.dashboard_apps(42) == []


def test_without_the_grant_reconcile_names_it(make_app, chatwoot):
    url = chatwoot.role_url(grants=("GRANT SELECT ON accounts, account_users, installation_configs, dashboard_apps TO {role}",))
    summary = reconcile(make_app(CHATWOOT_DATABASE_URL=url, PUBLIC_URL=PUBLIC_URL))
    assert any("permission denied on dashboard_apps" in problem and "GRANT SELECT, INSERT, UPDATE ON dashboard_apps" in problem for problem in summary.problems)


def test_without_the_grant_the_doctor_names_the_table_and_the_grant(make_app, chatwoot):
    url = chatwoot.role_url(grants=("GRANT SELECT ON accounts, account_users, installation_configs, dashboard_apps TO {role}",))
    check = doctor_checks(make_app(CHATWOOT_DATABASE_URL=url, PUBLIC_URL=PUBLIC_URL))["Chatwoot dashboard_apps writable"]
    assert not check.ok
    assert "INSERT on dashboard_apps" in check.detail and "USAGE on sequence dashboard_apps_id_seq" in check.detail
    assert "GRANT SELECT, INSERT, UPDATE ON dashboard_apps TO" in check.fix


def test_with_the_documented_grants_the_doctor_passes(tabs_app, chatwoot):
    check = doctor_checks(tabs_app())["Chatwoot dashboard_apps writable"]
    assert check.ok, check.detail


def test_the_doctor_counts_accounts_without_the_tab(tabs_app, chatwoot):
    app = tabs_app()
    with app.app_context():
        dashboard_tabs.ensure_tabs([1])
    check = doctor_checks(app)["every Chatwoot account has the company tab"]
    assert (check.ok, check.detail) == (False, "3 Chatwoot accounts have no company tab")


def test_the_operator_dashboard_shows_the_missing_count(tabs_app, chatwoot):
    app = tabs_app()
    with app.app_context():
        dashboard_tabs.ensure_tabs([1, 2])
    data = app.test_client().get("/api/chatwoot/webhooks/dashboard/data").json["data"]
    assert data["company_tabs"]["missing"] == 2


def test_without_public_url_no_tab_is_made_and_the_doctor_says_why(make_app, chatwoot):
    app = make_app(CHATWOOT_DATABASE_URL=chatwoot.writer_url)
    app.test_client().post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    time.sleep(0.3)
    assert chatwoot.dashboard_apps(42) == []
    check = doctor_checks(app)["Chatwoot dashboard_apps writable"]
    assert not check.ok and "PUBLIC_URL" in check.detail


def test_the_command_reports_what_it_did(tabs_app, chatwoot):
    result = run_command(tabs_app(), "dashboard-apps")
    assert result.exit_code == 0, result.output
    assert "4 created, 0 updated (0 given a current administrator as owner), 0 already right, 0 skipped" in result.output


def test_the_rails_runner_script_makes_the_same_tabs(tabs_app):
    result = run_command(tabs_app(CHATWOOT_EMBED_SECRET="embed-secret", CHATWOOT_DASHBOARD_APP_TITLE="Empresa"), "dashboard-apps", "--script")
    assert result.exit_code == 0
    script = result.output
    assert f'base = "{PUBLIC_URL}{EMBED}"' in script and f'path = "{EMBED}"' in script and 'title = "Empresa"' in script
    assert 'secret = "embed-secret"' in script and "OpenSSL::HMAC.hexdigest('SHA256', secret, account.id.to_s)" in script
    assert "account.dashboard_apps.create!" in script and "ours.update!" in script
