"""GET /api/system/info, health and Prometheus; and the entries the Chatwoot auto-sync adds to a system info.

A host app's own system-info view gains those entries explicitly: init_app wraps the view registered for
GET /api/system/info at mount time (include_chatwoot_info), and a view registered later opts in with the
with_chatwoot_info decorator. No other answer of the host is read or changed."""

from __future__ import annotations

import logging
from functools import wraps
from typing import Any, Callable

from flask import Blueprint, Flask, Response, current_app, jsonify

from multibackend.errors import register_blueprint_errors
from multibackend.observability import prometheus_response
from multibackend.routes.auth import require_operator
from multibackend.services import health, sync_metrics
from multibackend.version import NAME, VERSION

logger = logging.getLogger(__name__)

SYSTEM_INFO_PATH = "/api/system/info"
CHATWOOT_FEATURE = "chatwoot-auto-sync"
INCLUDES_CHATWOOT_INFO = "includes_chatwoot_info"  # marks a view with_chatwoot_info already wraps

bp = Blueprint("system", __name__)
register_blueprint_errors(bp)


@bp.get(SYSTEM_INFO_PATH)
def system_info() -> Response:
    """Name, version, endpoints and features of this service, the auto-sync's entries included."""
    info = {"name": NAME, "version": VERSION, "endpoints": {"system_info": SYSTEM_INFO_PATH}, "features": []}
    return jsonify({"success": True, "data": add_chatwoot_info(info)})


@bp.get("/metrics")
@require_operator
def prometheus_metrics() -> Response:
    """Prometheus text format: deliveries by outcome, webhook and lookup latency, companies by status, spool."""
    return prometheus_response(sync_metrics.companies_by_status()["provisioning"])


@bp.get("/livez")
def livez() -> Response:
    """The process answers."""
    return jsonify({"success": True, "data": {"status": "alive"}})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Database and Redis reachable: 200, else 503 saying which is not."""
    checks = health.readiness()
    ready = all(state in ("ok", "not configured") for state in checks.values())
    body = {"success": ready, "data": {"ready": ready, "checks": checks}}
    if not ready:
        body |= {"error": "Not ready: " + ", ".join(name for name, state in checks.items() if state not in ("ok", "not configured")), "code": "not_ready"}
    return jsonify(body), 200 if ready else 503


def chatwoot_info(app: Flask) -> dict[str, Any]:
    """What the Chatwoot auto-sync contributes to system info, including whether webhooks are authenticated."""
    authenticated = bool(app.config["CHATWOOT_WEBHOOK_SECRETS"])
    return {
        "endpoint": app.config["CHATWOOT_WEBHOOKS_URL_PREFIX"],
        "webhook_authentication": {
            "enabled": authenticated,
            "methods": ["token", "basic", "hmac-sha256"] if authenticated else [],
            "warning": None
            if authenticated
            else "CHATWOOT_WEBHOOK_SECRET is not set: anyone can create companies through the webhook",
        },
    }


def add_chatwoot_info(info: dict[str, Any]) -> dict[str, Any]:
    """Merge the auto-sync's entries into a system-info dict (in place, idempotent) and return it: the webhooks'
    endpoint, the chatwoot-auto-sync feature, and whether webhook authentication is on."""
    chatwoot = chatwoot_info(current_app)
    info.setdefault("endpoints", {})["chatwoot_webhooks"] = chatwoot["endpoint"]
    features = info.setdefault("features", [])
    if CHATWOOT_FEATURE not in features:
        features.append(CHATWOOT_FEATURE)
    info["chatwoot_webhook_authentication"] = chatwoot["webhook_authentication"]
    return info


def with_chatwoot_info(view: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a host's system-info view: its 200 JSON object (or that object's `data`) gains the auto-sync's
    entries; any other answer passes untouched."""
    if getattr(view, INCLUDES_CHATWOOT_INFO, False):
        return view

    @wraps(view)
    def view_with_chatwoot_info(*args: Any, **kwargs: Any) -> Response:
        response = current_app.make_response(current_app.ensure_sync(view)(*args, **kwargs))
        body = response.get_json(silent=True) if response.status_code == 200 and response.is_json else None
        if isinstance(body, dict):
            add_chatwoot_info(body["data"] if isinstance(body.get("data"), dict) else body)
            response.set_data(current_app.json.dumps(body))
        return response

    setattr(view_with_chatwoot_info, INCLUDES_CHATWOOT_INFO, True)
    return view_with_chatwoot_info


def include_chatwoot_info(app: Flask) -> None:
    """At mount time: wrap (once) the view the app already serves GET /api/system/info with, if there is one."""
    endpoint = next(
        (rule.endpoint for rule in app.url_map.iter_rules() if rule.rule == SYSTEM_INFO_PATH and "GET" in (rule.methods or ())),
        None,
    )
    view = app.view_functions.get(endpoint) if endpoint else None
    if view is None or view is system_info or getattr(view, INCLUDES_CHATWOOT_INFO, False):
        return
    app.view_functions[endpoint] = with_chatwoot_info(view)
    logger.debug("[Chatwoot Webhook] %s (%s) now includes the Chatwoot auto-sync entries", SYSTEM_INFO_PATH, endpoint)
