"""The host's JSON errors, app-wide."""

from __future__ import annotations

from flask import Flask
from werkzeug.exceptions import HTTPException


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException):
        return {"error": exc.description, "status": exc.code}, exc.code
