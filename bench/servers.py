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
SETTLE_S = 1.5  # the worker count must hold this long before the server counts as fully started


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
                self._wait_for_all_workers(deadline)
                return
            time.sleep(0.2)
        raise ServerError(f"{self.name} did not answer {self.ready_path} in {READY_TIMEOUT_S} s:\n{self.log_tail()}")

    def _wait_for_all_workers(self, deadline: float) -> None:
        """The first worker answers while the master may still fork the others: wait until their count holds."""
        count, since = self.worker_count(), time.monotonic()
        while time.monotonic() - since < SETTLE_S and time.monotonic() < deadline:
            time.sleep(0.1)
            if self.worker_count() != count:
                count, since = self.worker_count(), time.monotonic()

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

    def worker_count(self) -> int:
        """How many worker processes the master runs (what WEB_CONCURRENCY resolved to)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return len(children.read_text().split()) if children.exists() else 0

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
