"""Fallback load generator when wrk cannot be had: processes (like wrk threads) of keep-alive connections."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.loadgen import LoadResult
from bench.scenarios import RequestSpec
from bench.settings import REQUEST_TIMEOUT_S


@dataclass
class Tally:
    """What some connections measured; tallies add up."""

    latencies_ms: list[float] = field(default_factory=list)
    non2xx: int = 0
    socket_errors: Counter = field(default_factory=Counter)
    acked: list[tuple[int, int]] = field(default_factory=list)

    def add(self, other: Tally) -> Tally:
        """Merge another tally into this one."""
        self.latencies_ms += other.latencies_ms
        self.non2xx += other.non2xx
        self.socket_errors.update(other.socket_errors)
        self.acked += other.acked
        return self


def run(base_url: str, spec: RequestSpec, connections: int, processes: int, duration_s: int) -> LoadResult:
    """Hold `connections` keep-alive connections, spread over `processes` processes, for duration_s seconds."""
    target = urlsplit(base_url)
    shares = [connections // processes + (1 if index < connections % processes else 0) for index in range(processes)]
    firsts = [sum(shares[:index]) for index in range(processes)]
    started = time.time()
    deadline = started + duration_s
    jobs = [
        (target.hostname, target.port, spec, first, share, deadline)
        for first, share in zip(firsts, shares, strict=True)
    ]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        parts = pool.starmap(_process_main, jobs)
    total = Tally()
    for part in parts:
        total.add(part)
    return _result(total, time.time() - started)


def _process_main(host: str, port: int, spec: RequestSpec, first_worker: int, count: int, deadline: float) -> Tally:
    """One process: a thread per connection, their tallies merged."""
    tallies = [Tally() for _ in range(count)]
    threads = [
        threading.Thread(target=_connection_loop, args=(host, port, spec, first_worker + index, deadline, tally))
        for index, tally in enumerate(tallies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return total


def _connection_loop(host: str, port: int, spec: RequestSpec, worker: int, deadline: float, tally: Tally) -> None:
    """Send requests one after the other on one keep-alive connection until the deadline."""
    rng = random.Random(worker * 7919 + int(deadline))
    connection: http.client.HTTPConnection | None = None
    sequence_number = 0
    while time.time() < deadline:
        sequence_number += 1
        method, path, body = spec.render(worker, sequence_number, rng)
        headers = {"Content-Type": "application/json"} if body else {}
        connection = connection or http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        started = time.perf_counter()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.socket_errors[_error_kind(exc)] += 1
            connection.close()
            connection = None
            continue
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        _count_answer(spec, response.status, payload, tally)
        if response.will_close:
            connection.close()
            connection = None
    if connection:
        connection.close()


def _count_answer(spec: RequestSpec, status: int, payload: bytes, tally: Tally) -> None:
    """Count a non-2xx answer, or remember the status and account id of a 2xx one."""
    if not 200 <= status < 300:
        tally.non2xx += 1
    elif spec.record_acks:
        company_id = json.loads(payload)["data"].get("company_id", "chatwoot_0")
        tally.acked.append((status, int(company_id.removeprefix("chatwoot_"))))


def _error_kind(exc: BaseException) -> str:
    """wrk's names for a request that got no answer."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect"
    return "read"


def _result(tally: Tally, elapsed_s: float) -> LoadResult:
    """Percentiles and counts of a merged tally."""
    latencies = sorted(tally.latencies_ms) or [0.0]

    def percentile(q: float) -> float:
        """Nearest-rank percentile."""
        return latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))]

    return LoadResult(
        requests=len(tally.latencies_ms),
        duration_s=elapsed_s,
        non2xx=tally.non2xx,
        socket_errors={kind: tally.socket_errors.get(kind, 0) for kind in ("connect", "read", "write", "timeout")},
        p50_ms=percentile(50),
        p90_ms=percentile(90),
        p99_ms=percentile(99),
        max_ms=latencies[-1],
        acked=tally.acked,
    )
