"""Settings: one declaration each (name, default, parser, one line of doc), parsed once per app."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from multibackend.web_addresses import is_absolute_http_url

if TYPE_CHECKING:
    from flask import Flask

Parser = Callable[[str, Any], Any]

SETTINGS_EXTENSION = "multibackend.settings"
README_PATH = Path(__file__).resolve().parent.parent / "README.md"
TABLE_START = "<!-- settings-table:start -->"
TABLE_END = "<!-- settings-table:end -->"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class ConfigError(RuntimeError):
    """A setting is present but unusable; raised at start-up, never at request time."""


def text(name: str, value: Any) -> str:
    """The value as text; None reads as unset."""
    return "" if value is None else str(value)


def tab_title(name: str, value: Any) -> str:
    """A Dashboard App title: printable text, 1 to 255 characters once trimmed."""
    title = str(value or "").strip()
    if not title or len(title) > 255 or not title.isprintable():
        raise ConfigError(f"{name} must be 1 to 255 printable characters, got {value!r}")
    return title


def public_url(name: str, value: Any) -> str:
    """An absolute http:// or https:// URL with a host (a path is fine), without spaces, query or fragment; kept
    without its trailing slash. Chatwoot refuses a tab whose URL is anything else."""
    url = text(name, value).strip()
    parts = urlsplit(url)
    if url and not (is_absolute_http_url(url) and not parts.query and not parts.fragment):
        raise ConfigError(f"{name} must be an absolute http:// or https:// URL such as https://backend.example, got {value!r}")
    return url.rstrip("/")


def positive_int(name: str, value: Any) -> int:
    """A whole number greater than zero."""
    return _number(name, value, int, allow_zero=False)


def non_negative_int(name: str, value: Any) -> int:
    """A whole number, zero or more."""
    return _number(name, value, int, allow_zero=True)


def positive_float(name: str, value: Any) -> float:
    """A number greater than zero."""
    return _number(name, value, float, allow_zero=False)


def non_negative_float(name: str, value: Any) -> float:
    """A number, zero or more."""
    return _number(name, value, float, allow_zero=True)


def boolean(name: str, value: Any) -> bool:
    """true/false, yes/no, on/off or 1/0, in any case."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return word in TRUE_WORDS


def rate_limit(name: str, value: Any) -> str:
    """A limit in Flask-Limiter's notation ("20 per minute", "5/second; 100/hour")."""
    from limits import parse_many

    try:
        parse_many(str(value))
    except ValueError:
        raise ConfigError(f"{name} must look like '20 per minute', got {value!r}") from None
    return str(value)


def log_level(name: str, value: Any) -> str:
    """A logging level name, upper-case."""
    level = str(value).strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise ConfigError(f"{name} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
    return level


def log_format(name: str, value: Any) -> str:
    """text or json, lower-case."""
    form = str(value).strip().lower()
    if form not in ("text", "json"):
        raise ConfigError(f"{name} must be text or json, got {value!r}")
    return form


def secret_list(name: str, value: Any) -> tuple[str, ...]:
    """A comma-separated list (several secrets during a rotation) as its trimmed, non-empty members."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(item.strip() for item in items if item and item.strip())


def database_address(name: str, value: Any) -> str:
    """Unset (the embedded SQLite file), or a PostgreSQL (or SQLAlchemy sqlite:) URL."""
    url = text(name, value).strip()
    if url and not url.startswith(("postgres://", "postgresql://", "postgresql+", "sqlite:")):
        scheme = url.partition("://")[0]  # never the rest: it may hold a password
        raise ConfigError(
            f"{name} must start with postgresql:// (or postgres://), got {scheme!r}; leave it unset for SQLite"
        )
    return url


def secrets_text(name: str, value: Any) -> str:
    """Unset (empty), or a comma-separated list with at least one secret: a value of only blanks and commas would
    silently turn authentication off, so it is refused."""
    raw = text(name, value)
    if raw and not secret_list(name, raw):
        raise ConfigError(f"{name} must hold a secret, got only blanks and commas {raw!r}: set one, or unset it")
    return raw


def secret(name: str, value: Any) -> str:
    """Unset (empty), or a secret without surrounding blanks: a blank value would open what it guards to
    ?token=%20, so it is refused."""
    raw = text(name, value)
    if raw and not raw.strip():
        raise ConfigError(f"{name} must not be blank, got {raw!r}: set a secret, or unset it")
    return raw.strip()


def worker_count(name: str, value: Any) -> int:
    """A positive number of worker processes; blank means 2 × CPUs + 1, at most 9."""
    if value in (None, ""):
        return min(2 * (os.cpu_count() or 1) + 1, 9)
    return positive_int(name, value)


def _number(name: str, value: Any, kind: type, allow_zero: bool) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {'whole ' if kind is int else ''}number, got {value!r}") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'zero or more' if allow_zero else 'greater than zero'}, got {value!r}")
    return number


@dataclass(frozen=True)
class Setting:
    """One environment variable: its default, how it is parsed and checked, and its line in the README."""

    name: str
    default: Any
    parse: Parser
    doc: str
    shown_default: str = ""  # the README's default column when the value alone would not say it
    derived: tuple[str, Parser] | None = None  # a second app.config key computed from this one
    gunicorn_only: bool = False  # read by gunicorn.conf.py, never put in app.config

    def read(self, value: Any) -> Any:
        """The value parsed and checked; ConfigError naming the variable when it is unusable."""
        return self.parse(self.name, value)

    def readme_default(self) -> str:
        """How the default reads in the README table."""
        if self.shown_default:
            return self.shown_default
        if self.default == "":
            return "*(unset)*"
        return f"`{str(self.default).lower() if isinstance(self.default, bool) else self.default}`"


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "", database_address,
            "PostgreSQL, `postgresql://user:pass@host:5432/db` (`postgres://` works too)", "*(unset: SQLite file)*"),
    Setting("REDIS_URL", "", text, "e.g. `redis://default:pass@host:6379/0`", "*(unset: Redis step skipped)*"),
    Setting("CHATWOOT_WEBHOOK_SECRET", "", secrets_text,
            "the webhook secret; a comma-separated list accepts several during a rotation",
            "*(unset: no authentication)*", derived=("CHATWOOT_WEBHOOK_SECRETS", secret_list)),
    Setting("CHATWOOT_WEBHOOK_MAX_BODY_BYTES", 1024 * 1024, positive_int, "larger bodies get 413"),
    Setting("CHATWOOT_SIGNATURE_TOLERANCE_SECONDS", 300, positive_int,
            "how far an `X-Chatwoot-Timestamp` may be in the past or future"),
    Setting("DATABASE_CONNECT_TIMEOUT_SECONDS", 2, positive_int, "connect and pool-wait timeout"),
    Setting("DATABASE_STATEMENT_TIMEOUT_MS", 2000, positive_int,
            "PostgreSQL `statement_timeout` for web requests (a hung database cannot hold an answer past "
            "Chatwoot's 5 s)"),
    Setting("DATABASE_POOL_SIZE", 10, positive_int,
            "connections per worker; a request beyond them waits for one (up to `DATABASE_CONNECT_TIMEOUT_SECONDS`) "
            "rather than opening a connection that is closed again after it"),
    Setting("REDIS_TIMEOUT_SECONDS", 0.5, positive_float, "connect and read timeout for Redis"),
    Setting("CHATWOOT_DATABASE_URL", "", text,
            "connection to **Chatwoot's** PostgreSQL: reads accounts for backfill, renames, deletion marks, "
            "self-healing lookups and the doctor; writes only `dashboard_apps` (the company tab), when granted"),
    Setting("CHATWOOT_API_URL", "", text,
            "Chatwoot's address for its Platform API, with `CHATWOOT_PLATFORM_TOKEN`: the same as "
            "`CHATWOOT_DATABASE_URL` when there is no database access (only the accounts that platform app can see)"),
    Setting("CHATWOOT_PLATFORM_TOKEN", "", secret, "the platform app's access token for `CHATWOOT_API_URL`"),
    Setting("PUBLIC_URL", "", public_url,
            "this backend's public URL, e.g. `https://backend.example`: an absolute `http://` or `https://` address "
            "(start-up refuses anything else, as Chatwoot refuses such a tab URL); the doctor checks Chatwoot points at it"),
    Setting("CHATWOOT_DASHBOARD_APPS", True, boolean,
            "put the company tab (a Chatwoot Dashboard App) in every account, through `CHATWOOT_DATABASE_URL`; "
            "needs `PUBLIC_URL`"),
    Setting("CHATWOOT_DASHBOARD_APP_TITLE", "Empresa", tab_title, "the tab's title in Chatwoot"),
    Setting("RECONCILE_MAX_ATTEMPTS", 5, positive_int, "provisioning attempts before a company stays `failed`"),
    Setting("RECONCILE_BACKOFF_SECONDS", 30, non_negative_float,
            "wait before the 2nd retry, doubling after each failure (max 1 h); the 1st retry is immediate"),
    Setting("RECONCILE_BATCH_SIZE", 1000, positive_int, "rows per batch in the reconciler"),
    Setting("SELF_HEAL_TIMEOUT_SECONDS", 1.0, positive_float,
            "the most a lookup waits for Chatwoot when the company is unknown"),
    Setting("SELF_HEAL_NEGATIVE_TTL_SECONDS", 30, positive_int,
            'how long "Chatwoot does not have this account" is remembered'),
    Setting("CHATWOOT_URL", "", text,
            "Chatwoot's address, e.g. `https://chat.example.com`: the only site allowed to frame the dashboard page"),
    Setting("CHATWOOT_EMBED_SECRET", "", secret,
            "signed lookups: the lookup then needs `sig` (see *The dashboard inside Chatwoot*)",
            "*(unset: lookups open)*"),
    Setting("CHATWOOT_ADMIN_TOKEN", "", secret,
            "a second secret that opens the operator pages and both metrics endpoints (the webhook secret does too)"),
    Setting("EMBED_WAIT_SECONDS", 30, positive_float,
            'how long the iframe page waits for the company before it offers "Reintentar"'),
    Setting("RATELIMIT_ENABLED", True, boolean, "rate limits on/off"),
    Setting("RATELIMIT_AUTH_FAILURES", "20 per minute", rate_limit,
            "failed webhook authentications per client IP (then 429)"),
    Setting("RATELIMIT_LOOKUP", "300 per minute", rate_limit, "company lookups per client IP (then 429)"),
    Setting("TRUSTED_PROXY_COUNT", 0, non_negative_int,
            "proxies in front of the app (Railway, a load balancer: `1`), so limits see the real client IP"),
    Setting("LOG_LEVEL", "INFO", log_level, "`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL` (app and gunicorn)"),
    Setting("LOG_FORMAT", "text", log_format,
            "`json`: one JSON object per line (app and gunicorn), with `account_id` and `outcome`"),
    Setting("PORT", 8000, positive_int, "gunicorn listens on `0.0.0.0:$PORT`", gunicorn_only=True),
    Setting("WEB_CONCURRENCY", "", worker_count, "gunicorn worker processes", "`2 × CPUs + 1` (max 9)",
            gunicorn_only=True),
    Setting("GUNICORN_WORKER_CONNECTIONS", 1000, positive_int,
            "simultaneous connections per worker (gevent: a stalled client holds a connection, never a thread)",
            gunicorn_only=True),
)
APP_SETTINGS = tuple(setting for setting in SETTINGS if not setting.gunicorn_only)
_BY_NAME = {setting.name: setting for setting in SETTINGS}


def read_settings(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every app setting typed and checked, with derived values: defaults < environment < overrides.

    Override keys that are not settings (TESTING, SQLALCHEMY_...) pass through unchanged."""
    given = dict(overrides or {})
    settings = dict(given)
    for setting in APP_SETTINGS:
        settings[setting.name] = setting.read(given.get(setting.name, environ.get(setting.name, setting.default)))
        if setting.derived:
            derived_name, derive = setting.derived
            settings[derived_name] = derive(setting.name, settings[setting.name])
    return settings


def check_settings(environ: Mapping[str, str]) -> None:
    """Every declared setting, the app's and gunicorn's, checked at once: what a server runs before it starts
    workers, so a wrong value stops it with one ConfigError instead of a worker's traceback (the app reads its own
    again, with overrides, in load_settings)."""
    for setting in SETTINGS:
        read_setting(environ, setting.name)


@contextlib.contextmanager
def stop_on_wrong_setting(exit_code: int = 1) -> Iterator[None]:
    """Start-up code whose ConfigError stops the process with one line on stderr and a non-zero exit code, never a
    traceback."""
    try:
        yield
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(exit_code) from None


def read_setting(environ: Mapping[str, str], name: str) -> Any:
    """One declared setting from the environment, typed and checked (how gunicorn.conf.py reads its own)."""
    setting = _BY_NAME[name]
    return setting.read(environ.get(name, setting.default))


def load_settings(app: Flask, overrides: Mapping[str, Any] | None = None) -> None:
    """Parse the app's settings into app.config exactly once per app: defaults < environment < app.config <
    overrides. Later calls change nothing."""
    if SETTINGS_EXTENSION in app.extensions:
        return
    configured = {setting.name: app.config[setting.name] for setting in APP_SETTINGS if setting.name in app.config}
    settings = read_settings(os.environ, {**configured, **(overrides or {})})
    app.config.update(settings)
    app.extensions[SETTINGS_EXTENSION] = settings


def settings_table() -> str:
    """The README's configuration table (markdown), one row per declared setting, in declaration order."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{setting.name}` | {setting.readme_default()} | {setting.doc} |" for setting in SETTINGS]
    return "\n".join(rows) + "\n"


def with_settings_table(readme: str) -> str:
    """The README text with what lies between the settings-table markers replaced by the generated table."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"the README needs the markers {TABLE_START} and {TABLE_END}, in that order")
    return readme[: start + len(TABLE_START)] + "\n" + settings_table() + readme[end:]


def sqlalchemy_database_uri(database_url: str, instance_path: str) -> str:
    """Map DATABASE_URL to a SQLAlchemy URI: psycopg 3 for PostgreSQL, SQLite file when unset."""
    url = (database_url or "").strip()
    if not url:
        Path(instance_path).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(instance_path) / 'multibackend.db'}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return database_address("DATABASE_URL", url)


def engine_options(uri: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Pool and timeout options so that a hung database cannot hold a request past Chatwoot's 5 s."""
    if uri.startswith("sqlite:"):
        return {"connect_args": {"timeout": settings["DATABASE_CONNECT_TIMEOUT_SECONDS"]}}
    statement_timeout = settings["DATABASE_STATEMENT_TIMEOUT_MS"]
    return {
        # no pool_pre_ping: a round trip per request; a connection broken by a server restart is retried once
        # (extensions.once_more_if_disconnected) and SQLAlchemy then replaces the whole pool
        "pool_size": settings["DATABASE_POOL_SIZE"],
        # no overflow: a connection opened past the pool is closed on return, so a steady load just above the
        # pool size would pay a new PostgreSQL backend per request (measured: 2.3x fewer lookups per second)
        "max_overflow": 0,
        "pool_timeout": settings["DATABASE_CONNECT_TIMEOUT_SECONDS"],
        "connect_args": {
            "connect_timeout": settings["DATABASE_CONNECT_TIMEOUT_SECONDS"],
            "options": f"-c statement_timeout={statement_timeout}",
            "application_name": "multibackend",
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            # a partitioned network would otherwise hold a pooled connection's request for minutes
            "tcp_user_timeout": 3000,
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Print the README's configuration table, or rewrite it in the README with --write-readme."""
    parser = argparse.ArgumentParser(prog="python -m multibackend.config", description=main.__doc__)
    parser.add_argument("--write-readme", action="store_true", help=f"rewrite the table in {README_PATH}")
    if not parser.parse_args(argv).write_readme:
        print(settings_table(), end="")
        return
    try:
        readme = with_settings_table(README_PATH.read_text(encoding="utf-8"))
    except ValueError as exc:
        parser.error(str(exc))
    README_PATH.write_text(readme, encoding="utf-8")


if __name__ == "__main__":
    main()
