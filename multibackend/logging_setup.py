"""Logging: readable lines operators grep for, user text that cannot forge lines, secrets that never appear."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any
from urllib.parse import unquote_plus


# a name never spans a "?"; a value runs to the next "&" (all werkzeug splits on), so a secret's ";" or '"' and
# whatever follows it are masked with it; a value that is not secret is read again after its first ";" or '"'
QUERY_PARAMETER_PATTERN = re.compile(r"(^|[?&;])([^=&;?\s\"]*)=([^&\s]*)")
NOT_SECRET_VALUE_END = re.compile(r"[;\"]")
SECRET_PARAMETERS = frozenset({"token", "sig", "secret", "password", "api_access_token"})
#: every control (Cc), format (Cf: bidi overrides, zero-width characters) and line/paragraph separator character
#: (Zl, Zp), Unicode 15; tests/test_hardening.py checks it against the running Python's unicodedata
UNSAFE_CHARACTERS = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)
#: `token[]=`, `token[0]=`: the same parameter to PHP- and Rails-style parsers
ARRAY_SUFFIX = re.compile(r"(\[[^\]]*\])+$")


def printable(text: Any, limit: int = 200) -> str:
    """User-supplied text made safe for one log line: control, bidi and other invisible format characters escaped,
    length capped."""
    value = str(text)[:limit]
    return UNSAFE_CHARACTERS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), value)


def mask_secrets(text: str) -> str:
    """The same URL or query string with the values of token-like parameters (however encoded, `token[]=` too)
    replaced by ***."""

    def mask(match: re.Match[str]) -> str:
        separator, name, value = match.groups()
        if ARRAY_SUFFIX.sub("", unquote_plus(name).strip().lower()) in SECRET_PARAMETERS:
            return f"{separator}{name}=***"
        end = NOT_SECRET_VALUE_END.search(value)
        return f"{separator}{name}={value if end is None else value[:end.start()] + mask_secrets(value[end.start():])}"

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
