"""The OpenAPI 3 description, built from the app's own routes and the marshmallow schemas (nothing to drift)."""

from __future__ import annotations

from typing import Any, Callable

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec_webframeworks.flask import FlaskPlugin
from flask import Flask

from multibackend import schemas
from multibackend.version import NAME, VERSION

JSON = "application/json"


def error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": "Error"}}}


def answer(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def page(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


RATE_LIMITED = error("Too many requests from this client (Retry-After says when to retry)")
UNAVAILABLE = error("The database is unreachable (Retry-After)")
#: operators (metrics, dashboard, Prometheus): the webhook secret or CHATWOOT_ADMIN_TOKEN, never a signature
OPERATOR_AUTH: list[dict[str, list[str]]] = [{"token": []}, {"basic": []}, {}]
OPERATOR_REFUSED = error("No webhook secret or CHATWOOT_ADMIN_TOKEN by ?token= or Basic (unauthorized, WWW-Authenticate)")
ACCOUNT_ID = {
    "name": "account_id", "in": "path", "required": True, "description": "Chatwoot account id",
    "schema": {"type": "integer", "minimum": 1, "maximum": schemas.BIGINT_MAX},
}

def operations() -> dict[Callable[..., Any], dict[str, dict[str, Any]]]:
    """View function -> method -> operation; the paths themselves come from the app's URL map."""
    # imported here: the route modules import this one (their openapi.json view)
    from multibackend.routes import chatwoot_pages, chatwoot_webhooks, system

    return {
        chatwoot_webhooks.account_created: {
            "post": {
                "summary": "Chatwoot's installation webhook (account_created): creates the company once",
                "security": [{"token": []}, {"basic": []}, {"signature": [], "timestamp": []}, {}],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"anyOf": [{"$ref": "#/components/schemas/AccountCreated"},
                                                            {"$ref": "#/components/schemas/OtherEvent"}]}}},
                },
                "responses": {
                    "200": answer("WebhookResponse", "Created, already existed, or another event (ignored)"),
                    "202": answer("WebhookResponse", "PostgreSQL unavailable: spooled, replayed by the reconciler"),
                    "400": error("Not valid UTF-8 JSON (invalid_json)"),
                    "403": error("No valid token, Basic password or signature (invalid_signature)"),
                    "413": error("Body over CHATWOOT_WEBHOOK_MAX_BODY_BYTES (payload_too_large)"),
                    "415": error("A Content-Type that is not JSON (unsupported_media_type)"),
                    "422": error("Fields of the wrong type or out of range (invalid_payload, with details)"),
                    "429": RATE_LIMITED,
                    "503": UNAVAILABLE,
                },
            }
        },
        chatwoot_webhooks.company: {
            "get": {
                "summary": "The company of a Chatwoot account (exists: false when unknown; the iframe polls it)",
                "parameters": [
                    ACCOUNT_ID,
                    {"name": "sig", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "hex HMAC-SHA256(CHATWOOT_EMBED_SECRET, account id), when signed lookups are on"},
                ],
                "responses": {
                    "200": answer("CompanyLookupResponse"),
                    "400": error("Not a positive integer (invalid_account_id)"),
                    "403": error("Signed lookups are on and sig is wrong (invalid_signature)"),
                    "429": RATE_LIMITED,
                    "503": UNAVAILABLE,
                },
            }
        },
        chatwoot_webhooks.metrics: {
            "get": {"summary": "Sync totals, success rate, average latency, recent errors", "security": OPERATOR_AUTH,
                    "responses": {"200": answer("MetricsResponse"), "401": OPERATOR_REFUSED, "503": UNAVAILABLE}}
        },
        chatwoot_webhooks.openapi: {
            "get": {"summary": "This description", "responses": {"200": {"description": "OpenAPI 3", "content": {JSON: {"schema": {"type": "object"}}}}}}
        },
        chatwoot_pages.embed: {
            "get": {
                "summary": "The dashboard page Chatwoot shows in an iframe (?accountId=)",
                "parameters": [{"name": "accountId", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {"200": page("HTML page")},
            }
        },
        chatwoot_pages.dashboard: {
            "get": {"summary": "Operators' sync dashboard", "security": OPERATOR_AUTH,
                    "responses": {"200": page("HTML page"), "401": OPERATOR_REFUSED}}
        },
        chatwoot_pages.dashboard_data: {
            "get": {"summary": "What the operators' dashboard draws", "security": OPERATOR_AUTH,
                    "responses": {"200": answer("DashboardDataResponse"), "401": OPERATOR_REFUSED, "503": UNAVAILABLE}}
        },
        system.system_info: {"get": {"summary": "Name, version, endpoints, features", "responses": {"200": answer("AnyDataResponse")}}},
        system.livez: {"get": {"summary": "The process answers", "responses": {"200": answer("AnyDataResponse")}}},
        system.readyz: {
            "get": {"summary": "Database and Redis reachable",
                    "responses": {"200": answer("AnyDataResponse"), "503": {"description": "Not ready (code not_ready)", "content": {JSON: {"schema": {"type": "object"}}}}}}
        },
        system.prometheus_metrics: {
            "get": {"summary": "Prometheus text format", "security": OPERATOR_AUTH,
                    "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                                  "401": OPERATOR_REFUSED}}
        },
        chatwoot_pages.embed_page: {"get": {"summary": "The iframe page, at the standalone app's root", "responses": {"200": page("HTML page")}}},
    }


#: an account webhook pointed here by mistake: answered {ignored: true}, nothing else is read
OTHER_EVENT = {
    "type": "object",
    "required": ["event"],
    "properties": {"event": {"type": "string", "not": {"enum": ["account_created"]}}},
}

COMPONENT_SCHEMAS = {
    "AccountCreated": schemas.AccountCreatedSchema,
    "Error": schemas.ErrorSchema,
    "WebhookResponse": schemas.WebhookResponseSchema,
    "CompanyLookupResponse": schemas.CompanyLookupResponseSchema,
    "MetricsResponse": schemas.MetricsResponseSchema,
    "DashboardDataResponse": schemas.DashboardDataResponseSchema,
    "AnyDataResponse": schemas.AnyDataResponseSchema,
}


def build_openapi(app: Flask) -> dict[str, Any]:
    """The description of every documented route that this app has (a host app gets only what it mounted)."""
    spec = APISpec(
        title=f"{NAME} · Chatwoot auto-sync",
        version=VERSION,
        openapi_version="3.0.3",
        plugins=[FlaskPlugin(), MarshmallowPlugin()],
        info={"description": "Every error is {success: false, error, code} with a stable code."},
    )
    spec.components.security_scheme("token", {"type": "apiKey", "in": "query", "name": "token"})
    spec.components.security_scheme("basic", {"type": "http", "scheme": "basic"})
    spec.components.security_scheme("signature", {"type": "apiKey", "in": "header", "name": "X-Chatwoot-Signature"})
    spec.components.security_scheme("timestamp", {"type": "apiKey", "in": "header", "name": "X-Chatwoot-Timestamp"})
    for name, schema in COMPONENT_SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    spec.components.schema("OtherEvent", OTHER_EVENT)
    registered = set(app.view_functions.values())
    with app.test_request_context():
        for view, view_operations in operations().items():
            if view in registered:
                spec.path(view=view, operations=view_operations, app=app)
    return spec.to_dict()
