#!/usr/bin/env python3
"""Benchmark the service against a bare Flask baseline under the production gunicorn settings.

    python bench/run.py            full: 1,000,000 companies and sync events, 15 s per scenario
    python bench/run.py --quick    100,000 of each, 8 s per scenario
    python bench/run.py --smoke    1,000 of each, 2 s per scenario; fails on any error answer (CI)
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIRED_PACKAGES = ("click", "flask", "psycopg", "redis")


def use_project_virtualenv() -> None:
    """Re-run this script with the project's .venv when the current Python lacks its packages."""
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    venv_python = REPO / ".venv" / "bin" / "python"
    if not venv_python.exists() or os.environ.get("BENCH_REEXEC"):
        sys.exit(f"missing Python packages {', '.join(missing)}: pip install -r requirements-bench.txt")
    os.environ["BENCH_REEXEC"] = "1"
    os.execv(venv_python, [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    use_project_virtualenv()

import click  # noqa: E402

from bench import report  # noqa: E402
from bench.harness import Bench, Options  # noqa: E402
from bench.scenarios import SCENARIO_NAMES  # noqa: E402
from bench.settings import (  # noqa: E402
    DEFAULT_ADMIN_URL,
    DEFAULT_REDIS_URL,
    MAX_LOAD_WORKERS,
    MISS_MAX,
    PROFILES,
    RESULTS_DIR,
    Profile,
)


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """SIGTERM cleans up like Ctrl-C."""
    raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="100,000 companies/events, 8 s per scenario (small machines).")
@click.option("--smoke", is_flag=True, help="1,000 companies/events, 2 s per scenario; any error fails (CI).")
@click.option("--companies", type=click.IntRange(1, MISS_MAX - 1), help="Companies to load (overrides the profile).")
@click.option("--events", type=click.IntRange(0), help="Sync events to load (overrides the profile).")
@click.option("--duration", "duration_s", type=click.IntRange(1), help="Seconds per measured scenario.")
@click.option("--warmup", "warmup_s", type=click.IntRange(0), help="Warm-up seconds before each scenario (0: none).")
@click.option("--connections", type=click.IntRange(1, MAX_LOAD_WORKERS), help="Concurrent connections [16].")
@click.option("--threads", type=click.IntRange(1, MAX_LOAD_WORKERS), help="wrk threads / Python processes [2].")
@click.option("--workers", type=click.IntRange(1), help="WEB_CONCURRENCY of both servers [2, as the issue measures; 4 threads each].")
@click.option("--loadgen", type=click.Choice(["auto", "wrk", "python"]), default="auto", show_default=True,
              help="auto: wrk (installed with apt-get when root), else the Python generator.")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(SCENARIO_NAMES),
              help="Run only these scenarios (repeatable; the baseline always runs).")
@click.option("--database-url", envvar="BENCH_DATABASE_URL", default=DEFAULT_ADMIN_URL, show_default=True,
              help="Admin URL of the PostgreSQL server (env BENCH_DATABASE_URL); bench databases are made beside it.")
@click.option("--redis-url", envvar="BENCH_REDIS_URL", default=DEFAULT_REDIS_URL, show_default=True,
              help="Redis DB of the bench, flushed at start and end (env BENCH_REDIS_URL).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True, help="Where JSON, PNG and server logs go.")
def main(quick: bool, smoke: bool, database_url: str, redis_url: str, results_dir: Path, loadgen: str,
         workers: int | None, scenarios: tuple[str, ...], **sizes: int | None) -> None:
    """Benchmark multibackend against a bare Flask app under the production gunicorn settings."""
    if quick and smoke:
        raise click.UsageError("--quick and --smoke are exclusive")
    profile = PROFILES["smoke" if smoke else "quick" if quick else "full"].with_overrides(**sizes)
    if profile.threads > profile.connections:
        raise click.UsageError("--threads cannot exceed --connections")
    options = Options(database_url, redis_url, results_dir, loadgen, workers, scenarios)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    bench = Bench(profile, options, log=lambda message: click.echo(message, err=True))
    click.echo(describe(profile), err=True)
    try:
        bench.run()
    except KeyboardInterrupt:
        click.echo("interrupted: servers stopped, bench databases dropped", err=True)
        sys.exit(130)
    sys.exit(publish(bench, profile))


def describe(profile: Profile) -> str:
    """One line saying what this run will do."""
    return (
        f"bench profile {profile.name}: {profile.companies:,} companies, {profile.events:,} sync events, "
        f"{profile.connections} connections, {profile.threads} threads, {profile.warmup_s} s warm-up + "
        f"{profile.duration_s} s per scenario"
    )


def publish(bench: Bench, profile: Profile) -> int:
    """Print the tables, save JSON and PNG; the exit status (non-zero only for a failed smoke run)."""
    rows = report.build_rows(bench.results, bench.background_cpu, bench.pairs)
    budgets = report.evaluate_budgets(rows)
    output_dir = bench.options.results_dir
    click.echo(f"\n{describe(profile)}; {bench.workers} gunicorn workers; load generator {bench.loadgen.name}\n")
    click.echo(report.format_table(rows))
    click.echo("\nbudgets (reported, not enforced)\n" + report.format_budgets(budgets))
    click.echo("\n" + bench.check.summary())
    saved = report.write_json(output_dir, bench.stamp, bench.payload(rows, budgets))
    title = f"multibackend bench {bench.stamp}: {profile.name}, {profile.companies:,} companies, " \
            f"{profile.connections} connections, {bench.workers} workers, {bench.loadgen.name}"
    chart = report.write_chart(output_dir, bench.stamp, rows, title)
    click.echo(f"\nsaved {', '.join(str(path) for path in saved + (chart or []))}")
    if chart is None:
        click.echo("no chart: matplotlib is missing (pip install -r requirements-bench.txt)")
    failures = bench.failures() if profile.strict else []
    for failure in failures:
        click.echo(f"FAIL {failure}", err=True)
    return 1 if failures else 0


if __name__ == "__main__":
    main()
