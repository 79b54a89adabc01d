"""Benchmark sections 5-6: start and restart (fork server and exec), footprint.

Start-up figures compare ``start="auto"`` (workers forked from a per-handle
fork server) with ``start="exec"`` (each worker re-executes run.py) in the same
interleaved rounds; the footprint reads each worker's unique memory (USS, PSS)
from /proc/<pid>/smaps_rollup beside its RSS.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import REPO, Closer, Config, Tasks
from _peers import PipeFloor
from _report import Report, Stat, interleave

from tarnish_py import Process, ProcessPool, WorkerCrashed

__all__ = ["COLD_CALL", "CRASH", "POOL4", "PY_IMPORT", "READY", "footprint", "start"]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("TARNISH_PY_WORKER", None)
    return env


def wall_ms(argv: list[str]) -> Callable[[], float]:
    env = _child_env()

    def measure() -> float:
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True)
        return (time.perf_counter() - t0) * 1000

    return measure


PY_PASS = 'python -c "pass"'
PY_IMPORT = 'python -c "import tarnish_py"'
MODES = ("auto", "exec")


def READY(mode: str) -> str:  # noqa: N802 - a row label, like the constants
    return f'Process(Echo, start="{mode}") spawn-to-ready'


def POOL(n: int, mode: str) -> str:  # noqa: N802
    return f'ProcessPool(Echo, size={n}, start="{mode}") spawn-to-ready'


def CRASH(mode: str) -> str:  # noqa: N802
    return f'segfault -> next successful call, start="{mode}"'


POOL4 = POOL(4, "auto")
COLD_CALL = "cold start + first call (Process(Crash))"


def _ready(make: Callable[[], Any]) -> Callable[[], float]:
    def measure() -> float:
        t0 = time.perf_counter()
        handle = make()
        dt = time.perf_counter() - t0
        handle.close()
        return dt * 1000

    return measure


def _recover(crashy: Process[int, int]) -> Callable[[], float]:
    def measure() -> float:
        t0 = time.perf_counter()
        try:
            crashy.call(-1)
        except WorkerCrashed:
            pass
        else:
            raise AssertionError("the worker did not crash")
        crashy.call(1)
        return (time.perf_counter() - t0) * 1000

    return measure


def start(rep: Report, cfg: Config, tasks: Tasks) -> dict[str, Stat]:
    cores = os.cpu_count() or 1
    sizes = sorted({max(2, cores), 4})

    def cold() -> float:
        t0 = time.perf_counter()
        with Process(tasks.crash) as c:
            c.call(1)
            dt = time.perf_counter() - t0
        return dt * 1000

    with Closer() as closer:
        contenders: dict[str, Callable[[], float]] = {
            PY_PASS: wall_ms([sys.executable, "-c", "pass"]),
            PY_IMPORT: wall_ms([sys.executable, "-c", "import tarnish_py"]),
        }
        for mode in MODES:
            contenders[READY(mode)] = _ready(lambda m=mode: Process(tasks.echo, start=m))
            for n in sizes:
                contenders[POOL(n, mode)] = _ready(
                    lambda n=n, m=mode: ProcessPool(tasks.echo, size=n, start=m))
        contenders[COLD_CALL] = cold
        for mode in MODES:
            crashy = Process(tasks.crash, start=mode)  # type: ignore[arg-type]
            closer.add(crashy.close)
            contenders[CRASH(mode)] = _recover(crashy)
        samples = interleave(contenders, cfg.start_rounds)
    return rep.table(
        "start", "5. Start and restart", "ms", samples, base=PY_IMPORT,
        ratio_label="× import", notes=[
            'start="auto" (the default): one fork server per handle re-executes this script '
            "and forks every worker, the replacement after a crash included; "
            'start="exec": every worker re-executes this script (tarnish_py.main). '
            "python -c runs with the same interpreter."])


# -- 6. footprint ----------------------------------------------------------------------------


def _rss_kib(pid: int | str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _unique_kib(pid: int) -> tuple[int, int]:
    """(USS, PSS) of ``pid`` in KiB: its private pages, and its share of shared ones."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), fields.get("Pss", 0)


def _importtime_us() -> float:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tarnish_py"],
                          env=_child_env(), capture_output=True, text=True, check=True)
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == "tarnish_py":
            return float(parts[1])
    return float("nan")


def _worker_memory(tasks: Tasks, memory: dict[str, list[float]]) -> None:
    """RSS, USS and PSS of each worker of a pool of 4, forked and exec'd."""
    for mode in MODES:
        with ProcessPool(tasks.echo, size=4, start=mode) as pool:  # type: ignore[arg-type]
            list(pool.map(range(100)))
            pids = [pid for pid in pool.pids if pid]
            rss = [_rss_kib(pid) / 1024 for pid in pids]
            uss, pss = zip(*(_unique_kib(pid) for pid in pids), strict=True)
        label = "forked from the server" if mode == "auto" else "exec'd"
        memory[f"worker RSS, pool of 4, {label} (median of workers)"] = [statistics.median(rss)]
        memory[f"worker USS (unique), pool of 4, {label}"] = [statistics.median(uss) / 1024]
        memory[f"worker PSS, pool of 4, {label}"] = [statistics.median(pss) / 1024]


def footprint(rep: Report, cfg: Config, tasks: Tasks) -> dict[str, Stat]:
    samples: dict[str, list[float]] = {"import tarnish_py (-X importtime, cumulative)": []}
    for _ in range(cfg.start_rounds):
        samples["import tarnish_py (-X importtime, cumulative)"].append(_importtime_us() / 1000)
    stats = rep.table("import", "6. Footprint: import time", "ms", samples)
    memory: dict[str, list[float]] = {}
    with Closer() as closer:
        p = Process(tasks.echo, start="exec")
        closer.add(p.close)
        memory["tarnish worker RSS (this script re-executed)"] = [_rss_kib(p.pid or 0) / 1024]
        floor = PipeFloor()
        closer.add(floor.close)
        memory["pipe-floor child RSS (python -S, no imports)"] = [
            _rss_kib(floor.pids()[0]) / 1024]
        spawned = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        closer.add(spawned.shutdown)
        spawned.submit(os.getpid).result()
        memory["ProcessPoolExecutor worker RSS (spawn: imports this script too)"] = [
            _rss_kib(next(iter(spawned._processes))) / 1024]
    _worker_memory(tasks, memory)
    size = 4
    for label in ("first pool of the process", "a later pool"):
        before = _rss_kib("self")
        pool = ProcessPool(tasks.echo, size=size)
        list(pool.map(range(100)))
        after = _rss_kib("self")
        pool.close()
        memory[f"parent RSS growth per worker, ProcessPool(size={size}), {label}"] = [
            (after - before) / size / 1024]
    stats.update(rep.table("memory", "6b. Footprint: memory", "MiB", memory, notes=[
        "USS: the worker's private pages (what one more worker costs); PSS adds its share "
        "of the pages it shares (with the fork server and its sibling workers)."]))
    return stats
