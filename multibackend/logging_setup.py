"""Logging: readable lines operators grep for, user text that cannot forge lines, secrets that never appear."""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from gunicorn.glogging import Logger as GunicornLogger

QUERY_PARAMETER_PATTERN = re.compile(r"(^|[?&;])([^=&;\s\"]*)=([^&;\s\"]*)")
SECRET_PARAMETERS = frozenset({"token", "sig", "secret", "password", "api_access_token"})
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: Any, limit: int = 200) -> str:
    """User-supplied text made safe for one log line: control characters escaped, length capped."""
    value = str(text)[:limit]
    return CONTROL_CHARACTERS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), value)


def mask_secrets(text: str) -> str:
    """The same URL or query string with the values of token-like parameters (however encoded) replaced by ***."""

    def mask(match: re.Match[str]) -> str:
        separator, name, value = match.groups()
        secret = unquote_plus(name).strip().lower() in SECRET_PARAMETERS
        return f"{separator}{name}={'***' if secret else value}"

    return QUERY_PARAMETER_PATTERN.sub(mask, text)


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
