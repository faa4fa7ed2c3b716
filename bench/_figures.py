"""The one record every benchmark returns, and how results are written and shown."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One measured figure, next to the baseline measured in the same run.

    `better` says which direction is an improvement ("lower" for times and errors,
    "higher" for rates), so a reader knows how to compare `value` with `goal`.
    """

    suite: str
    name: str
    value: float
    unit: str
    better: str  # "lower" | "higher"
    baseline_name: str | None = None
    baseline_value: float | None = None
    goal: float | None = None
    note: str = ""

    @property
    def goal_met(self) -> bool | None:
        if self.goal is None:
            return None
        return self.value <= self.goal if self.better == "lower" else self.value >= self.goal


def write_results(figures: list[Figure], out_dir: Path) -> tuple[Path, Path]:
    """Write `results.json` (machine-readable) and `results.md` (a table) under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine()}
    rows = [asdict(f) | {"goal_met": f.goal_met} for f in figures]
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps({"meta": meta, "figures": rows}, indent=2))
    md_path = out_dir / "results.md"
    md_path.write_text(markdown_table(figures))
    return json_path, md_path


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:.3g}"


def markdown_table(figures: list[Figure]) -> str:
    head = "| suite | figure | value | unit | baseline | baseline value | goal | met | note |\n"
    head += "|---|---|---:|---|---|---:|---:|---|---|\n"
    lines = []
    for f in figures:
        met = {None: "", True: "yes", False: "NO"}[f.goal_met]
        goal = "" if f.goal is None else ("≤ " if f.better == "lower" else "≥ ") + _fmt(f.goal)
        lines.append(
            f"| {f.suite} | {f.name} | {_fmt(f.value)} | {f.unit} | {f.baseline_name or ''} "
            f"| {_fmt(f.baseline_value)} | {goal} | {met} | {f.note} |"
        )
    return head + "\n".join(lines) + "\n"
