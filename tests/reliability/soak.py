"""Soak: a pool of 2 driven from 4 threads through N calls, 1 % of which fault.

    python tests/reliability/soak.py --calls 20000 --seed 1

Every call is accounted for exactly once: the caller gets its value, or the
typed error that matches the injected fault; each worker also logs every call
it starts, so a call run twice (a silent retry) or never is caught. The parent's
fds, threads, child processes and RSS are measured after a warm-up that takes
every fault path once, and again after the run. Prints one JSON report; exit
status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import random
import sys
import tempfile
import threading
import time
from typing import Any

import tarnish_py
from tarnish_py import ProcessPool, Task, TaskError, TaskTimeout, WorkerCrashed

SIZE = 2
THREADS = 4
FAULT_RATE = 0.01
CALL_TIMEOUT = 2.0  # per call; a "timeout" fault sleeps far past it
RSS_BOUND = 20 * 1024 * 1024
SETTLE = 5.0  # how long a reaped worker's stderr thread may take to end
LOG_ENV = "TARNISH_SOAK_LOG"

KINDS = ("segfault", "abort", "sigkill", "exit3", "timeout", "error")


def segfault() -> None:
    ctypes.string_at(0)


def abort() -> None:
    os.abort()


def sigkill() -> None:
    os.kill(os.getpid(), 9)


def exit3() -> None:
    os._exit(3)


def hang() -> None:
    time.sleep(600)


class Boom(Exception):
    pass


def error() -> None:
    raise Boom("injected")


FAULTS = {
    "segfault": segfault,
    "abort": abort,
    "sigkill": sigkill,
    "exit3": exit3,
    "timeout": hang,
    "error": error,
}


def expected_value(index: int) -> int:
    return index * 7 + 1


class Soak(Task[tuple[int, str], int]):
    """Logs the call index, then returns ``expected_value`` or injects the fault."""

    def setup(self) -> None:
        self.log = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND)

    def run(self, call: tuple[int, str]) -> int:
        index, kind = call
        os.write(self.log, b"%d\n" % index)  # one small O_APPEND write: atomic
        if kind != "ok":
            FAULTS[kind]()
        return expected_value(index)


def summary(exc: Exception) -> tuple[Any, ...]:
    """What the checks need of an error. Keeping the exception itself would keep its
    traceback's frames alive, and those the replaced worker's buffers."""
    if isinstance(exc, WorkerCrashed):
        return ("WorkerCrashed", exc.signal, exc.exitcode)
    if isinstance(exc, TaskError):
        return ("TaskError", exc.type_name, exc.message)
    if isinstance(exc, TaskTimeout):
        return ("TaskTimeout",)
    return (type(exc).__name__, str(exc)[:200])


def matches(kind: str, index: int, outcome: Any) -> bool:
    """Whether ``outcome`` is exactly what a caller of this call must see."""
    if kind == "ok":
        return type(outcome) is int and outcome == expected_value(index)
    expected = {
        "segfault": ("WorkerCrashed", "SIGSEGV", -11),
        "abort": ("WorkerCrashed", "SIGABRT", -6),
        "sigkill": ("WorkerCrashed", "SIGKILL", -9),
        "exit3": ("WorkerCrashed", None, 3),
        "timeout": ("TaskTimeout",),
        "error": ("TaskError", "__main__.Boom", "injected"),
    }
    return outcome == expected[kind]


# -- what the parent holds -------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def children() -> dict[int, str]:
    """pid -> state of every process whose parent is this one."""
    me = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found[int(entry)] = fields[0]
    return found


def is_alive(pid: int) -> bool:
    """A zombie is dead: here PID 1 may never reap what it adopts."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def snapshot() -> dict[str, int]:
    kids = children()
    return {
        "fds": open_fds(),
        "threads": threading.active_count(),
        "children": len(kids),
        "zombies": sum(state == "Z" for state in kids.values()),
        "rss": rss(),
    }


def settled(limits: dict[str, int]) -> dict[str, int]:
    """A snapshot once every count is down to its limit, or after SETTLE seconds."""
    deadline = time.monotonic() + SETTLE
    while True:
        now = snapshot()
        done = all(now[k] <= limits[k] for k in ("fds", "threads", "children", "zombies"))
        if done or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


# -- the run ---------------------------------------------------------------


def plan(calls: int, seed: int) -> list[str]:
    """The kind of each call: about 1 % faults, every kind at least once."""
    rng = random.Random(seed)
    faults = max(len(KINDS), round(calls * FAULT_RATE))
    faults = min(faults, calls)
    kinds = [KINDS[k % len(KINDS)] for k in range(faults)]
    rng.shuffle(kinds)
    schedule = ["ok"] * calls
    for position, kind in zip(rng.sample(range(calls), faults), kinds, strict=True):
        schedule[position] = kind
    return schedule


def drive(pool: ProcessPool[tuple[int, str], int], schedule: list[str], first: int) -> dict:
    """Run ``schedule`` (call indexes from ``first``) from THREADS threads."""
    outcomes: dict[int, list[Any]] = collections.defaultdict(list)
    lock = threading.Lock()
    position = iter(range(len(schedule)))

    def worker() -> None:
        while True:
            with lock:
                k = next(position, None)
            if k is None:
                return
            index = first + k
            try:
                outcome: Any = pool.call((index, schedule[k]), timeout=CALL_TIMEOUT)
            except Exception as exc:  # every outcome is recorded, checked below
                outcome = summary(exc)
            with lock:
                outcomes[index].append(outcome)

    threads = [threading.Thread(target=worker, name=f"soak-{n}") for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def account(schedule: list[str], first: int, outcomes: dict, executed: collections.Counter):
    lost = duplicated = mismatched = 0
    examples: list[str] = []
    for k, kind in enumerate(schedule):
        index = first + k
        got = outcomes.get(index, [])
        runs = executed.get(index, 0)
        if not got or runs == 0:
            lost += 1
        if len(got) > 1 or runs > 1:
            duplicated += 1
        if len(got) == 1 and not matches(kind, index, got[0]):
            mismatched += 1
            if len(examples) < 5:
                examples.append(f"call {index} ({kind}): {got[0]!r:.300}")
    return {"lost": lost, "duplicated": duplicated, "mismatched": mismatched, "examples": examples}


def executions(path: str) -> collections.Counter:
    with open(path) as f:
        return collections.Counter(int(line) for line in f if line.strip())


def soak(calls: int, seed: int) -> dict:
    schedule = plan(calls, seed)
    warmup = list(KINDS) + ["ok"] * 200  # every fault path once before "before"
    with tempfile.NamedTemporaryFile(prefix="tarnish-soak-", delete=False) as log:
        log_path = log.name
    os.environ[LOG_ENV] = log_path
    try:
        baseline = snapshot()
        started = time.monotonic()
        pool = ProcessPool(Soak, size=SIZE)
        try:
            warm = drive(pool, warmup, first=-len(warmup))
            # Steady state: SIZE workers and the watchdog, one stderr thread per worker.
            steady = {
                "fds": sys.maxsize,
                "threads": baseline["threads"] + SIZE,
                "children": SIZE + 1,
                "zombies": 0,
            }
            before = settled(steady)
            run_started = time.monotonic()
            outcomes = drive(pool, schedule, first=0)
            run_elapsed = time.monotonic() - run_started
            after = settled(before)
            pids = pool.pids
            pool_state = {
                "size": pool.size,
                "pids": pids,
                "all_alive": all(p is not None and is_alive(p) for p in pids),
                "distinct": len(set(pids)) == len(pids),
            }
        finally:
            pool.close()
        closed = settled(baseline | {"children": max(baseline["children"], 1)})
        executed = executions(log_path)
    finally:
        os.unlink(log_path)
    warm_account = account(warmup, -len(warmup), warm, executed)
    result = account(schedule, 0, outcomes, executed)
    faults = collections.Counter(kind for kind in schedule if kind != "ok")
    growth = {k: after[k] - before[k] for k in ("fds", "threads", "children", "zombies")}
    report = {
        "calls": calls,
        "seed": seed,
        "pool_size": SIZE,
        "threads": THREADS,
        "faults": {kind: faults.get(kind, 0) for kind in KINDS},
        **result,
        "warmup": {"calls": len(warmup), **warm_account},
        "pool": pool_state,
        "before": before,
        "after": after,
        "growth": growth,
        "rss_growth": after["rss"] - before["rss"],
        "rss_bound": RSS_BOUND,
        "baseline_before_pool": baseline,
        "after_close": closed,
        "elapsed": round(time.monotonic() - started, 3),
        "run_elapsed": round(run_elapsed, 3),
    }
    report["ok"] = check(report)
    return report


def check(report: dict) -> bool:
    pool = report["pool"]
    closed, baseline = report["after_close"], report["baseline_before_pool"]
    return (
        report["lost"] == 0
        and report["duplicated"] == 0
        and report["mismatched"] == 0
        and report["warmup"]["lost"] == report["warmup"]["duplicated"] == 0
        and report["warmup"]["mismatched"] == 0
        and pool["size"] == SIZE
        and pool["all_alive"]
        and pool["distinct"]
        and all(v <= 0 for v in report["growth"].values())
        and report["after"]["zombies"] == 0
        and report["rss_growth"] < RSS_BOUND
        # After close only the watchdog (one per parent) may remain.
        and closed["children"] <= max(baseline["children"], 1)
        and closed["zombies"] == 0
        and closed["threads"] <= baseline["threads"]
    )


def parent() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    report = soak(args.calls, args.seed)
    print(json.dumps(report, indent=2), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(tarnish_py.main(parent))
