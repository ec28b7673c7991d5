"""The host's migrations (Flask-Migrate / Alembic autogenerate) never propose to drop what the plugin owns.

The plugin's tables live on its own metadata, and `flask chatwoot init-db` creates and upgrades them; so a host's
`flask db migrate`, which compares the database with the host's metadata, would see them as strays. `include_object`
hides them: the plugin's own tables, and on a `companies` table the host maps itself, the columns, indexes and
constraints that the plugin adds. `init_app` installs it on a Flask-Migrate already set up on the app (composed
with the host's own `include_object`, if any); a host that sets up Flask-Migrate later passes it explicitly:
`Migrate(app, db, include_object=multibackend.include_object)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from multibackend.extensions import Base

IncludeObject = Callable[[Any, "str | None", str, bool, Any], bool]

SHARED_TABLE = "companies"
PLUGIN_NAMED_OBJECTS = frozenset(
    {
        "companies_company_id_key",
        "companies_chatwoot_account_id_key",
        "companies_provisioning_status_check",
        "companies_chatwoot_status_check",
        "ix_companies_unfinished_provisioning",
    }
)


def plugin_tables() -> frozenset[str]:
    """Every table the plugin creates (companies included: it may be the host's table too)."""
    return frozenset(Base.metadata.tables)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's include_object hook: False for what the plugin owns and the host's metadata does not describe."""
    if not reflected or compare_to is not None:
        return True  # described by the host's metadata: the host's own business
    if type_ == "table":
        return name not in plugin_tables()
    table = getattr(getattr(obj, "table", None), "name", None)
    if table not in plugin_tables():
        return True
    if table != SHARED_TABLE:
        return False
    if type_ == "column":
        return name not in Base.metadata.tables[SHARED_TABLE].columns
    return name not in PLUGIN_NAMED_OBJECTS


def compose(host_hook: IncludeObject | None) -> IncludeObject:
    """The plugin's hook and the host's together: an object is included only when both include it."""
    if host_hook is None or host_hook is include_object:
        return include_object

    def both(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return include_object(obj, name, type_, reflected, compare_to) and host_hook(obj, name, type_, reflected, compare_to)

    both.multibackend_composed = True  # type: ignore[attr-defined]
    return both


def include_in_migrations(app: Flask) -> None:
    """Install include_object on the app's Flask-Migrate, if it has one by now (once)."""
    migrate = app.extensions.get("migrate")
    arguments = getattr(migrate, "configure_args", None)
    if arguments is None:
        return
    current = arguments.get("include_object")
    if current is include_object or getattr(current, "multibackend_composed", False):
        return
    arguments["include_object"] = compose(current)
