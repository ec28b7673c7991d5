"""Results: the ratio table, the budgets with PASS/MISS, JSON files and the PNG chart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult
from bench.machine import BUSY_WARNING_SHARE
from bench.scenarios import BACKFILL_SCENARIO, BUDGETS

BASELINE = "baseline"


@dataclass(frozen=True)
class Row:
    """One measured scenario and its ratios to the baseline."""

    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non2xx: int
    socket_errors: dict[str, int]
    requests: int
    rps_ratio: float
    p50_ratio: float
    p99_ratio: float
    background_cpu: float | None = None  # CPU share busy with other work just before the run


@dataclass(frozen=True)
class Pair:
    """One measured run of a scenario and the baseline run just before it."""

    rps: float
    baseline_rps: float
    p50_ms: float
    baseline_p50_ms: float


def paired_ratio(pairs: Sequence[Pair], figure: str = "rps") -> float | None:
    """The median over the measured runs of (the run's figure / the figure of the baseline run just before it)."""
    ratios = sorted(getattr(pair, figure) / getattr(pair, f"baseline_{figure}") for pair in pairs if getattr(pair, f"baseline_{figure}"))
    return ratios[len(ratios) // 2] if ratios else None


def build_rows(
    results: Mapping[str, LoadResult], background_cpu: Mapping[str, float], pairs: Mapping[str, Sequence[Pair]] | None = None
) -> dict[str, Row]:
    """Rows for every scenario, with ratios to the baseline (NaN when it was not run): a scenario measured in pairs
    takes the medians of its pairs' req/s and p50 ratios, the others (and every p99 ratio) the baseline scenario's."""
    base = results.get(BASELINE)
    pairs = pairs or {}

    def ratio(value: float, reference: float | None) -> float:
        """value / reference, NaN without a reference."""
        return value / reference if reference else float("nan")

    def paired_or(name: str, figure: str, unpaired: float) -> float:
        paired = paired_ratio(pairs.get(name, ()), figure)
        return paired if paired is not None else unpaired

    return {
        name: Row(
            scenario=name, rps=r.rps, p50_ms=r.p50_ms, p99_ms=r.p99_ms, errors=r.errors, non2xx=r.non2xx,
            socket_errors=r.socket_errors, requests=r.requests,
            rps_ratio=paired_or(name, "rps", ratio(r.rps, base and base.rps)),
            p50_ratio=paired_or(name, "p50_ms", ratio(r.p50_ms, base and base.p50_ms)),
            p99_ratio=ratio(r.p99_ms, base and base.p99_ms),
            background_cpu=background_cpu.get(name),
        )
        for name, r in results.items()
    }


def evaluate_budgets(rows: Mapping[str, Row]) -> list[dict[str, Any]]:
    """Each budget of the issue with its measured value and PASS / MISS (n/a when not measured)."""
    evaluated = []
    for budget in BUDGETS:
        value, passed = budget.evaluate(rows)
        verdict = "n/a" if passed is None else "PASS" if passed else "MISS"
        evaluated.append(
            {"budget": budget.text, "value": value, "unit": budget.unit, "limit": budget.limit, "verdict": verdict}
        )
    return evaluated


def format_table(rows: Mapping[str, Row]) -> str:
    """The scenario table: ratios to the baseline first, then absolute figures."""
    header = ("scenario", "rps x base", "p50 / base", "p99 / base", "req/s", "p50 ms", "p99 ms", "errors")
    lines = [
        (
            row.scenario + (" *" if _busy(row) else ""),
            f"{_figure(row.rps_ratio)}x", _figure(row.p50_ratio), _figure(row.p99_ratio),
            f"{row.rps:,.0f}", f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", _errors_text(row),
        )
        if row.scenario != BACKFILL_SCENARIO
        else (row.scenario, "-", "-", "-", "-", f"wall {row.p50_ms / 1000:.2f} s", f"max {row.p99_ms / 1000:.2f} s", _errors_text(row))
        for row in rows.values()
    ]
    table = _align([header, *lines])
    table += "\nrps x base, p50 / base: each measured run against a baseline run just before it, the median of those ratios"
    if any(_busy(row) for row in rows.values()):
        table += f"\n* other work kept the machine over {BUSY_WARNING_SHARE:.0%} busy just before this run: noisy"
    return table


def _busy(row: Row) -> bool:
    """Whether other work was using the CPUs when this scenario started."""
    return row.background_cpu is not None and row.background_cpu > BUSY_WARNING_SHARE


def _figure(value: float) -> str:
    """Two decimals, three for small values (a ratio of 0.003 must not print as 0.00)."""
    return f"{value:.3f}" if abs(value) < 0.1 else f"{value:.2f}"


def _errors_text(row: Row) -> str:
    """Error count, with what they were when there were any."""
    if not row.errors:
        return "0"
    kinds = {"non-2xx": row.non2xx, **row.socket_errors}
    return f"{row.errors} (" + ", ".join(f"{kind} {count}" for kind, count in kinds.items() if count) + ")"


def format_budgets(budgets: list[dict[str, Any]]) -> str:
    """The budgets table."""
    lines = [("budget", "measured", "verdict")]
    for item in budgets:
        measured = "-" if item["value"] is None else f"{_figure(item['value'])}{item['unit']}"
        lines.append((item["budget"], measured, item["verdict"]))
    return _align(lines) + "\np50/base: a scenario's p50 relative to the baseline runs paired with it (see the table)"


def _align(lines: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, first column left-aligned, the others right-aligned."""
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    rendered = []
    for index, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        rendered.append("  ".join(cells).rstrip())
        if index == 0:
            rendered.append("  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def write_json(results_dir: Path, stamp: str, payload: dict[str, Any]) -> list[Path]:
    """Save the run as <stamp>.json and latest.json."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, default=_json_default)
    paths = [results_dir / f"{stamp}.json", results_dir / "latest.json"]
    for path in paths:
        path.write_text(text + "\n")
    return paths


def _json_default(value: Any) -> Any:
    """Dataclasses (rows) as dicts."""
    return asdict(value)


def write_chart(results_dir: Path, stamp: str, rows: Mapping[str, Row], title: str) -> list[Path] | None:
    """Bar charts of throughput and latency ratios to the baseline (None when matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = [name for name in rows if name != BASELINE]
    figure, (throughput, latency) = pyplot.subplots(1, 2, figsize=(13, 5.5))
    _throughput_panel(throughput, names, rows)
    _latency_panel(latency, names, rows)
    figure.suptitle(title)
    figure.tight_layout()
    paths = [results_dir / f"{stamp}.png", results_dir / "latest.png"]
    for path in paths:
        figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return paths


THROUGHPUT_BUDGETS = {budget.throughput_of: budget.limit for budget in BUDGETS if budget.throughput_of}


def _throughput_panel(axes: Any, names: list[str], rows: Mapping[str, Row]) -> None:
    """req/s as a multiple of the baseline's, with each budget as a tick mark."""
    positions = range(len(names))
    bars = axes.bar(positions, [rows[name].rps_ratio for name in names], color="#4c72b0")
    axes.bar_label(bars, fmt="%.2g", fontsize=8)
    for position, name in zip(positions, names, strict=True):
        budget = THROUGHPUT_BUDGETS.get(name)
        if budget is not None:
            axes.hlines(budget, position - 0.4, position + 0.4, colors="#c44e52", linestyles="--")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xticks(list(positions), names, rotation=30, ha="right")
    axes.set_ylabel("req/s x baseline (higher is better)")
    axes.set_title("Throughput vs baseline (red dashes: budget)")


def _latency_panel(axes: Any, names: list[str], rows: Mapping[str, Row]) -> None:
    """p50 and p99 as multiples of the baseline's, on a log scale."""
    width = 0.38
    series = (("p50", "p50_ratio", "#55a868", -width / 2), ("p99", "p99_ratio", "#dd8452", width / 2))
    for label, attribute, color, offset in series:
        values = [getattr(rows[name], attribute) for name in names]
        bars = axes.bar([i + offset for i in range(len(names))], values, width, label=label, color=color)
        axes.bar_label(bars, fmt="%.3g", fontsize=7)
    axes.set_yscale("log")
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xticks(list(range(len(names))), names, rotation=30, ha="right")
    axes.set_ylabel("latency / baseline latency (lower is better, log)")
    axes.set_title("Latency vs baseline")
    axes.legend()
