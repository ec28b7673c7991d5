"""multibackend: the multi-tenant AI backend's Chatwoot auto-sync (app factory and init_app)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_sqlalchemy import SQLAlchemy

from multibackend.config import load_settings
from multibackend.errors import register_routing_errors
from multibackend.extensions import init_database, init_limiter, init_redis, own_db
from multibackend.logging_setup import configure_logging

logger = logging.getLogger(__name__)

CHATWOOT_WEBHOOKS_URL_PREFIX = "/api/chatwoot/webhooks"


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """The standalone service: settings from the environment (then overrides), system info, the auto-sync."""
    from multibackend.routes.chatwoot_pages import embed_page
    from multibackend.routes.system import bp as system_bp

    app = Flask(__name__)
    load_settings(app, overrides)
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    app.register_blueprint(system_bp)
    init_app(app)
    app.add_url_rule("/", "embed_page", embed_page)
    register_routing_errors(app, ("/",))
    answer_held_lookups_first(app)
    if app.config["TRUSTED_PROXY_COUNT"]:  # behind Railway's (or any) proxy: the client is in X-Forwarded-For
        count = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)  # type: ignore[method-assign]
    return app


def init_app(app: Flask, url_prefix: str = CHATWOOT_WEBHOOKS_URL_PREFIX, *, db: SQLAlchemy | None = None) -> None:
    """Mount the Chatwoot auto-sync on an app (ours or a host's): settings, database (the host's Flask-SQLAlchemy
    when it has one, or `db`), Redis, blueprint, CLI; the host's own handlers, limits and migrations stay theirs."""
    from multibackend.cli import chatwoot_cli
    from multibackend.migrations import include_in_migrations
    from multibackend.routes.chatwoot_webhooks import bp as webhooks_bp
    from multibackend.routes.system import include_chatwoot_info
    from multibackend.services.chatwoot_source import init_chatwoot_source
    from multibackend.services.companies import STATEMENT_TIMEOUT_EXTENSION, attach_write_path
    from multibackend.services.dashboard_tabs import init_dashboard_tabs

    load_settings(app)
    app.config["CHATWOOT_WEBHOOKS_URL_PREFIX"] = url_prefix
    database = init_database(app, db)
    attach_write_path(database.session)
    app.extensions[STATEMENT_TIMEOUT_EXTENSION] = app.config["DATABASE_STATEMENT_TIMEOUT_MS"]
    init_redis(app)
    init_limiter(app)
    init_chatwoot_source(app)
    init_dashboard_tabs(app)
    if database is own_db and app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:"):
        _create_embedded_tables(app)
    app.register_blueprint(webhooks_bp, url_prefix=url_prefix)
    include_chatwoot_info(app)  # the host's GET /api/system/info view, if it has one by now
    include_in_migrations(app)  # the host's Flask-Migrate, if it has one by now
    app.cli.add_command(chatwoot_cli)
    register_routing_errors(app, (url_prefix,))
    if not app.config["CHATWOOT_WEBHOOK_SECRETS"]:
        logger.warning(
            "[Chatwoot Webhook] CHATWOOT_WEBHOOK_SECRET is not set: webhook deliveries are accepted without "
            "authentication. Set it and add ?token=<secret> to the URL configured in Chatwoot."
        )


def answer_held_lookups_first(app: Flask) -> None:
    """Answer the company lookups this worker holds before Flask dispatches them (routes.held_lookups): the
    standalone service does; a host may, after init_app, if none of its own hooks needs to see those requests. It
    goes right in front of Flask's dispatch, so call it before wrapping app.wsgi_app in anything (ProxyFix)."""
    from multibackend.routes.held_lookups import HeldLookupsFirst

    if getattr(app.wsgi_app, "__func__", None) is not type(app).wsgi_app:
        raise RuntimeError(
            "answer_held_lookups_first(app) must come before app.wsgi_app is wrapped (ProxyFix or other WSGI "
            "middleware): held lookups would otherwise see the middleware's environ, not the client's"
        )
    app.wsgi_app = HeldLookupsFirst(app, app.wsgi_app)  # type: ignore[method-assign]


def with_chatwoot_info(view: Any) -> Any:
    """Decorator for a host's system-info view registered after init_app: its JSON gains the auto-sync's entries."""
    # imported on use: gunicorn.conf.py imports this package before it sets Prometheus' multiprocess directory
    from multibackend.routes.system import with_chatwoot_info as decorate

    return decorate(view)


def _create_embedded_tables(app: Flask) -> None:
    """The embedded SQLite default needs no init-db step; workers starting together may race, which is harmless."""
    from sqlalchemy.exc import OperationalError

    from multibackend.cli import apply_schema

    with app.app_context():
        try:
            apply_schema()
        except OperationalError:
            apply_schema()


def __getattr__(name: str) -> Any:
    """`multibackend.tenant_provisioned` (the signal hosts connect to) and `multibackend.include_object` (for
    Flask-Migrate), imported on first use so that importing the package stays light."""
    if name == "tenant_provisioned":
        from multibackend.services.companies import tenant_provisioned

        return tenant_provisioned
    if name == "include_object":
        from multibackend.migrations import include_object

        return include_object
    raise AttributeError(f"module 'multibackend' has no attribute {name!r}")
