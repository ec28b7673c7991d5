"""The scenarios (what each load run requests) and the issue's budgets, as tables."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from bench.settings import MISS_MAX, NEW_ACCOUNT_STRIDE, WEBHOOK_SECRET

WEBHOOK_PATH = f"/api/chatwoot/webhooks/account-created?token={WEBHOOK_SECRET}"
LOOKUP_PATH = "/api/chatwoot/webhooks/company/{id}"
HOT_IDS = 1000  # existing accounts whose iframes keep polling
HIT_SPREAD = 200_000  # random hits are drawn over the first 200,000 loaded accounts (the scenario)
METRICS_PATH = f"/api/chatwoot/webhooks/metrics?token={WEBHOOK_SECRET}"
ACCOUNT_BODY = '{"id": {id}, "name": "Bench {id}", "event": "account_created", "users": []}'


@dataclass(frozen=True)
class RequestSpec:
    """One scenario's requests; `{id}` in path and body is replaced per request (wrk/scenario.lua mirrors this)."""

    method: str
    path: str
    body: str = ""
    id_mode: str = "none"  # none | random (uniform in [id_low, id_high]) | sequence (never repeats)
    id_low: int = 0  # sequence: first id of this run's block
    id_high: int = 0  # sequence: ids between two load workers' ranges
    record_acks: bool = False  # remember (status, account id) of every 2xx answer

    def wrk_args(self, record_dir: str = "") -> list[str]:
        """The arguments wrk/scenario.lua's init() reads."""
        return [self.method, self.path, self.body, self.id_mode, str(self.id_low), str(self.id_high), record_dir]

    def render(self, worker: int, sequence_number: int, rng: random.Random) -> tuple[str, str, bytes | None]:
        """Method, path and body of one request sent by load worker `worker` (Python load generator)."""
        if self.id_mode == "none":
            return self.method, self.path, self.body.encode() or None
        if self.id_mode == "random":
            account_id = rng.randint(self.id_low, self.id_high)
        else:
            account_id = self.id_low + worker * self.id_high + sequence_number
        text = str(account_id)
        return self.method, self.path.replace("{id}", text), self.body.replace("{id}", text).encode() or None


@dataclass(frozen=True)
class LoadContext:
    """What a scenario's requests depend on: the loaded companies and this run's block of new ids."""

    companies: int
    new_id_block: int


@dataclass(frozen=True)
class Scenario:
    """A named load run against the app or the baseline."""

    name: str
    server: str  # "app" or "baseline"
    request: Callable[[LoadContext], RequestSpec]
    also_on_small_dataset: bool = False
    also_on_large_dataset: bool = False
    burst_before: bool = False


def _webhook_new(c: LoadContext) -> RequestSpec:
    return RequestSpec(
        "POST", WEBHOOK_PATH, ACCOUNT_BODY, id_mode="sequence", id_low=c.new_id_block, id_high=NEW_ACCOUNT_STRIDE,
        record_acks=True,
    )


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("baseline", "baseline", lambda c: RequestSpec("GET", "/")),
    Scenario(  # iframes polling the same 1,000 existing accounts (again on 1,000,000 companies: the same accounts asked)
        "lookup-hot", "app", lambda c: RequestSpec("GET", LOOKUP_PATH, id_mode="random", id_low=1, id_high=min(HOT_IDS, c.companies)),
        also_on_large_dataset=True,
    ),
    Scenario(
        "lookup-hit", "app",
        lambda c: RequestSpec("GET", LOOKUP_PATH, id_mode="random", id_low=1, id_high=min(HIT_SPREAD, c.companies)),
        also_on_small_dataset=True, also_on_large_dataset=True,
    ),
    Scenario(  # every one reads PostgreSQL: on 1k and 1M companies too, the table's size alone compared
        "lookup-miss", "app",
        lambda c: RequestSpec("GET", LOOKUP_PATH, id_mode="random", id_low=c.companies + 1, id_high=MISS_MAX),
        also_on_small_dataset=True, also_on_large_dataset=True,
    ),
    Scenario("webhook-new", "app", _webhook_new),
    # a burst of new-account webhooks before each measured run, so the events are not folded into the totals yet
    Scenario("metrics-after-burst", "app", lambda c: RequestSpec("GET", METRICS_PATH), burst_before=True),
    Scenario("backfill-10k", "cli", lambda c: RequestSpec("CLI", "reconcile")),
)
SCENARIO_NAMES = tuple(scenario.name for scenario in SCENARIOS)
SMALL_SUFFIX = "@1k"
LARGE_SUFFIX = "@1m"
BACKFILL_SCENARIO = "backfill-10k"


class Row(Protocol):
    """What a budget reads from a measured scenario (report.Row)."""

    rps_ratio: float
    p50_ms: float
    p50_ratio: float
    p99_ms: float


@dataclass(frozen=True)
class Budget:
    """A target from the issue: measure(rows) compared with limit."""

    text: str
    measure: Callable[[Mapping[str, Row]], float]
    limit: float
    at_most: bool  # True: value <= limit passes; False: value >= limit passes
    unit: str = ""
    throughput_of: str | None = None  # the scenario whose req/s ratio this bounds (drawn on the chart)

    def evaluate(self, rows: Mapping[str, Row]) -> tuple[float | None, bool | None]:
        """(value, passed), or (None, None) when a scenario it needs was not run."""
        try:
            value = self.measure(rows)
        except (KeyError, ZeroDivisionError):
            return None, None
        return value, value <= self.limit if self.at_most else value >= self.limit


def _throughput(name: str, limit: float) -> Budget:
    """req/s of a scenario at least `limit` times the baseline's."""
    return Budget(
        f"{name} req/s >= {limit} x baseline", lambda rows: rows[name].rps_ratio, limit, at_most=False, unit="x",
        throughput_of=name,
    )


def _p99(name: str, limit_ms: float) -> Budget:
    """p99 latency of a scenario at most limit_ms."""
    return Budget(f"{name} p99 <= {limit_ms:g} ms", lambda rows: rows[name].p99_ms, limit_ms, at_most=True, unit=" ms")


def _p50_against_small(name: str, small: str | None = None) -> Callable[[Mapping[str, Row]], float]:
    """p50 on the large dataset / p50 on the 1k one, each first taken relative to its own baseline runs (the two
    are measured minutes apart, and the host's speed drifts meanwhile)."""
    def ratio(rows: Mapping[str, Row]) -> float:
        large = rows.get(f"{name}{LARGE_SUFFIX}") or rows[name]
        return large.p50_ratio / rows[f"{small or name}{SMALL_SUFFIX}"].p50_ratio

    return ratio


BUDGETS: tuple[Budget, ...] = (
    _throughput("lookup-hot", 0.8),
    _throughput("lookup-hit", 0.5),
    _throughput("lookup-miss", 0.6),
    _throughput("webhook-new", 0.25),
    _p99("webhook-new", 50),
    _throughput("metrics-after-burst", 0.5),
    Budget(f"{BACKFILL_SCENARIO} wall (CLI start included) <= 2 s", lambda rows: rows[BACKFILL_SCENARIO].p50_ms / 1000, 2.0,
           at_most=True, unit=" s"),
    Budget(
        f"lookup-hit{LARGE_SUFFIX} p50/base (1,000,000 companies) <= 1.2 x lookup-hit{SMALL_SUFFIX}'s",
        _p50_against_small("lookup-hit"), 1.2, at_most=True, unit="x",
    ),
    Budget(  # not the issue's: the same 1,000 accounts asked of 1,000,000 companies as of 1,000 (both held)
        f"lookup-hot{LARGE_SUFFIX} p50/base (same 1,000 accounts, 1,000,000 companies) <= 1.2 x lookup-hit{SMALL_SUFFIX}'s",
        _p50_against_small("lookup-hot", "lookup-hit"), 1.2, at_most=True, unit="x",
    ),
    Budget(  # not the issue's: the same comparison where both sizes read PostgreSQL (nothing is held)
        f"lookup-miss{LARGE_SUFFIX} p50/base (1,000,000 companies) <= 1.2 x lookup-miss{SMALL_SUFFIX}'s",
        _p50_against_small("lookup-miss"), 1.2, at_most=True, unit="x",
    ),
)
