#!/usr/bin/env python3
"""Measure how the release-phase upgrade, `flask --app wsgi chatwoot init-db`, disturbs a live seed-era `companies`
table while the old deployment keeps reading and inserting.

    python bench/online_upgrade.py                       1,000,000 rows; scenarios first, rerun, long_transaction
    python bench/online_upgrade.py --smoke               20,000 rows and a 3 s holder (a quick check)
    python bench/online_upgrade.py --rows 200000 --scenarios first,rerun --json upgrade.json

A measurement, not a gate: init-db's exit code and the load's waits and failures are reported, never asserted; the
exit status is non-zero only when the harness itself broke.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

if __name__ == "__main__":  # re-run with the project's .venv when this Python lacks its packages (as bench/run.py)
    sys.path.insert(0, str(REPO))
    if not all(importlib.util.find_spec(name) for name in ("click", "flask", "psycopg", "redis")):
        venv_python = REPO / ".venv" / "bin" / "python"
        if not venv_python.exists() or os.environ.get("BENCH_REEXEC"):
            sys.exit("missing Python packages: pip install -r requirements-bench.txt")
        os.environ["BENCH_REEXEC"] = "1"
        os.execv(venv_python, [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]])

import click  # noqa: E402
import psycopg  # noqa: E402

from bench.database import checkpoint, database_url, drop_database, recreate_database  # noqa: E402

logger = logging.getLogger("bench.online_upgrade")

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
SCENARIOS = ("first", "rerun", "settled", "long_transaction")
LOAD_THREADS = 6
LEAD_S = TRAIL_S = 1.0  # the load starts this long before init-db and stops this long after it exits
LOAD_STATEMENT_TIMEOUT_MS = 30_000
INIT_DB_TIMEOUT_S = 1800  # the harness kills a hung init-db after this
TAIL_LINES, SLOW_S = 15, 1.0
# the load's new accounts: above every seeded id, one block per measured run, one stride per thread
NEW_ACCOUNT_BASE, NEW_ACCOUNT_BLOCK, NEW_ACCOUNT_STRIDE = 10**9, 10**8, 10**7

SEED_TABLE = """CREATE TABLE companies (id SERIAL PRIMARY KEY, company_id VARCHAR(64) NOT NULL,
    company_name VARCHAR(255) NOT NULL, chatwoot_account_id VARCHAR(50), created_at TIMESTAMP DEFAULT now())"""
SEED_ROWS = """INSERT INTO companies (company_id, company_name, chatwoot_account_id)
    SELECT 'chatwoot_' || i, 'Company ' || i, i::text FROM generate_series(1, %s::bigint) AS i"""
SEED_CONSTRAINT = "ALTER TABLE companies ADD CONSTRAINT unique_chatwoot_account UNIQUE (chatwoot_account_id)"
LOOKUP = "SELECT id, company_id, company_name FROM companies WHERE chatwoot_account_id = %s"
INSERT = "INSERT INTO companies (company_id, company_name, chatwoot_account_id) VALUES (%(0)s, %(1)s, %(2)s)"
INSERT_NAMED = ("INSERT INTO companies (company_id, company_name, chatwoot_account_id, redis_prefix, vectorstore_index)"
                " VALUES (%(0)s, %(1)s, %(2)s, %(prefix)s, %(index)s)")
INDEXES = """SELECT c.relname, ix.indisunique, ix.indisvalid,
       array_agg(coalesce(a.attname, '(expression)') ORDER BY k.ord)
FROM pg_index ix JOIN pg_class c ON c.oid = ix.indexrelid
CROSS JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum
WHERE ix.indrelid = 'companies'::regclass GROUP BY 1, 2, 3 ORDER BY 1"""
CHECKS = "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = 'companies'::regclass AND contype = 'c'"
HAS_REDIS_PREFIX = "SELECT 1 FROM pg_attribute WHERE attrelid = 'companies'::regclass AND attname = 'redis_prefix'"
MISSING_PREFIX = """SELECT count(*), count(*) FILTER (WHERE id <= %s) FROM companies
    WHERE chatwoot_account_id IS NOT NULL AND redis_prefix IS NULL"""


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    """A connection of the old deployment: no prepared statements, a 30 s statement timeout."""
    return psycopg.connect(url, autocommit=autocommit, prepare_threshold=None,
                           options=f"-c statement_timeout={LOAD_STATEMENT_TIMEOUT_MS}")


def seed_database(admin_url: str, rows: int, created: list[str]) -> str:
    """A fresh database holding the old setup guide's companies table with rows 1..rows, vacuumed; returns its URL."""
    name = f"multibackend_upgrade_{secrets.token_hex(4)}"
    created.append(name)  # main drops it, also when seeding fails half-way
    url, started = recreate_database(admin_url, name), time.perf_counter()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(SEED_TABLE)
        connection.execute(SEED_ROWS, (rows,))
        connection.execute(SEED_CONSTRAINT)  # after the rows: one index build, the same catalog as the guide's order
        connection.execute("VACUUM ANALYZE companies")
    checkpoint(admin_url)  # the seed's dirty buffers are not written out during a measured run
    logger.info("seeded %s with %s rows in %.1f s", name, f"{rows:,}", time.perf_counter() - started)
    return url


class Load:
    """LOAD_THREADS connections of the old deployment, each alternating a lookup of a seeded account and a plain
    INSERT of a new one, every statement timed, from entering the block until leaving it."""

    def __init__(self, url: str, rows: int, block: int, named: bool = False) -> None:
        self.url, self.rows, self.block, self.stop, self.lock = url, rows, block, threading.Event(), threading.Lock()
        self.insert = INSERT_NAMED if named else INSERT
        self.samples: list[list[tuple[float, float, str, str | None]]] = [[] for _ in range(LOAD_THREADS)]
        self.failures: Counter[str] = Counter()
        self.first_messages: dict[str, str] = {}
        self.threads = [threading.Thread(target=self._run, args=(n, connect(url)), daemon=True)
                        for n in range(LOAD_THREADS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, error: type[BaseException] | None, *details: object) -> None:
        self.stop.set()
        for thread in self.threads if error is None else ():  # on an error or Ctrl-C the database's drop ends them
            thread.join()

    def _run(self, n: int, connection: psycopg.Connection) -> None:
        rng, first_new = random.Random(n), NEW_ACCOUNT_BASE + self.block * NEW_ACCOUNT_BLOCK + n * NEW_ACCOUNT_STRIDE
        for counter in range(1, NEW_ACCOUNT_STRIDE):
            if self.stop.is_set():
                break
            if counter % 2:
                kind, sql, parameters = "select", LOOKUP, (str(rng.randint(1, self.rows)),)
            else:
                account = first_new + counter // 2
                kind, sql, parameters = "insert", self.insert, {
                    "0": f"chatwoot_{account}", "1": f"Company {account}", "2": str(account),
                    "prefix": f"chatwoot_{account}:", "index": f"chatwoot_{account}_documents"}
            error, started = None, time.perf_counter()
            try:
                cursor = connection.execute(sql, parameters)
                if kind == "select":
                    cursor.fetchall()
            except Exception as exc:  # noqa: BLE001 - every failure is a figure of the measurement
                error = self._record_failure(exc)
            self.samples[n].append((started, time.perf_counter() - started, kind, error))
            while connection.closed and not self.stop.is_set():  # broken: reconnect, each failed attempt counted
                try:
                    connection = connect(self.url)
                except Exception as exc:  # noqa: BLE001
                    self._record_failure(exc)
                    time.sleep(0.2)
        connection.close()

    def _record_failure(self, exc: Exception) -> str:
        """Count a failure by its type and SQLSTATE, keep the first message of each; returns the key."""
        key = f"{type(exc).__name__} ({exc.sqlstate})" if getattr(exc, "sqlstate", None) else type(exc).__name__
        with self.lock:
            self.failures[key] += 1
            self.first_messages.setdefault(key, str(exc).strip())
        return key

    def summary(self, origin: float) -> dict:
        """Counts, failures, p99 and max latency, and the 3 slowest statements (started at seconds from origin)."""
        samples = sorted((sample for thread in self.samples for sample in thread), key=lambda sample: sample[1])
        kinds = Counter(sample[2] for sample in samples)
        return {
            "statements": len(samples), "selects": kinds["select"], "inserts": kinds["insert"],
            "failures": sum(self.failures.values()), "failures_by_type": dict(self.failures),
            "first_failure_messages": self.first_messages,
            "p99_ms": round(samples[int(0.99 * (len(samples) - 1))][1] * 1000, 1) if samples else None,
            "max_ms": round(samples[-1][1] * 1000, 1) if samples else None,
            "over_1s": sum(sample[1] > SLOW_S for sample in samples),
            "slowest": [{"kind": kind, "at_s": round(started - origin, 3), "ms": round(latency * 1000, 1),
                         "error": error} for started, latency, kind, error in reversed(samples[-3:])],
        }


def hold_transaction(url: str, hold_s: float, holder: dict, counted: threading.Event) -> None:
    """The long reader: count companies in a transaction, stay idle in it for hold_s, COMMIT; moments into holder."""
    try:
        with connect(url, autocommit=False) as connection:
            holder["pid"] = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
            connection.commit()
            connection.execute("SELECT count(*) FROM companies").fetchone()  # BEGIN: the transaction starts here
            holder["counted"] = time.perf_counter()
            counted.set()
            time.sleep(hold_s)
            connection.commit()
            holder["committed"] = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - e.g. init-db ended this backend: reported, not raised
        holder["error"] = f"{type(exc).__name__}: {str(exc).strip()}"
    finally:
        counted.set()


def run_init_db(url: str) -> tuple[float, dict, str]:
    """Run init-db as a release does (a subprocess): when it started (perf_counter), its figures, its output."""
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": ""}
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "chatwoot", "init-db"]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, timeout=INIT_DB_TIMEOUT_S)
        exit_code, output = completed.returncode, completed.stdout
    except subprocess.TimeoutExpired as expired:
        partial = expired.output.decode(errors="replace") if isinstance(expired.output, bytes) else expired.output
        exit_code, output = None, f"{partial or ''}\n[harness] init-db killed after {INIT_DB_TIMEOUT_S} s"
    wall = time.perf_counter() - started
    logger.info("init-db exited %s after %.2f s", exit_code, wall)
    figures = {"exit_code": exit_code, "wall_s": round(wall, 3), "output_tail": output.splitlines()[-TAIL_LINES:]}
    return started, figures, output


def measure_upgrade(url: str, rows: int, block: int, hold_s: float | None = None, named: bool = False) -> dict:
    """init-db under the old deployment's load (with `named`, the upgraded code's inserts, which write the tenant
    names), and with a long read transaction open when hold_s is given."""
    holder: dict = {}
    counted = threading.Event()
    holding = threading.Thread(target=hold_transaction, args=(url, hold_s, holder, counted), daemon=True)
    with Load(url, rows, block, named) as load:
        if hold_s:
            holding.start()
            counted.wait()
        time.sleep(LEAD_S)
        origin, result, output = run_init_db(url)
        time.sleep(TRAIL_S)
    result = {"rows": rows, **result, "load": load.summary(origin)}
    if hold_s:
        holding.join()
        named = re.compile(rf"(?<![\d:,.-]){holder.get('pid')}(?![\d:,.-])")  # not a digit run of a timestamp
        result["holder"] = {"pid": holder.get("pid"), "hold_s": hold_s, "error": holder.get("error"),
                            "pid_in_output": "pid" in holder and named.search(output) is not None,
                            **{f"{moment}_at_s": round(holder[moment] - origin, 3)
                               for moment in ("counted", "committed") if moment in holder}}
    return result


def catalog_facts(url: str, rows: int) -> dict:
    """What the upgrade left on companies: its indexes (unique ones with their columns), CHECK constraints, and the
    Chatwoot rows still without a redis_prefix (None without the column; seeded ones are ids 1..rows)."""
    with psycopg.connect(url, autocommit=True) as connection:
        indexes = connection.execute(INDEXES).fetchall()
        unique = [{"index": name, "valid": valid, "columns": columns}
                  for name, is_unique, valid, columns in indexes if is_unique]
        has_prefix = connection.execute(HAS_REDIS_PREFIX).fetchone() is not None
        missing = connection.execute(MISSING_PREFIX, (rows,)).fetchone() if has_prefix else (None, None)
        checks = connection.execute(CHECKS + " ORDER BY 1").fetchall()
        return {
            "unique_indexes": unique,
            "unique_on_chatwoot_account_id_only": sum(index["columns"] == ["chatwoot_account_id"] for index in unique),
            "invalid_indexes": [name for name, _, valid, _ in indexes if not valid],
            "check_constraints": [{"name": name, "validated": validated} for name, validated in checks],
            "rows_missing_redis_prefix": missing[0], "seeded_rows_missing_redis_prefix": missing[1],
        }


def run_scenarios(admin_url: str, chosen: list[str], rows: int, long_rows: int, hold_s: float,
                  created: list[str]) -> dict:
    """Each chosen scenario (first and rerun share a database, long_transaction has its own); each one's catalog."""
    report: dict = {"scenarios": {}, "catalog": {}}
    if "first" in chosen:
        url = seed_database(admin_url, rows, created)
        report["scenarios"]["first"] = measure_upgrade(url, rows, block=0)
        if "rerun" in chosen:
            report["scenarios"]["rerun"] = measure_upgrade(url, rows, block=1)
        if "settled" in chosen:  # a later release: the serving code already writes the tenant names
            run_init_db(url)  # fills what rerun's load inserted after rerun's fill: nothing is left to do
            report["scenarios"]["settled"] = measure_upgrade(url, rows, block=3, named=True)
        report["catalog"]["first"] = catalog_facts(url, rows)
    if "long_transaction" in chosen:
        url = seed_database(admin_url, long_rows, created)
        report["scenarios"]["long_transaction"] = measure_upgrade(url, long_rows, block=2, hold_s=hold_s)
        report["catalog"]["long_transaction"] = catalog_facts(url, long_rows)
    return report


def format_report(report: dict) -> str:
    """The figures as a table; per scenario init-db's output tail, failures and slowest statements; the catalogs."""
    lines = [f"{'scenario':<17}{'rows':>10}{'exit':>6}{'wall s':>9}{'statements':>12}{'failures':>10}"
             f"{'p99 ms':>10}{'max ms':>10}{'>1 s':>6}"]
    for name, result in report["scenarios"].items():
        load = result["load"]
        lines.append(f"{name:<17}{result['rows']:>10,}{str(result['exit_code']):>6}{result['wall_s']:>9.2f}"
                     f"{load['statements']:>12,}{load['failures']:>10,}{load['p99_ms'] or 0:>10.1f}"
                     f"{load['max_ms'] or 0:>10.1f}{load['over_1s']:>6}")
    for name, result in report["scenarios"].items():
        lines.append(f"\n{name}: init-db exit {result['exit_code']} in {result['wall_s']:.2f} s; output tail:")
        lines += [f"    | {line}" for line in result["output_tail"]] or ["    | (no output)"]
        for key, count in result["load"]["failures_by_type"].items():
            lines.append(f"  failed {key}: {count} (first: {result['load']['first_failure_messages'][key][:200]})")
        for slow in result["load"]["slowest"]:
            failed = f" ({slow['error']})" if slow["error"] else ""
            lines.append(f"  slow {slow['kind']:<6} {slow['ms']:>10.1f} ms, started {slow['at_s']:+.2f} s{failed}")
        if holder := result.get("holder"):
            ended = f"committed at {holder['committed_at_s']:+.2f} s" if "committed_at_s" in holder else holder["error"]
            lines.append(f"  holder pid {holder['pid']}: idle in transaction from"
                         f" {holder.get('counted_at_s', 0):+.2f} s for {holder['hold_s']:g} s, {ended};"
                         f" named in init-db's output: {holder['pid_in_output']};"
                         f" init-db {'ran to completion' if result['exit_code'] == 0 else 'exited non-zero'}")
    for name, facts in report["catalog"].items():
        unique = ", ".join(f"{index['index']} ({', '.join(index['columns'])})" for index in facts["unique_indexes"])
        checks = ", ".join(f"{check['name']} (validated {check['validated']})" for check in facts["check_constraints"])
        lines += [f"\ncatalog after {name}:", f"  unique indexes: {unique}",
                  f"  unique indexes on chatwoot_account_id alone: {facts['unique_on_chatwoot_account_id_only']}",
                  f"  invalid indexes: {', '.join(facts['invalid_indexes']) or 'none'}",
                  f"  checks: {checks or 'none'}",
                  f"  Chatwoot rows without redis_prefix: {facts['rows_missing_redis_prefix']} (seeded: "
                  f"{facts['seeded_rows_missing_redis_prefix']}; the rest are the old deployment's inserts)"]
    return "\n".join(lines)


def parse_scenarios(context: click.Context, parameter: click.Parameter, value: str | None) -> list[str]:
    """The comma list of --scenarios, checked; rerun runs on first's database, so it brings first along."""
    chosen = [name.strip() for name in (value or ",".join(SCENARIOS)).split(",") if name.strip()]
    if unknown := set(chosen) - set(SCENARIOS):
        raise click.BadParameter(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    return [name for name in SCENARIOS
            if name in chosen or (name == "first" and {"rerun", "settled"} & set(chosen)) or (name == "rerun" and "settled" in chosen)]


ROWS = click.IntRange(1, NEW_ACCOUNT_BASE - 1)


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """SIGTERM cleans up like Ctrl-C."""
    raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rows", type=ROWS, help="Seeded companies [1,000,000; --smoke 20,000].")
@click.option("--long-rows", type=ROWS, help="Rows of long_transaction's table [--rows].")
@click.option("--hold-seconds", type=click.FloatRange(0, min_open=True), help="The holder's idle time [12; --smoke 3].")
@click.option("--scenarios", callback=parse_scenarios, help=f"Comma list of {', '.join(SCENARIOS)} [all].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Every figure, as JSON.")
@click.option("--keep", is_flag=True, help="Keep the databases and print their URLs.")
@click.option("--smoke", is_flag=True, help="A quick check: 20,000 rows, a 3 s holder.")
@click.option("--database-url", "admin_url", envvar="TEST_DATABASE_URL", default=DEFAULT_ADMIN_URL, show_default=True,
              help="Admin URL (env TEST_DATABASE_URL); the script's databases are made beside it.")
def main(rows: int | None, long_rows: int | None, hold_seconds: float | None, scenarios: list[str],
         json_path: Path | None, keep: bool, smoke: bool, admin_url: str) -> None:
    """Measure how `flask --app wsgi chatwoot init-db` disturbs a live seed-era companies table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    rows = rows or (20_000 if smoke else 1_000_000)
    parameters = {"rows": rows, "long_rows": long_rows or rows, "hold_s": hold_seconds or (3.0 if smoke else 12.0),
                  "scenarios": scenarios, "load_threads": LOAD_THREADS, "lead_s": LEAD_S, "trail_s": TRAIL_S,
                  "load_statement_timeout_ms": LOAD_STATEMENT_TIMEOUT_MS}
    logger.info("online upgrade: %s", ", ".join(f"{key} {value}" for key, value in parameters.items()))
    created: list[str] = []
    try:
        report = run_scenarios(admin_url, scenarios, rows, parameters["long_rows"], parameters["hold_s"], created)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        for name in created:
            if keep:
                click.echo(f"kept {database_url(admin_url, name)}", err=True)
            else:
                drop_database(admin_url, name)
    report = {"parameters": parameters, **report}
    click.echo(format_report(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        click.echo(f"\nsaved {json_path}")


if __name__ == "__main__":
    main()
