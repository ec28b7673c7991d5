"""Logging: readable lines operators grep for, user text that cannot forge lines, secrets that never appear."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any
from urllib.parse import unquote_plus


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


READABLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: log record attributes (set with `extra=`) that a JSON line carries when present
JSON_FIELDS = ("account_id", "company_id", "outcome", "event", "remote", "request", "status", "bytes", "duration_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the account id and outcome when known."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({field: getattr(record, field) for field in JSON_FIELDS if hasattr(record, field)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


JsonFormatter.converter = time.gmtime  # type: ignore[assignment]


def configure_logging(level: str, log_format: str = "text") -> None:
    """Give the root logger one stderr handler (readable lines, or JSON with LOG_FORMAT=json), unless the host
    already set one up."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(READABLE_FORMAT))
        root.addHandler(handler)
    logging.getLogger("multibackend").setLevel(level)
