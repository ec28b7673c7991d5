"""The chatwoot_webhooks blueprint: installation webhook, company lookup and sync metrics."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from multibackend import observability
from multibackend.errors import JSON_ANSWER_HEADERS, ApiError, register_blueprint_errors, service_unavailable
from multibackend.logging_setup import printable
from multibackend.routes.auth import (
    account_id_of,
    require_chatwoot_auth,
    require_lookup_signature,
    require_operator,
)
from multibackend.routes.chatwoot_pages import pages_bp
from multibackend.routes.request_bodies import limited_body, refuse_declared_oversize
from multibackend.schemas import (
    ACCOUNT_CREATED_EVENT,
    account_created_schema,
    event_of,
    metrics_response_schema,
    success_answer,
    webhook_answer,
)
from multibackend.services import company_lookup, deliveries, sync_metrics

logger = logging.getLogger(__name__)

bp = Blueprint("chatwoot_webhooks", __name__)
bp.register_blueprint(pages_bp)


@bp.before_request
def start_request() -> None:
    """Start the request's clock (duration histograms) and bound the body of what has one (one hook: each costs)."""
    observability.start_clock()
    if request.method == "POST":
        refuse_declared_oversize()


def record_failure(error: ApiError) -> None:
    """Count a webhook delivery or a lookup that failed, where its error becomes the answer. Refused deliveries
    (4xx) are also written down, except 429s: a flood must not turn into database writes (Prometheus counts them)."""
    view = current_app.view_functions.get(request.endpoint)
    if view is account_created:
        observability.record_delivery(error.code)
        if 400 <= error.status < 500 and error.status != 429:
            sync_metrics.record_rejection(error.code)
    elif view is company:
        observability.record_lookup("error")


register_blueprint_errors(bp, record_failure)


def parse_json_body() -> Any:
    """The request body as JSON: 415 for a non-JSON content type, 400 invalid_json for anything unparsable."""
    if request.mimetype and not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    try:
        return json.loads(limited_body().decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "Request body is not valid JSON") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def delivery_answer(delivery: deliveries.Delivery) -> tuple[Response, int]:
    """200 (created, existing, ignored) or 202 (queued), counted once; a refused delivery raises 503 (Retry-After)."""
    if isinstance(delivery, deliveries.Refused):
        raise service_unavailable("The database")
    observability.record_delivery(delivery.outcome)
    status = 202 if isinstance(delivery, deliveries.Queued) else 200
    return jsonify(webhook_answer(delivery)), status


@bp.post("/account-created")
@require_chatwoot_auth
def account_created() -> tuple[Response, int]:
    """Create (once) the company for a new Chatwoot account and provision its services."""
    payload = parse_json_body()
    event = event_of(payload)
    if isinstance(event, str) and event != ACCOUNT_CREATED_EVENT:
        logger.info("[Chatwoot Webhook] Ignored event: %s", printable(event))
        return delivery_answer(deliveries.Ignored(event))
    account = account_created_schema.load(payload)
    logger.info(
        "[Chatwoot Webhook] Account created: %s - %s", account["id"], printable(account["name"], 255),
        extra={"account_id": account["id"], "outcome": "received"},
    )
    administrators = [user["id"] for user in account["users"] if user.get("id")]
    return delivery_answer(deliveries.accept_delivery(account["id"], account["name"], administrators))


@bp.get("/company/<account_id>")
@require_lookup_signature
def company(account_id: str) -> Response:
    """Look a company up by Chatwoot account id; unknown accounts answer exists: false (the iframe polls)."""
    answer = company_lookup.lookup_answer(account_id_of(account_id))
    observability.record_lookup("hit" if answer.found else "miss")
    return Response(answer.body, mimetype="application/json", headers=JSON_ANSWER_HEADERS)


@bp.get("/metrics")
@require_operator
def metrics() -> Response:
    """Sync totals, success rate, latency and recent errors shared by every worker, at most 1 s old (operators only)."""
    answer = sync_metrics.shared_answer(lambda metrics: compact_json(success_answer(metrics_response_schema, metrics)))
    return Response(answer, mimetype="application/json")


def compact_json(value: Any) -> str:
    """What jsonify would send (the app's JSON provider, sorted keys, no spaces), as text to keep."""
    return current_app.json.dumps(value, separators=(",", ":"))


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of every endpoint, generated from the routes and the marshmallow schemas."""
    from multibackend.openapi import build_openapi  # on use: apispec (and YAML) need not load with every process

    return jsonify(build_openapi(current_app))
