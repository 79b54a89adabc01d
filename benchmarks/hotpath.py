"""Where the microseconds of a tiny call go.

Each step of ``Process.call(1)`` on an ``int -> int`` task is timed in
isolation (``timeit``, best of several repeats), in the order the call runs it;
``cpu_split`` then measures, for real calls with parent and worker pinned to
one CPU, the CPU time each process spends per call (the parent's thread CPU
clock, the worker's ``/proc/<pid>/schedstat``). What the isolated steps do not
explain is Python glue (attribute lookups, checks, try blocks in
``_dispatch``/``_slot``/``_conn``/``_worker``) and the kernel's blocking, wake-up
and context-switch work, which the raw pipe floor measures on its own. The
hot path decodes a read that is one whole frame in place (``Conn.request``, the
worker loop); ``FrameReader.feed`` is what anything else goes through.

Run alone: ``python benchmarks/run.py --only hotpath`` (or as part of run.py).
"""

from __future__ import annotations

import os
import time
import timeit
from collections.abc import Callable
from typing import Any

import msgpack
from cobs import cobs

import tarnish_py
from tarnish_py import _protocol, _wire
from tarnish_py._values import ext_hook

__all__ = ["cpu_split", "steps"]


def _best_us(fn: Callable[[], Any], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def steps(process: tarnish_py.Process[int, int], quick: bool) -> list[tuple[str, str, float]]:
    """(side, step, µs) of each step of one tiny call, measured in isolation."""
    number, repeat = (2000, 3) if quick else (20000, 7)
    from tarnish_py._task import adapters

    echo_cls: Any = _task_of(process)
    ta_in, ta_out = adapters(echo_cls)
    dispatcher: Any = getattr(process, "_dispatcher", None)
    packed_call = _wire.pack([_protocol.CALL, 12345, 1])
    frame_call = _wire.frame_packed(packed_call)
    packed_result = _wire.pack([_protocol.RESULT, 12345, 1])
    frame_result = _wire.frame_packed(packed_result)
    reader = _wire.FrameReader()
    buf = bytearray(1 << 16)
    buf[: len(frame_call)] = frame_call
    n = len(frame_call)
    reply = bytearray(frame_result)
    r, w = os.pipe()
    instance = echo_cls()

    def syscalls() -> None:
        os.write(w, frame_call)
        os.readv(r, [buf])

    def dispatch() -> None:
        slot = dispatcher.acquire()
        dispatcher.release(slot)

    out: list[tuple[str, str, float]] = []

    def add(side: str, step: str, fn: Callable[[], Any]) -> None:
        out.append((side, step, _best_us(fn, number, repeat)))

    from tarnish_py._task import codec

    c = codec(echo_cls)
    packer = _protocol.Packer()
    try:
        add("parent", "validate + dump input (TypeAdapter, as before)",
            lambda: ta_in.dump_python(ta_in.validate_python(1)))
        add("parent", "validate input (the validator itself; skipped for an exact int)",
            lambda: c.validate_input(1))
        if dispatcher is not None:
            add("parent", "take + give back the slot (acquire/release; call inlines it)",
                dispatch)
        add("parent", "msgpack pack [CALL, id, value] (reused Packer)",
            lambda: packer.call(12345, 1))
        add("parent", "COBS encode + terminator", lambda: _wire.frame_packed(packed_call))
        add("both", "write + read syscalls of one message, no wake-up", syscalls)
        add("worker", "decode a one-frame read in place (slice, COBS decode, unpack)",
            lambda: in_place(buf, n))
        add("worker", "FrameReader.feed, for anything else (slice, find, decode, unpack)",
            lambda: reader.feed(buf[:n]))
        add("worker", "run()", lambda: instance.run(1))
        add("worker", "validate output (the validator; skipped for an exact int)",
            lambda: c.encode_output(1))
        add("worker", "msgpack pack [RESULT, id, value] (reused Packer)",
            lambda: packer.result(12345, 1))
        add("worker", "COBS encode + terminator", lambda: _wire.frame_packed(packed_result))
        add("parent", "decode the reply in place (Conn.request)",
            lambda: in_place(reply, len(reply)))
    finally:
        os.close(r)
        os.close(w)
    return out


def in_place(buf: bytearray, n: int) -> Any:
    """What the worker loop and ``Conn.request`` do with a read of one whole frame."""
    end = n - 1
    if buf[end] == 0:
        return msgpack.unpackb(
            cobs.decode(buf[:end]), ext_hook=ext_hook, strict_map_key=False, raw=False,
            unicode_errors="surrogatepass",
        )
    return None


def _task_of(process: tarnish_py.Process[Any, Any]) -> type:
    """The Task class behind a Process, found through its worker spec (a private detail)."""
    import sys

    config = process._dispatcher.spec.config
    module = sys.modules[config.module]
    obj: Any = module
    for part in config.name.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _schedstat_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def cpu_split(call: Callable[[int], Any], child_pids: list[int], n: int) -> dict[str, float]:
    """µs per call: wall time, the calling thread's CPU, the children's CPU."""
    for i in range(min(n, 200)):
        call(i)
    try:
        c0 = sum(_schedstat_ns(pid) for pid in child_pids)
    except OSError:
        c0 = -1
    p0 = time.thread_time_ns()
    t0 = time.perf_counter_ns()
    for i in range(n):
        call(i)
    t1 = time.perf_counter_ns()
    p1 = time.thread_time_ns()
    try:
        c1 = sum(_schedstat_ns(pid) for pid in child_pids)
    except OSError:
        c1 = -1
    child = (c1 - c0) / n / 1000 if c0 >= 0 and c1 >= 0 else float("nan")
    return {
        "wall_us": (t1 - t0) / n / 1000,
        "parent_cpu_us": (p1 - p0) / n / 1000,
        "child_cpu_us": child,
    }
