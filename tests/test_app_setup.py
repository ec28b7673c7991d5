"""Start-up: bad settings fail fast, embedded SQLite works alone, system info advertises the feature, a host keeps its own answers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from flask import Flask, jsonify, request

from multibackend import create_app, init_app, with_chatwoot_info
from multibackend.config import ConfigError, read_settings, sqlalchemy_database_uri
from multibackend.extensions import db
from tests.helpers import ROOT, WEBHOOK, count_rows

INFO = "/api/system/info"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgresql://u:p@h/d?sslmode=require", "postgresql+psycopg://u:p@h/d?sslmode=require"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
    ],
)
def test_database_url_styles_are_read_with_psycopg(url, expected):
    assert sqlalchemy_database_uri(url, "/tmp/unused") == expected


def test_no_database_url_means_an_embedded_sqlite_file(tmp_path):
    assert sqlalchemy_database_uri("", str(tmp_path)) == f"sqlite:///{tmp_path}/multibackend.db"


@pytest.mark.parametrize(
    "settings",
    [
        {"DATABASE_URL": "mysql://x"},
        {"CHATWOOT_WEBHOOK_MAX_BODY_BYTES": "lots"},
        {"CHATWOOT_SIGNATURE_TOLERANCE_SECONDS": "-5"},
        {"REDIS_TIMEOUT_SECONDS": "0"},
    ],
)
def test_unusable_settings_fail_at_start_up(settings):
    with pytest.raises(ConfigError):
        create_app(settings)


def test_the_webhook_secret_is_a_list_for_rotation():
    assert read_settings({"CHATWOOT_WEBHOOK_SECRET": " old , new,, "})["CHATWOOT_WEBHOOK_SECRETS"] == ("old", "new")
    assert read_settings({})["CHATWOOT_WEBHOOK_SECRETS"] == ()


def test_environment_is_read_and_overrides_win(monkeypatch):
    monkeypatch.setenv("CHATWOOT_SIGNATURE_TOLERANCE_SECONDS", "120")
    monkeypatch.setenv("CHATWOOT_WEBHOOK_MAX_BODY_BYTES", "2048")
    settings = read_settings(os.environ, {"CHATWOOT_WEBHOOK_MAX_BODY_BYTES": 4096})
    assert (settings["CHATWOOT_SIGNATURE_TOLERANCE_SECONDS"], settings["CHATWOOT_WEBHOOK_MAX_BODY_BYTES"]) == (120, 4096)


def test_embedded_sqlite_default_serves_the_whole_flow(tmp_path):
    app = Flask("standalone_sqlite", instance_path=str(tmp_path))
    app.config.update(DATABASE_URL="", REDIS_URL="")
    init_app(app)
    client = app.test_client()
    first = client.post(WEBHOOK, json={"id": 42, "name": "Acme Corp", "event": "account_created", "users": []})
    again = client.post(WEBHOOK, json={"id": 42, "name": "Acme Corp"})
    assert (first.json["data"]["created"], again.json["data"]["created"]) == (True, False)
    assert first.json["data"]["redis"] == "skipped"
    assert client.get("/api/chatwoot/webhooks/company/42").json["data"]["created_at"].endswith("Z")
    metrics = client.get("/api/chatwoot/webhooks/metrics").json["data"]
    assert (metrics["total_syncs"], metrics["success_rate"]) == (2, 100.0)
    assert metrics["last_sync"].endswith("Z")
    assert (tmp_path / "multibackend.db").exists()
    with app.app_context():
        db.engine.dispose()


def test_system_info_advertises_the_feature(make_app):
    body = make_app().test_client().get(INFO).json
    assert body["success"] is True
    info = body["data"]
    assert info["name"] == "multibackend" and info["version"]
    assert info["endpoints"]["chatwoot_webhooks"] == "/api/chatwoot/webhooks"
    assert "chatwoot-auto-sync" in info["features"]
    assert info["chatwoot_webhook_authentication"]["enabled"] is False
    assert "not set" in info["chatwoot_webhook_authentication"]["warning"]


def test_system_info_says_when_authentication_is_on(make_app):
    auth = make_app(CHATWOOT_WEBHOOK_SECRET="s").test_client().get(INFO).json["data"]["chatwoot_webhook_authentication"]
    assert auth == {"enabled": True, "methods": ["token", "basic", "hmac-sha256"], "warning": None}


@pytest.fixture
def host_app(clean_database, redis_url):
    """A host backend with its own info view and /api/chat, the Chatwoot auto-sync mounted with init_app."""
    host = Flask("host_backend")
    host.config.update(DATABASE_URL=clean_database, REDIS_URL=redis_url)

    @host.get(INFO)
    def host_info():
        return jsonify({"name": "host", "endpoints": {"chat": "/api/chat"}, "features": ["rag"]})

    @host.get("/api/chat")
    def chat():
        return {"ok": True}

    init_app(host)
    yield host
    with host.app_context():
        db.engine.dispose()


def test_host_info_gains_the_chatwoot_entries(host_app):
    info = host_app.test_client().get(INFO).json
    assert info["name"] == "host"
    assert info["endpoints"] == {"chat": "/api/chat", "chatwoot_webhooks": "/api/chatwoot/webhooks"}
    assert info["features"] == ["rag", "chatwoot-auto-sync"]


def test_host_app_serves_the_webhook(host_app, clean_database):
    assert host_app.test_client().post(WEBHOOK, json={"id": 5, "name": "Host Co"}).json["data"]["created"] is True
    assert count_rows(clean_database, "companies") == 1


def test_host_404_pages_stay_the_hosts_own(host_app):
    client = host_app.test_client()
    assert client.get("/api/nothing-here").status_code == 404
    assert client.get("/api/nothing-here").content_type.startswith("text/html")


def test_404s_under_the_blueprint_are_json(host_app):
    assert host_app.test_client().get("/api/chatwoot/webhooks/nothing").json["code"] == "not_found"


@pytest.fixture
def late_host_app(clean_database, redis_url):
    """A host that registers its info view after init_app (opting in with the decorator) and another one without."""
    host = Flask("host_registers_later")
    host.config.update(DATABASE_URL=clean_database, REDIS_URL=redis_url, CHATWOOT_WEBHOOK_SECRET="s")
    init_app(host)

    @host.get(INFO)
    @with_chatwoot_info
    def host_info():
        return {"success": True, "data": {"name": "host", "features": ["rag"]}}

    @host.get("/api/plain-info")
    def plain_info():  # registered after init_app without the decorator: left alone
        return {"name": "host", "features": ["rag"]}

    yield host
    with host.app_context():
        db.engine.dispose()


def test_host_info_view_registered_later_opts_in_with_the_decorator(late_host_app):
    info = late_host_app.test_client().get(INFO).json["data"]
    assert info["features"] == ["rag", "chatwoot-auto-sync"]
    assert info["endpoints"] == {"chatwoot_webhooks": "/api/chatwoot/webhooks"}
    assert info["chatwoot_webhook_authentication"]["enabled"] is True


def test_a_view_registered_later_without_the_decorator_is_left_alone(late_host_app):
    assert late_host_app.test_client().get("/api/plain-info").json == {"name": "host", "features": ["rag"]}


INFO_SHAPED_BODY = {"name": "host", "endpoints": {"chat": "/api/chat"}, "features": ["rag"]}


@pytest.fixture
def info_shaped_host(clean_database, redis_url, caplog):
    """A host whose info view answers 503 unless ?ok=1, with other answers of the same shape: GET /api/chat and
    POST on the info path. init_app runs with DEBUG logs captured."""
    host = Flask("host_with_other_json")
    host.config.update(DATABASE_URL=clean_database, REDIS_URL=redis_url)

    @host.get(INFO)
    def host_info():
        return jsonify(INFO_SHAPED_BODY) if request.args.get("ok") else (jsonify(INFO_SHAPED_BODY), 503)

    @host.get("/api/chat")
    def chat():  # the same shape as an info answer, at another path
        return jsonify(INFO_SHAPED_BODY)

    @host.post(INFO)
    def post_info():
        return jsonify(INFO_SHAPED_BODY)

    caplog.set_level(logging.DEBUG, logger="multibackend")
    init_app(host)
    yield host
    with host.app_context():
        db.engine.dispose()


def test_init_app_logs_that_the_host_info_now_includes_the_entries(info_shaped_host, caplog):
    logged_by_init_app = caplog.get_records("setup")
    assert any("now includes the Chatwoot auto-sync entries" in record.getMessage() for record in logged_by_init_app)


def test_only_successful_info_answers_of_the_host_are_extended(info_shaped_host):
    client = info_shaped_host.test_client()
    assert client.get("/api/chat").json == INFO_SHAPED_BODY
    assert client.post(INFO).json == INFO_SHAPED_BODY
    assert client.get(INFO).json == INFO_SHAPED_BODY  # an error answer (503) passes untouched
    assert client.get(INFO + "?ok=1").json["features"] == ["rag", "chatwoot-auto-sync"]


def test_the_host_info_view_is_never_wrapped_twice(info_shaped_host):
    wrapped = info_shaped_host.view_functions["host_info"]
    assert with_chatwoot_info(wrapped) is wrapped


def run_cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


def test_init_db_command_is_idempotent(database_url):
    for _ in range(2):
        result = run_cli("chatwoot", "init-db", env={"DATABASE_URL": database_url, "REDIS_URL": ""})
        assert result.returncode == 0, result.stderr
        assert "Schema up to date on PostgreSQL: nothing to do" in result.stdout


def test_init_db_command_on_sqlite(tmp_path):
    result = run_cli("chatwoot", "init-db", env={"DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "REDIS_URL": ""})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli.db").exists()


def test_procfile_runs_init_db_on_release_and_gunicorn_on_web():
    lines = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert lines["release"].strip() == "flask --app wsgi chatwoot init-db"
    assert lines["web"].strip().startswith("gunicorn wsgi:app")


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        ("POST /api/chatwoot/webhooks/account-created?token=abc HTTP/1.1", "POST /api/chatwoot/webhooks/account-created?token=*** HTTP/1.1"),
        ("GET /x?a=1&token=abc&b=2 HTTP/1.1", "GET /x?a=1&token=***&b=2 HTTP/1.1"),
        ("GET /x?%74oken=abc HTTP/1.1", "GET /x?%74oken=*** HTTP/1.1"),
        ("GET /x?TOKEN=abc;sig=def HTTP/1.1", "GET /x?TOKEN=*** HTTP/1.1"),  # werkzeug reads one token: all of it
        ("GET /x?a=1;sig=def HTTP/1.1", "GET /x?a=1;sig=*** HTTP/1.1"),
        ('GET /x?token=abc;TAIL"MORE&b=2 HTTP/1.1', "GET /x?token=***&b=2 HTTP/1.1"),
        ('GET /x?a="1";token=abc HTTP/1.1', 'GET /x?a="1";token=*** HTTP/1.1'),
        ("token=abc", "token=***"),
        ("GET /x?tokens=abc HTTP/1.1", "GET /x?tokens=abc HTTP/1.1"),
        ("/api/chatwoot/webhooks/metrics?token=abc", "/api/chatwoot/webhooks/metrics?token=***"),  # a bare path
        ("https://x/?token=abc", "https://x/?token=***"),
    ],
)
def test_access_log_masks_secret_query_parameters(line, masked):
    from multibackend.logging_setup import mask_secrets

    assert mask_secrets(line) == masked


def test_access_lines_mask_what_a_custom_format_shows():
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from multibackend.gunicorn_logging import MaskingGunicornLogger

    config = Config()
    config.set("access_log_format", '%(r)s %(s)s "%({Authorization}i)s" "%({Referer}i)s" %({X-Other}i)s')
    logger = MaskingGunicornLogger(config)
    request = SimpleNamespace(headers=[("AUTHORIZATION", "Basic c2VjcmV0"), ("REFERER", "https://x/?token=abc"), ("X-OTHER", "fine")])
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/api/chatwoot/webhooks/metrics?token=abc", "SERVER_PROTOCOL": "HTTP/1.1"}
    atoms = logger.atoms(SimpleNamespace(status="200 OK", sent=2, headers=[]), request, environ, timedelta(milliseconds=3))
    assert atoms["r"] == "GET /api/chatwoot/webhooks/metrics?token=*** HTTP/1.1"
    assert (atoms["{authorization}i"], atoms["{referer}i"], atoms["{x-other}i"]) == ("***", "https://x/?token=***", "fine")
