"""Where the truth about Chatwoot accounts can be read: Chatwoot's own PostgreSQL, or its Platform API."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, current_app
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from multibackend.config import sqlalchemy_database_uri
from multibackend.schemas import normalise_company_name

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

SOURCE_EXTENSION = "multibackend.chatwoot_source"
WEBHOOK_URL_CONFIG = "INSTALLATION_EVENTS_WEBHOOK_URL"


class SourceError(Exception):
    """The Chatwoot source could not answer (unreachable, refused, or the answer was unusable)."""


@dataclass(frozen=True)
class ChatwootAccount:
    id: int
    name: str
    status: str  # "active", "suspended" or "deletion_pending"


def account_of(account_id: int, name: Any, suspended: bool, marked_for_deletion: Any) -> ChatwootAccount:
    """A Chatwoot account as we store it: the name normalised like a webhook's (never empty), the state mapped."""
    company_name = normalise_company_name(name if isinstance(name, str) else "") or f"Chatwoot account {account_id}"
    status = "deletion_pending" if marked_for_deletion else "suspended" if suspended else "active"
    return ChatwootAccount(int(account_id), company_name, status)


def chatwoot_engine(url: str, read_only: bool, application_name: str = "multibackend") -> Engine:
    """A small pool on Chatwoot's database that never waits long to connect (read-only sessions unless told)."""
    options = "-c default_transaction_read_only=on" if read_only else ""
    return create_engine(
        sqlalchemy_database_uri(url, ""),
        pool_size=2,
        max_overflow=2,
        pool_pre_ping=True,
        pool_timeout=2,
        connect_args={"connect_timeout": 2, "options": options, "application_name": application_name},
    )


class ChatwootSource(Protocol):
    #: True when `accounts()` lists every account, so an account missing from it is gone.
    complete: bool
    description: str

    def accounts(self, batch_size: int) -> Iterator[list[ChatwootAccount]]: ...

    def count(self) -> int | None: ...

    def find(self, account_id: int, timeout: float) -> ChatwootAccount | None: ...

    def confirm_deleted(self, account_ids: list[int], timeout: float) -> set[int]: ...

    def installation_webhook_url(self) -> str | None: ...


class ChatwootDatabaseSource:
    """Chatwoot's own PostgreSQL (a read-only role is enough): the one complete list of accounts."""

    complete = True
    description = "Chatwoot database (CHATWOOT_DATABASE_URL)"
    ACCOUNT_COLUMNS = "id, name, status, custom_attributes->>'marked_for_deletion_at'"

    def __init__(self, url: str):
        self.engine = chatwoot_engine(url, read_only=True)

    def accounts(self, batch_size: int) -> Iterator[list[ChatwootAccount]]:
        last_id = 0
        while True:
            rows = self._query(
                f"SELECT {self.ACCOUNT_COLUMNS} FROM accounts WHERE id > :after ORDER BY id LIMIT :limit",
                {"after": last_id, "limit": batch_size},
            )
            if not rows:
                return
            last_id = rows[-1][0]
            yield [account_of(row[0], row[1], row[2] == 1, row[3]) for row in rows]

    def count(self) -> int | None:
        return int(self._query("SELECT count(*) FROM accounts", {})[0][0])

    def find(self, account_id: int, timeout: float) -> ChatwootAccount | None:
        rows = self._query(
            f"SELECT {self.ACCOUNT_COLUMNS} FROM accounts WHERE id = :id", {"id": account_id}, timeout_ms=int(timeout * 1000)
        )
        return account_of(rows[0][0], rows[0][1], rows[0][2] == 1, rows[0][3]) if rows else None

    def confirm_deleted(self, account_ids: list[int], timeout: float) -> set[int]:
        return set(account_ids)  # the list is complete: missing means deleted

    def installation_webhook_url(self) -> str | None:
        rows = self._query("SELECT serialized_value FROM installation_configs WHERE name = :name", {"name": WEBHOOK_URL_CONFIG})
        return value_of_serialized_config(rows[0][0]) if rows else None

    def _query(self, sql: str, params: dict[str, Any], timeout_ms: int = 30000) -> list[Any]:
        try:
            with self.engine.connect() as connection:
                connection.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
                return list(connection.execute(text(sql), params))
        except SQLAlchemyError as exc:
            raise SourceError(f"Chatwoot database: {type(exc).__name__}") from exc


def value_of_serialized_config(serialized: Any) -> str | None:
    """The `value:` of an installation config: Rails stores YAML inside a JSON string in a jsonb column."""
    if isinstance(serialized, dict):
        value = serialized.get("value")
        return str(value) if value is not None else None
    if not isinstance(serialized, str):
        return None
    for line in serialized.splitlines():
        if line.startswith("value:"):
            return line[len("value:"):].strip().strip("'\"") or None
    return None


class ChatwootPlatformSource:
    """Chatwoot's Platform API: sees only the accounts its platform app created or was granted."""

    complete = False
    description = "Chatwoot Platform API (CHATWOOT_API_URL)"

    def __init__(self, base_url: str, token: str):
        import requests  # on use: only this source needs it, and every command starts ~50 ms sooner without it

        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.request_error = requests.RequestException
        self.session.headers.update({"api_access_token": token, "Accept": "application/json"})

    def accounts(self, batch_size: int) -> Iterator[list[ChatwootAccount]]:
        listed = self._get("/platform/api/v1/accounts", timeout=30)
        if not isinstance(listed, list):
            raise SourceError("Chatwoot Platform API: the account list is not a JSON array")
        accounts = [self._account(item) for item in listed if isinstance(item, dict) and isinstance(item.get("id"), int)]
        accounts.sort(key=lambda account: account.id)
        for start in range(0, len(accounts), batch_size):
            yield accounts[start : start + batch_size]

    def count(self) -> int | None:
        return None

    def find(self, account_id: int, timeout: float) -> ChatwootAccount | None:
        item = self._get(f"/platform/api/v1/accounts/{account_id}", timeout=timeout, missing_ok=True)
        return self._account(item) if isinstance(item, dict) and item.get("id") == account_id else None

    def confirm_deleted(self, account_ids: list[int], timeout: float) -> set[int]:
        """Accounts the API says do not exist (404); those it may not show (401) are not deleted for all we know."""
        deleted = set()
        for account_id in account_ids:
            try:
                if self._get(f"/platform/api/v1/accounts/{account_id}", timeout=timeout, missing_ok=True) is None:
                    deleted.add(account_id)
            except SourceError:
                continue
        return deleted

    def installation_webhook_url(self) -> str | None:
        return None

    @staticmethod
    def _account(item: dict[str, Any]) -> ChatwootAccount:
        attributes = item.get("custom_attributes") if isinstance(item.get("custom_attributes"), dict) else {}
        return account_of(item["id"], item.get("name"), item.get("status") == "suspended", attributes.get("marked_for_deletion_at"))

    def _get(self, path: str, timeout: float, missing_ok: bool = False) -> Any:
        try:
            response = self.session.get(self.base_url + path, timeout=timeout, allow_redirects=False)
        except self.request_error as exc:
            raise SourceError(f"Chatwoot Platform API: {type(exc).__name__}") from exc
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code == 401:
            raise SourceError(f"Chatwoot Platform API: 401 {_error_text(response)} for {path}")
        if response.status_code != 200:
            raise SourceError(f"Chatwoot Platform API: HTTP {response.status_code} for {path}")
        try:
            return response.json()
        except ValueError as exc:
            raise SourceError("Chatwoot Platform API: the answer is not JSON") from exc


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("error", ""))[:100] if isinstance(body, dict) else ""


def init_chatwoot_source(app: Flask) -> None:
    """Attach the configured Chatwoot source (the database wins over the API), or None; connects lazily."""
    config = app.config
    source: ChatwootSource | None = None
    if config["CHATWOOT_DATABASE_URL"]:
        source = ChatwootDatabaseSource(config["CHATWOOT_DATABASE_URL"])
    elif config["CHATWOOT_API_URL"] and config["CHATWOOT_PLATFORM_TOKEN"]:
        source = ChatwootPlatformSource(config["CHATWOOT_API_URL"], config["CHATWOOT_PLATFORM_TOKEN"])
    app.extensions[SOURCE_EXTENSION] = source


def chatwoot_source() -> ChatwootSource | None:
    """The current app's Chatwoot source, or None when neither CHATWOOT_DATABASE_URL nor the API is configured."""
    return current_app.extensions.get(SOURCE_EXTENSION)
