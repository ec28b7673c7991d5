"""Settings: one declaration each, parsed once per app, and the README table generated from the declarations."""

from __future__ import annotations

import ast
import os
import runpy
import subprocess
import sys

import pytest
from flask import Flask

from multibackend import config, create_app, init_app
from multibackend.config import (
    SETTINGS,
    ConfigError,
    load_settings,
    read_setting,
    read_settings,
    secret_list,
    settings_table,
    text,
    with_settings_table,
)
from multibackend.extensions import db
from tests.helpers import ROOT

PACKAGE = ROOT / "multibackend"
BY_NAME = {setting.name: setting for setting in SETTINGS}
APP_SETTING_NAMES = {setting.name for setting in SETTINGS if not setting.gunicorn_only}
DERIVED_NAMES = {setting.derived[0] for setting in SETTINGS if setting.derived}
CONFIG_NAMES = ("config", "settings")

BAD_VALUES = {
    "CHATWOOT_WEBHOOK_MAX_BODY_BYTES": "lots",
    "DATABASE_STATEMENT_TIMEOUT_MS": "1.5",
    "DATABASE_POOL_SIZE": "0",
    "REDIS_TIMEOUT_SECONDS": "0",
    "SELF_HEAL_TIMEOUT_SECONDS": "soon",
    "RECONCILE_BACKOFF_SECONDS": "-1",
    "TRUSTED_PROXY_COUNT": "-1",
    "RATELIMIT_ENABLED": "maybe",
    "RATELIMIT_LOOKUP": "20 per fortnight",
    "LOG_LEVEL": "LOUD",
    "LOG_FORMAT": "xml",
    "PORT": "http",
    "WEB_CONCURRENCY": "-2",
    "GUNICORN_WORKER_CONNECTIONS": "0",
    "CHATWOOT_DASHBOARD_APP_TITLE": "   ",
    "DATABASE_URL": "mysql",
    "CHATWOOT_WEBHOOK_SECRET": " , ",
    "CHATWOOT_ADMIN_TOKEN": " ",
    "CHATWOOT_EMBED_SECRET": "\t",
    "PUBLIC_URL": "backend.example",
}

# what Chatwoot's DashboardApp model refuses as a tab URL, and so PUBLIC_URL must not be
BAD_PUBLIC_URLS = ["backend.example", "ftp://backend.example", "https://backend .example", "https://", "javascript:alert(1)",
                   "https://backend.example:port", "https://backend.example/?a=1", "https://backend.example/#x",
                   "https://backend.example/a\nb", "http:/backend.example", "https://bäckend.example"]


@pytest.mark.parametrize("value", BAD_PUBLIC_URLS)
def test_a_public_url_chatwoot_would_refuse_stops_start_up_with_one_line(value):
    completed = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "doctor"], cwd=ROOT,
                               env={**os.environ, "PUBLIC_URL": value, "DATABASE_URL": "", "REDIS_URL": ""},
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    assert completed.stderr.strip().splitlines()[-1].startswith("Error: PUBLIC_URL must be an absolute http:// or https:// URL")
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(("value", "kept"), [("https://backend.example/", "https://backend.example"),
                                             ("http://10.0.0.5:8000/backend/", "http://10.0.0.5:8000/backend"),
                                             ("", "")])
def test_a_good_public_url_is_kept_without_its_trailing_slash(value, kept):
    assert read_setting({"PUBLIC_URL": value}, "PUBLIC_URL") == kept


def _is_config(node: ast.expr) -> bool:
    """`app.config`, `current_app.config`, or a local named config/settings."""
    return (isinstance(node, ast.Attribute) and node.attr == "config") or (
        isinstance(node, ast.Name) and node.id in CONFIG_NAMES
    )


def _config_keys(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(keys read, keys written) with a literal name on app.config or a config/settings mapping."""
    read, written = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_config(node.value) and isinstance(node.slice, ast.Constant):
            (written if isinstance(node.ctx, ast.Store) else read).add(node.slice.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "setdefault")
            and _is_config(node.func.value)
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            (read if node.func.attr == "get" else written).add(node.args[0].value)
    return read, written


def test_readme_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert with_settings_table(readme) == readme, "run: python -m multibackend.config --write-readme"


def test_generated_table_has_one_row_per_setting():
    rows = settings_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [setting.name for setting in SETTINGS]


def test_every_setting_the_package_reads_is_declared():
    read, written = set(), set()
    for path in PACKAGE.rglob("*.py"):
        file_read, file_written = _config_keys(ast.parse(path.read_text(encoding="utf-8")))
        read |= file_read
        written |= file_written
    assert {"CHATWOOT_WEBHOOK_SECRETS", "RECONCILE_BATCH_SIZE", "REDIS_URL"} <= read
    flasks_own = {"SERVER_NAME", "TRUSTED_HOSTS"}  # read to route as Flask does (routes.held_lookups), never set
    assert flasks_own <= set(Flask.default_config)
    assert read - written - APP_SETTING_NAMES - DERIVED_NAMES - flasks_own == set()


def test_each_setting_is_declared_once():
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("name", "value"), BAD_VALUES.items())
def test_a_bad_value_is_refused_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as refused:
        read_setting({name: value}, name)
    message = str(refused.value)
    assert message.startswith(f"{name} must ") and repr(value) in message and "\n" not in message


@pytest.mark.parametrize(("name", "value"), [item for item in BAD_VALUES.items() if item[0] in APP_SETTING_NAMES])
def test_an_app_refuses_a_bad_value_from_the_environment(name, value):
    with pytest.raises(ConfigError, match=f"^{name} "):
        read_settings({name: value})


def test_every_kind_of_checked_setting_has_a_refusal_case():
    checked_kinds = {setting.parse for setting in SETTINGS} - {text, secret_list}
    assert checked_kinds == {BY_NAME[name].parse for name in BAD_VALUES}


def test_values_are_typed():
    settings = read_settings(
        {
            "RATELIMIT_ENABLED": "Off",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "TRUSTED_PROXY_COUNT": "0",
            "RECONCILE_BACKOFF_SECONDS": "0",
            "EMBED_WAIT_SECONDS": "5",
            "DATABASE_POOL_SIZE": "12",
        }
    )
    typed = [settings[name] for name in ("RATELIMIT_ENABLED", "LOG_LEVEL", "LOG_FORMAT", "TRUSTED_PROXY_COUNT")]
    assert typed == [False, "DEBUG", "json", 0]
    assert (settings["RECONCILE_BACKOFF_SECONDS"], settings["EMBED_WAIT_SECONDS"]) == (0.0, 5.0)
    assert settings["DATABASE_POOL_SIZE"] == 12


def test_defaults_are_typed():
    settings = read_settings({})
    assert settings["RATELIMIT_ENABLED"] is True
    assert (settings["EMBED_WAIT_SECONDS"], settings["CHATWOOT_WEBHOOK_MAX_BODY_BYTES"]) == (30.0, 1048576)
    assert isinstance(settings["EMBED_WAIT_SECONDS"], float)
    assert settings["CHATWOOT_WEBHOOK_SECRETS"] == ()


def test_gunicorn_settings_stay_out_of_app_config():
    settings = read_settings({"PORT": "9000", "WEB_CONCURRENCY": "3", "GUNICORN_WORKER_CONNECTIONS": "2"})
    assert {"PORT", "WEB_CONCURRENCY", "GUNICORN_WORKER_CONNECTIONS"}.isdisjoint(settings)


def test_overrides_that_are_not_settings_pass_through():
    assert read_settings({}, {"TESTING": True})["TESTING"] is True


def test_create_app_parses_settings_once(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(config, "read_settings", lambda *args: calls.append(args) or read_settings(*args))
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/once.db", "REDIS_URL": ""})
    assert len(calls) == 1
    with app.app_context():
        db.engine.dispose()


def test_init_app_on_a_host_app_parses_settings_once(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(config, "read_settings", lambda *args: calls.append(args) or read_settings(*args))
    host = Flask("host_once", instance_path=str(tmp_path))
    host.config.update(DATABASE_URL="", REDIS_URL="")
    init_app(host)
    assert len(calls) == 1
    with host.app_context():
        db.engine.dispose()


def test_loading_settings_again_does_not_reread_the_environment(monkeypatch):
    monkeypatch.setenv("RECONCILE_BATCH_SIZE", "7")
    app = Flask("loaded_twice")
    load_settings(app)
    monkeypatch.setenv("RECONCILE_BATCH_SIZE", "8")
    load_settings(app)
    assert app.config["RECONCILE_BATCH_SIZE"] == 7


def test_host_config_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECONCILE_BATCH_SIZE", "7")
    monkeypatch.setenv("CHATWOOT_SIGNATURE_TOLERANCE_SECONDS", "120")
    host = Flask("host_config", instance_path=str(tmp_path))
    host.config.update(DATABASE_URL="", REDIS_URL="", RECONCILE_BATCH_SIZE="50")
    init_app(host)
    assert (host.config["RECONCILE_BATCH_SIZE"], host.config["CHATWOOT_SIGNATURE_TOLERANCE_SECONDS"]) == (50, 120)
    with host.app_context():
        db.engine.dispose()


def test_create_app_overrides_win_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECONCILE_MAX_ATTEMPTS", "9")
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/wins.db", "REDIS_URL": "", "RECONCILE_MAX_ATTEMPTS": "2"})
    assert app.config["RECONCILE_MAX_ATTEMPTS"] == 2
    with app.app_context():
        db.engine.dispose()


def test_gunicorn_conf_reads_the_declared_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("WEB_CONCURRENCY", "")
    monkeypatch.setenv("GUNICORN_WORKER_CONNECTIONS", "200")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert (conf["bind"], conf["worker_connections"], conf["loglevel"]) == ("0.0.0.0:9001", 200, "warning")
    assert conf["worker_class"] == "gevent"
    assert conf["workers"] == min(2 * (os.cpu_count() or 1) + 1, 9)
    assert "logconfig_dict" in conf


def test_gunicorn_conf_refuses_a_bad_value(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert stopped.value.code == 1
    assert capsys.readouterr().err == "Error: WEB_CONCURRENCY must be a whole number, got 'many'\n"
