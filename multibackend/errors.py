"""JSON errors with stable codes: what callers see instead of HTML pages, exception text or stack traces."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from marshmallow import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30

HTTP_ERROR_CODES = {
    400: ("bad_request", "Bad request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Content-Type must be application/json"),
    429: ("rate_limited", "Too many requests"),
}


class ApiError(Exception):
    """An answer to give the caller: HTTP status, stable code, human message, optional field details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def service_unavailable(what: str) -> ApiError:
    """503 for a backing service that is down, with a Retry-After hint."""
    return ApiError(
        503,
        "service_unavailable",
        f"{what} is unavailable, try again later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def error_response(error: ApiError) -> tuple[Response, int, dict[str, str]]:
    """The JSON body every error shares: success false, error, code, and details when there are any."""
    body: dict[str, Any] = {"success": False, "error": error.message, "code": error.code}
    if error.details is not None:
        body["details"] = error.details
    return jsonify(body), error.status, error.headers


def from_http_exception(exc: HTTPException) -> ApiError:
    """The ApiError for a werkzeug HTTP exception (routing 404/405, 413 from the body limit, ...)."""
    status = exc.code or 500
    code, message = HTTP_ERROR_CODES.get(status, ("http_error", exc.name))
    headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else {}
    return ApiError(status, code, message, headers=headers)


def register_blueprint_errors(bp: Blueprint, record: Callable[[ApiError], None] | None = None) -> None:
    """JSON for everything a view of this blueprint can raise; never str(exception) to the caller. `record`, when
    given, sees each error once, as it becomes the answer: where the outcomes of failed requests are counted."""

    def answer(error: ApiError) -> tuple[Response, int, dict[str, str]]:
        if record is not None:
            record(error)
        return error_response(error)

    bp.register_error_handler(ApiError, answer)
    bp.register_error_handler(HTTPException, lambda exc: answer(from_http_exception(exc)))
    bp.register_error_handler(
        ValidationError, lambda exc: answer(ApiError(422, "invalid_payload", "Invalid payload", details=exc.messages))
    )
    bp.register_error_handler(SQLAlchemyError, lambda exc: answer(_database_error(exc)))
    bp.register_error_handler(Exception, lambda exc: answer(_unexpected_error(exc)))


def register_routing_errors(app: Flask, prefixes: tuple[str, ...]) -> None:
    """JSON for routing errors (404/405) under our URL prefixes; everywhere else the handlers the host registered
    (app-wide, or for 404/405) answer exactly as before, and without them Flask's own pages do. Our routes never
    redirect (`//` in a path is a 404, not a redirect to whatever `Host` says) and our JSON answers are never
    cached or sniffed."""
    handlers = app.error_handler_spec[None]
    for code, exc_class in ((None, HTTPException), (404, NotFound), (405, MethodNotAllowed)):
        hosts = handlers[code].get(exc_class)
        if code is None or hosts is not None:
            handlers[code][exc_class] = _under_prefixes(prefixes, hosts)
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(prefixes):
            rule.merge_slashes = False  # werkzeug would answer 308 with an absolute URL built from Host
    covered = app.extensions.get(JSON_HEADER_PREFIXES)
    if covered is None:  # one hook per app, whatever the number of prefixes (each hook costs every request)
        covered = app.extensions[JSON_HEADER_PREFIXES] = []
        app.after_request(_json_headers_under(covered))
    covered.extend(prefix for prefix in prefixes if prefix not in covered)


JSON_HEADER_PREFIXES = "multibackend.json_header_prefixes"
#: what the hook adds to our JSON answers; a view on a hot path passes them itself, which spares the hook its checks
JSON_ANSWER_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


def _json_headers_under(prefixes: list[str]) -> Callable[[Response], Response]:
    def json_headers(response: Response) -> Response:
        headers = response.headers
        if "X-Content-Type-Options" in headers:  # a view that set it set both (JSON_ANSWER_HEADERS): nothing to add
            return response
        if request.path.startswith(tuple(prefixes)) and response.mimetype == "application/json":
            headers["X-Content-Type-Options"] = "nosniff"
            if "Cache-Control" not in headers:
                headers["Cache-Control"] = "no-store"
        return response

    return json_headers


def _under_prefixes(prefixes: tuple[str, ...], hosts: Callable[[Any], Any] | None) -> Callable[[HTTPException], Any]:
    def handle(exc: HTTPException) -> Any:
        if request.path.startswith(prefixes):
            return error_response(from_http_exception(exc))
        return hosts(exc) if hosts is not None else exc

    return handle


def _database_error(exc: SQLAlchemyError) -> ApiError:
    logger.error("[Chatwoot Webhook] Database error on %s: %s", request.path, type(exc).__name__)
    return service_unavailable("The database")


def _unexpected_error(exc: Exception) -> ApiError:
    logger.exception("[Chatwoot Webhook] Unexpected error on %s", request.path)
    return ApiError(500, "internal_error", "Internal server error")
