"""Work that requests hand over to be done right after them, in batches, off the request path."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask

logger = logging.getLogger(__name__)


class BackgroundBatches:
    """Items added by requests, per app, handed to `handle(app, items)` in batches by one daemon thread per process
    (a forked worker starts its own). Items added within `window_seconds` of each other go in one batch; an item
    added again before its batch is taken replaces the earlier one. Work still waiting when the process dies is
    lost: use it only for work that something else repairs (the reconciler)."""

    def __init__(self, name: str, handle: Callable[[Flask, dict[Any, Any]], None], window_seconds: float):
        self.name = name
        self.window_seconds = window_seconds
        self._handle = handle
        self._lock = threading.Lock()
        self._waiting: dict[Flask, dict[Any, Any]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, app: Flask, items: dict[Any, Any]) -> None:
        with self._lock:
            self._waiting.setdefault(app, {}).update(items)
            if self._thread is None or self._pid != os.getpid():  # none yet, or this is a forked worker
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.window_seconds)
            with self._lock:
                self._wake.clear()
                batches, self._waiting = self._waiting, {}
            for app, items in batches.items():
                try:
                    self._handle(app, items)
                except Exception:  # the thread serves every later request: never let it die
                    logger.exception("[Chatwoot Sync] Error: background %s of %s items", self.name, len(items))
