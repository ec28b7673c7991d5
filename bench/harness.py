"""One benchmark run: databases, servers, every scenario (warm-up, then measured), checks, report, clean-up."""

from __future__ import annotations

import os
import platform
import subprocess
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import database, machine, report
from bench.loadgen import LoadGenerator, LoadResult
from bench import backfill
from bench.scenarios import (
    BACKFILL_SCENARIO,
    LARGE_SUFFIX,
    SCENARIOS,
    SMALL_SUFFIX,
    LoadContext,
    RequestSpec,
    Scenario,
)
from bench.servers import GunicornServer
from bench.settings import (
    BURST_BASE,
    BURST_SECONDS,
    DATABASE_NAME,
    NEW_ACCOUNT_STRIDE,
    NEW_ACCOUNT_BASE,
    NEW_ACCOUNT_BLOCK,
    REPO,
    SMALL_COMPANIES,
    WEBHOOK_SECRET,
    Profile,
)

NEW_ACCOUNTS_SCENARIO = "webhook-new"
BASELINE_SCENARIO = next(scenario for scenario in SCENARIOS if scenario.name == report.BASELINE)
# A lookup miss may ask a configured Chatwoot (self-healing lookup); the bench never leaves the machine.
NO_CHATWOOT_SOURCE = {"CHATWOOT_DATABASE_URL": "", "CHATWOOT_API_URL": "", "CHATWOOT_PLATFORM_TOKEN": ""}
# every request comes from one address here: the limiter still runs (its cost is measured) but never refuses
# the issue's budgets are measured with gunicorn 2 workers x 4 threads (--workers overrides the 2)
ISSUE_WORKERS, ISSUE_THREADS = 2, 4
LIMITS_THAT_NEVER_BITE = {"RATELIMIT_LOOKUP": "100000000 per minute", "RATELIMIT_AUTH_FAILURES": "100000000 per minute"}


@dataclass(frozen=True)
class Dataset:
    """A database to load and the scenarios to run against it."""

    suffix: str  # appended to the scenario names in the results
    database: str
    companies: int
    events: int
    small: bool  # only the scenarios marked also_on_small_dataset run here
    large: bool = False  # only the scenarios marked also_on_large_dataset run here

    def runs(self, scenario: Scenario) -> bool:
        """Whether the scenario runs against this dataset."""
        if scenario.server == "cli":
            return False
        if self.large:
            return scenario.also_on_large_dataset
        return scenario.also_on_small_dataset if self.small else True


@dataclass(frozen=True)
class Options:
    """How and where to run, beyond the profile's sizes."""

    admin_url: str
    redis_url: str
    results_dir: Path
    loadgen: str = "auto"
    workers: int | None = None
    scenarios: tuple[str, ...] = ()  # empty: all


@dataclass
class CommitCheck:
    """Every webhook-new request answered 200 must have produced a committed company."""

    answered_2xx: int = 0  # wrk's requests minus non-2xx, warm-ups included
    acked: list[tuple[int, int]] = field(default_factory=list)  # (status, account id) of those answers
    committed_rows: int | None = None  # companies whose account id is above the loaded range
    acknowledged_committed: int | None = None  # how many of the 200-acknowledged ids have a company

    def add(self, result: LoadResult) -> None:
        """Take in one webhook-new load run (warm-up or measured)."""
        self.answered_2xx += result.ok_answers
        self.acked += result.acked

    @property
    def acknowledged_ids(self) -> set[int]:
        """The account ids answered 200."""
        return {account_id for status, account_id in self.acked if status == 200}

    @property
    def answered_200(self) -> int:
        """How many answers were 200."""
        return sum(1 for status, _ in self.acked if status == 200)

    @property
    def missing(self) -> int:
        """Account ids answered 200 that have no company."""
        return len(self.acknowledged_ids) - (self.acknowledged_committed or 0)

    def problems(self) -> list[str]:
        """What contradicts "answered 200 means committed" (or makes the check itself unreliable)."""
        found = []
        if len(self.acked) != self.answered_2xx:
            found.append(f"the response hook saw {len(self.acked)} 2xx answers, the load generator {self.answered_2xx}")
        if len(self.acknowledged_ids) != self.answered_200:
            found.append(f"{self.answered_200 - len(self.acknowledged_ids)} account ids were answered 200 twice")
        if self.missing:
            found.append(f"{self.missing} account ids answered 200 have no company")
        if self.committed_rows is not None and self.committed_rows < self.answered_200:
            found.append(f"{self.committed_rows} companies committed for {self.answered_200} answers 200")
        return found

    @property
    def passed(self) -> bool:
        """Whether the check ran and found nothing wrong."""
        return self.committed_rows is not None and not self.problems()

    def summary(self) -> str:
        """One paragraph for the report."""
        if self.committed_rows is None:
            return "webhook-new commit check: not run"
        other = len(self.acked) - self.answered_200
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.problems())
        return (
            f"webhook-new commit check (warm-up included): {self.answered_200:,} answers 200"
            f"{f', {other} other 2xx (202 = spooled, not yet committed)' if other else ''}; "
            f"{self.committed_rows:,} companies committed above the loaded ids "
            f"(+{self.committed_rows - self.answered_200} for requests cut off when a load run stopped); "
            f"{self.missing} ids answered 200 without a company -> {verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The figures, for the JSON file."""
        return {
            "answered_2xx": self.answered_2xx, "answered_200": self.answered_200, "recorded_answers": len(self.acked),
            "committed_rows": self.committed_rows, "acknowledged_without_company": self.missing
            if self.committed_rows is not None else None, "passed": self.passed, "problems": self.problems(),
        }


class Bench:
    """Runs every dataset's scenarios and keeps what they measured."""

    def __init__(self, profile: Profile, options: Options, log=print) -> None:
        self.profile = profile
        self.options = options
        self.log = log
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.results: dict[str, LoadResult] = {}
        self.background_cpu: dict[str, float] = {}  # CPU share busy just before each measured run
        # per scenario, (scenario req/s, baseline req/s) of each measured run and the baseline run just before it
        self.pairs: dict[str, list[report.Pair]] = {}
        self.check = CommitCheck()
        self.load_seconds: dict[str, float] = {}
        self.workers = 0
        self.runs_started = 0
        self.loadgen: LoadGenerator | None = None

    def datasets(self) -> list[Dataset]:
        """The profile's dataset, then the 1k-company one for the lookup comparison."""
        datasets = [
            Dataset("", DATABASE_NAME, self.profile.companies, self.profile.events, small=False),
            Dataset(SMALL_SUFFIX, f"{DATABASE_NAME}_1k", SMALL_COMPANIES, SMALL_COMPANIES, small=True),
        ]
        if self.profile.large_companies:
            datasets.append(
                Dataset(LARGE_SUFFIX, f"{DATABASE_NAME}_1m", self.profile.large_companies, SMALL_COMPANIES, small=False, large=True)
            )
        return datasets

    def selected(self, scenario: Scenario) -> bool:
        """Whether the user asked for this scenario (the baseline always runs: every ratio needs it)."""
        wanted = self.options.scenarios
        return not wanted or scenario.name in wanted or scenario.name == report.BASELINE

    def run(self) -> None:
        """Everything, with servers stopped and databases dropped whatever happens."""
        self.loadgen = LoadGenerator(self.options.loadgen, self.log)
        database.flush_redis(self.options.redis_url)
        with ExitStack() as cleanup:
            cleanup.callback(database.flush_redis, self.options.redis_url)
            baseline = self.start_server(cleanup, "baseline", "bench.baseline_app:app", "/", {})
            for dataset in self.datasets():
                scenarios = [s for s in SCENARIOS if dataset.runs(s) and self.selected(s)]
                if any(s.server == "app" for s in scenarios):
                    self.run_dataset(dataset, scenarios, baseline)
            if any(s.name == BACKFILL_SCENARIO and self.selected(s) for s in SCENARIOS):
                self.run_backfill()

    def run_backfill(self) -> None:
        """The reconcile CLI creating the profile's backfill_accounts missing companies (10,000; smoke 1,000), wall
        time; the median of the repeats."""
        walls = backfill.measure(
            self.options.admin_url, self.options.redis_url, self.profile.repeats, self.log, self.profile.backfill_accounts
        )
        wall = sorted(walls)[len(walls) // 2]
        self.results[BACKFILL_SCENARIO] = LoadResult(
            requests=1, duration_s=wall, non2xx=0, socket_errors={}, p50_ms=wall * 1000, p90_ms=wall * 1000,
            p99_ms=max(walls) * 1000, max_ms=max(walls) * 1000,
        )
        self.log(f"  {BACKFILL_SCENARIO:<18} wall {wall:.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)})")

    def run_dataset(self, dataset: Dataset, scenarios: list[Scenario], baseline: GunicornServer) -> None:
        """Load one database, serve it, run its scenarios; drop it afterwards."""
        with ExitStack() as cleanup:
            url = self.prepare_database(cleanup, dataset)
            app = self.start_server(cleanup, f"app{dataset.suffix}", "wsgi:app", "/api/system/info", {
                "DATABASE_URL": url, "REDIS_URL": self.options.redis_url, **NO_CHATWOOT_SOURCE,
            })
            self.workers = app.worker_count()
            servers = {"app": app, "baseline": baseline}
            for scenario in scenarios:
                paired = baseline if scenario.server == "app" else None
                result = self.run_scenario(scenario, dataset, servers[scenario.server], paired)
                self.results[scenario.name + dataset.suffix] = result
            if any(s.name == NEW_ACCOUNTS_SCENARIO for s in scenarios):
                self.verify_commits(url)

    def prepare_database(self, cleanup: ExitStack, dataset: Dataset) -> str:
        """Recreate, apply the schema with init-db, load and analyze; the drop is registered for clean-up."""
        self.log(f"database {dataset.database}: loading {dataset.companies:,} companies, {dataset.events:,} events")
        cleanup.callback(database.drop_database, self.options.admin_url, dataset.database)
        url = database.recreate_database(self.options.admin_url, dataset.database)
        database.apply_schema(url)
        seconds = database.load_dataset(url, dataset.companies, dataset.events)
        self.load_seconds[dataset.database] = round(seconds, 1)
        self.log(f"database {dataset.database}: loaded and analyzed in {seconds:.1f} s")
        return url

    def start_server(
        self, cleanup: ExitStack, name: str, app: str, ready_path: str, env: dict[str, str]
    ) -> GunicornServer:
        """Start a gunicorn with the production config; its stop is registered for clean-up."""
        env = {**env, **LIMITS_THAT_NEVER_BITE, "CHATWOOT_WEBHOOK_SECRET": WEBHOOK_SECRET}
        env["WEB_CONCURRENCY"] = str(self.options.workers or ISSUE_WORKERS)
        env["GUNICORN_THREADS"] = str(ISSUE_THREADS)
        server = GunicornServer(name, app, ready_path, env, self.options.results_dir / "logs" / f"{self.stamp}-{name}.log")
        cleanup.callback(server.stop)
        server.start()
        self.log(f"{name}: gunicorn {app} on port {server.port}, {server.worker_count()} workers")
        return server

    def run_scenario(
        self, scenario: Scenario, dataset: Dataset, server: GunicornServer, baseline: GunicornServer | None = None
    ) -> LoadResult:
        """A warm-up run (not reported), then the measured runs; with a baseline server, each measured run right
        after a baseline run of the same length (the pair's ratio is free of the host's drift between scenarios)."""
        label = scenario.name + dataset.suffix
        if self.profile.warmup_s:
            self.load_run(scenario, dataset, server, self.profile.warmup_s)
        runs = []
        for _ in range(max(1, self.profile.repeats)):
            if scenario.burst_before:
                self.burst(server)
            self.background_cpu[label] = machine.settled_share(0.0 if self.profile.strict else 8.0)
            reference = self.load_run(BASELINE_SCENARIO, dataset, baseline, self.profile.duration_s) if baseline else None
            runs.append(self.load_run(scenario, dataset, server, self.profile.duration_s))
            if reference is not None:
                self.pairs.setdefault(label, []).append(report.Pair(runs[-1].rps, reference.rps, runs[-1].p50_ms, reference.p50_ms))
        result = median_result(runs)
        paired = report.paired_ratio(self.pairs.get(label, []))
        self.log(
            f"  {label:<18} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
            f"errors {result.errors}  (machine {self.background_cpu[label]:.0%} busy before)"
            + (f"  {paired:.2f}x its baseline runs" if paired is not None else "")
        )
        return result

    def load_run(self, scenario: Scenario, dataset: Dataset, server: GunicornServer, duration_s: int) -> LoadResult:
        """One load run; each gets its own block of never-used account ids."""
        context = LoadContext(dataset.companies, NEW_ACCOUNT_BASE + self.runs_started * NEW_ACCOUNT_BLOCK)
        self.runs_started += 1
        result = self.loadgen.run(
            server.base_url, scenario.request(context), self.profile.connections, self.profile.threads, duration_s
        )
        if scenario.name == NEW_ACCOUNTS_SCENARIO:
            self.check.add(result)
        return result

    def burst(self, server: GunicornServer) -> None:
        """BURST_SECONDS of new-account webhooks (ids of their own, outside the commit check's range)."""
        block = BURST_BASE + self.runs_started * NEW_ACCOUNT_STRIDE * self.profile.threads
        self.runs_started += 1
        spec = RequestSpec(
            "POST", "/api/chatwoot/webhooks/account-created?token=" + WEBHOOK_SECRET,
            '{"id": {id}, "name": "Burst {id}", "event": "account_created", "users": []}',
            id_mode="sequence", id_low=block, id_high=NEW_ACCOUNT_STRIDE,
        )
        self.loadgen.run(server.base_url, spec, self.profile.connections, self.profile.threads, BURST_SECONDS)

    def verify_commits(self, url: str) -> None:
        """Count the companies above the loaded ids and look up every acknowledged id."""
        self.check.committed_rows = database.count_companies_from(url, NEW_ACCOUNT_BASE)
        self.check.acknowledged_committed = database.count_existing_accounts(url, sorted(self.check.acknowledged_ids))

    def failures(self) -> list[str]:
        """What makes a strict (smoke) run fail: any error answer, a failed commit check."""
        problems = [f"{name}: {result.errors} errors" for name, result in self.results.items() if result.errors]
        if self.check.committed_rows is not None and not self.check.passed:
            problems.append(self.check.summary())
        return problems

    def payload(self, rows: dict[str, report.Row], budgets: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything worth keeping about this run, for the JSON file."""
        return {
            "timestamp": self.stamp,
            "profile": asdict(self.profile),
            "environment": {
                "git_commit": _git_commit(), "cpus": os.cpu_count(), "python": platform.python_version(),
                "load_generator": self.loadgen.name if self.loadgen else None, "gunicorn_workers": self.workers,
                "web_concurrency_override": self.options.workers, "load_seconds": self.load_seconds,
            },
            "scenarios": rows,
            "raw": {name: {**asdict(result), "acked": len(result.acked)} for name, result in self.results.items()},
            "paired_runs": {name: [asdict(pair) for pair in pairs] for name, pairs in self.pairs.items()},
            "budgets": budgets,
            "webhook_commit_check": self.check.as_dict(),
        }


def median_result(runs: list[LoadResult]) -> LoadResult:
    """The run with the median req/s, with the median p50/p90/p99 of all runs and every run's errors and acks."""
    if len(runs) == 1:
        return runs[0]
    middle = sorted(runs, key=lambda run: run.rps)[len(runs) // 2]

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    socket_errors: dict[str, int] = {}
    for run in runs:
        for kind, count in run.socket_errors.items():
            socket_errors[kind] = socket_errors.get(kind, 0) + count
    return LoadResult(
        requests=middle.requests, duration_s=middle.duration_s, non2xx=sum(run.non2xx for run in runs),
        socket_errors=socket_errors, p50_ms=median([run.p50_ms for run in runs]),
        p90_ms=median([run.p90_ms for run in runs]), p99_ms=median([run.p99_ms for run in runs]),
        max_ms=max(run.max_ms for run in runs), acked=[ack for run in runs for ack in run.acked],
    )


def _git_commit() -> str:
    """HEAD's short hash, with -dirty when the work tree has changes."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
