"""A pool of workers: parallel, round-robin, and one crash fails one call only.

Run: python examples/pool.py
"""

from __future__ import annotations

import ctypes
import os
import time

import tarnish_py
from tarnish_py import ProcessPool, Task, WorkerCrashed


class SlowSquare(Task[int, tuple[int, int]]):
    def run(self, n: int) -> tuple[int, int]:
        if n < 0:
            ctypes.string_at(0)  # segfault on negative input
        time.sleep(0.2)  # stands in for native work that takes a while
        return n * n, os.getpid()


def main() -> None:
    with ProcessPool(SlowSquare, size=4) as pool:
        print(f"pool of {pool.size} workers: {pool.pids}")

        start = time.perf_counter()
        results = list(pool.map(range(8)))
        elapsed = time.perf_counter() - start
        print(f"8 calls of 0.2 s on 4 workers took {elapsed:.2f} s")
        for n, (square, pid) in enumerate(results):
            print(f"  {n}^2 = {square} (worker {pid})")

        outcomes = list(pool.map([1, -1, 2], return_exceptions=True))
        for n, outcome in zip([1, -1, 2], outcomes, strict=True):
            if isinstance(outcome, WorkerCrashed):
                print(f"  input {n}: crashed with {outcome.signal}")
            else:
                print(f"  input {n}: {outcome}")
        print(f"still {pool.size} workers: {pool.pids}")


if __name__ == "__main__":
    tarnish_py.main(main)
