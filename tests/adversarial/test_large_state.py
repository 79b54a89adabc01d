"""Adversarial: task state of large bytes (out of band, ``_segments``) through
restore_on_crash, max_calls recycling, snapshot and restore (SPEC §7).

The kept state travels back with every call's reply (Result([out, state]), a
list whose bytes leave the frame only after a walk) and forward in the RESTORE a
replacement worker gets first; either way it must arrive whole, at sizes around
the segment threshold and past the pipe's size, whether the worker was replaced
by a crash, a timeout or a recycle.
"""

from __future__ import annotations

import pytest
from integration._programs import no_leftovers  # noqa: F401
from reliability._prelude import program, records

pytestmark = pytest.mark.usefixtures("no_leftovers")

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

STATE = """
import hashlib
from tarnish_py import _segments

T = _segments.THRESHOLD
SIZES = [T - 1, T, T + 1, 300_000, 3 << 20]


def blob(n, seed):
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


class Keeper(Task[tuple[str, int], str]):
    def setup(self) -> None:
        self.state = b""

    def run(self, job: tuple[str, int]) -> str:
        what, n = job
        if what == "set":
            self.state = blob(n, n)
        elif what == "crash":
            os.kill(os.getpid(), 9)
        elif what == "hang":
            time.sleep(600)
        return hashlib.sha256(self.state).hexdigest()

    def snapshot(self) -> bytes:
        return self.state

    def restore(self, state: bytes) -> None:
        self.state = state


def digest(n):
    return hashlib.sha256(blob(n, n)).hexdigest()


def outcome(fn):
    try:
        return fn()
    except Exception as e:
        return type(e).__name__


def parent():
    bad = []
    with Process(Keeper, restore_on_crash=True, max_calls=3) as p:
        for n in SIZES:
            want = digest(n)
            got = [p.call(("set", n)), outcome(lambda: p.call(("crash", 0))),
                   p.call(("get", 0)), outcome(lambda: p.call(("hang", 0), timeout=0.5)),
                   p.call(("get", 0)), p.call(("get", 0)), p.call(("get", 0))]
            if got != [want, "WorkerCrashed", want, "TaskTimeout", want, want, want]:
                bad.append((n, got))
            state = p.snapshot()
            if type(state) is not bytes or state != blob(n, n):
                bad.append((n, "snapshot", type(state).__name__, len(state)))
        p.restore(blob(T + 7, 1))
        restored = p.call(("get", 0)) == hashlib.sha256(blob(T + 7, 1)).hexdigest()
    with ProcessPool(Keeper, size=2, restore_on_crash=True) as pool:
        pool_ok = [pool.call(("set", 300_000)) == digest(300_000) for _ in range(2)]
        pool_ok.append(outcome(lambda: pool.call(("crash", 0))) == "WorkerCrashed")
        pool_ok += [pool.call(("get", 0)) == digest(300_000) for _ in range(4)]
    emit(bad=bad, restored=restored, pool=pool_ok, children=len(children()))
"""


def test_large_bytes_state_survives_crashes_timeouts_and_recycling(run_script) -> None:
    """A bytes state of 64 KiB - 1 to 3 MiB, kept with restore_on_crash and max_calls=3:
    after a SIGKILL, a timeout and every recycle the replacement holds it whole;
    snapshot() returns it as bytes, restore() of a large state is kept."""
    (seen,) = records(run_script(program(STATE + MAIN), timeout=60))
    assert seen["bad"] == [], seen["bad"]
    assert seen["restored"], seen
    assert seen["pool"] == [True] * 7, seen
    assert seen["children"] == 1, seen  # the watchdog
