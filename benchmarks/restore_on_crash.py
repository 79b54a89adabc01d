"""What ``restore_on_crash=True`` costs per call (SPEC §7).

With it on, ``snapshot()`` runs after each call and the state is validated and
packed in the worker; the reply carries it only when it differs from the state
last sent (otherwise the parent keeps what it has). This compares a tiny call
with and without it, for a small state (an int, changed by every call) and a
1 MiB state (random bytes) that calls leave alone or change every time,
interleaving the two handles so that a loaded machine hurts both alike; figures
are the median over rounds of the mean µs per call.

Run: python benchmarks/restore_on_crash.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import tarnish_py
from tarnish_py import Process, Task

MIB = 1 << 20


class SmallState(Task[int, int]):
    def setup(self) -> None:
        self.count = 0

    def run(self, x: int) -> int:
        self.count += x
        return self.count

    def snapshot(self) -> int:
        return self.count

    def restore(self, state: int) -> None:
        self.count = state


class MiBState(Task[int, int]):
    """1 MiB of state that no call changes (a loaded table, a model's weights)."""

    def setup(self) -> None:
        self.blob = os.urandom(MIB)

    def run(self, x: int) -> int:
        return x

    def snapshot(self) -> bytes:
        return self.blob

    def restore(self, state: bytes) -> None:
        self.blob = state


class MiBChanging(MiBState):
    """1 MiB of state that every call changes: the whole state crosses every time."""

    def run(self, x: int) -> int:
        self.blob = bytes([x % 256]) + self.blob[1:]
        return x


def _per_call_us(process: Process[int, int], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        process.call(i)
    return (time.perf_counter() - start) / calls * 1e6


def measure(task: type[Task[int, int]], calls: int, rounds: int) -> dict[str, float]:
    with Process(task) as plain, Process(task, restore_on_crash=True) as kept:
        _per_call_us(plain, 50)
        _per_call_us(kept, 50)
        off, on = [], []
        for _ in range(rounds):
            off.append(_per_call_us(plain, calls))
            on.append(_per_call_us(kept, calls))
        start = time.perf_counter()
        for _ in range(10):
            kept.restore(kept.snapshot())
        round_trip = (time.perf_counter() - start) / 10 * 1e6
    return {
        "off_us": statistics.median(off),
        "on_us": statistics.median(on),
        "snapshot_and_restore_us": round_trip,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, Any]]] = [
        ("small state (int)", measure(SmallState, args.calls, args.rounds)),
        ("1 MiB state, unchanged", measure(MiBState, args.calls, args.rounds)),
        (
            "1 MiB state, changed by every call",
            measure(MiBChanging, max(args.calls // 20, 20), args.rounds),
        ),
    ]
    print("| state | call, off (µs) | call, restore_on_crash (µs) | cost per call (µs) "
          "| snapshot()+restore() (µs) |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['off_us']:.1f} | {r['on_us']:.1f} | {r['on_us'] - r['off_us']:+.1f} "
            f"| {r['snapshot_and_restore_us']:.0f} |"
        )


if __name__ == "__main__":
    tarnish_py.main(main)
