"""Gunicorn's logger for the standalone service (a host app that runs another server never imports this)."""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
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
        """Gunicorn's atoms (every header and environ value among them), of which the ones a line shows (the
        access format's, and the JSON line's) are masked: masking all of them cost a tenth of a lookup's time."""
        atoms = super().atoms(resp, req, environ, request_time)
        for key in shown_atoms(self.cfg.access_log_format):
            value = atoms.get(key)
            if key in ("{authorization}i", "{cookie}i"):
                atoms[key] = "***"
            elif isinstance(value, str):
                atoms[key] = printable(mask_secrets(value), limit=2000)
        return atoms


JSON_ACCESS_ATOMS = ("h", "r", "s", "b", "M")


@lru_cache(maxsize=8)
def shown_atoms(access_log_format: str) -> frozenset[str]:
    """The atoms an access line can show: the format's (headers and environ keys as gunicorn looks them up,
    lower-cased) and the JSON line's."""
    named = re.findall(r"%\(([^)]+)\)", access_log_format)
    return frozenset([*JSON_ACCESS_ATOMS, *(name.lower() if name.startswith("{") else name for name in named)])
