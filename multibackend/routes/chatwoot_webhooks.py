"""The chatwoot_webhooks blueprint: installation webhook, company lookup and sync metrics."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from multibackend.errors import ApiError, register_blueprint_errors
from multibackend.openapi import build_openapi
from multibackend.logging_setup import printable
from multibackend.schemas import ACCOUNT_CREATED_EVENT, account_created_schema, event_of
from multibackend.extensions import limiter
from multibackend.routes.auth import (
    account_id_of,
    auth_failure_limit,
    lookup_limit,
    presents_a_secret,
    require_chatwoot_auth,
    require_lookup_signature,
)
from multibackend.routes.chatwoot_pages import pages_bp
from multibackend.services import company_lookup, deliveries, sync_metrics

logger = logging.getLogger(__name__)

URL_PREFIX = "/api/chatwoot/webhooks"
WEBHOOK_ENDPOINT = "chatwoot_webhooks.account_created"

bp = Blueprint("chatwoot_webhooks", __name__)
register_blueprint_errors(bp)
bp.register_blueprint(pages_bp)


@bp.before_request
def limit_body_size() -> None:
    request.max_content_length = current_app.config["CHATWOOT_WEBHOOK_MAX_BODY_BYTES"]


@bp.after_request
def count_rejected_delivery(response: Response) -> Response:
    # 429s are not written down: a flood must not turn into database writes (Prometheus counts them)
    if request.endpoint == WEBHOOK_ENDPOINT and 400 <= response.status_code < 500 and response.status_code != 429:
        sync_metrics.record_rejection((response.get_json(silent=True) or {}).get("code", str(response.status_code)))
    return response


def parse_json_body() -> Any:
    """The request body as JSON: 415 for a non-JSON content type, 400 invalid_json for anything unparsable."""
    if request.mimetype and not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    try:
        return json.loads(request.get_data(cache=True).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "Request body is not valid JSON") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def ok(data: dict[str, Any]) -> Response:
    return jsonify({"success": True, "data": data})


@bp.post("/account-created")
@limiter.limit(auth_failure_limit, deduct_when=lambda response: response.status_code == 403, exempt_when=presents_a_secret)
@require_chatwoot_auth
def account_created() -> tuple[Response, int] | Response:
    """Create (once) the company for a new Chatwoot account and provision its services."""
    payload = parse_json_body()
    event = event_of(payload)
    if isinstance(event, str) and event != ACCOUNT_CREATED_EVENT:
        logger.info("[Chatwoot Webhook] Ignored event: %s", printable(event))
        return ok({"ignored": True, "event": event, "message": "Only account_created is processed here"})
    account = account_created_schema.load(payload)
    logger.info(
        "[Chatwoot Webhook] Account created: %s - %s", account["id"], printable(account["name"], 255),
        extra={"account_id": account["id"], "outcome": "received"},
    )
    data, status = deliveries.accept_delivery(account["id"], account["name"])
    return ok(data), status


@bp.get("/company/<account_id>")
@limiter.limit(lookup_limit)
@require_lookup_signature
def company(account_id: str) -> Response:
    """Look a company up by Chatwoot account id; unknown accounts answer exists: false (the iframe polls)."""
    data = company_lookup.lookup_answer(account_id_of(account_id))
    return Response(b'{"success":true,"data":' + data + b"}", mimetype="application/json")


@bp.get("/metrics")
@require_chatwoot_auth
def metrics() -> Response:
    """Sync totals, success rate, latency and recent errors shared by every worker."""
    return ok(sync_metrics.sync_metrics())


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of every endpoint, generated from the routes and the marshmallow schemas."""
    return jsonify(build_openapi(current_app))
