"""The benchmark run behind run.py (kept apart so that the workers, which
re-execute run.py, import none of this): the command line, the order of the
sections (``_sections_calls``, ``_sections_start``) and the targets of SPEC §5.

Each section starts its contenders, interleaves them round by round
(``_report.interleave``) and adds a table to the report; ``targets`` turns the
tables into the PASS/FAIL lines of SPEC §5.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _sections_calls as calls
import _sections_start as starts
from _common import FLOOR, HERE, PEER_CALL, TARNISH_CALL, Config, Tasks
from _report import Report, Stat

from tarnish_py import Task

__all__ = ["SECTIONS", "main"]

SECTIONS = ("latency", "throughput", "scaling", "payload", "start", "footprint")


# -- targets ---------------------------------------------------------------------------------


def targets(rep: Report, s: dict[str, dict[str, Stat]]) -> None:
    def med(section: str, row: str) -> float | None:
        got = s.get(section, {}).get(row)
        return got.median if got else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    tiny, floor = med("latency", TARNISH_CALL), med("latency", FLOOR)
    ppe = med("latency", PEER_CALL["ProcessPoolExecutor"])
    # SPEC §5, second milestone (stricter than the first: 2.5 and 4).
    check(rep, "tiny call pinned / pipe floor", ratio(tiny, floor), "≤ 2.0", lambda r: r <= 2.0)
    check(rep, "ProcessPoolExecutor.submit().result() / tiny call (pinned)", ratio(ppe, tiny),
          "≥ 6", lambda r: r >= 6)
    check(rep, "ProcessPool.map / ProcessPoolExecutor.map(chunksize=100), calls/s",
          ratio(med("throughput", "tarnish ProcessPool(2).map (chunksize=None)"),
                med("throughput", "ProcessPoolExecutor(2).map (chunksize=100)")),
          "≥ 1", lambda r: r >= 1)
    scale = s.get("scaling", {})
    one = scale.get("1 worker")
    if one is not None and len(scale) > 1:
        worst = min(st.median / one.median / int(name.split()[0])
                    for name, st in scale.items() if name != "1 worker")
        check(rep, "native scaling: worst speedup / N up to the core count", worst, "≥ 0.9",
              lambda r: r >= 0.9)
    else:
        check(rep, "native scaling (needs ≥ 2 cores)", None, "≥ 0.9", lambda r: r >= 0.9)
    ready = med("start", starts.READY("auto"))
    check(rep, "spawn-to-ready (fork server) / python -c 'import tarnish_py'",
          ratio(ready, med("start", starts.PY_IMPORT)), "≤ 1.5", lambda r: r <= 1.5)
    check(rep, "spawn-to-ready, start=\"exec\" / python -c 'import tarnish_py'",
          ratio(med("start", starts.READY("exec")), med("start", starts.PY_IMPORT)), "≤ 1.5",
          lambda r: r <= 1.5)
    cores = os.cpu_count() or 1
    check(rep, f"ProcessPool(size=4) ready / one worker ready ({cores} cores)",
          ratio(med("start", starts.POOL4), ready), "≤ 1.5 (serial would be 4)",
          lambda r: r <= 1.5)
    check(rep, "segfault -> next success / cold start (spawn to ready), start=\"auto\"",
          ratio(med("start", starts.CRASH("auto")), ready), "≤ 0.1", lambda r: r <= 0.1)
    check(rep, "segfault -> next success / cold start (spawn to ready), start=\"exec\"",
          ratio(med("start", starts.CRASH("exec")), med("start", starts.READY("exec"))),
          "reported", None)
    for size in ("1 MiB", "16 MiB", "64 MiB"):
        check(rep, f"{size} echo, tarnish MB/s / ProcessPoolExecutor(1) MB/s",
              ratio(med("payload", f"{size}: tarnish Process"), med("payload", f"{size}: PPE(1)")),
              "≥ 1.5", lambda r: r >= 1.5)


def check(rep: Report, name: str, value: float | None, limit: str,
          ok: Callable[[float], bool] | None) -> None:
    verdict = None if ok is None or value is None else ok(value)
    if value is None and ok is not None:
        rep.target(name + " (not measured in this run)", None, limit, None)
        return
    rep.target(name, value, limit, verdict)



# -- main ------------------------------------------------------------------------------------


def main(
    echo: type[Task[int, int]],
    echo_bytes: type[Task[bytes, bytes]],
    burner: type[Task[int, int]],
    crash: type[Task[int, int]],
    echo_fn: Callable[[int], int],
    doc: str | None = None,
) -> None:
    """Parse the command line, run the chosen sections, print and write the report."""
    tasks = Tasks(echo, echo_bytes, burner, crash, echo_fn)
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few rounds, small counts, no 16/64 MiB")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per table")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin latency to")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    args = ap.parse_args()
    cfg = Config.make(args.quick, args.rounds, args.cpu)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    rep = Report(cfg.quick)
    load = rep.data["machine"]["loadavg_at_start"][0]
    if load > 0.5:
        rep.note(f"taken on a busy machine (load average {load} at start): absolute figures are "
                 "noisy; the ratios within one interleaved run are what count.")
    s: dict[str, dict[str, Stat]] = {}
    runners: dict[str, Callable[[], None]] = {
        "latency": lambda: s.update(latency=calls.latency(rep, cfg, tasks, pinned=True),
                                    latency_unpinned=calls.latency(rep, cfg, tasks, False)),
        "throughput": lambda: s.update(throughput=calls.throughput(rep, cfg, tasks)),
        "scaling": lambda: s.update(scaling=calls.scaling(rep, cfg, tasks)),
        "payload": lambda: s.update(payload=calls.payload(rep, cfg, tasks)),
        "start": lambda: s.update(start=starts.start(rep, cfg, tasks)),
        "footprint": lambda: s.update(footprint=starts.footprint(rep, cfg, tasks)),
    }
    t0 = time.perf_counter()
    # Memory and start-up first, while the parent is fresh (the payload section
    # leaves large freed buffers behind); the report keeps the order of SECTIONS.
    for name in sorted(SECTIONS, key=lambda n: n not in ("footprint", "start")):
        rep.position = SECTIONS.index(name)
        if name in only:
            print(f"[{time.perf_counter() - t0:6.1f}s] {name} ...", file=sys.stderr, flush=True)
            runners[name]()
    targets(rep, s)
    rep.data["elapsed_s"] = round(time.perf_counter() - t0, 1)
    md, js = rep.write(args.out)
    print(rep.markdown())
    print(f"written: {md} and {js}", file=sys.stderr)

