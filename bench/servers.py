"""gunicorn servers started exactly as the Procfile's `web:` line, on a free loopback port."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.settings import REPO

READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 25  # gunicorn.conf.py's graceful_timeout is 20 s
SETTLE_WINDOW_S = 0.5
IDLE_CPU_SHARE = 0.05  # a server using less than 5 % of one CPU over a window has finished booting


class ServerError(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gunicorn_executable() -> str:
    """The gunicorn of the running virtualenv, else the one on PATH."""
    candidate = Path(sys.executable).with_name("gunicorn")
    return str(candidate) if candidate.exists() else (shutil.which("gunicorn") or "gunicorn")


@dataclass
class GunicornServer:
    """`gunicorn <app> --config gunicorn.conf.py` in the repo, its output in a log file."""

    name: str
    app: str
    ready_path: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """Where the load generator sends its requests."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GunicornServer:
        """Start the server in its own session (Ctrl-C reaches us, not it) and wait until it answers."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "PORT": str(self.port)}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [gunicorn_executable(), self.app, "--config", "gunicorn.conf.py"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Poll ready_path until it answers 200; fail early if the master exits."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self._answers():
                self._wait_until_settled(deadline)
                return
            time.sleep(0.2)
        raise ServerError(f"{self.name} did not answer {self.ready_path} in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def _wait_until_settled(self, deadline: float) -> None:
        """The first worker answers while others still fork and import the app: wait until the worker count
        holds and the whole server is idle (booting workers would steal CPU from the first measurement)."""
        workers, cpu = self.worker_count(), self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(SETTLE_WINDOW_S)
            now_workers, now_cpu = self.worker_count(), self.cpu_seconds()
            if now_workers == workers and now_cpu - cpu < SETTLE_WINDOW_S * IDLE_CPU_SHARE:
                return
            workers, cpu = now_workers, now_cpu

    def _answers(self) -> bool:
        """Whether ready_path answers 200 right now."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", self.ready_path)
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def worker_pids(self) -> list[int]:
        """The master's worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def worker_count(self) -> int:
        """How many worker processes the master runs (what WEB_CONCURRENCY resolved to)."""
        return len(self.worker_pids())

    def cpu_seconds(self) -> float:
        """CPU time used so far by the master and its workers."""
        ticks = sum(_process_cpu_ticks(pid) for pid in [self.process.pid, *self.worker_pids()])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM the master (graceful), SIGKILL its process group if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _process_cpu_ticks(pid: int) -> int:
    """utime + stime of a process in clock ticks (0 when it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])
