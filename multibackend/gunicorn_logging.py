"""Gunicorn's logger for the standalone service (a host app that runs another server never imports this)."""

from __future__ import annotations

import os
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger

from multibackend.logging_setup import mask_secrets, printable


class MaskingGunicornLogger(GunicornLogger):
    """Gunicorn's logger whose access lines never carry a webhook token or an Authorization header."""

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
