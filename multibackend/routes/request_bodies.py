"""Reading a request body: never before it is needed, never past the limit, never a 500 for bad framing.

A declared `Content-Length` over CHATWOOT_WEBHOOK_MAX_BODY_BYTES is refused (413) before anything is read; a chunked
body is read up to the limit (one byte more means too large). What the WSGI server raises while reading the stream
(gunicorn's ParseException for badly framed chunks, an OSError) is the client's 400 bad_request. Credentials in the
URL or headers are checked before the body is read (routes/auth.py), so an anonymous client cannot hold a worker's
connection by sending a body slowly."""

from __future__ import annotations

from collections.abc import Callable

from flask import current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from multibackend.errors import ApiError


def refuse_declared_oversize() -> None:
    """413 for a body whose declared length is over the limit, before a byte of it is read; the limit also bounds
    every later read."""
    request.max_content_length = limit = current_app.config["CHATWOOT_WEBHOOK_MAX_BODY_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()


def limited_body() -> bytes:
    """The body (read once, then cached), at most the limit: 413 for a chunked body longer than that."""
    body = _as_framed(lambda: request.get_data(cache=True))
    if request.content_length is None and len(body) >= request.max_content_length:  # type: ignore[operator]
        # werkzeug stops reading a chunked body at the limit without saying so: one byte more means too large
        if _as_framed(lambda: request.input_stream.read(1)):
            raise RequestEntityTooLarge()
    return body


def _as_framed(read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except HTTPException:
        raise
    except Exception as exc:
        if not (isinstance(exc, OSError) or type(exc).__module__.startswith("gunicorn.http")):
            raise
        raise ApiError(400, "bad_request", "The request body is not framed correctly") from None
