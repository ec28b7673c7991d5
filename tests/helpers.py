"""Helpers shared by the tests (fixtures live in conftest.py; this module holds plain functions and classes)."""

from __future__ import annotations

import re
import threading
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from multibackend.services.companies import write_in_progress

COMPANY_WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?companies\"?[\s(]", re.IGNORECASE)


class CompanyWriteWatch:
    """Every SQL statement this process sends through SQLAlchemy is checked: one that writes `companies` outside
    company_write() (the one write path, which keeps lookups and announcements in step) is recorded."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CompanyWriteWatch:
        event.listen(Engine, "before_cursor_execute", self._check)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        event.remove(Engine, "before_cursor_execute", self._check)

    def _check(self, connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if COMPANY_WRITE.match(statement) and not write_in_progress():
            with self._lock:
                self.violations.append(" ".join(statement.split())[:200])
