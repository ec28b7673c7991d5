"""Logging: readable lines operators grep for, user text that cannot forge lines, secrets that never appear."""

from __future__ import annotations

import logging
import re
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger

SECRET_QUERY_PATTERN = re.compile(r"(?i)((?:^|[?&;])(?:token|sig|secret|password)=)[^&;\s\"]*")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: Any, limit: int = 200) -> str:
    """User-supplied text made safe for one log line: control characters escaped, length capped."""
    value = str(text)[:limit]
    return CONTROL_CHARACTERS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), value)


def mask_secrets(text: str) -> str:
    """The same URL or query string with the values of token-like parameters replaced by ***."""
    return SECRET_QUERY_PATTERN.sub(r"\1***", text)


def configure_logging(level: str) -> None:
    """Give the root logger one readable stderr handler, unless the host or server already set one up."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("multibackend").setLevel(level)


class MaskingGunicornLogger(GunicornLogger):
    """Gunicorn's logger whose access lines never carry a webhook token or an Authorization header."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if key in ("{authorization}i", "{cookie}i"):
                atoms[key] = "***"
            elif isinstance(value, str):
                atoms[key] = printable(mask_secrets(value), limit=2000)
        return atoms
