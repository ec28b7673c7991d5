"""Drive load from a separate process: wrk with bench/wrk/scenario.lua, or the Python fallback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.scenarios import RequestSpec
from bench.settings import BENCH_DIR, REQUEST_TIMEOUT_S

LUA_SCRIPT = BENCH_DIR / "wrk" / "scenario.lua"
RESULT_MARKER = "BENCH_RESULT "


@dataclass
class LoadResult:
    """What one load run measured."""

    requests: int
    duration_s: float
    non2xx: int
    socket_errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    acked: list[tuple[int, int]] = field(default_factory=list)  # (status, account id) of 2xx answers, if recorded

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok_answers(self) -> int:
        """Answers with a 2xx status (wrk counts every status >= 400 as an error)."""
        return self.requests - self.non2xx

    @property
    def errors(self) -> int:
        """Non-2xx answers plus requests that got no answer at all (connect/read/write errors, timeouts)."""
        return self.non2xx + sum(self.socket_errors.values())


def ensure_wrk(log=print) -> str | None:
    """The wrk executable; installs Debian's package when running as root; None when it cannot be had."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log("installing wrk with apt-get ...")
    if not _apt_get("install", "-y", "wrk"):
        _apt_get("update")
        _apt_get("install", "-y", "wrk")
    return shutil.which("wrk")


def _apt_get(*args: str) -> bool:
    """Run apt-get quietly and non-interactively; whether it succeeded."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    completed = subprocess.run(["apt-get", "-qq", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return completed.returncode == 0


def run_wrk(wrk: str, base_url: str, spec: RequestSpec, connections: int, threads: int, duration_s: int) -> LoadResult:
    """One wrk run; the Lua done() hook prints the figures as JSON."""
    with tempfile.TemporaryDirectory(prefix="bench-acks-") as record_dir:
        command = [
            wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration_s}s",
            "--timeout", f"{REQUEST_TIMEOUT_S}s", "-s", str(LUA_SCRIPT), base_url,
            "--", *spec.wrk_args(record_dir if spec.record_acks else ""),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
        if completed.returncode != 0:
            raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr or completed.stdout}")
        return _parse_wrk(completed.stdout, read_acked(Path(record_dir)))


def _parse_wrk(output: str, acked: list[tuple[int, int]]) -> LoadResult:
    """The LoadResult in wrk's BENCH_RESULT line."""
    line = next((line for line in output.splitlines() if line.startswith(RESULT_MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no {RESULT_MARKER.strip()} line:\n{output}")
    raw = json.loads(line[len(RESULT_MARKER):])
    return LoadResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        non2xx=raw["non2xx"],
        socket_errors={kind: raw[kind] for kind in ("connect", "read", "write", "timeout")},
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        acked=acked,
    )


def read_acked(record_dir: Path) -> list[tuple[int, int]]:
    """The (status, account id) lines written to acked-*.txt by the wrk threads."""
    lines = [line for path in sorted(record_dir.glob("acked-*.txt")) for line in path.read_text().splitlines()]
    return [(int(status), int(account_id)) for status, account_id in (line.split() for line in lines)]


class LoadGenerator:
    """Runs a RequestSpec against a server with wrk, or with the Python fallback when wrk is missing."""

    def __init__(self, preference: str, log=print) -> None:
        self.wrk = ensure_wrk(log) if preference in ("auto", "wrk") else None
        if preference == "wrk" and self.wrk is None:
            raise RuntimeError("wrk is not installed and could not be installed (run as root, or use --loadgen python)")
        if self.wrk is None and preference == "auto":
            log("wrk is not available: using the Python load generator (slower; it shares the CPUs with the app)")
        self.name = "wrk" if self.wrk else "python"

    def run(self, base_url: str, spec: RequestSpec, connections: int, threads: int, duration_s: int) -> LoadResult:
        """One load run of duration_s seconds."""
        if self.wrk:
            return run_wrk(self.wrk, base_url, spec, connections, threads, duration_s)
        from bench import pyload

        return pyload.run(base_url, spec, connections, threads, duration_s)

