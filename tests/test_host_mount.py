"""Mounted in a host backend: the host's database (psycopg2 or psycopg 3), its companies table, its migrations,
its error handlers and limiter stay the host's; the host hears about every tenant at least once."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from flask import Flask, jsonify, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_migrate import init as migrations_init
from flask_migrate import migrate as migrations_migrate
from flask_sqlalchemy import SQLAlchemy
from werkzeug.middleware.proxy_fix import ProxyFix
from psycopg import sql
from sqlalchemy import Integer, String, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

import multibackend
from multibackend.extensions import DATABASE_EXTENSION, own_db
from multibackend.services import doctor, lookup_cache, reconciler
from multibackend.services.delivery_spool import DEAD_LETTER_KEY, SPOOL_KEY, spool_delivery
from multibackend.services.companies import tenant_provisioned
from tests.helpers import WEBHOOK, admin_url, namespaces_state, run_command

LOOKUP = "/api/chatwoot/webhooks/company/"
DRIVERS = ("psycopg2", "psycopg")


class HostBase(DeclarativeBase):
    pass


class HostCompany(HostBase):
    """The host's own model of `companies`, as the first setup guide made it, plus a column of the host's."""

    __tablename__ = "companies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    company_id: Mapped[str] = mapped_column(String(64), unique=True)
    company_name: Mapped[str] = mapped_column(String(255))
    chatwoot_account_id: Mapped[str | None] = mapped_column(String(50), unique=True)
    plan: Mapped[str] = mapped_column(String(20), default="free", server_default="free")


class HostNote(HostBase):
    __tablename__ = "host_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(String(100))


@pytest.fixture
def host_database_url() -> Iterator[str]:
    """An empty database of the host's, with the host's tables and two rows that predate the plugin."""
    admin = make_url(admin_url())
    name = f"host_{uuid.uuid4().hex[:8]}"
    admin_text = admin.render_as_string(hide_password=False)
    with psycopg.connect(admin_text, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE companies (id SERIAL PRIMARY KEY, company_id VARCHAR(64) UNIQUE NOT NULL,"
            " company_name VARCHAR(255) NOT NULL, chatwoot_account_id VARCHAR(50) UNIQUE, plan VARCHAR(20) NOT NULL DEFAULT 'free')"
        )
        connection.execute("CREATE TABLE host_notes (id SERIAL PRIMARY KEY, text VARCHAR(100) NOT NULL)")
        connection.execute(
            "INSERT INTO companies (company_id, company_name, chatwoot_account_id, plan) VALUES"
            " ('acme_internal', 'Host Internal', NULL, 'enterprise'), ('chatwoot_77', 'Before The Plugin', '77', 'pro')"
        )
    yield url
    with psycopg.connect(admin_text, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def host_app(database_url: str, redis_url: str, driver: str = "psycopg2", **config: object) -> tuple[Flask, SQLAlchemy]:
    """A host backend with its own SQLAlchemy (not named db), error handlers, limiter and system info."""
    host = Flask(f"host_{uuid.uuid4().hex[:6]}")
    host.config.update(
        SQLALCHEMY_DATABASE_URI=make_url(database_url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False),
        REDIS_URL=redis_url,
        RATELIMIT_STORAGE_URI="memory://",
        RATELIMIT_KEY_PREFIX="host",
        **config,
    )
    database = SQLAlchemy(model_class=HostBase)
    database.init_app(host)
    Limiter(get_remote_address, app=host, default_limits=["3 per minute"])

    @host.errorhandler(HTTPException)
    def host_errors(exc):
        return jsonify({"error": exc.name, "status": exc.code}), exc.code

    @host.get("/api/system/info")
    def host_info():
        return jsonify({"name": "host", "features": ["rag"]})

    return host, database


def mounted(host_database_url: str, redis_url: str, driver: str = "psycopg2", **config: object) -> tuple[Flask, SQLAlchemy]:
    host, database = host_app(host_database_url, redis_url, driver, **config)
    multibackend.init_app(host)
    assert run_command(host, "init-db").exit_code == 0
    return host, database


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_plugin_works_on_the_hosts_database_and_driver(host_database_url, redis_url, redis_client, driver):
    host, database = mounted(host_database_url, redis_url, driver)
    client = host.test_client()
    assert client.post(WEBHOOK, json={"id": 5, "name": "Five"}).json["data"]["created"] is True
    assert client.post(WEBHOOK, json={"id": 5, "name": "Five"}).json["data"]["created"] is False
    with host.app_context():
        assert host.extensions[DATABASE_EXTENSION] is database
        assert database.engine.url.drivername == f"postgresql+{driver}"
        database.engine.dispose()


def test_one_connection_pool_the_hosts(host_database_url, redis_url, redis_client):
    host, database = mounted(host_database_url, redis_url)
    host.test_client().post(WEBHOOK, json={"id": 5, "name": "Five"})
    assert host not in own_db._app_engines
    with host.app_context():
        assert database.engine.pool.checkedin() >= 1
        database.engine.dispose()


def test_explicit_database_argument(host_database_url, redis_url, redis_client):
    host, database = host_app(host_database_url, redis_url)
    multibackend.init_app(host, db=database)
    assert host.extensions[DATABASE_EXTENSION] is database


def test_without_a_host_sqlalchemy_the_hosts_uri_is_used(host_database_url, redis_url, redis_client):
    host = Flask("host_without_sqlalchemy")
    host.config.update(SQLALCHEMY_DATABASE_URI=host_database_url.replace("postgresql://", "postgresql+psycopg://"), REDIS_URL=redis_url)
    multibackend.init_app(host)
    with host.app_context():
        assert own_db.engine.url.database == make_url(host_database_url).database
        own_db.engine.dispose()


def test_init_db_keeps_the_hosts_columns_and_rows(host_database_url, redis_url, redis_client):
    host, database = mounted(host_database_url, redis_url)
    host.test_client().post(WEBHOOK, json={"id": 5, "name": "Five"})
    with host.app_context():
        plans = dict(database.session.execute(select(HostCompany.company_id, HostCompany.plan)).all())
        database.engine.dispose()
    assert plans == {"acme_internal": "enterprise", "chatwoot_77": "pro", "chatwoot_5": "free"}


def test_a_company_that_predates_the_plugin_is_found(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    data = host.test_client().get(LOOKUP + "77").json["data"]
    assert (data["exists"], data["company_name"], data["redis_prefix"]) == (True, "Before The Plugin", "chatwoot_77:")


def test_the_hosts_own_companies_are_never_provisioned_or_announced(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    announced = []
    with host.app_context(), tenant_provisioned.connected_to(lambda sender, company: announced.append(company.company_id)):
        summary = reconciler.reconcile()
    assert summary.ok and announced == ["chatwoot_77"]
    assert redis_client.exists("acme_internal:tenant") == 0 and redis_client.exists("chatwoot_77:tenant") == 1


def test_the_hosts_model_keeps_working(host_database_url, redis_url, redis_client):
    host, database = mounted(host_database_url, redis_url)
    with host.app_context():
        database.session.add(HostCompany(company_id="host_2", company_name="Second", chatwoot_account_id=None))
        database.session.add(HostNote(text="hello"))
        database.session.commit()
        assert database.session.scalar(select(HostCompany.plan).where(HostCompany.company_id == "host_2")) == "free"
        database.engine.dispose()


def test_the_hosts_error_handlers_answer_its_own_paths(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    client = host.test_client()
    assert client.get("/api/nothing-here").json == {"error": "Not Found", "status": 404}
    assert client.get("/api/chatwoot/webhooks/nothing").json["code"] == "not_found"


def test_a_hosts_404_handler_keeps_answering_its_paths(host_database_url, redis_url, redis_client):
    host, _ = host_app(host_database_url, redis_url)
    host.register_error_handler(404, lambda exc: ({"host": "404"}, 404))
    multibackend.init_app(host)
    client = host.test_client()
    assert client.get("/elsewhere").json == {"host": "404"}
    assert client.get("/api/chatwoot/webhooks/nothing").json["code"] == "not_found"


def test_the_hosts_limiter_settings_stay_its_own(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    assert (host.config["RATELIMIT_STORAGE_URI"], host.config["RATELIMIT_KEY_PREFIX"]) == ("memory://", "host")
    assert "RATELIMIT_HEADERS_ENABLED" not in host.config


def test_system_info_is_the_hosts_with_the_feature(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    info = host.test_client().get("/api/system/info").json
    assert info["name"] == "host" and info["features"] == ["rag", "chatwoot-auto-sync"]


def test_settings_come_from_the_hosts_config(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url, CHATWOOT_WEBHOOK_SECRET="from-host-config")
    client = host.test_client()
    assert client.post(WEBHOOK, json={"id": 5, "name": "Five"}).status_code == 403
    assert client.post(WEBHOOK + "?token=from-host-config", json={"id": 5, "name": "Five"}).status_code == 200


def test_a_crash_between_commit_and_signal_is_repaired_by_reconcile(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)

    def dies(sender, company):
        raise SystemExit("the worker was killed right after the commit")

    with tenant_provisioned.connected_to(dies), pytest.raises(SystemExit):
        host.test_client().post(WEBHOOK, json={"id": 5, "name": "Five"})
    backdate_outbox(host_database_url)
    announced = []
    with host.app_context(), tenant_provisioned.connected_to(lambda sender, company: announced.append(company.company_id)):
        summary = reconciler.reconcile()
    assert summary.announced == 1  # chatwoot_5, from the outbox; chatwoot_77 was provisioned (and announced) by this run
    assert sorted(announced) == ["chatwoot_5", "chatwoot_77"]
    assert outbox_rows(host_database_url) == 0


def test_the_process_settles_its_outbox_rows_right_after_the_request(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    assert host.test_client().post(WEBHOOK, json={"id": 5, "name": "Five"}).status_code == 200
    deadline = time.monotonic() + 5
    while outbox_rows(host_database_url):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_fresh_outbox_row_is_left_to_the_process_that_wrote_it(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    with tenant_provisioned.connected_to(lambda sender, company: (_ for _ in ()).throw(SystemExit())), pytest.raises(SystemExit):
        host.test_client().post(WEBHOOK, json={"id": 5, "name": "Five"})
    with host.app_context():
        assert reconciler.reconcile().announced == 0  # chatwoot_5's outbox row is fresh: its process may still send it
    assert outbox_rows(host_database_url) == 1


def test_a_receiver_may_use_the_hosts_session_and_commit(host_database_url, redis_url, redis_client):
    host, database = mounted(host_database_url, redis_url)

    def write_a_note(sender, company):
        database.session.add(HostNote(text=f"index {company.vectorstore_index}"))
        database.session.commit()

    with tenant_provisioned.connected_to(write_a_note):
        assert host.test_client().post(WEBHOOK, json={"id": 5, "name": "Five"}).json["data"]["provisioning_status"] == "ready"
    with psycopg.connect(host_database_url) as connection:
        assert connection.execute("SELECT text FROM host_notes").fetchall() == [("index chatwoot_5_documents",)]


def test_migrate_autogenerate_proposes_nothing_for_the_plugin(host_database_url, redis_url, redis_client, tmp_path):
    host, database = host_app(host_database_url, redis_url)
    Migrate(host, database)
    multibackend.init_app(host)
    assert run_command(host, "init-db").exit_code == 0
    directory = str(tmp_path / "migrations")
    with host.app_context(), logging_left_as_it_was():  # Alembic's env.py reconfigures logging for its CLI
        migrations_init(directory)
        migrations_migrate(directory, message="after mounting")
        database.engine.dispose()
    revision = "\n".join(path.read_text() for path in Path(directory, "versions").glob("*.py"))
    operations = [line.strip() for line in revision.splitlines() if line.strip().startswith("op.")]
    assert operations == [], operations


@contextlib.contextmanager
def logging_left_as_it_was() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = {name: logger.disabled for name, logger in logging.root.manager.loggerDict.items() if isinstance(logger, logging.Logger)}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, logger in logging.root.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.disabled = loggers.get(name, False)


def backdate_outbox(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("UPDATE chatwoot_tenant_announcements SET created_at = %s", (datetime.now(timezone.utc) - timedelta(minutes=5),))


def outbox_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        return connection.execute("SELECT count(*) FROM chatwoot_tenant_announcements").fetchone()[0]


def test_the_plugins_limiter_never_counts_the_hosts_routes(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)

    @host.get("/api/chat")
    def chat():
        return {"ok": True}

    host.test_client().get("/api/chat")
    assert [key for key in redis_client.scan_iter("*multibackend:ratelimit*")] == []


def test_the_doctor_leaves_the_hosts_own_companies_out(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    with psycopg.connect(host_database_url, autocommit=True) as connection:
        connection.execute("UPDATE companies SET updated_at = now() - interval '1 hour' WHERE chatwoot_account_id IS NULL")
    with host.app_context():
        reconciler.reconcile()
        checks = {check.name: check for check in doctor.run_checks()}
    assert checks["nothing stuck in pending"].ok, checks["nothing stuck in pending"].detail


def test_a_column_the_database_refuses_fails_the_delivery_without_spooling_it(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    with psycopg.connect(host_database_url, autocommit=True) as connection:
        connection.execute("ALTER TABLE companies ADD COLUMN region VARCHAR(20) NOT NULL DEFAULT 'eu'")
        connection.execute("ALTER TABLE companies ALTER COLUMN region DROP DEFAULT")
    response = host.test_client().post(WEBHOOK, json={"id": 5, "name": "Five"})
    assert (response.status_code, response.json["code"]) == (503, "service_unavailable")
    assert redis_client.llen(SPOOL_KEY) == 0
    assert namespaces_state(redis_client) == {"registry": {}}  # its namespace, written first, is gone again
    metrics = host.test_client().get("/api/chatwoot/webhooks/metrics").json["data"]
    assert metrics["recent_errors"][0]["error"] == "database refused the company (IntegrityError)"


def test_a_spooled_delivery_the_database_refuses_goes_to_the_dead_letters(host_database_url, redis_url, redis_client):
    host, _ = mounted(host_database_url, redis_url)
    with psycopg.connect(host_database_url, autocommit=True) as connection:
        connection.execute("ALTER TABLE companies ADD CONSTRAINT no_666 CHECK (chatwoot_account_id IS DISTINCT FROM '666')")
    with host.app_context():
        spool_delivery(666, "Refused")
        spool_delivery(5, "Five")
        summary = reconciler.reconcile()
    assert summary.replayed == 1 and redis_client.llen(SPOOL_KEY) == 0
    assert [json.loads(raw)["id"] for raw in redis_client.lrange(DEAD_LETTER_KEY, 0, -1)] == [666]


def test_the_hosts_hooks_see_every_lookup_even_held_ones(host_database_url, redis_url, redis_client):
    """Answering held lookups before Flask is the standalone service's: a host's hooks run for all of its requests."""
    host, _ = host_app(host_database_url, redis_url)
    hooked: list[str] = []
    host.before_request(lambda: hooked.append(request.path) if "/company/" in request.path else None)
    multibackend.init_app(host)
    assert run_command(host, "init-db").exit_code == 0
    client = host.test_client()
    client.post("/api/chatwoot/webhooks/account-created", json={"id": 42, "name": "Acme Corp"})
    assert client.get("/api/chatwoot/webhooks/company/42").json["data"]["exists"] is True
    with host.app_context():
        assert lookup_cache.cached_answer(42) is not None  # now held
    assert client.get("/api/chatwoot/webhooks/company/42").json["data"]["exists"] is True
    assert len(hooked) == 2  # the held one was dispatched by the host's Flask too


def test_a_host_may_answer_held_lookups_first(host_database_url, redis_url, redis_client):
    host, _ = host_app(host_database_url, redis_url)
    hooked: list[str] = []
    host.before_request(lambda: hooked.append(request.path) if "/company/" in request.path else None)
    multibackend.init_app(host)
    multibackend.answer_held_lookups_first(host)
    assert run_command(host, "init-db").exit_code == 0
    client = host.test_client()
    client.post("/api/chatwoot/webhooks/account-created", json={"id": 42, "name": "Acme Corp"})
    answers = [client.get("/api/chatwoot/webhooks/company/42").json["data"]["company_name"] for _ in range(3)]
    assert answers == ["Acme Corp"] * 3 and len(hooked) == 1  # only the first, which was read and then held


def test_held_lookups_first_follows_the_hosts_prefix_and_refuses_to_go_outside_its_middleware(host_database_url, redis_url, redis_client):
    host, _ = host_app(host_database_url, redis_url)
    multibackend.init_app(host, url_prefix="/integrations/chatwoot/")
    multibackend.answer_held_lookups_first(host)
    assert run_command(host, "init-db").exit_code == 0
    client = host.test_client()
    client.post("/integrations/chatwoot/account-created", json={"id": 42, "name": "Acme Corp"})
    assert [client.get("/integrations/chatwoot/company/42").status_code for _ in range(2)] == [200, 200]
    assert client.get("/integrations/chatwoot//company/42").status_code == 404  # as Flask routes it, held or not
    wrapped, _ = host_app(host_database_url, redis_url)
    multibackend.init_app(wrapped)
    wrapped.wsgi_app = ProxyFix(wrapped.wsgi_app)
    with pytest.raises(RuntimeError, match="before app.wsgi_app is wrapped"):
        multibackend.answer_held_lookups_first(wrapped)
