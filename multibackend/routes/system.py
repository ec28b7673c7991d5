"""GET /api/system/info, and the entries that the Chatwoot auto-sync adds to any app's system info."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from multibackend.errors import register_blueprint_errors
from multibackend.observability import prometheus_response
from multibackend.routes.auth import require_operator
from multibackend.services import health, sync_metrics
from multibackend.version import NAME, VERSION

SYSTEM_INFO_PATH = "/api/system/info"
CHATWOOT_FEATURE = "chatwoot-auto-sync"

bp = Blueprint("system", __name__)
register_blueprint_errors(bp)


@bp.get(SYSTEM_INFO_PATH)
def system_info() -> Response:
    """Name, version, endpoints and features of this service."""
    return jsonify({"success": True, "data": {"name": NAME, "version": VERSION, "endpoints": {"system_info": SYSTEM_INFO_PATH}, "features": []}})


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


def add_chatwoot_entries(response: Response) -> Response:
    """After-request hook: merge the auto-sync entries into the app's system info, whoever serves it."""
    if request.path != SYSTEM_INFO_PATH or response.status_code != 200 or not response.is_json:
        return response
    body = response.get_json(silent=True)
    if not isinstance(body, dict):
        return response
    info = body["data"] if isinstance(body.get("data"), dict) else body
    chatwoot = chatwoot_info(current_app)
    info.setdefault("endpoints", {})["chatwoot_webhooks"] = chatwoot["endpoint"]
    features = info.setdefault("features", [])
    if CHATWOOT_FEATURE not in features:
        features.append(CHATWOOT_FEATURE)
    info["chatwoot_webhook_authentication"] = chatwoot["webhook_authentication"]
    response.set_data(json.dumps(body))
    return response
