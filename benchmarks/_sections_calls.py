"""Benchmark sections 1-4: tiny-call latency, throughput, native scaling, payload.

Each section starts its contenders, interleaves them round by round
(``_report.interleave``) and adds a table to the report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from _common import FLOOR, PEER_CALL, TARNISH_CALL, Closer, Config, Tasks, per_call_us
from _peers import PipeFloor, burn, make_peer
from _report import Report, Stat, interleave

from tarnish_py import Process, ProcessPool

__all__ = ["latency", "payload", "scaling", "throughput"]


# -- 1. tiny-call latency ----------------------------------------------------------


def latency(rep: Report, cfg: Config, tasks: Tasks, pinned: bool) -> dict[str, Stat]:
    saved = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {cfg.cpu})  # children inherit it
    try:
        with Closer() as closer:
            floor = PipeFloor()
            closer.add(floor.close)
            p = Process(tasks.echo)
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


def throughput(rep: Report, cfg: Config, tasks: Tasks) -> dict[str, Stat]:
    """Many tiny calls through two workers, against the peers (``_throughput``)."""
    import _throughput

    with Closer() as closer:
        return _throughput.throughput(rep, cfg.map_calls, max(2, cfg.rounds // 2), tasks.echo,
                                      closer, tasks.echo_fn)


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


def scaling(rep: Report, cfg: Config, tasks: Tasks) -> dict[str, Stat]:
    cores = os.cpu_count() or 1
    iterations = calibrate_burn(cfg.burn_ms)
    with Closer() as closer:
        contenders: dict[str, Callable[[], float]] = {}
        for n in range(1, cores + 1):
            pool = ProcessPool(tasks.burn, size=n)
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


def payload(rep: Report, cfg: Config, tasks: Tasks) -> dict[str, Stat]:
    from _model import EchoOrder, sample_order

    samples: dict[str, list[float]] = {}
    bases: dict[str, str] = {}
    with Closer() as closer:
        p = Process(tasks.echo_bytes)
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
