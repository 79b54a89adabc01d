"""Section 2, throughput: many tiny calls through two workers, and what they cost the parent.

Contenders: ``ProcessPool(size=2).map`` with ``chunksize`` None (chosen as the
map goes), 1 and 100; ``ProcessPoolExecutor(2).map`` with chunksize 1 (its
default) and 100 (the reference of SPEC §5); ``multiprocessing.Pool(2).imap``
with chunksize 1 and 100; pebble ``ProcessPool(2).map`` with chunksize 1 and 100.

Besides calls/s, each round records the parent's CPU per call: the process's
CPU time (every thread of the parent: peers feed and drain their workers from
helper threads) and the consuming thread's own (``time.thread_time``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from _peers import make_peer
from _report import Report, Stat, interleave

from tarnish_py import IsolatedExecutor, ProcessPool, Task

__all__ = ["REFERENCE", "TARNISH_AUTO", "throughput"]

TARNISH_AUTO = "tarnish ProcessPool(2).map (chunksize=None)"
REFERENCE = "ProcessPoolExecutor(2).map (chunksize=100)"

_PEERS = (
    ("ProcessPoolExecutor", 1, "ProcessPoolExecutor(2).map (chunksize=1, default)"),
    ("ProcessPoolExecutor", 100, REFERENCE),
    ("multiprocessing.Pool", 1, "multiprocessing.Pool(2).imap (chunksize=1)"),
    ("multiprocessing.Pool", 100, "multiprocessing.Pool(2).imap (chunksize=100)"),
    ("pebble", 1, "pebble ProcessPool(2).map (chunksize=1)"),
    ("pebble", 100, "pebble ProcessPool(2).map (chunksize=100)"),
)


class _Cpu:
    """Parent CPU per call of each contender, one sample per round."""

    def __init__(self) -> None:
        self.process: dict[str, list[float]] = {}
        self.thread: dict[str, list[float]] = {}

    def rate(self, name: str, run: Callable[[], list[Any]], n: int) -> Callable[[], float]:
        def measure() -> float:
            p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            out = run()
            wall = time.perf_counter() - w0
            p1, t1 = time.process_time(), time.thread_time()
            assert len(out) == n
            self.process.setdefault(name, []).append((p1 - p0) / n * 1e6)
            self.thread.setdefault(name, []).append((t1 - t0) / n * 1e6)
            return n / wall

        return measure


def throughput(rep: Report, n: int, rounds: int, echo: type[Task[int, int]],
               closer: Any, echo_fn: Callable[[int], int] | None = None) -> dict[str, Stat]:
    """Measure the contenders and add the tables "throughput" and "throughput_cpu"."""
    xs = list(range(n))
    cpu = _Cpu()
    pool = ProcessPool(echo, size=2)
    closer.add(pool.close)
    contenders: dict[str, Callable[[], float]] = {}
    for chunk in (None, 1, 100):
        name = f"tarnish ProcessPool(2).map (chunksize={chunk})"
        contenders[name] = cpu.rate(
            name, lambda chunk=chunk: list(pool.map(xs, chunksize=chunk)), n)  # type: ignore[misc]
    if echo_fn is not None:  # the concurrent.futures way in, at the stdlib's chunksizes
        executor = IsolatedExecutor(max_workers=2)
        closer.add(executor.shutdown)
        for chunk in (1, 100):
            name = f"tarnish IsolatedExecutor(2).map (chunksize={chunk})"
            contenders[name] = cpu.rate(
                name, lambda chunk=chunk: list(executor.map(echo_fn, xs, chunksize=chunk)), n)  # type: ignore[misc]
    skipped: dict[str, str] = {}
    for kind, chunk, label in _PEERS:
        peer, why = make_peer(kind, 2, chunk)
        if peer is None:
            skipped[label] = why or "unavailable"
            continue
        closer.add(peer.close)
        contenders[label] = cpu.rate(label, lambda peer=peer: peer.map(xs), n)  # type: ignore[misc]
    samples = interleave(contenders, rounds)
    # interleave drops the warm-up round; so does the CPU table.
    for table in (cpu.process, cpu.thread):
        for name in table:
            table[name] = table[name][-rounds:]
    stats = rep.table(
        "throughput", f"2. Throughput: {n:,} tiny calls through 2 workers, unpinned",
        "calls/s", samples, base=REFERENCE, ratio_label="× PPE(100)", skipped=skipped,
        notes=["PPE(100): ProcessPoolExecutor(2).map(chunksize=100), the reference of SPEC §5."])
    cpu_samples = {f"{name}: parent process": v for name, v in cpu.process.items()}
    cpu_samples.update({f"{name}: consuming thread": v for name, v in cpu.thread.items()})
    rep.table(
        "throughput_cpu", "2b. Parent CPU per call during the throughput runs", "µs/call",
        cpu_samples, notes=[
            "parent process: time.process_time() of the whole parent (all its threads) "
            "over the run / calls; consuming thread: time.thread_time() of the thread "
            "that iterates the map. Workers' CPU is not included."])
    return stats
