"""Gunicorn's logger for the standalone service (a host app that runs another server never imports this)."""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger

from multibackend.logging_setup import mask_secrets, printable


ERROR_LOG_LIMIT = 4000


def masked_message(msg: Any, args: tuple[Any, ...]) -> str:
    """A message of gunicorn's error log (e.g. `Invalid HTTP request line: 'POST /…?token=…'`) formatted, its
    secrets masked and its control characters escaped, so one request is one line and carries no token."""
    text = str(msg)
    if args:
        try:
            text = text % args
        except (TypeError, ValueError):
            text = " ".join([text, *map(str, args)])
    return printable(mask_secrets(text), limit=ERROR_LOG_LIMIT)


class MaskingGunicornLogger(GunicornLogger):
    """Gunicorn's logger whose lines (access and error log) never carry a webhook token or an Authorization
    header."""

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.CRITICAL, msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **{"exc_info": True, **kwargs})

    def log(self, lvl: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
        level = self.LOG_LEVELS.get(lvl.lower(), logging.INFO) if isinstance(lvl, str) else lvl
        if self.error_log.isEnabledFor(level):  # formatting and masking cost nothing for lines nobody sees
            self.error_log.log(level, masked_message(msg, args), **kwargs)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if os.environ.get("LOG_FORMAT", "").lower() != "json":
            super().access(resp, req, environ, request_time)
            return
        atoms = self.atoms(resp, req, environ, request_time)
        fields = {"remote": atoms["h"], "request": atoms["r"], "status": atoms["s"], "bytes": atoms["b"], "duration_ms": atoms["M"]}
        self.access_log.info("%s %s", atoms["r"], atoms["s"], extra=fields)

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if key in ("{authorization}i", "{cookie}i"):
                atoms[key] = "***"
            elif isinstance(value, str):
                atoms[key] = printable(mask_secrets(value), limit=2000)
        return atoms
