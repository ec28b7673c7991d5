"""Changes to a live PostgreSQL table that never hold a lock across work and never wait one out.

Each change runs in its own short transaction under `SET LOCAL lock_timeout`: it either gets its lock at once or
gives up, lets the queue behind it go, and is tried again with backoff; a lock that stays held is reported with
its holder (`LockHeld`). Indexes are built CONCURRENTLY with progress, and one left invalid by an interrupted
build is dropped and built again. Nothing outlives a transaction (no `SET`, no session lock, no prepared
statement), so it works the same behind a transaction-pooling PgBouncer. With `dry_run` it only records the
statements it would run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

Report = Callable[[str], None]

RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01", "40001"})  # lock_not_available, deadlock, serialization
QUERY_CANCELED = "57014"
DUPLICATE_STATES = frozenset({"42P07", "42710"})  # duplicate table/object: another run made the same change meanwhile
UNIQUE_VIOLATION = "23505"
WATCH_INTERVAL_SECONDS = 0.5
PROGRESS_EVERY_SECONDS = 5.0

#: lock modes that conflict with the one a statement takes (PostgreSQL's table-level lock matrix)
CONFLICTS = {
    "AccessExclusiveLock": ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
                            "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"),
    "ShareUpdateExclusiveLock": ("ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
                                 "AccessExclusiveLock"),
    "RowExclusiveLock": ("RowExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"),
}

HOLDERS_SQL = text(
    """
    SELECT a.pid, EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start), a.state, a.query
    FROM pg_stat_activity a
    WHERE a.pid IN (SELECT l.pid FROM pg_locks l WHERE l.relation = to_regclass(:table) AND l.granted
                    AND l.mode = ANY(:modes))
      AND a.pid <> pg_backend_pid()
    ORDER BY a.xact_start NULLS LAST
    LIMIT 3
    """
)
HOLDER_SQL = text(
    "SELECT pid, EXTRACT(EPOCH FROM clock_timestamp() - xact_start), state, query FROM pg_stat_activity WHERE pid = :pid"
)
INDEX_STATE_SQL = text(
    """
    SELECT i.indisvalid,
           EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
    FROM pg_index i WHERE i.indexrelid = to_regclass(:index)
    """
)
# a CONCURRENTLY statement of ours as it runs: the transaction it waits for, if any, and its index build's progress
WATCHED_SQL = text(
    """
    SELECT a.pid, (pg_blocking_pids(a.pid))[1], p.phase, p.blocks_total, p.blocks_done, p.tuples_total, p.tuples_done
    FROM pg_stat_activity a LEFT JOIN pg_stat_progress_create_index p ON p.pid = a.pid
    WHERE a.query = :statement AND a.state = 'active' AND a.pid <> pg_backend_pid()
    """
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
    """A lock stayed held past the wait allowed; the table was left as it was before the change."""

    def __init__(self, what: str, holders: list[Holder], waited: float):
        self.what, self.holders, self.waited = what, holders, waited
        named = "; ".join(str(holder) for holder in holders) or "a session that has since let go"
        super().__init__(f"{what}: a lock stayed held for {waited:.1f} s by {named}")


@dataclass(frozen=True)
class LockPolicy:
    """How long a change may wait for its lock: each try `lock_timeout_ms`, then backoff, for `max_wait_seconds`."""

    lock_timeout_ms: int = 300
    max_wait_seconds: float = 30.0
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


def ddl_engine(engine: Engine) -> Engine:
    """An engine on the same database for schema changes: no pool, no statement timeout of the web requests', no
    server-side prepared statements (psycopg 3 would prepare a repeated batch; a pooler cannot keep it)."""
    url = make_url(engine.url)
    connect_args: dict[str, Any] = {"application_name": "multibackend init-db"}
    if url.get_driver_name() == "psycopg":
        connect_args["prepare_threshold"] = None
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


@dataclass
class OnlineDDL:
    """Runs (or, dry, records) schema changes on a live database; `statements` lists what ran, in order."""

    engine: Engine
    report: Report
    policy: LockPolicy = field(default_factory=LockPolicy)
    dry_run: bool = False
    statements: list[str] = field(default_factory=list)

    # --- reading the catalog (never locks more than a reader) -----------------------------------------------

    def read(self, statement: Any, parameters: dict[str, Any] | None = None) -> list[Any]:
        """Rows of one read-only statement, in a transaction of its own."""
        with self.engine.connect() as connection:
            return list(connection.execute(statement if not isinstance(statement, str) else text(statement), parameters or {}))

    def index_state(self, index: str) -> str:
        """'absent', 'valid', 'building' (a concurrent build in progress) or 'invalid' (left by one interrupted)."""
        rows = self.read(INDEX_STATE_SQL, {"index": index})
        if not rows:
            return "absent"
        valid, building = rows[0]
        return "valid" if valid else "building" if building else "invalid"

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
            # a literal, not a bound parameter: a bound statement's portal would keep its snapshot open to the end
            while not connection.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({int(key)})").scalar():
                if time.monotonic() - said >= PROGRESS_EVERY_SECONDS or said == started:
                    self.report("another init-db is upgrading this database: waiting for it to finish")
                    said = time.monotonic()
                time.sleep(WATCH_INTERVAL_SECONDS)
            yield

    # --- changes ------------------------------------------------------------------------------------------

    def change(self, table: str, statements: list[str], mode: str = "AccessExclusiveLock") -> None:
        """Run the statements in one short transaction, retried with backoff for the policy's wait; a change
        another run made meanwhile counts as done."""
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
                    state = sqlstate(exc)
                    if state in DUPLICATE_STATES:
                        return None
                    if state not in RETRYABLE_SQLSTATES:
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
        rows = self.read(HOLDERS_SQL, {"table": table, "modes": list(CONFLICTS[mode])})
        return [Holder(*row) for row in rows]

    def backfill(self, table: str, what: str, batch_sql: str, total: int, keys: tuple[int, int], batch_size: int) -> int:
        """Run batch_sql (`:after`, `:last`, `:batch` -> the keys it updated, RETURNING) from keys[0] until it updates
        nothing, each batch its own short transaction; says how far it is every few seconds. Returns the rows updated."""
        after, last_key = keys
        first_batch = batch_sql.replace(":after", str(after)).replace(":last", str(last_key)).replace(":batch", str(batch_size))
        self.statements.append(self.framed([first_batch]) + f"\n-- repeated with the last key as :after until no row is left ({total} rows)")
        if self.dry_run or total == 0:
            return 0
        done, said = 0, time.monotonic()

        def one_batch(connection: Connection) -> list[int]:
            with self.short_transaction(connection):
                return [row[0] for row in connection.execute(text(batch_sql), {"after": after, "last": last_key, "batch": batch_size})]

        while keys := self.with_retries(what, table, "RowExclusiveLock", one_batch):
            after, done = max(keys), done + len(keys)
            if time.monotonic() - said >= PROGRESS_EVERY_SECONDS:
                self.report(f"{what}: {done:,} of {total:,} rows ({100 * done // max(total, 1)} %)")
                said = time.monotonic()
        self.report(f"{what}: {done:,} rows done")
        return done

    def build_index(self, table: str, index: str, create_sql: str) -> None:
        """CREATE [UNIQUE] INDEX CONCURRENTLY, reporting its phase; an invalid leftover is dropped first, a build by
        another run is waited for. Raises LockHeld when the build waited on another transaction past the policy's
        wait (it is cancelled; the next run rebuilds), and the driver's error when the rows break a UNIQUE index."""
        for _ in range(3):
            state = self.index_state(index)
            if state == "valid":
                return
            if state == "building" and not self.dry_run:
                self.report(f"index {index} is being built by another session: waiting for it")
                self._wait_while_built_elsewhere(index)
                continue
            if state == "invalid":
                self.report(f"index {index} was left invalid by an interrupted build: dropping it to build it again")
                self.concurrently(f"dropping index {index}", f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
            self.report(f"building index {index} on {table} (CONCURRENTLY: reads and writes go on)")
            self.concurrently(f"index {index}", create_sql)
            if self.dry_run:
                return
        raise RuntimeError(f"index {index} could not be built: another session keeps rebuilding it")

    def concurrently(self, label: str, statement: str) -> None:
        """One CONCURRENTLY statement (outside any transaction), watched from a second connection: its phase is
        reported, and a wait on another transaction longer than the policy allows is cancelled as LockHeld."""
        self.statements.append(f"{statement};")
        if self.dry_run:
            return
        watch = StatementWatch(self, label, statement)
        with watch.running():
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                try:
                    connection.exec_driver_sql(statement)
                except DBAPIError as exc:
                    if sqlstate(exc) == QUERY_CANCELED and watch.cancelled is not None:
                        raise LockHeld(summary(statement), watch.cancelled, watch.waited) from None
                    raise

    def _wait_while_built_elsewhere(self, index: str) -> None:
        started = time.monotonic()
        while self.index_state(index) == "building":
            if time.monotonic() - started > self.policy.max_wait_seconds:
                raise LockHeld(f"index {index} built by another session", [], time.monotonic() - started)
            time.sleep(WATCH_INTERVAL_SECONDS)


class StatementWatch:
    """Watches one CONCURRENTLY statement from its own connection: says its phase and how far it is, and cancels it
    when it has waited on another transaction longer than the policy allows (`cancelled` names who)."""

    def __init__(self, ddl: OnlineDDL, label: str, statement: str):
        self.ddl, self.label, self.statement = ddl, label, statement
        self.cancelled: list[Holder] | None = None
        self.waited = 0.0
        self._done = threading.Event()

    @contextmanager
    def running(self) -> Iterator[None]:
        thread = threading.Thread(target=self._watch, name="watch a concurrent statement", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._done.set()
            thread.join()

    def _watch(self) -> None:
        said, said_phase, waiting_since = 0.0, None, None
        with self.ddl.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            while not self._done.wait(WATCH_INTERVAL_SECONDS):
                row = connection.execute(WATCHED_SQL, {"statement": self.statement}).first()
                if row is None:
                    continue
                pid, blocker, phase, *progress = row
                now = time.monotonic()
                waiting_since = (waiting_since or now) if blocker else None
                if (phase and phase != said_phase) or now - said >= PROGRESS_EVERY_SECONDS:
                    self.ddl.report(f"{self.label}: {phase or 'running'}{done_part(*progress)}"
                                    + (f", waiting for {holder_of(connection, blocker)}" if blocker else ""))
                    said, said_phase = now, phase
                if waiting_since is not None and now - waiting_since > self.ddl.policy.max_wait_seconds:
                    self.waited = now - waiting_since
                    self.cancelled = [holder_of(connection, blocker)]
                    connection.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
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
