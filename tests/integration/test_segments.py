"""Large binary values out of band, end to end: bytes of 64 KiB or more travel as
raw segments after the frame that announces them (``tarnish_py._segments``).
They must come back equal and of the same types as in band, within
max_message_bytes counted with the segments, and a transfer cut short (the
worker killed, a timeout, the parent killed) must leave nothing behind."""

from __future__ import annotations

import os
import select
import signal
from pathlib import Path

import pytest
from conftest import started
from proc_checks import descendants, wait_dead

from tarnish_py import _protocol, _segments, _wire

from ._programs import PRELUDE, no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

T = _segments.THRESHOLD

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

TASKS = f"""
from typing import Any
T = {T}


class EchoBytes(Task[bytes, bytes]):
    def run(self, data: bytes) -> bytes:
        return data


class EchoAny(Task[Any, Any]):
    def run(self, value: Any) -> Any:
        return value


class Blob(pydantic.BaseModel):
    name: str
    data: bytes
    parts: list[bytes]
    extra: dict[str, bytes] = {{}}


class EchoBlob(Task[Blob, Blob]):
    def run(self, blob: Blob) -> Blob:
        return blob


class Grow(Task[int, bytes]):
    def run(self, n: int) -> bytes:
        return b"g" * n


class Stateful(Task[int, int]):
    def setup(self) -> None:
        self.state = b""

    def run(self, n: int) -> int:
        self.state = os.urandom(n)
        return len(self.state)

    def snapshot(self) -> bytes:
        return self.state

    def restore(self, state: bytes) -> None:
        self.state = state


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def outcome(fn):
    try:
        return fn()
    except Exception as e:
        return {{"error": type(e).__name__, "text": str(e)}}
"""

ROUND_TRIPS = TASKS + """
def parent():
    shm_before = sorted(os.listdir("/dev/shm"))
    checks = {}
    with Process(EchoBytes) as p:
        for n in (0, 1, T - 1, T, T + 1, 3 * T + 7, 64 << 20):
            data = os.urandom(n)
            out = p.call(data)
            checks[f"bytes {n}"] = out == data and type(out) is bytes
        data = os.urandom(2 * T)
        out = p.call(bytearray(data))  # a bytearray input arrives as bytes, as in band
        checks["bytearray in"] = out == data and type(out) is bytes
        fds = open_fds()
        for _ in range(5):
            p.call(data)
        checks["no fd growth"] = open_fds() == fds
        worker = p.pid
    with Process(EchoAny) as p:
        a, b, c = os.urandom(T), os.urandom(T + 1), os.urandom(5 * T)
        value = {"a": [a, 1, "x", b"small"], "b": (b, {"c": c}), "d": None, "e": b""}
        out = p.call(value)
        checks["nested"] = out == value and type(out["b"]) is tuple
        checks["nested types"] = [type(out["a"][0]), type(out["b"][1]["c"])] == [bytes, bytes]
        out = p.call([memoryview(a), bytearray(b), memoryview(c)])
        checks["views in"] = out == [a, b, c] and all(type(v) is bytes for v in out)
        checks["strided view"] = p.call(memoryview(c)[::5]) == c[::5]
        same = os.urandom(2 * T)
        checks["one value twice"] = p.call([same, same]) == [same, same]
    with Process(EchoBlob) as p:
        blob = {"name": "n", "data": os.urandom(T), "parts": [os.urandom(T + 3), b"", b"s"],
                "extra": {"k": os.urandom(2 * T)}}
        out = p.call(blob)
        checks["model"] = type(out).__name__ == "Blob" and out.model_dump() == blob
    with tarnish_py.ProcessPool(EchoBytes, size=2) as pool:
        data = os.urandom(4 * T)
        futures = [pool.submit(data) for _ in range(4)]
        checks["pool submit"] = all(f.result(timeout=30) == data for f in futures)
        checks["pool call"] = pool.call(data) == data
    with Process(Stateful) as p:
        p.call(3 * T)
        state = p.snapshot()
        p.restore(state[::-1])
        checks["state"] = len(state) == 3 * T and p.snapshot() == state[::-1]
    emit(checks=checks, worker_dead=wait_dead(worker, 5.0),
         shm_unchanged=sorted(os.listdir("/dev/shm")) == shm_before)
"""


def test_large_values_round_trip_with_their_types(run_script) -> None:
    (seen,) = records(run_script(program(ROUND_TRIPS + MAIN), timeout=90))
    failed = [name for name, ok in seen["checks"].items() if not ok]
    assert not failed, seen
    assert seen["worker_dead"] and seen["shm_unchanged"], seen


LIMITS = TASKS + """
def parent():
    limit = 1 << 20
    with Process(EchoBytes, max_message_bytes=limit) as p:
        fits = p.call(b"f" * (limit - 64))
        too_big = outcome(lambda: p.call(b"i" * (limit - 8)))
        pid = p.pid
        after = p.call(b"a" * T)
        same_worker = p.pid == pid
    with Process(EchoAny, max_message_bytes=limit) as p:
        # Several segments, each under the limit, more than it together.
        several = outcome(lambda: p.call([b"s" * (limit // 2)] * 3))
    with Process(Grow, max_message_bytes=limit) as p:
        grown = outcome(lambda: p.call(limit))
        pid = p.pid
        small = p.call(T)
        grow_same_worker = p.pid == pid
    emit(fits=len(fits), too_big=too_big, after=len(after), same_worker=same_worker,
         several=several, grown=grown, small=len(small), grow_same_worker=grow_same_worker)
"""


def test_max_message_bytes_counts_the_segments_both_ways(run_script) -> None:
    (seen,) = records(run_script(program(LIMITS + MAIN), timeout=60))
    assert seen["fits"] == (1 << 20) - 64 and seen["after"] == T, seen
    assert seen["too_big"]["error"] == "ValueError", seen
    assert "the input takes" in seen["too_big"]["text"], seen
    assert "max_message_bytes" in seen["too_big"]["text"], seen
    assert seen["same_worker"], seen
    assert seen["several"]["error"] == "ValueError", seen
    assert "the input takes" in seen["several"]["text"], seen
    # The worker refuses its own too-large result: a TaskError, and it serves on.
    assert seen["grown"]["error"] == "TaskError", seen
    assert "the result takes" in seen["grown"]["text"], seen
    assert seen["small"] == T and seen["grow_same_worker"], seen


# -- noise before the handshake ------------------------------------------------------

# An envelope announcing 1 MiB, written on stdout before the worker imports
# tarnish_py: honoured, it would swallow the real Hello that follows as a segment.
ENVELOPE = _wire.envelope_frame(_wire.pack([_protocol.RESULT, 1, 0]), [1 << 20])

NOISY_TOP = f"""
import os
if "TARNISH_PY_WORKER" in os.environ:  # the re-executed worker, before importing tarnish_py
    os.write(1, {ENVELOPE!r})
"""

NOISY = TASKS + """
def parent():
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the forwarded noise is binary
    with Process(EchoBytes, spawn_timeout=20) as p:
        data = os.urandom(2 * T)
        emit(echoed=p.call(data) == data)
"""


def test_an_envelope_in_the_noise_before_the_handshake_is_noise(run_script) -> None:
    (seen,) = records(run_script(NOISY_TOP + program(NOISY + MAIN), timeout=60))
    assert seen == {"echoed": True}, seen


# -- a transfer cut short ------------------------------------------------------------

# The worker is stopped, so a 64 MiB input cannot get through its 1 MiB pipe: the
# call is mid-transfer until the worker is killed or the call times out.
CUT_SHORT = TASKS + """
import threading


def stalled_call(p, how):
    worker = p.pid
    data = os.urandom(64 << 20)  # made first: the call starts at once
    os.kill(worker, signal.SIGSTOP)
    result = {}

    def call():
        timeout = 1.0 if how == "timeout" else None
        result.update(outcome(lambda: p.call(data, timeout=timeout) and {}))
    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    stuck = thread.is_alive()
    if how == "kill":
        os.kill(worker, signal.SIGKILL)
    thread.join(20)
    return dict(result, stuck=stuck, old_dead=wait_dead(worker, 5.0))


class DiesMidReply(Task[int, int]):
    # Sends half of an n-byte segment behind the library's back, then SIGKILLs itself.

    def run(self, n: int) -> int:
        from tarnish_py import _boot, _protocol, _wire

        if n == 0:
            return 0
        frame = _wire.envelope_frame(_wire.pack([_protocol.RESULT, 1, 0]), [n])
        _boot.write_all(_boot.channel_out, frame + os.urandom(n // 2))
        os.kill(os.getpid(), signal.SIGKILL)
        return 0


def interrupted_call(p):
    # Ctrl-C in the caller while its input is half written.
    worker = p.pid
    data = os.urandom(64 << 20)  # made first: the interrupt must land in the call
    os.kill(worker, signal.SIGSTOP)
    main = threading.get_ident()
    threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
    try:
        p.call(data)
        seen = {"error": None}
    except KeyboardInterrupt:
        seen = {"error": "KeyboardInterrupt"}
    old_dead = wait_dead(worker, 5.0)
    try:
        os.kill(worker, signal.SIGCONT)  # were it alive, the next call fails, never hangs
    except ProcessLookupError:
        pass  # dead and reaped already
    return dict(seen, old_dead=old_dead)


def parent():
    with Process(DiesMidReply) as p:
        worker = p.pid
        died = outcome(lambda: p.call(8 << 20))
        died.update(old_dead=wait_dead(worker, 5.0), next=p.call(0) == 0 and p.pid != worker)
    with Process(EchoBytes) as p:
        data = os.urandom(2 * T)
        fds = None
        seen = {}
        for how in ("kill", "timeout", "interrupt", "kill"):
            seen[how] = interrupted_call(p) if how == "interrupt" else stalled_call(p, how)
            seen[how]["next"] = p.call(data) == data
            if fds is None:
                fds = open_fds()
        emit(fds_stable=open_fds() == fds, died=died, **seen)
"""


def test_a_transfer_to_a_worker_cut_short_leaves_nothing_half_done(run_script) -> None:
    (seen,) = records(run_script(program(CUT_SHORT + MAIN), timeout=90))
    kill, timeout, died = seen["kill"], seen["timeout"], seen["died"]
    assert kill["error"] == "WorkerCrashed" and "SIGKILL" in kill["text"], seen
    assert timeout["error"] == "TaskTimeout", seen
    for case in (kill, timeout):
        assert case["stuck"] and case["old_dead"] and case["next"], seen
    interrupt = seen["interrupt"]
    assert interrupt["error"] == "KeyboardInterrupt", seen
    assert interrupt["old_dead"] and interrupt["next"], seen
    # The other way: a worker killed while its reply's segments come in.
    assert died["error"] == "WorkerCrashed" and "SIGKILL" in died["text"], seen
    assert died["old_dead"] and died["next"], seen
    assert seen["fds_stable"], seen


# -- the parent killed mid-transfer ------------------------------------------------

VICTIM = TASKS + """
import threading


def parent():
    p = Process(EchoBytes)
    data = os.urandom(32 << 20)
    p.call(data)
    emit(pid=p.pid)

    def echo_forever():
        while True:
            p.call(data)
    threading.Thread(target=echo_forever, daemon=True).start()
    hang()
"""


def test_a_parent_killed_mid_transfer_leaves_no_worker(tmp_path: Path) -> None:
    with started(tmp_path, program(VICTIM + MAIN)) as (proc, line):
        family = descendants(proc.pid)
        assert line["pid"] in family
        select.select([], [], [], 0.2)  # a few 32 MiB transfers in flight
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert all(wait_dead(pid, 2.0) for pid in family), family

