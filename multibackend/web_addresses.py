"""The one rule for a web address that Chatwoot accepts in a Dashboard App (its model: a valid URI starting with
http:// or https://): PUBLIC_URL is held to it at start-up, and every tab URL before it is written."""

from __future__ import annotations

from urllib.parse import urlsplit


def is_absolute_http_url(url: str) -> bool:
    """http:// or https://, a host, a numeric port if any, and nothing but printable ASCII (no space, no newline)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return False
    plain = all(33 <= ord(character) < 127 for character in url)
    return plain and parts.scheme in ("http", "https") and bool(parts.hostname) and url.startswith(f"{parts.scheme}://")
