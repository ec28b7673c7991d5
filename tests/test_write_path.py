"""The one write path for companies: every change commits once, then publishes its lookup answer and announces
what became ready; a change that bypasses it is refused, or caught by the statement watch."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from multibackend.extensions import db
from multibackend.models import Company
from multibackend.services.companies import WriteOutsideWritePath, company_row, company_write, tenant_provisioned
from multibackend.services.tenant_provisioning import provision_account
from tests.helpers import CompanyWriteWatch, count_rows, dead_redis_url

PACKAGE = Path(__file__).resolve().parent.parent / "multibackend"


def cached_answer(app, account_id):
    """What the lookup answers now (a held answer included: publish must have dropped a stale one)."""
    return app.test_client().get(f"/api/chatwoot/webhooks/company/{account_id}").json["data"]


def company_of(account_id):
    return db.session.scalar(select(Company).where(Company.chatwoot_account_id == str(account_id)))


def test_a_rename_is_published_right_after_its_commit(app, redis_client):
    with app.app_context():
        provision_account(42, "Acme Corp")
        assert cached_answer(app, 42)["company_name"] == "Acme Corp"  # now held by this worker
        with company_write():
            company_of(42).rename("Acme Renamed")
        assert cached_answer(app, 42)["company_name"] == "Acme Renamed"


def test_an_insert_is_announced_once_and_found_by_the_next_lookup(app, redis_client):
    announced = []
    with app.app_context(), tenant_provisioned.connected_to(lambda sender, company: announced.append(company.company_id)):
        with company_write() as write:
            inserted = write.insert_if_absent([company_row(7, "Seven"), company_row(8, "Eight")])
        with company_write() as again:
            repeated = again.insert_if_absent([company_row(7, "Seven")])
    assert [company.company_id for company in inserted] == ["chatwoot_7", "chatwoot_8"]
    assert repeated == [] and announced == ["chatwoot_7", "chatwoot_8"]
    assert cached_answer(app, 8)["company_id"] == "chatwoot_8"


def test_an_insert_publishes_no_invalidation_a_rename_does(app, redis_client):
    from multibackend.services.lookup_cache import INVALIDATION_CHANNEL

    listener = redis_client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(INVALIDATION_CHANNEL)
    listener.get_message(timeout=1.0)
    with app.app_context():
        provision_account(42, "Acme Corp")  # no worker can hold an answer for a company that did not exist
        with company_write():
            company_of(42).rename("Renamed")
    assert listener.get_message(timeout=1.0)["data"] == "42"
    assert listener.get_message(timeout=0.2) is None
    listener.close()


def test_a_company_whose_services_fail_owes_no_announcement_and_its_sync_keeps_the_error(make_app, clean_database):
    client = make_app(REDIS_URL=dead_redis_url()).test_client()
    assert client.post("/api/chatwoot/webhooks/account-created", json={"id": 42, "name": "Acme"}).json["data"]["provisioning_status"] == "pending"
    assert count_rows(clean_database, "chatwoot_tenant_announcements") == 0
    assert count_rows(clean_database, "chatwoot_sync_events WHERE created AND error LIKE 'Redis unavailable%'") == 1


def test_nothing_is_owed_while_no_receiver_is_connected(make_app, clean_database):
    client = make_app().test_client()
    assert not tenant_provisioned.receivers
    client.post("/api/chatwoot/webhooks/account-created", json={"id": 1, "name": "One"})
    assert count_rows(clean_database, "chatwoot_tenant_announcements") == 0
    with tenant_provisioned.connected_to(lambda sender, company: (_ for _ in ()).throw(SystemExit())), pytest.raises(SystemExit):
        client.post("/api/chatwoot/webhooks/account-created", json={"id": 2, "name": "Two"})
    assert count_rows(clean_database, "chatwoot_tenant_announcements") == 1  # owed: a receiver was connected


def test_only_companies_that_became_ready_are_announced(app):
    announced = []
    with app.app_context(), tenant_provisioned.connected_to(lambda sender, company: announced.append(company.company_id)):
        provision_account(42, "Acme Corp")
        with company_write():
            company_of(42).rename("Still ready")
        with company_write():
            company_of(42).record_failed_attempt("boom", max_attempts=5, backoff_seconds=30)
        with company_write():
            company_of(42).mark_ready()
    assert announced == ["chatwoot_42", "chatwoot_42"]


def test_a_failing_receiver_makes_the_company_pending_and_publishes_that(app, redis_client):
    def broken(sender, company):
        raise RuntimeError("vector store down")

    with app.app_context(), tenant_provisioned.connected_to(broken):
        with company_write() as write:
            write.insert_if_absent([company_row(9, "Nine")])
    assert write.announced == [] and [company.company_id for company in write.unannounced] == ["chatwoot_9"]
    assert cached_answer(app, 9)["provisioning_status"] == "pending"


def test_nothing_is_published_when_the_block_fails(app, redis_client):
    with app.app_context():
        provision_account(42, "Acme Corp")
        with pytest.raises(ZeroDivisionError), company_write():
            company_of(42).rename("Never committed")
            1 / 0
        assert company_of(42).company_name == "Acme Corp"
    assert cached_answer(app, 42)["company_name"] == "Acme Corp"


def test_a_dry_run_writes_and_publishes_nothing(app, redis_client):
    with app.app_context():
        provision_account(42, "Acme Corp")
        with company_write(dry_run=True):
            company_of(42).rename("Dry")
        db.session.expire_all()
        assert company_of(42).company_name == "Acme Corp"
    assert cached_answer(app, 42)["company_name"] == "Acme Corp"


def test_an_orm_change_outside_the_write_path_is_refused(app):
    with app.app_context():
        provision_account(42, "Acme Corp")
        company_of(42).rename("Sneaky")
        with pytest.raises(WriteOutsideWritePath):
            db.session.commit()
        db.session.rollback()
        assert company_of(42).company_name == "Acme Corp"


@pytest.mark.parametrize("inside_the_write_path", [False, True])
def test_a_bulk_update_is_refused(app, inside_the_write_path):
    with app.app_context():
        provision_account(42, "Acme Corp")
        with pytest.raises(WriteOutsideWritePath):
            if inside_the_write_path:
                with company_write():
                    db.session.execute(update(Company).values(company_name="Bulk"))
            else:
                db.session.execute(update(Company).values(company_name="Bulk"))
        db.session.rollback()
        assert company_of(42).company_name == "Acme Corp"


def test_the_statement_watch_catches_raw_sql_that_bypasses_the_write_path(app, company_write_watch):
    with app.app_context(), CompanyWriteWatch() as watch:
        provision_account(42, "Acme Corp")
        db.session.execute(text("UPDATE companies SET company_name = 'Raw'"))
        db.session.rollback()
    assert len(watch.violations) == 1 and watch.violations[0].startswith("UPDATE companies")
    company_write_watch.violations.clear()  # this test's violation is on purpose


def test_write_blocks_do_not_nest(app):
    with app.app_context(), company_write(), pytest.raises(RuntimeError), company_write():
        pass


@pytest.mark.parametrize("call", ["lookup_cache.publish(", "tenant_provisioned.send("])
def test_one_place_publishes_lookups_and_announces_tenants(call):
    places = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if call in line
    ]
    assert places and all(place.startswith("services/companies.py:") for place in places) and len(places) == 1, places
