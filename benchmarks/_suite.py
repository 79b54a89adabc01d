"""The benchmark sections behind run.py (kept apart so that the workers, which
re-execute run.py, import none of this).

Each section starts its contenders, interleaves them round by round
(``_report.interleave``) and adds a table to the report; ``targets`` turns the
tables into the PASS/FAIL lines of SPEC §5.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _peers import PipeFloor, burn, make_peer
from _report import Report, Stat, interleave

from tarnish_py import Process, ProcessPool, Task, WorkerCrashed

__all__ = ["SECTIONS", "main"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTIONS = ("latency", "throughput", "scaling", "payload", "start", "footprint")

# The tasks live in run.py (the program the workers re-execute); main() binds them.
Echo: type[Task[int, int]]
EchoBytes: type[Task[bytes, bytes]]
Burn: type[Task[int, int]]
Crash: type[Task[int, int]]


# -- configuration ---------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    rounds: int
    cpu: int
    tiny_calls: int  # per contender per round
    map_calls: int
    payload_sizes: tuple[int, ...]
    start_rounds: int
    burn_ms: float
    burn_jobs_per_worker: int

    @classmethod
    def make(cls, quick: bool, rounds: int | None, cpu: int | None) -> Config:
        allowed = sorted(os.sched_getaffinity(0))
        cpu = allowed[-1] if cpu is None else cpu
        if quick:
            return cls(True, rounds or 2, cpu, 200, 1000, (1 << 10, 1 << 16, 1 << 20), rounds or 2,
                       5.0, 4)
        return cls(False, rounds or 9, cpu, 2000, 10_000,
                   (1 << 10, 1 << 16, 1 << 20, 1 << 24, 1 << 26), rounds or 7, 20.0, 8)


def per_call_us(call: Callable[[int], Any], n: int) -> Callable[[], float]:
    def measure() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            call(i)
        return (time.perf_counter() - t0) / n * 1e6

    return measure


class Closer:
    """Closes what a section started, in reverse order, whatever happens."""

    def __init__(self) -> None:
        self._items: list[Callable[[], Any]] = []

    def add(self, close: Callable[[], Any]) -> None:
        self._items.append(close)

    def __enter__(self) -> Closer:
        return self

    def __exit__(self, *exc: object) -> None:
        for close in reversed(self._items):
            try:
                close()
            except Exception as e:  # a peer that fails to close must not hide the figures
                print(f"warning: closing failed: {e!r}", file=sys.stderr)


PEER_CALL = {
    "ProcessPoolExecutor": "ProcessPoolExecutor(1).submit().result()",
    "multiprocessing.Pool": "multiprocessing.Pool(1).apply",
    "pebble": "pebble ProcessPool(1).schedule().result()",
    "loky": "loky get_reusable_executor(1).submit().result()",
}
FLOOR = "raw os.pipe ping-pong (floor)"
TARNISH_CALL = "tarnish Process.call"


# -- 1. tiny-call latency ----------------------------------------------------------


def latency(rep: Report, cfg: Config, pinned: bool) -> dict[str, Stat]:
    saved = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {cfg.cpu})  # children inherit it
    try:
        with Closer() as closer:
            floor = PipeFloor()
            closer.add(floor.close)
            p = Process(Echo)
            closer.add(p.close)
            contenders = {
                FLOOR: per_call_us(floor.call, cfg.tiny_calls),
                TARNISH_CALL: per_call_us(p.call, cfg.tiny_calls),
            }
            skipped: dict[str, str] = {}
            for kind, label in PEER_CALL.items():
                peer, why = make_peer(kind, 1)
                if peer is None:
                    skipped[label] = why or "unavailable"
                    continue
                closer.add(peer.close)
                contenders[label] = per_call_us(peer.call, cfg.tiny_calls)
            notes = []
            if pinned:
                worker_cpus = sorted(os.sched_getaffinity(p.pid or 0))
                notes.append(f"Parent and workers pinned to CPU {cfg.cpu} (tarnish worker "
                             f"affinity: {worker_cpus}); {cfg.tiny_calls} calls per contender "
                             "per round.")
            samples = interleave(contenders, cfg.rounds)
            key = "latency_pinned" if pinned else "latency_unpinned"
            title = ("1. Tiny call (int -> int echo) round trip, "
                     + ("pinned to one CPU" if pinned else "unpinned"))
            stats = rep.table(key, title, "µs/call", samples, base=FLOOR,
                              ratio_label="× floor", skipped=skipped, notes=notes)
            if pinned:
                hotpath(rep, cfg, p, floor, stats)
            return stats
    finally:
        os.sched_setaffinity(0, saved)


def hotpath(rep: Report, cfg: Config, p: Process[int, int], floor: PipeFloor,
            stats: dict[str, Stat]) -> None:
    import hotpath as hp

    n = 2000 if cfg.quick else 20000
    split = {
        FLOOR: hp.cpu_split(floor.call, floor.pids(), n),
        TARNISH_CALL: hp.cpu_split(p.call, [p.pid or 0], n),
    }
    steps = hp.steps(p, cfg.quick)
    rows = ["### Where the microseconds of a tiny call go (pinned)", "",
            "| side | step (measured in isolation) | µs |", "|---|---|---:|"]
    for side, step, us in steps:
        rows.append(f"| {side} | {step} | {us:.2f} |")
    rows += ["", "| per call, pinned | wall µs | parent CPU µs | worker CPU µs | "
             "wall − both CPUs |", "|---|---:|---:|---:|---:|"]
    for name, s in split.items():
        rest = s["wall_us"] - s["parent_cpu_us"] - s["child_cpu_us"]
        rows.append(f"| {name} | {s['wall_us']:.1f} | {s['parent_cpu_us']:.1f} | "
                    f"{s['child_cpu_us']:.1f} | {rest:.1f} |")
    rep.text("\n".join(rows))
    rep.extra("latency_pinned", {
        "hotpath_steps_us": [{"side": a, "step": b, "us": c} for a, b, c in steps],
        "cpu_split_us": split,
    })


# -- 2. throughput -------------------------------------------------------------------


def throughput(rep: Report, cfg: Config) -> dict[str, Stat]:
    n = cfg.map_calls
    xs = list(range(n))

    def rate(run: Callable[[], Any]) -> Callable[[], float]:
        def measure() -> float:
            t0 = time.perf_counter()
            out = run()
            dt = time.perf_counter() - t0
            assert len(out) == n
            return n / dt

        return measure

    with Closer() as closer:
        pool = ProcessPool(Echo, size=2)
        closer.add(pool.close)
        contenders: dict[str, Callable[[], float]] = {
            "tarnish ProcessPool(size=2).map": rate(lambda: list(pool.map(xs))),
        }
        skipped: dict[str, str] = {}
        for kind, chunk, label in (
            ("ProcessPoolExecutor", 1, "ProcessPoolExecutor(2).map (chunksize=1, default)"),
            ("ProcessPoolExecutor", 100, "ProcessPoolExecutor(2).map (chunksize=100)"),
            ("multiprocessing.Pool", 1, "multiprocessing.Pool(2).imap (chunksize=1)"),
            ("pebble", 1, "pebble ProcessPool(2).map (chunksize=1)"),
        ):
            peer, why = make_peer(kind, 2, chunk)
            if peer is None:
                skipped[label] = why or "unavailable"
                continue
            closer.add(peer.close)
            contenders[label] = rate(lambda peer=peer: peer.map(xs))  # type: ignore[misc]
        samples = interleave(contenders, max(2, cfg.rounds // 2))
        return rep.table(
            "throughput", f"2. Throughput: {n:,} tiny calls through 2 workers, unpinned",
            "calls/s", samples, base="ProcessPoolExecutor(2).map (chunksize=1, default)",
            ratio_label="× PPE.map", skipped=skipped)


def batched_throughput(rep: Report, cfg: Config) -> dict[str, Stat]:
    import _throughput

    with Closer() as closer:
        return _throughput.throughput(rep, cfg.map_calls, max(2, cfg.rounds // 2), Echo, closer)


# -- 3. native scaling ------------------------------------------------------------------


def calibrate_burn(ms: float) -> int:
    iterations = 1000
    while True:
        t0 = time.perf_counter()
        burn(iterations)
        dt = (time.perf_counter() - t0) * 1000
        if dt > ms / 4:
            return max(1, int(iterations * ms / dt))
        iterations *= 4


def scaling(rep: Report, cfg: Config) -> dict[str, Stat]:
    cores = os.cpu_count() or 1
    iterations = calibrate_burn(cfg.burn_ms)
    with Closer() as closer:
        contenders: dict[str, Callable[[], float]] = {}
        for n in range(1, cores + 1):
            pool = ProcessPool(Burn, size=n)
            closer.add(pool.close)
            jobs = [iterations] * (n * cfg.burn_jobs_per_worker)

            def measure(pool: ProcessPool[int, int] = pool, jobs: list[int] = jobs) -> float:
                t0 = time.perf_counter()
                for _ in pool.map(jobs):
                    pass
                return len(jobs) / (time.perf_counter() - t0)

            contenders[f"{n} worker{'s' if n > 1 else ''}"] = measure
        samples = interleave(contenders, max(2, cfg.rounds // 2))
    return rep.table(
        "scaling", f"3. CPU-bound native work (pbkdf2_hmac, ~{cfg.burn_ms:g} ms a call), "
        "ProcessPool of N", "calls/s", samples, base="1 worker", ratio_label="speedup",
        notes=[f"{cfg.burn_jobs_per_worker} calls per worker per round; "
               f"{iterations} pbkdf2 iterations a call."])


# -- 4. payload sweep ----------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def payload(rep: Report, cfg: Config) -> dict[str, Stat]:
    from _model import EchoOrder, sample_order

    samples: dict[str, list[float]] = {}
    bases: dict[str, str] = {}
    with Closer() as closer:
        p = Process(EchoBytes)
        closer.add(p.close)
        peer, _ = make_peer("ProcessPoolExecutor", 1)
        assert peer is not None
        closer.add(peer.close)
        for size in cfg.payload_sizes:
            data = os.urandom(size)
            reps = max(1, min(200, (4 << 20) // size))

            def mbps(call: Callable[[bytes], Any], data: bytes = data, reps: int = reps
                     ) -> Callable[[], float]:
                def measure() -> float:
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        out = call(data)
                    dt = time.perf_counter() - t0
                    assert len(out) == len(data)
                    return len(data) * reps / dt / 1e6

                return measure

            label_t, label_p = f"{_size(size)}: tarnish Process", f"{_size(size)}: PPE(1)"
            got = interleave({label_t: mbps(p.call), label_p: mbps(peer.call)},
                             max(2, cfg.rounds // 2 if size < 1 << 24 else 2))
            samples.update(got)
            bases[label_t] = bases[label_p] = label_p
        stats = rep.table(
            "payload", "4. Payload sweep: bytes echoed (payload MB/s, each byte travels there "
            "and back)", "MB/s", samples, base=bases, ratio_label="× PPE(1)",
            notes=[] if not cfg.quick else ["--quick: 16 MiB and 64 MiB skipped."])

        q = Process(EchoOrder)
        closer.add(q.close)
        order = sample_order()
        assert q.call(order) == order and peer.call(order) == order
        n = max(50, cfg.tiny_calls // 4)
        model = interleave({
            "tarnish Process(EchoOrder).call": per_call_us(lambda _: q.call(order), n),
            "PPE(1).submit(echo, order).result()": per_call_us(lambda _: peer.call(order), n),
        }, cfg.rounds)
        stats.update(rep.table(
            "payload_model", "4b. Nested pydantic model echoed (10 lines of lists, dicts, "
            "datetimes)", "µs/call", model, base="PPE(1).submit(echo, order).result()",
            ratio_label="× PPE(1)",
            notes=["tarnish validates the model on both sides of both directions; "
                   "PPE pickles it."]))
    return stats


# -- 5. start and restart --------------------------------------------------------------------


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
READY = "Process(Echo) spawn-to-ready"
COLD_CALL = "cold start + first call (Process(Crash))"
CRASH = "segfault -> next successful call"


def start(rep: Report, cfg: Config) -> dict[str, Stat]:
    cores = os.cpu_count() or 1
    sizes = sorted({max(2, cores), 4})

    def ready(make: Callable[[], Any]) -> Callable[[], float]:
        def measure() -> float:
            t0 = time.perf_counter()
            handle = make()
            dt = time.perf_counter() - t0
            handle.close()
            return dt * 1000

        return measure

    def cold() -> float:
        t0 = time.perf_counter()
        with Process(Crash) as c:
            c.call(1)
            dt = time.perf_counter() - t0
        return dt * 1000

    with Closer() as closer:
        crashy = Process(Crash)
        closer.add(crashy.close)

        def recover() -> float:
            t0 = time.perf_counter()
            try:
                crashy.call(-1)
            except WorkerCrashed:
                pass
            else:
                raise AssertionError("the worker did not crash")
            crashy.call(1)
            return (time.perf_counter() - t0) * 1000

        contenders: dict[str, Callable[[], float]] = {
            PY_PASS: wall_ms([sys.executable, "-c", "pass"]),
            PY_IMPORT: wall_ms([sys.executable, "-c", "import tarnish_py"]),
            READY: ready(lambda: Process(Echo)),
        }
        for n in sizes:
            contenders[f"ProcessPool(Echo, size={n}) spawn-to-ready"] = ready(
                lambda n=n: ProcessPool(Echo, size=n))  # type: ignore[misc]
        contenders[COLD_CALL] = cold
        contenders[CRASH] = recover
        samples = interleave(contenders, cfg.start_rounds)
    return rep.table(
        "start", "5. Start and restart", "ms", samples, base=PY_IMPORT,
        ratio_label="× import", notes=[
            "The worker re-executes this script (tarnish_py.main), which imports tarnish_py "
            "and defines the tasks; python -c runs with the same interpreter."])


# -- 6. footprint ----------------------------------------------------------------------------


def _rss_kib(pid: int | str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _importtime_us() -> float:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tarnish_py"],
                          env=_child_env(), capture_output=True, text=True, check=True)
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == "tarnish_py":
            return float(parts[1])
    return float("nan")


def footprint(rep: Report, cfg: Config) -> dict[str, Stat]:
    samples: dict[str, list[float]] = {"import tarnish_py (-X importtime, cumulative)": []}
    for _ in range(cfg.start_rounds):
        samples["import tarnish_py (-X importtime, cumulative)"].append(_importtime_us() / 1000)
    stats = rep.table("import", "6. Footprint: import time", "ms", samples)
    memory: dict[str, list[float]] = {}
    with Closer() as closer:
        p = Process(Echo)
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
    size = 4
    for label in ("first pool of the process", "a later pool"):
        before = _rss_kib("self")
        pool = ProcessPool(Echo, size=size)
        list(pool.map(range(100)))
        after = _rss_kib("self")
        pool.close()
        memory[f"parent RSS growth per worker, ProcessPool(size={size}), {label}"] = [
            (after - before) / size / 1024]
    stats.update(rep.table("memory", "6b. Footprint: memory", "MiB", memory))
    return stats


# -- targets ---------------------------------------------------------------------------------


def targets(rep: Report, s: dict[str, dict[str, Stat]]) -> None:
    def med(section: str, row: str) -> float | None:
        got = s.get(section, {}).get(row)
        return got.median if got else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    tiny, floor = med("latency", TARNISH_CALL), med("latency", FLOOR)
    ppe = med("latency", PEER_CALL["ProcessPoolExecutor"])
    check(rep, "tiny call pinned / pipe floor", ratio(tiny, floor), "≤ 2.5", lambda r: r <= 2.5)
    check(rep, "ProcessPoolExecutor.submit().result() / tiny call (pinned)", ratio(ppe, tiny),
          "≥ 4", lambda r: r >= 4)
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
    check(rep, "spawn-to-ready / python -c 'import tarnish_py'",
          ratio(med("start", READY), med("start", PY_IMPORT)), "≤ 1.5", lambda r: r <= 1.5)
    cores = os.cpu_count() or 1
    check(rep, f"ProcessPool(size={max(2, cores)}) ready / one worker ready (in parallel)",
          ratio(med("start", f"ProcessPool(Echo, size={max(2, cores)}) spawn-to-ready"),
                med("start", READY)), "≤ 1.5 (serial would be N)", lambda r: r <= 1.5)
    check(rep, "segfault -> next success / cold start + first call",
          ratio(med("start", CRASH), med("start", COLD_CALL)), "≤ 1.2", lambda r: r <= 1.2)
    check(rep, "64 MiB echo, tarnish MB/s / ProcessPoolExecutor MB/s",
          ratio(med("payload", "64 MiB: tarnish Process"), med("payload", "64 MiB: PPE(1)")),
          "reported", None)


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
    doc: str | None = None,
) -> None:
    """Parse the command line, run the chosen sections, print and write the report."""
    global Echo, EchoBytes, Burn, Crash
    Echo, EchoBytes, Burn, Crash = echo, echo_bytes, burner, crash
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
        "latency": lambda: s.update(latency=latency(rep, cfg, pinned=True),
                                    latency_unpinned=latency(rep, cfg, pinned=False)),
        "throughput": lambda: s.update(throughput=batched_throughput(rep, cfg)),
        "scaling": lambda: s.update(scaling=scaling(rep, cfg)),
        "payload": lambda: s.update(payload=payload(rep, cfg)),
        "start": lambda: s.update(start=start(rep, cfg)),
        "footprint": lambda: s.update(footprint=footprint(rep, cfg)),
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

