"""What the benchmark sections share: the configuration, the tasks bound by
``_suite.main`` (they live in run.py, the program the workers re-execute), a
per-call timer, the Closer and the row labels the targets refer to."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tarnish_py import Task

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True)
class Tasks:
    """The tasks of run.py, passed to every section."""

    echo: type[Task[int, int]]
    echo_bytes: type[Task[bytes, bytes]]
    burn: type[Task[int, int]]
    crash: type[Task[int, int]]
    echo_fn: Callable[[int], int]  # the same echo as a plain function (IsolatedExecutor)


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

