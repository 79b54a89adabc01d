"""A task that crashes on some inputs; the caller retries on the fresh worker.

Run: python examples/crash_recovery.py
"""

from __future__ import annotations

import ctypes
import os

import tarnish_py
from tarnish_py import Process, Task, WorkerCrashed


class Flaky(Task[int, str]):
    """Stands in for a C library that segfaults on some inputs."""

    def run(self, n: int) -> str:
        if n % 3 == 0:
            ctypes.string_at(0)  # a real segfault: reads address 0
        return f"{n} processed by worker {os.getpid()}"


def process_with_retry(worker: Process[int, str], n: int, attempts: int = 2) -> str:
    for attempt in range(1, attempts + 1):
        try:
            return worker.call(n)
        except WorkerCrashed as crash:
            # The crashed worker is already replaced; a crash is never retried silently.
            print(f"input {n}: worker crashed ({crash.signal}), attempt {attempt}/{attempts}")
    return f"{n} skipped: crashes every time"


def main() -> None:
    with Process(Flaky) as worker:
        for n in range(1, 7):
            print(process_with_retry(worker, n))


if __name__ == "__main__":
    tarnish_py.main(main)
