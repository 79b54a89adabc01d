"""State that survives a crash: snapshot, restore, and restore_on_crash.

Run: python examples/stateful_counter.py
"""

from __future__ import annotations

import ctypes
import tempfile
from pathlib import Path

import tarnish_py
from tarnish_py import Process, Task, WorkerCrashed


class Counter(Task[str, int]):
    """Counts "up" and "down"; "crash" stands in for a C library that segfaults."""

    def setup(self) -> None:
        self.count = 0

    def run(self, cmd: str) -> int:
        if cmd == "crash":
            ctypes.string_at(0)  # a real segfault
        self.count += {"up": 1, "down": -1}.get(cmd, 0)
        return self.count

    def snapshot(self) -> int:  # the annotation is the state's type
        return self.count

    def restore(self, state: int) -> None:
        self.count = state


def count_through_a_crash(restore_on_crash: bool) -> int:
    with Process(Counter, restore_on_crash=restore_on_crash) as box:
        for _ in range(3):
            box.call("up")
        try:
            box.call("crash")
        except WorkerCrashed as crash:  # the crashing call still fails: never retried
            print(f"  the call crashed the worker ({crash.signal}); a fresh worker took over")
        return box.call("noop")


def snapshots_by_hand(folder: Path) -> None:
    with Process(Counter) as box:
        box.call("up")
        state = box.snapshot()
        path = box.snapshot_to_file(folder / "counter.snap")
        box.call("up")
        print(f"snapshot {state}, then one more 'up': {box.call('noop')}")
        box.restore(state)
        print(f"restored the snapshot: {box.call('noop')}")
    with Process(Counter) as fresh:  # another worker, even another program
        fresh.restore_from_file(path)
        print(f"a new Process restored {path.name}: {fresh.call('noop')}")


def main() -> None:
    print("with restore_on_crash=True:")
    print(f"  count after the crash: {count_through_a_crash(True)} (kept)")
    print("without it:")
    print(f"  count after the crash: {count_through_a_crash(False)} (lost)")
    with tempfile.TemporaryDirectory() as folder:
        snapshots_by_hand(Path(folder))


if __name__ == "__main__":
    tarnish_py.main(main)
