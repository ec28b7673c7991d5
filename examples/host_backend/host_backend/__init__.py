"""A host backend as a team that followed the old setup guide has it, with the Chatwoot auto-sync mounted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import multibackend
from flask import Flask
from flask_limiter import ExemptionScope

from host_backend.config import Config
from host_backend.extensions import database, limiter, migrate


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The host app: settings from Config (the environment), then `config` (tests)."""
    from host_backend import api, models  # noqa: F401  (models: the tables Flask-Migrate knows)
    from host_backend.errors import register_error_handlers
    from host_backend.tenants import init_tenants

    app = Flask(__name__)
    app.config.from_object(Config)
    app.config.update(config or {})
    database.init_app(app)
    migrate.init_app(app, database)
    limiter.init_app(app)
    app.register_blueprint(api.bp)
    register_error_handlers(app)
    init_tenants(app)
    multibackend.init_app(app)  # the Chatwoot auto-sync: webhook, lookup, metrics, `flask chatwoot ...`
    # our default limit is for our own routes; Chatwoot's calls get the auto-sync's own limits
    limiter.exempt(app.blueprints["chatwoot_webhooks"], flags=ExemptionScope.DEFAULT | ExemptionScope.DESCENDENTS)
    return app
