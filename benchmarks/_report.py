"""Rounds, statistics, targets and the markdown/JSON report. Standard library only.

Every figure is a list of samples, one per round; contenders of one table are
measured in the same round, one after another, in an order that rotates from
round to round, so that machine drift (other jobs, frequency changes) hits all
of them alike. A table shows the median and the min-max spread of the rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "Stat", "interleave", "machine", "stat"]


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "q1": self.q1,
            "q3": self.q3,
            "rounds": self.n,
        }


def stat(samples: list[float]) -> Stat:
    if not samples:
        raise ValueError("no samples")
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return Stat(statistics.median(samples), min(samples), max(samples), q1, q3, len(samples))


def interleave(
    contenders: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each contender once per round, rotating the order; the warm-up rounds are dropped."""
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            value = contenders[name]()
            if r >= warmup:
                samples[name].append(value)
    return samples


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


@dataclass
class _Table:
    title: str
    unit: str
    ratio_label: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Report:
    """Collects tables and target lines; renders them as markdown and JSON."""

    def __init__(self, quick: bool) -> None:
        self.data: dict[str, Any] = {
            "machine": machine(),
            "quick": quick,
            "sections": {},
            "targets": [],
            "notes": [],
        }
        self._tables: list[tuple[int, _Table | str]] = []
        #: where the next blocks go in the markdown (sections may run in another order)
        self.position = 0

    def table(
        self,
        key: str,
        title: str,
        unit: str,
        samples: dict[str, list[float]],
        *,
        base: str | dict[str, str] | None = None,
        ratio_label: str = "ratio",
        invert: bool = False,
        skipped: dict[str, str] | None = None,
        notes: list[str] | None = None,
    ) -> dict[str, Stat]:
        """Add a table of one stat per contender; ratio = median / median of ``base``
        (``invert``: base / median, for 'x faster' of a time). ``base`` may map
        each row to its own base row."""
        stats = {name: stat(values) for name, values in samples.items() if values}
        table = _Table(title, unit, ratio_label if base else "", notes=list(notes or []))
        rows_json: list[dict[str, Any]] = []
        for name, s in stats.items():
            base_name = base.get(name) if isinstance(base, dict) else base
            base_median = stats[base_name].median if base_name in stats else None
            ratio = None
            if base_median:
                ratio = base_median / s.median if invert else s.median / base_median
            row = {"name": name, "unit": unit, **s.as_dict(), "ratio": ratio}
            table.rows.append(row)
            rows_json.append(row)
        for name, why in (skipped or {}).items():
            table.rows.append({"name": name, "skipped": why})
            rows_json.append({"name": name, "skipped": why})
        self._tables.append((self.position, table))
        self.data["sections"][key] = {
            "title": title,
            "unit": unit,
            "base": base,
            "ratio": ratio_label if base else None,
            "rows": rows_json,
            "notes": table.notes,
        }
        return stats

    def text(self, markdown: str) -> None:
        """A free-form block of markdown, in order with the tables."""
        self._tables.append((self.position, markdown))

    def extra(self, key: str, value: Any) -> None:
        self.data["sections"].setdefault(key, {})
        self.data["sections"][key]["extra"] = value

    def target(self, name: str, value: float | None, limit: str, ok: bool | None) -> None:
        verdict = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        self.data["targets"].append(
            {"target": name, "value": value, "limit": limit, "verdict": verdict}
        )

    def note(self, text: str) -> None:
        self.data["notes"].append(text)

    def markdown(self) -> str:
        m = self.data["machine"]
        out = [
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['implementation']} {m['python']}, "
            f"Linux {m['kernel']}, load average at start {m['loadavg_at_start']}"
            + (" — quick run" if self.data["quick"] else ""),
            "",
        ]
        for _, t in sorted(self._tables, key=lambda block: block[0]):
            if isinstance(t, str):
                out += [t, ""]
                continue
            out.append(f"### {t.title}")
            out.append("")
            head = f"| | median {t.unit} | min | max |"
            sep = "|---|---:|---:|---:|"
            if t.ratio_label:
                head += f" {t.ratio_label} |"
                sep += "---:|"
            out += [head, sep]
            for row in t.rows:
                if "skipped" in row:
                    empty = " | | |" + (" |" if t.ratio_label else "")
                    out.append(f"| {row['name']} | skipped: {row['skipped']}{empty}")
                    continue
                line = (
                    f"| {row['name']} | {_fmt(row['median'])} | {_fmt(row['min'])} "
                    f"| {_fmt(row['max'])} |"
                )
                if t.ratio_label:
                    line += f" {_fmt(row['ratio'], 2)} |"
                out.append(line)
            for note in t.notes:
                out.append(f"\n{note}")
            out.append("")
        out.append("### Targets (SPEC §5)")
        out.append("")
        for t in self.data["targets"]:
            value = "—" if t["value"] is None else f"{t['value']:.2f}"
            out.append(f"- **{t['verdict']}** {t['target']}: {value} (target {t['limit']})")
        for note in self.data["notes"]:
            out.append(f"\nNote: {note}")
        return "\n".join(out) + "\n"

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        md = directory / "latest.md"
        js = directory / "latest.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        return md, js
