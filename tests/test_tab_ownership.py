"""Chatwoot's database decides who owns a company tab and where one may be: a tab only in an account Chatwoot has,
owned by a current administrator of it, whatever a delivery says; re-owned when Chatwoot deletes or demotes its
owner; and every row we write is one Chatwoot's own DashboardApp model accepts (its rules, stated below)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import psycopg
import pytest

from multibackend.services import dashboard_tabs
from tests.helpers import ROOT, TABS_PUBLIC_URL, WEBHOOK, doctor_checks, reconcile, run_command, wait_for

PUBLIC_URL = TABS_PUBLIC_URL
ADMIN, OTHER_ADMIN, AGENT = 7, 8, 9
STAND_INS = ROOT / "tests" / "fixtures" / "chatwoot_stand_ins.rb"


def chatwoot_model_refuses(row: tuple[Any, ...], accounts: set[int], administrators: dict[int, set[int]]) -> list[str]:
    """What Chatwoot v4.15's DashboardApp model (and our rule of ownership) says of a dashboard_apps row
    (id, account_id, title, content, user_id, created_at): the errors it would give, none when it accepts it."""
    _, account_id, title, content, user_id, created_at = row
    errors = []
    if account_id not in accounts:
        errors.append("Account must exist")
    if user_id is None:
        errors.append("User must exist")
    elif user_id not in administrators.get(account_id, set()):
        errors.append("owner is not an administrator of the account")
    if not title or len(title) > 255:
        errors.append("Title is too long (maximum is 255 characters)" if title else "Title can't be blank")
    frames_ok = isinstance(content, list) and content and all(
        isinstance(item, dict) and item.get("type") == "frame"
        and isinstance(item.get("url"), str) and item["url"].startswith(("http://", "https://")) and " " not in item["url"]
        for item in content
    )
    if not frames_ok:
        errors.append("Content : Invalid data")
    if created_at is None:
        errors.append("created_at can't be null")
    return errors



@pytest.fixture
def chatwoot(chatwoot_db):
    """Accounts 1..4 with administrator 7; account 2 also has administrator 8, account 3 an agent 9."""
    chatwoot_db.add_accounts([(1, "One"), (2, "Two"), (3, "Three"), (4, "Four")])
    chatwoot_db.add_administrators([(1, ADMIN), (2, ADMIN), (3, ADMIN), (4, ADMIN), (2, OTHER_ADMIN)])
    chatwoot_db.execute("INSERT INTO users (id, name, email, type) VALUES (%s, 'Agent', 'agent@example.com', 'User')", (AGENT,))
    chatwoot_db.execute("INSERT INTO account_users (account_id, user_id, role) VALUES (3, %s, 0)", (AGENT,))
    chatwoot_db.writer_url = chatwoot_db.role_url()
    return chatwoot_db



def chatwoot_state(chatwoot) -> tuple[set[int], dict[int, set[int]]]:
    with psycopg.connect(chatwoot.url) as connection:
        accounts = {row[0] for row in connection.execute("SELECT id FROM accounts")}
        administrators: dict[int, set[int]] = {}
        for account_id, user_id in connection.execute(
            "SELECT au.account_id, au.user_id FROM account_users au JOIN users u ON u.id = au.user_id WHERE au.role = 1"
        ):
            administrators.setdefault(account_id, set()).add(user_id)
    return accounts, administrators


def every_row_accepted(chatwoot) -> dict[int, list[str]]:
    accounts, administrators = chatwoot_state(chatwoot)
    return {row[0]: errors for row in chatwoot.dashboard_apps() if (errors := chatwoot_model_refuses(row, accounts, administrators))}


def delete_user(chatwoot, user_id: int, keep_account_users: bool = False) -> None:
    """What Chatwoot does when a user is deleted: its dashboard apps are kept with user_id NULL (nullify), its
    account_users go (destroy_async: a moment later, or not yet with keep_account_users)."""
    chatwoot.execute("UPDATE dashboard_apps SET user_id = NULL WHERE user_id = %s", (user_id,))
    if not keep_account_users:
        chatwoot.execute("DELETE FROM account_users WHERE user_id = %s", (user_id,))
    chatwoot.execute("DELETE FROM users WHERE id = %s", (user_id,))


# ---- a delivery never writes what Chatwoot does not confirm ---------------------------------------------------


@pytest.mark.parametrize("users", [[{"id": -7}], [{"id": ADMIN}], [{"id": 2**70}], []], ids=["unknown", "real", "huge", "none"])
def test_a_delivery_for_an_account_chatwoot_does_not_have_writes_nothing_into_chatwoot(tabs_app, chatwoot, users):
    response = tabs_app().test_client().post(WEBHOOK, json={"id": 777777, "name": "Ghost", "users": users})
    assert response.status_code in (200, 400)
    time.sleep(0.5)
    assert chatwoot.dashboard_apps() == []


@pytest.mark.parametrize("hint", [-7, OTHER_ADMIN, AGENT, 2**70], ids=["unknown", "admin-of-another-account", "agent", "huge"])
def test_a_delivery_naming_an_owner_chatwoot_does_not_confirm_gets_a_real_administrator(tabs_app, chatwoot, hint):
    tabs_app().test_client().post(WEBHOOK, json={"id": 3, "name": "Three", "users": [{"id": hint}]})
    [row] = wait_for(lambda: chatwoot.dashboard_apps(3))
    assert row[4] == ADMIN and every_row_accepted(chatwoot) == {}


def test_a_delivery_may_choose_its_owner_among_the_accounts_administrators(tabs_app, chatwoot):
    tabs_app().test_client().post(WEBHOOK, json={"id": 2, "name": "Two", "users": [{"id": OTHER_ADMIN}]})
    assert wait_for(lambda: chatwoot.dashboard_apps(2))[0][4] == OTHER_ADMIN


def test_a_bad_hint_never_fails_the_other_accounts_of_its_batch(tabs_app, chatwoot):
    app = tabs_app()
    with app.app_context():
        changes = dashboard_tabs.ensure_tabs([1, 2, 777777], {1: [2**70], 777777: [-7]})
    assert sorted(changes.created) == [1, 2] and changes.skipped == {777777: dashboard_tabs.NO_ACCOUNT}
    assert every_row_accepted(chatwoot) == {}


# ---- Chatwoot deletes or demotes a tab's owner --------------------------------------------------------------


def test_a_deleted_owner_is_replaced_by_the_other_administrator_on_the_next_reconcile(tabs_app, chatwoot):
    app = tabs_app()
    reconcile(app)
    delete_user(chatwoot, ADMIN)
    assert chatwoot.dashboard_apps(2)[0][4] is None and every_row_accepted(chatwoot)
    summary = reconcile(app)
    assert summary.tabs_reowned == 1 and "1 given a current administrator as owner" in summary.as_line()
    assert chatwoot.dashboard_apps(2)[0][4] == OTHER_ADMIN
    refused = every_row_accepted(chatwoot)
    assert set(refused) == {row[0] for row in chatwoot.dashboard_apps() if row[1] in (1, 3, 4)}  # no administrator left


def test_an_owner_deleted_a_moment_ago_is_not_chosen_again(tabs_app, chatwoot):
    app = tabs_app()
    reconcile(app)
    delete_user(chatwoot, ADMIN, keep_account_users=True)  # its account_users rows are not yet gone
    reconcile(app)
    assert chatwoot.dashboard_apps(2)[0][4] == OTHER_ADMIN


def test_a_demoted_owner_is_replaced(tabs_app, chatwoot):
    app = tabs_app()
    reconcile(app)
    chatwoot.execute("UPDATE account_users SET role = 0 WHERE account_id = 2 AND user_id = %s", (ADMIN,))
    assert reconcile(app).tabs_reowned == 1
    assert chatwoot.dashboard_apps(2)[0][4] == OTHER_ADMIN and every_row_accepted(chatwoot) == {}


def test_an_account_left_without_an_administrator_is_skipped_and_reported(tabs_app, chatwoot, caplog):
    app = tabs_app()
    reconcile(app)
    delete_user(chatwoot, ADMIN)
    before = chatwoot.dashboard_apps(1)
    summary = reconcile(app)
    assert summary.ok and chatwoot.dashboard_apps(1) == before
    assert "Chatwoot accounts skipped, no administrator in account_users" in caplog.text
    result = run_command(app, "dashboard-apps")
    assert "3 skipped" in result.output and "accounts 1, 3, 4" in result.output


def test_the_doctor_names_the_tabs_chatwoot_would_refuse_and_the_fix(tabs_app, chatwoot):
    app = tabs_app()
    reconcile(app)
    assert doctor_checks(app)["company tabs pass Chatwoot's validation"].ok
    chatwoot.execute("UPDATE account_users SET role = 0 WHERE account_id = 2 AND user_id = %s", (ADMIN,))
    chatwoot.execute("DELETE FROM accounts WHERE id = 4")
    check = doctor_checks(app)["company tabs pass Chatwoot's validation"]
    assert not check.ok
    assert "account 2: its owner (user 7) is not an administrator of the account" in check.detail
    assert "account 4: Chatwoot no longer has this account" in check.detail
    [orphan] = [row[0] for row in chatwoot.dashboard_apps(4)]
    assert "reconcile" in check.fix and f"DELETE FROM dashboard_apps WHERE id IN ({orphan})" in check.fix
    reconcile(app)
    assert "account 2" not in doctor_checks(app)["company tabs pass Chatwoot's validation"].detail


# ---- what we write stays inside the model's rules -----------------------------------------------------------


def test_every_row_written_is_one_chatwoots_model_accepts(tabs_app, chatwoot):
    app = tabs_app(CHATWOOT_DASHBOARD_APP_TITLE="T" * 255, CHATWOOT_EMBED_SECRET="embed-secret")
    reconcile(app)
    assert len(chatwoot.dashboard_apps()) == 4 and every_row_accepted(chatwoot) == {}
    with psycopg.connect(chatwoot.url) as connection:
        skew = connection.execute("SELECT max(abs(extract(epoch FROM (created_at - (now() AT TIME ZONE 'UTC')))))"
                                  " FROM dashboard_apps").fetchone()[0]
    assert skew < 60  # timestamps in UTC, as Rails writes them


@pytest.mark.parametrize(("title", "url", "refused"), [
    ("Empresa", "https://backend.example/api/chatwoot/webhooks/embed?accountId=1", False),
    ("E" * 256, "https://backend.example/x", True),
    ("", "https://backend.example/x", True),
    ("Empresa", "backend.example/x", True),
    ("Empresa", "javascript:alert(1)", True),
    ("Empresa", "https://backend .example/x", True),
])
def test_a_tab_is_checked_against_the_models_rules_before_it_is_written(title, url, refused):
    tab = dashboard_tabs.Tab(1, title, url)
    assert (tab.refused_because() is not None) is refused
    assert bool(chatwoot_model_refuses((0, 1, title, tab.content, ADMIN, "now"), {1}, {1: {ADMIN}})) is refused


# ---- the --script path ------------------------------------------------------------------------------------


def run_script(app, tmp_path, world: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The `dashboard-apps --script` program, run by Ruby against stand-ins of Chatwoot's models
    (tests/fixtures/chatwoot_stand_ins.rb): what it printed, and the dashboard apps it left."""
    script = tmp_path / "tabs.rb"
    script.write_text(run_command(app, "dashboard-apps", "--script").output)
    (tmp_path / "world.json").write_text(json.dumps(world))
    completed = subprocess.run(["ruby", "-r", str(STAND_INS), str(script)], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "WORLD": str(tmp_path / "world.json"), "RESULT": str(tmp_path / "result.json")})
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads((tmp_path / "result.json").read_text())


def test_the_script_reowns_skips_and_goes_on_past_a_broken_account(tabs_app, tmp_path):
    ours = f"{PUBLIC_URL}/api/chatwoot/webhooks/embed?accountId="
    world = {
        "users": [ADMIN, OTHER_ADMIN, AGENT],
        "accounts": [
            {"id": 1, "account_users": [{"id": 1, "user_id": ADMIN, "role": 1}]},
            {"id": 2, "account_users": [{"id": 2, "user_id": ADMIN, "role": 0}, {"id": 3, "user_id": OTHER_ADMIN, "role": 1}],
             "dashboard_apps": [{"id": 20, "title": "Empresa", "user_id": None, "content": [{"type": "frame", "url": f"{ours}2"}]}]},
            {"id": 3, "broken": True, "account_users": [{"id": 4, "user_id": ADMIN, "role": 1}]},
            {"id": 4, "account_users": [{"id": 5, "user_id": AGENT, "role": 0}]},
            {"id": 5, "account_users": [{"id": 6, "user_id": 99, "role": 1}, {"id": 7, "user_id": ADMIN, "role": 1}]},
        ],
    }
    output, apps = run_script(tabs_app(), tmp_path, world)
    owners = {app["account_id"]: app["user_id"] for app in apps}
    assert owners == {1: ADMIN, 2: OTHER_ADMIN, 5: ADMIN}  # 5: its first administrator (user 99) no longer exists
    assert all(app["valid"] for app in apps)
    assert "2 created, 1 updated (1 given a current administrator as owner), 1 skipped, 1 failed" in output
    assert "account 4: skipped, no administrator to own the tab" in output and "account 3: failed" in output
    again, _ = run_script(tabs_app(), tmp_path, {**world, "accounts": [{**account, "dashboard_apps": [a for a in apps if a["account_id"] == account["id"]]} for account in world["accounts"]]})
    assert "0 created, 0 updated" in again
