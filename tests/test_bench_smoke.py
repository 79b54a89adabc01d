"""The benchmark suite runs end to end (``--quick``) and writes the JSON it promises.

No figure is checked: timings belong to benchmarks/, never to a test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"

SECTIONS = {
    "latency_pinned",
    "latency_unpinned",
    "throughput",
    "scaling",
    "payload",
    "payload_model",
    "start",
    "import",
    "memory",
}
PEER_ROWS = {
    "pebble": ("pebble ProcessPool(1).schedule().result()", "pebble ProcessPool(2).map"),
    "loky": ("loky get_reusable_executor(1).submit().result()",),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("TARNISH_PY_WORKER", None)
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--rounds", "1", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "### Targets" in proc.stdout
    assert (out / "latest.md").read_text() in proc.stdout  # the same table, printed and written
    data: dict[str, Any] = json.loads((out / "latest.json").read_text())
    return data


def rows(data: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in data["sections"][section]["rows"]}


def test_json_has_every_section_and_the_machine(report: dict[str, Any]) -> None:
    assert report["quick"] is True
    assert SECTIONS <= set(report["sections"])
    assert {"cpu", "cores", "python", "kernel"} <= set(report["machine"])


def test_tarnish_and_floor_rows_have_figures(report: dict[str, Any]) -> None:
    for section in ("latency_pinned", "latency_unpinned"):
        got = rows(report, section)
        for name in ("raw os.pipe ping-pong (floor)", "tarnish Process.call",
                     "ProcessPoolExecutor(1).submit().result()"):
            assert got[name]["median"] > 0
            assert {"min", "max", "q1", "q3", "ratio"} <= set(got[name])
    for chunk in (None, 1, 100):
        name = f"tarnish ProcessPool(2).map (chunksize={chunk})"
        assert rows(report, "throughput")[name]["median"] > 0
    assert rows(report, "throughput_cpu")[name + ": consuming thread"]["median"] > 0
    assert rows(report, "scaling")["1 worker"]["ratio"] == 1.0
    for mode in ("auto", "exec"):
        start = rows(report, "start")
        assert start[f'Process(Echo, start="{mode}") spawn-to-ready']["median"] > 0
        assert start[f'segfault -> next successful call, start="{mode}"']["median"] > 0
    steps = report["sections"]["latency_pinned"]["extra"]["hotpath_steps_us"]
    assert any(step["step"].startswith("msgpack pack") for step in steps)


def test_quick_skips_the_largest_payloads(report: dict[str, Any]) -> None:
    names = set(rows(report, "payload"))
    assert "1 MiB: tarnish Process" in names
    assert not any(name.startswith("64 MiB") for name in names)


@pytest.mark.parametrize("peer", sorted(PEER_ROWS))
def test_peer_rows_present_or_skipped_with_a_note(report: dict[str, Any], peer: str) -> None:
    installed = importlib.util.find_spec(peer) is not None
    everything = {**rows(report, "latency_pinned"), **rows(report, "throughput")}
    for prefix in PEER_ROWS[peer]:
        matches = [row for name, row in everything.items() if name.startswith(prefix)]
        assert matches, prefix
        for row in matches:
            if installed:
                assert row.get("median", 0) > 0, row
            else:
                assert "not installed" in row["skipped"]


def test_targets_are_verdicts(report: dict[str, Any]) -> None:
    targets = report["targets"]
    assert len(targets) == 12
    assert {t["verdict"] for t in targets} <= {"PASS", "FAIL", "INFO"}
