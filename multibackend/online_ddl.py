"""Changes to a live PostgreSQL table that never hold a lock across work and never wait one out.

- A change runs in a short transaction under `SET LOCAL lock_timeout`: it gets its lock at once or gives up, so
  nobody queues behind it, and is tried again with backoff; a lock that stays held raises `LockHeld`, naming the
  sessions that hold it (pid, how long their transaction has been open, their query).
- An index is built `CONCURRENTLY`, watched from a second connection that reports its phase and cancels it when it
  has waited on another transaction too long. What `build_index` finds under the index's name decides what it does:

  | found       | done                                                                  |
  |-------------|-----------------------------------------------------------------------|
  | nothing     | build it                                                              |
  | valid       | nothing                                                               |
  | building    | another session's build: wait for it, then look again                 |
  | invalid     | left by an interrupted build: `DROP INDEX CONCURRENTLY`, build again  |

- A backfill updates a range of keys per short transaction, with progress.
- Nothing outlives its transaction (no session `SET`, no session lock, no prepared statement), so it works the same
  behind a transaction-pooling PgBouncer. With `dry_run` it only records the statements it would run."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

Report = Callable[[str], None]

RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01", "40001"})  # lock_not_available, deadlock, serialization
QUERY_CANCELED = "57014"
UNIQUE_VIOLATION = "23505"
WATCH_INTERVAL_SECONDS = 0.5
PROGRESS_EVERY_SECONDS = 5.0

#: the lock modes whose holders a statement taking `mode` waits for (PostgreSQL's table-level conflict table); a
#: batch of UPDATEs (RowExclusiveLock) also waits for the row locks of other writers, so writers are named too
CONFLICTS = {
    "AccessShareLock": ("AccessExclusiveLock",),
    "RowExclusiveLock": ("RowExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"),
    "ShareUpdateExclusiveLock": ("ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
                                 "AccessExclusiveLock"),
    "AccessExclusiveLock": ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
                            "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"),
}

# sessions of this database holding (or queued for: an ACCESS EXCLUSIVE request blocks everyone) a conflicting lock
HOLDERS_SQL = text(
    """
    SELECT a.pid, EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start), a.state, a.query
    FROM pg_stat_activity a
    WHERE a.pid IN (SELECT l.pid FROM pg_locks l
                    WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                      AND l.relation = to_regclass(:table) AND l.mode = ANY(:modes)
                      AND (l.granted OR l.mode = 'AccessExclusiveLock'))
      AND a.pid <> pg_backend_pid()
    ORDER BY a.xact_start NULLS LAST
    LIMIT 3
    """
)
HOLDER_SQL = text(
    "SELECT pid, EXTRACT(EPOCH FROM clock_timestamp() - xact_start), state, query FROM pg_stat_activity WHERE pid = :pid"
)
ADVISORY_HOLDER_SQL = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 0 AND objid = :key AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
INDEX_STATE_SQL = text(
    """
    SELECT i.indrelid = to_regclass(:table), i.indrelid::regclass::text, i.indisvalid,
           EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
    FROM pg_index i WHERE i.indexrelid = to_regclass(:index)
    """
)
# a CONCURRENTLY statement of ours, found by the tag it starts with: the session it waits for, and its progress
WATCHED_SQL = text(
    """
    SELECT a.pid, (pg_blocking_pids(a.pid))[1], p.phase, p.blocks_total, p.blocks_done, p.tuples_total, p.tuples_done
    FROM pg_stat_activity a LEFT JOIN pg_stat_progress_create_index p ON p.pid = a.pid
    WHERE a.datname = current_database() AND a.state = 'active' AND starts_with(a.query, :tag)
    """
)
CANCEL_SQL = text(
    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = :pid AND state = 'active' AND starts_with(query, :tag)"
)


@dataclass(frozen=True)
class Holder:
    """A session holding a lock that a change needs."""

    pid: int
    transaction_seconds: float | None
    state: str | None
    query: str | None

    def __str__(self) -> str:
        age = "no transaction" if self.transaction_seconds is None else f"transaction open {self.transaction_seconds:.1f} s"
        query = " ".join((self.query or "").split())[:160]
        return f"pid {self.pid} ({age}, {self.state or 'unknown'}): {query}"


class LockHeld(Exception):
    """A change waited longer than the policy allows; every change before it is committed, the table is usable."""

    def __init__(self, what: str, holders: list[Holder], waited: float, left: str = ""):
        self.what, self.holders, self.waited = what, holders, waited
        named = "; ".join(str(holder) for holder in holders) or "a session that has since let go"
        super().__init__(f"{what}: waited {waited:.1f} s for {named}{left}")


class SchemaConflict(Exception):
    """The database holds something under a name the upgrade uses that is not what the upgrade would make."""


@dataclass(frozen=True)
class LockPolicy:
    """How long a change may wait: each try `lock_timeout_ms`, then backoff, for `max_wait_seconds` in all; an index
    build (which blocks nobody while it waits) on one other transaction for `max_build_wait_seconds`."""

    lock_timeout_ms: int = 300
    max_wait_seconds: float = 30.0
    max_build_wait_seconds: float = 300.0
    first_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 2.0

    def backoffs(self) -> Iterator[float]:
        delay = self.first_backoff_seconds
        while True:
            yield delay
            delay = min(delay * 2, self.max_backoff_seconds)


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a driver error, for psycopg 3 and psycopg2 alike."""
    original = getattr(error, "orig", error)
    return getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)


def ddl_engine(engine: Engine, connect_args: Mapping[str, Any] | None = None) -> Engine:
    """An engine on the same database, connecting as the app's engine does (its connect_args: search_path, SSL,
    timeouts), with no pool, no statement timeout (an index build on a large table takes a while) and no
    server-side prepared statements (psycopg 3 would prepare a repeated batch; a pooler cannot keep it)."""
    arguments = dict(connect_args or {})
    arguments["options"] = f"{arguments.get('options', '')} -c statement_timeout=0".strip()
    arguments["application_name"] = "multibackend init-db"
    if engine.url.get_driver_name() == "psycopg":
        arguments["prepare_threshold"] = None
    return create_engine(engine.url, poolclass=NullPool, connect_args=arguments)


@dataclass
class OnlineDDL:
    """Runs (or, dry, records) schema changes on a live database; `statements` lists what ran, in order."""

    engine: Engine
    report: Report
    policy: LockPolicy = field(default_factory=LockPolicy)
    dry_run: bool = False
    statements: list[str] = field(default_factory=list)

    # --- reading ------------------------------------------------------------------------------------------

    def read(self, statement: Any, parameters: Mapping[str, Any] | None = None, table: str = "companies") -> list[Any]:
        """Rows of one read, in a short transaction: never queued behind another session's ACCESS EXCLUSIVE."""

        def attempt(connection: Connection) -> list[Any]:
            with self.short_transaction(connection):
                return list(connection.execute(text(statement) if isinstance(statement, str) else statement, parameters or {}))

        return self.with_retries("reading the catalog", table, "AccessShareLock", attempt)

    def index_state(self, table: str, index: str) -> str:
        """'absent', 'valid', 'building' (a concurrent build in progress) or 'invalid' (left by one interrupted)."""
        rows = self.read(INDEX_STATE_SQL, {"table": table, "index": index}, table)
        if not rows:
            return "absent"
        on_table, owner, valid, building = rows[0]
        if not on_table:
            raise SchemaConflict(f"the name {index} is taken by an index on {owner}, not on {table}: rename that one")
        return "valid" if valid else "building" if building else "invalid"

    # --- one run at a time --------------------------------------------------------------------------------

    @contextmanager
    def one_run_at_a_time(self, key: int) -> Iterator[None]:
        """The whole run holds an advisory lock in a transaction of its own, so a second run (two release steps
        at once) waits for the first. That transaction reads nothing, so it keeps no snapshot an index build would
        wait for, and it pins its connection, so a transaction pooler keeps the lock where it was taken."""
        if self.dry_run:
            yield
            return
        started = said = time.monotonic()
        with self.engine.connect() as connection, connection.begin():
            connection.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
            # a literal, not a bound parameter: a bound statement's portal would keep its snapshot open to the end
            # (and nothing else in it: every other read of this loop goes through a connection of its own)
            while not connection.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({int(key)})").scalar():
                waited = time.monotonic() - started
                holder = next(iter(self.read(ADVISORY_HOLDER_SQL, {"key": key})), [None])[0]
                if waited > self.policy.max_build_wait_seconds:
                    raise LockHeld("another init-db", [], waited)
                if said == started or time.monotonic() - said >= PROGRESS_EVERY_SECONDS:
                    self.report(f"another init-db (pid {holder}) is upgrading this database: waiting for it to finish")
                    said = time.monotonic()
                time.sleep(WATCH_INTERVAL_SECONDS)
            yield

    # --- changes ------------------------------------------------------------------------------------------

    def change(self, table: str, statements: list[str], mode: str = "AccessExclusiveLock") -> None:
        """Run the statements in one short transaction, retried with backoff for the policy's wait."""
        self.statements.append(self.framed(statements))
        if self.dry_run:
            return

        def attempt(connection: Connection) -> None:
            with self.short_transaction(connection):
                for statement in statements:
                    connection.exec_driver_sql(statement)

        self.with_retries(statements[0], table, mode, attempt)

    @contextmanager
    def short_transaction(self, connection: Connection) -> Iterator[None]:
        """A transaction that gives up on any lock after lock_timeout, and has no statement timeout (a VALIDATE or
        a batch on a large table may take a while; it holds nothing others wait for)."""
        with connection.begin():
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = {int(self.policy.lock_timeout_ms)}")
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            yield

    def framed(self, statements: list[str]) -> str:
        """The statements as short_transaction runs them, for the dry run's listing."""
        body = "\n".join(f"{statement};" for statement in statements)
        return f"BEGIN;\nSET LOCAL lock_timeout = {int(self.policy.lock_timeout_ms)};\nSET LOCAL statement_timeout = 0;\n{body}\nCOMMIT;"

    def with_retries(self, what: str, table: str, mode: str, attempt: Callable[[Connection], Any]) -> Any:
        """attempt(connection) until it gets its locks; LockHeld, naming the holders, once the wait is used up."""
        started = time.monotonic()
        backoffs = self.policy.backoffs()
        while True:
            with self.engine.connect() as connection:
                try:
                    return attempt(connection)
                except DBAPIError as exc:
                    if sqlstate(exc) not in RETRYABLE_SQLSTATES:
                        raise
            holders = self.holders(table, mode)
            waited = time.monotonic() - started
            if waited >= self.policy.max_wait_seconds:
                raise LockHeld(summary(what), holders, waited)
            delay = next(backoffs)
            named = holders[0] if holders else "a session that has since let go"
            self.report(f"waiting for a lock on {table}, held by {named}; trying again in {delay:.1f} s")
            time.sleep(delay)

    def holders(self, table: str, mode: str) -> list[Holder]:
        """The sessions holding locks on the table that conflict with `mode`, oldest transaction first."""
        with self.engine.connect() as connection:
            rows = connection.execute(HOLDERS_SQL, {"table": table, "modes": list(CONFLICTS[mode])})
            return [Holder(*row) for row in rows]

    def backfill(self, table: str, what: str, batch: Callable[[Connection, int, int], tuple[int, int]],
                 keys: tuple[int, int], total: int) -> int:
        """batch(connection, after, last) -> (its own last key, rows it updated), for the keys after keys[0] up to
        keys[1], each batch in a short transaction; says how far it is every few seconds. Returns the rows updated."""
        after, last = keys
        done, said = 0, time.monotonic()

        def attempt(connection: Connection) -> tuple[int, int]:
            with self.short_transaction(connection):
                return batch(connection, after, last)

        while after < last:
            after, updated = self.with_retries(what, table, "RowExclusiveLock", attempt)
            done += updated
            if time.monotonic() - said >= PROGRESS_EVERY_SECONDS:
                self.report(f"{what}: {done:,} of {total:,} rows ({100 * done // max(total, 1)} %)")
                said = time.monotonic()
        self.report(f"{what}: {done:,} rows done")
        return done

    # --- indexes ------------------------------------------------------------------------------------------

    def build_index(self, table: str, index: str, create_sql: str) -> None:
        """CREATE [UNIQUE] INDEX CONCURRENTLY, as the table at the top of this module says. Raises LockHeld when the
        build waited on another transaction past the policy (it is cancelled; the next run rebuilds it), and the
        driver's error when the rows break a UNIQUE index."""
        for _ in range(3):
            state = self.index_state(table, index)
            if state == "valid":
                return
            if state == "building" and not self.dry_run:
                self.report(f"index {index} is being built by another session: waiting for it")
                self._wait_while_built_elsewhere(table, index)
                continue
            if state == "invalid":
                self.report(f"index {index} was left invalid by an interrupted build: dropping it to build it again")
                self.concurrently(f"dropping index {index}", f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
            self.report(f"building index {index} on {table} (CONCURRENTLY: reads and writes go on)")
            try:
                self.concurrently(f"index {index}", create_sql)
            except DBAPIError as exc:  # a lock_timeout or deadlock the server's own settings gave it
                if sqlstate(exc) not in RETRYABLE_SQLSTATES:
                    raise
                self.report(f"index {index}: {type(exc.orig).__name__}, building it again")
                continue
            if self.dry_run:
                return
        raise RuntimeError(f"index {index} could not be built: another session keeps rebuilding it")

    def concurrently(self, label: str, statement: str) -> None:
        """One CONCURRENTLY statement (outside any transaction), watched from a second connection: its phase is
        reported, and a wait on another transaction longer than the policy allows is cancelled as LockHeld."""
        self.statements.append(f"{statement};")
        if self.dry_run:
            return
        watch = StatementWatch(self, label)
        with watch.running(), self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            try:
                connection.exec_driver_sql(f"{watch.tag} {statement}")
            except DBAPIError as exc:
                if sqlstate(exc) == QUERY_CANCELED and watch.cancelled is not None:
                    left = f"; {label} is left invalid: the next init-db drops it and builds it again"
                    raise LockHeld(summary(statement), watch.cancelled, watch.waited, left) from None
                raise

    def _wait_while_built_elsewhere(self, table: str, index: str) -> None:
        started = time.monotonic()
        while self.index_state(table, index) == "building":
            if time.monotonic() - started > self.policy.max_build_wait_seconds:
                raise LockHeld(f"index {index} built by another session", [], time.monotonic() - started)
            time.sleep(WATCH_INTERVAL_SECONDS)


class StatementWatch:
    """Watches one CONCURRENTLY statement (found by `tag`, a comment it starts with) from its own connection: says
    its phase and how far it is, and cancels it once it has waited on one other transaction longer than the policy
    allows (`cancelled` names who)."""

    def __init__(self, ddl: OnlineDDL, label: str):
        self.ddl, self.label = ddl, label
        self.tag = f"/* multibackend init-db {uuid.uuid4().hex} */"
        self.cancelled: list[Holder] | None = None
        self.waited = 0.0
        self._done = threading.Event()

    @contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self._watch, name=f"watch {self.label}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._done.set()
            thread.join()

    def _watch(self) -> None:
        try:
            with self.ddl.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                self._watch_on(connection)
        except Exception as exc:  # noqa: BLE001 - the statement goes on unwatched; say so, never break it
            self.ddl.report(f"{self.label}: no longer watched ({type(exc).__name__}); it goes on without a time limit")

    def _watch_on(self, connection: Connection) -> None:
        said, said_phase, waiting_since, waiting_for = 0.0, None, 0.0, None
        while not self._done.wait(WATCH_INTERVAL_SECONDS):
            row = connection.execute(WATCHED_SQL, {"tag": self.tag}).first()
            if row is None:
                continue
            pid, blocker, phase, *progress = row
            now = time.monotonic()
            if blocker != waiting_for:
                waiting_since, waiting_for = now, blocker
            if (phase and phase != said_phase) or now - said >= PROGRESS_EVERY_SECONDS:
                self.ddl.report(f"{self.label}: {phase or 'running'}{done_part(*progress)}"
                                + (f", waiting for {holder_of(connection, blocker)}" if blocker else ""))
                said, said_phase = now, phase
            if blocker and now - waiting_since > self.ddl.policy.max_build_wait_seconds:
                self.waited, self.cancelled = now - waiting_since, [holder_of(connection, blocker)]
                connection.execute(CANCEL_SQL, {"pid": pid, "tag": self.tag})
                return


def holder_of(connection: Connection, pid: int) -> Holder:
    row = connection.execute(HOLDER_SQL, {"pid": pid}).first()
    return Holder(*row) if row else Holder(pid, None, None, None)


def done_part(blocks_total: int | None, blocks_done: int, tuples_total: int | None, tuples_done: int) -> str:
    if blocks_total:
        return f" ({100 * blocks_done // blocks_total} % of {blocks_total:,} blocks)"
    if tuples_total:
        return f" ({100 * tuples_done // tuples_total} % of {tuples_total:,} rows)"
    return ""


def summary(statement: str) -> str:
    return " ".join(statement.split())[:120]
