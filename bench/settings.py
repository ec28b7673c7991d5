"""Benchmark profiles (full / quick / smoke) and the fixed account-id ranges that keep scenarios apart."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
# one name per run (the process id), so that two runs on a shared machine never drop each other's databases
DATABASE_NAME = f"multibackend_bench_{os.getpid()}"
WEBHOOK_SECRET = "bench-secret"
SMALL_COMPANIES = 1_000  # the second dataset, for lookup p50 at N vs at 1k companies
BACKFILL_ACCOUNTS = 10_000  # Chatwoot accounts without a company, for the backfill scenario
BURST_BASE = 5 * 10**11  # ids of the webhook bursts sent before each metrics run (above MISS_MAX, below new accounts)
BURST_SECONDS = 1

# Loaded companies use account ids 1..N. Lookup misses draw from [N+1, MISS_MAX]; new accounts start at
# NEW_ACCOUNT_BASE, each load run (warm-up or measured) in its own block, each wrk thread or Python
# connection in its own stride of that block, so that no id is ever sent twice.
MISS_MAX = 10**11
NEW_ACCOUNT_BASE = 10**12
NEW_ACCOUNT_BLOCK = 10**10
NEW_ACCOUNT_STRIDE = 10**8
MAX_LOAD_WORKERS = NEW_ACCOUNT_BLOCK // NEW_ACCOUNT_STRIDE

REQUEST_TIMEOUT_S = 5  # Chatwoot gives up on a webhook after 5 s


@dataclass(frozen=True)
class Profile:
    """Everything that sizes one benchmark run."""

    name: str
    companies: int
    events: int
    duration_s: int
    warmup_s: int
    repeats: int = 3  # measured runs per scenario; the report takes the medians
    large_companies: int = 0  # a third dataset for lookup p50 at this size (0: none)
    backfill_accounts: int = BACKFILL_ACCOUNTS
    connections: int = 16
    threads: int = 2
    strict: bool = False  # smoke: a non-2xx answer or a failed check fails the command

    def with_overrides(self, **overrides: object) -> Profile:
        """This profile with the options the user gave (None means: keep the profile's value)."""
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})


PROFILES = {
    # warm-up 4 s: polling 1,000 accounts reaches its steady state (every answer held) after about 4 s
    "full": Profile("full", companies=200_000, events=1_000_000, duration_s=6, warmup_s=4, large_companies=1_000_000),
    "quick": Profile("quick", companies=100_000, events=100_000, duration_s=4, warmup_s=1, repeats=1),
    "smoke": Profile(
        "smoke", companies=1_000, events=1_000, duration_s=2, warmup_s=1, repeats=1, backfill_accounts=1_000, strict=True
    ),
}
