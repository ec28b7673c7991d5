"""How busy the machine is with other work: the bench shares 2 CPUs with whatever else runs there."""

from __future__ import annotations

import time
from pathlib import Path

BUSY_WARNING_SHARE = 0.15  # more than this, with our servers idle, means someone else is using the CPUs


def _cpu_ticks() -> tuple[int, int]:
    """(idle, total) ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait; user..steal (guest time is inside user)


def busy_share(window_s: float = 0.5) -> float:
    """Share of all CPUs busy during the next window_s seconds (0.0 to 1.0)."""
    idle_before, total_before = _cpu_ticks()
    time.sleep(window_s)
    idle_after, total_after = _cpu_ticks()
    total = total_after - total_before
    return 1.0 - (idle_after - idle_before) / total if total else 0.0


def settled_share(patience_s: float = 8.0) -> float:
    """Wait (up to patience_s) until the machine is quiet (the previous run's backlog, autovacuum, a checkpoint),
    then return how busy it was in the last window."""
    deadline = time.monotonic() + patience_s
    share = busy_share()
    while share > BUSY_WARNING_SHARE and time.monotonic() < deadline:
        share = busy_share()
    return share
