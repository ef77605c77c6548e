"""Medians of a run's measurements, their ratios to the floor and MLServer, and RESULTS.md.

Everything above the notes marker of RESULTS.md is written by the runner; what follows the
marker is kept from the previous file, so hand-written findings survive a new run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loadtests.wrk import Measurement

__all__ = ["Cell", "GOALS", "NOTES_MARKER", "goal_lines", "render"]

NOTES_MARKER = "<!-- notes: everything below this line is kept when the runner rewrites -->"
Key = tuple[str, int, int]  # (server, connections, rows)


@dataclass(slots=True)
class Cell:
    """Every kept measurement of one (server, connections, rows), one per round."""

    runs: list[Measurement] = field(default_factory=list)
    repeats: int = 0
    batch_sizes: list[float] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        values = [getattr(m, attribute) for m in self.runs]
        values = [v for v in values if not math.isnan(v)]
        return statistics.median(values) if values else float("nan")

    @property
    def rps(self) -> float:
        return self.median("rps")

    @property
    def p50(self) -> float:
        return self.median("p50_ms")

    @property
    def p99(self) -> float:
        return self.median("p99_ms")

    @property
    def cpu_us(self) -> float:
        return self.median("server_us_per_request")

    @property
    def worst_disturbance(self) -> float:
        return max((m.others_cores for m in self.runs), default=float("nan"))

    @property
    def errors(self) -> int:
        return sum(m.errors for m in self.runs)


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    server: str
    baseline: str
    attribute: str
    bound: float
    higher_is_better: bool = True


# The goals, at 64 connections with 1-row bodies.
GOALS = (
    Goal(
        "gatewatch, logging on, batching off ≥ 0.8 × floor req/s",
        "gatewatch-logging",
        "floor",
        "rps",
        0.8,
    ),
    Goal(
        "gatewatch, log + 10% canary + shadow, batching off ≥ 0.85 × the same without them",
        "gatewatch-canary-shadow",
        "gatewatch-logging",
        "rps",
        0.85,
    ),
    Goal("gatewatch, batching on ≥ 1.2 × floor req/s", "gatewatch-batching", "floor", "rps", 1.2),
    Goal(
        "gatewatch, batching on ≥ 3 × MLServer req/s", "gatewatch-batching", "mlserver", "rps", 3.0
    ),
    Goal(
        "gatewatch, batching on: p99 ≤ ⅓ × MLServer p99",
        "gatewatch-batching",
        "mlserver",
        "p99",
        1 / 3,
        higher_is_better=False,
    ),
)


def _fmt(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def goal_lines(cells: Mapping[Key, Cell]) -> list[str]:
    lines = []
    for goal in GOALS:
        mine = cells.get((goal.server, 64, 1))
        base = cells.get((goal.baseline, 64, 1))
        if mine is None or base is None or not mine.runs or not base.runs:
            lines.append(f"- {goal.text}: not measured in this run")
            continue
        a, b = getattr(mine, goal.attribute), getattr(base, goal.attribute)
        ratio = a / b if b else float("nan")
        met = ratio >= goal.bound if goal.higher_is_better else ratio <= goal.bound
        verdict = "**met**" if met else "**missed**"
        line = f"- {goal.text}: {ratio:.2f} ({_fmt(a)} vs {_fmt(b)}) — {verdict}"
        if goal.attribute == "rps" and mine.cpu_us > 0:
            # Requests per CPU-second: what req/s would be with the core to itself.
            line += f"; per CPU-second {base.cpu_us / mine.cpu_us:.2f}"
        lines.append(line)
    return lines


def _table(cells: Mapping[Key, Cell], order: Sequence[str]) -> list[str]:
    head = (
        "| server | conns | rows | req/s | p50 ms | p99 ms | server CPU µs/req | × floor req/s "
        "| × MLServer req/s | p99 ÷ MLServer p99 | mean batch | others' CPU (max, cores) | runs |"
    )
    lines = [head, "|" + "---|" * 13]
    keys = sorted(cells, key=lambda k: (k[2], k[1], order.index(k[0]) if k[0] in order else 99))
    for key in keys:
        server, conns, rows = key
        cell = cells[key]
        if not cell.runs:
            continue
        floor = cells.get(("floor", conns, rows))
        ml = cells.get(("mlserver", conns, rows))
        floor_rps = floor.rps if floor and floor.runs else float("nan")
        ml_rps = ml.rps if ml and ml.runs else float("nan")
        ml_p99 = ml.p99 if ml and ml.runs else float("nan")
        batch = statistics.median(cell.batch_sizes) if cell.batch_sizes else float("nan")
        runs = f"{len(cell.runs)}" + (f" (+{cell.repeats} repeated)" if cell.repeats else "")
        if cell.errors:
            runs += f", {cell.errors} errors"
        lines.append(
            f"| {server} | {conns} | {rows} | {_fmt(cell.rps)} | {_fmt(cell.p50, 2)} "
            f"| {_fmt(cell.p99, 1)} | {_fmt(cell.cpu_us)} | {_ratio(cell.rps, floor_rps)} "
            f"| {_ratio(cell.rps, ml_rps)} | {_ratio(cell.p99, ml_p99)} | {_fmt(batch, 1)} "
            f"| {_fmt(cell.worst_disturbance, 2)} | {runs} |"
        )
    return lines


def render(
    cells: Mapping[Key, Cell],
    order: Sequence[str],
    header: Sequence[str],
    notes: str,
) -> str:
    """The whole RESULTS.md: header lines, goals, the table, then the kept notes."""
    out = [
        "# gatewatch load test results",
        "",
        *header,
        "",
        "## Goals (64 connections, 1-row bodies)",
        "",
    ]
    out += goal_lines(cells)
    out += ["", "## Medians", "", *_table(cells, order), "", NOTES_MARKER, notes.rstrip("\n"), ""]
    return "\n".join(out)
