"""Adversarial: the paths rewritten for speed, attacked with real programs.

A call without a timeout takes ``Conn.request``'s flat path (one wait, one read,
a one-frame reply decoded in place) and the worker's loop decodes a Call read
whole in place; every other shape of input must fall back to the FrameReader.
These programs forge the worker's output behind the library's back (replies cut
anywhere, empty frames, stale duplicates, envelopes in pieces), send values whose
frames end exactly at the read buffers' sizes, mix tiny and large calls with and
without timeouts from several threads, and interrupt tiny calls with real SIGINTs:
the caller must always see the right value or the documented error (SPEC §3),
never a wrong value, a hang or a leaked worker or fd.
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

FORGE = """
from typing import Any
import msgpack
from tarnish_py import _boot, _protocol, _segments, _wire

RESULT = _protocol.RESULT
T = _segments.THRESHOLD
SAVED = []


def call_id():
    # The id of the Call being run: a local of the worker's loop, which calls run().
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "_loop":
            return f.f_locals["call_id"]
        f = f.f_back
    raise LookupError("no worker loop")


def to_parent(*chunks, pause=0.03):
    for i, chunk in enumerate(chunks):
        if i:
            time.sleep(pause)
        os.write(_boot.channel_out, chunk)


def mute():
    # The library's own reply to this call goes to /dev/null: the forged one is all
    # the parent sees, and the worker lives on (unmuted by the next call).
    SAVED.append(os.dup(_boot.channel_out))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, _boot.channel_out)
    os.close(devnull)


def unmute():
    while SAVED:
        fd = SAVED.pop()
        os.dup2(fd, _boot.channel_out)
        os.close(fd)


def reply(value):
    return _wire.encode_frame([RESULT, call_id(), value])


def envelope_reply(data):
    ref = msgpack.ExtType(_segments.EXT_SEGMENT, (0).to_bytes(4, "little"))
    return _wire.envelope_frame(_wire.pack([RESULT, call_id(), ref]), [len(data)])


class Forge(Task[Any, Any]):
    def run(self, job: Any) -> Any:
        unmute()
        how, value = job
        scope = {**globals(), "value": value}
        exec(how, scope)
        return scope["value"]


def outcome(fn):
    try:
        return {"value": fn()}
    except Exception as e:
        return {"error": type(e).__name__, "text": str(e)[:300]}
"""

FORGED = FORGE + """
V = {"k": [1, "two", "three"], "n": None}
WRONG = "a wrong value"
CASES = {
    # A reply cut in two reads, at every kind of place.
    "halves": "f = reply(value); to_parent(f[:len(f) // 2], f[len(f) // 2:]); mute()",
    "first_byte_alone": "f = reply(value); to_parent(f[:1], f[1:]); mute()",
    "terminator_alone": "f = reply(value); to_parent(f[:-1], f[-1:]); mute()",
    "byte_by_byte": "f = reply(value); to_parent(*[f[i:i + 1] for i in range(len(f))], "
                    "pause=0.002); mute()",
    # Empty frames (two zeros in a row) carry nothing.
    "empty_frame_then_reply": "to_parent(b'\\\\x00' + reply(value)); mute()",
    "empty_frame_pause_reply": "to_parent(b'\\\\x00', reply(value)); mute()",
    "empty_frames_around": "to_parent(b'\\\\x00\\\\x00', reply(value) + b'\\\\x00'); mute()",
    # An envelope and its segment, in pieces.
    "envelope_in_pieces": (
        "data = value; e = envelope_reply(data); "
        "to_parent(e[:2], e[2:] + data[:100], data[100:2 * T], data[2 * T:]); mute()"
    ),
    "envelope_and_segment_one_write": (
        "to_parent(envelope_reply(value) + value); mute()"
    ),
    # Stdout noise of the task (fd 1 is not the channel).
    "stdout_noise": "print('\\\\x00' * 5000, flush=True); os.write(1, reply(WRONG) * 50)",
}
BROKEN = {
    # A second reply to the same call: the next call must not take it for its own.
    "stale_duplicate_same_read": "to_parent(reply(value) + reply(WRONG)); mute()",
    "stale_duplicate_later_read": "to_parent(reply(value), reply(WRONG)); mute()",
    # Garbage after a good reply, in the same read and in a later one.
    "garbage_same_read": "to_parent(reply(value) + b'\\\\x07garbage\\\\x00'); mute()",
    "garbage_later_read": "to_parent(reply(value), b'\\\\x07garbage\\\\x00'); mute()",
    # Half a frame after the reply: the next reply is glued to it.
    "half_frame_after": "f = reply(WRONG); to_parent(reply(value) + f[:5]); mute()",
    # A reply to the call before: never this call's value.
    "reply_to_an_older_call": (
        "to_parent(_wire.encode_frame([RESULT, call_id() - 1, WRONG])); mute()"
    ),
}


def parent():
    seen = {}
    with Process(Forge, stderr="capture") as p:  # the noise is not UTF-8
        p.call(("pass", 0))
        for name, how in CASES.items():
            pid = p.pid
            value = os.urandom(3 * T + 5) if name.startswith("envelope") else V
            first = outcome(lambda: p.call((how, value)))
            if name.startswith("envelope") and "value" in first:
                first = {"value": first["value"] == value}
            nxt = outcome(lambda: p.call(("pass", "next")))
            seen[name] = {"first": first, "next": nxt, "same_worker": p.pid == pid}
        for name, how in BROKEN.items():
            pid = p.pid
            got = [outcome(lambda: p.call((how, V)))]
            got += [outcome(lambda: p.call(("pass", "next"))) for _ in range(2)]
            seen[name] = {"got": got, "replaced": p.pid != pid}
        seen["children"] = len(children())
    emit(**seen)
"""


def test_forged_replies_in_any_shape_without_a_timeout(run_script) -> None:
    """Without a timeout (the flat path): a reply cut anywhere, empty frames around
    it, an envelope in pieces and stdout noise all give the right value and keep the
    worker; a stale duplicate, garbage or half a frame after a reply, or a reply to
    an older call, is a ProtocolError with the worker replaced, never a wrong value."""
    (seen,) = records(run_script(program(FORGED + MAIN), timeout=60))
    for name in (
        "halves", "first_byte_alone", "terminator_alone", "byte_by_byte",
        "empty_frame_then_reply", "empty_frame_pause_reply", "empty_frames_around",
        "stdout_noise",
    ):
        case = seen[name]
        assert case["first"] == {"value": {"k": [1, "two", "three"], "n": None}}, (name, case)
        assert case["next"] == {"value": "next"}, (name, case)
        assert case["same_worker"], (name, case)
    for name in ("envelope_in_pieces", "envelope_and_segment_one_write"):
        case = seen[name]
        assert case["first"] == {"value": True}, (name, case)
        assert case["next"] == {"value": "next"} and case["same_worker"], (name, case)
    for name in (
        "stale_duplicate_same_read", "stale_duplicate_later_read", "garbage_same_read",
        "garbage_later_read", "half_frame_after", "reply_to_an_older_call",
    ):
        case = seen[name]
        got = case["got"]
        errors = [g for g in got if "error" in g]
        assert all(g.get("value") != "a wrong value" for g in got), (name, case)
        assert [g["error"] for g in errors] == ["ProtocolError"], (name, case)
        assert got[-1] == {"value": "next"} and case["replaced"], (name, case)
    assert seen["children"] == 2, seen  # the worker and the watchdog


# -- sizes at the read buffers' edges, and mixed traffic from several threads ----------

MIXED = """
import random, threading
from typing import Any
from tarnish_py import _protocol, _segments, _wire

T = _segments.THRESHOLD


class Echo(Task[Any, Any]):
    def run(self, job: Any) -> Any:
        what, value = job
        if what == "sleep":
            time.sleep(value)
        elif what == "noise":
            print("noise " * 2000, flush=True)
            os.write(1, b"\\\\x00" * 70000)
        return value


def outcome(fn):
    try:
        return {"value": fn()}
    except Exception as e:
        return {"error": type(e).__name__, "text": str(e)[:300]}


def str_lengths(target):
    # ASCII strs whose Call and Result frames end around ``target`` bytes: the ids
    # of the calls shift a frame by a byte or two, hence the span.
    base = len(_wire.encode_frame([_protocol.RESULT, 100, ""]))
    n = target - base
    while len(_wire.encode_frame([_protocol.RESULT, 100, "a" * n])) > target:
        n -= 1
    return range(max(0, n - 4), n + 5)


def edges(p, bad):
    # The worker reads 64 KiB at a time, the parent 256 KiB; the pipe holds 64 KiB
    # (1 MiB once raised).
    for target in (1 << 16, 1 << 18, 1 << 20):
        for n in str_lengths(target):
            s = "é" * 3 + "a" * (n - 6)  # non-ASCII too: two bytes each
            if p.call(("echo", s)) != s:
                bad.append(("str", n))
            if p.call(("echo", [s[:10], s])) != [s[:10], s]:
                bad.append(("list", n))
    for n in (T - 2, T - 1, T, T + 1, (1 << 18) - 1, 1 << 18, (1 << 20) + 1):
        data = os.urandom(n)
        for value in (data, {"b": data, "i": n}, [n, data, "x"], [data[:T - 1]] * 3):
            out = p.call(("echo", value))
            if out != value or type(out) is not type(value):
                bad.append(("bytes", n, type(value).__name__))


def job(rng):
    r = rng.random()
    if r < 0.4:
        v = rng.randrange(1 << 40)
    elif r < 0.55:
        v = os.urandom(rng.choice([10, T - 1, T, 3 * T, 300_000]))
    elif r < 0.65:
        v = "s" * rng.choice([10, (1 << 18) - 30, 1 << 18])
    elif r < 0.75:
        v = {"m": [os.urandom(T + 1), 1, "x"], "n": os.urandom(100)}
    elif r < 0.8:
        return ("noise", 1), 1
    else:
        return ("sleep", 0.3), None  # with a short timeout: TaskTimeout
    return ("echo", v), v


def hammer(handle, seed, rounds, bad, counts):
    rng = random.Random(seed)
    for _ in range(rounds):
        args, want = job(rng)
        how = rng.choice(["call", "call_timeout", "submit"])
        if want is None:
            got = outcome(lambda: handle.call(args, timeout=0.05))
            ok = got.get("error") == "TaskTimeout"
        elif how == "call":
            got = outcome(lambda: handle.call(args))
            ok = got == {"value": want}
        elif how == "call_timeout":
            got = outcome(lambda: handle.call(args, timeout=30))
            ok = got == {"value": want}
        else:
            got = outcome(lambda: handle.submit(args).result(30))
            ok = got == {"value": want}
        counts[how if want is not None else "timeout"] += 1
        if not ok:
            bad.append((how, repr(args)[:80], repr(got)[:300]))


def fds():
    return len(os.listdir("/proc/self/fd"))


def parent():
    import collections
    seen = {}
    bad = []
    with Process(Echo, stderr="capture") as p:
        edges(p, bad)
    seen["edges"] = bad
    counts = collections.Counter()
    for make in (lambda: Process(Echo, stderr="capture"),
                 lambda: ProcessPool(Echo, size=2, stderr="capture")):
        bad = []
        with make() as h:
            h.call(("echo", 0))
            before = fds()
            threads = [threading.Thread(target=hammer, args=(h, i, 40, bad, counts))
                       for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            seen[type(h).__name__] = {"bad": bad, "stuck": any(t.is_alive() for t in threads),
                                      "last": h.call(("echo", "last"))}
            deadline = time.monotonic() + 5
            while fds() != before and time.monotonic() < deadline:
                time.sleep(0.02)
            seen[type(h).__name__]["fds"] = fds() - before
    seen["counts"] = counts
    seen["children"] = len(children())
    emit(**seen)
"""


def test_frames_at_the_buffer_edges_and_mixed_traffic_from_threads(run_script) -> None:
    """Strs whose frames end within a few bytes of the worker's and the parent's read
    buffers and of the pipe's size, bytes around the segment threshold in every
    container, then tiny, large, noisy and timed-out calls mixed on one Process and
    on a pool from four threads (call, call with a timeout, submit): every value
    comes back equal and of its type, a timeout is a TaskTimeout, nothing hangs or
    leaks an fd."""
    (seen,) = records(run_script(program(MIXED + MAIN), timeout=100))
    assert seen["edges"] == [], seen["edges"]
    for handle in ("Process", "ProcessPool"):
        assert seen[handle]["bad"] == [], seen[handle]
        assert not seen[handle]["stuck"], seen[handle]
        assert seen[handle]["last"] == "last", seen[handle]
        assert seen[handle]["fds"] == 0, seen[handle]
    assert min(seen["counts"].values()) > 5, seen["counts"]
    assert seen["children"] == 1, seen  # the watchdog only


# -- real SIGINTs at random instants of tiny calls ---------------------------------

INTERRUPTED = """
import random, threading


class Seven(Task[int, int]):
    def run(self, x: int) -> int:
        return 7 * x


def fds():
    return len(os.listdir("/proc/self/fd"))


def zombies():
    return sum(state(pid) == "Z" for pid in children())


class Injector(threading.Thread):
    # Once told to go, sends SIGINT to the main thread every 0.2 to 3 ms until stopped.
    def __init__(self):
        super().__init__(daemon=True)
        self.go = threading.Event()
        self.stop = threading.Event()
        self.sent = 0

    def run(self):
        rng = random.Random(11)
        main = threading.main_thread().ident
        self.go.wait(30)
        while not self.stop.wait(rng.uniform(0.0002, 0.003)):
            signal.pthread_kill(main, signal.SIGINT)
            self.sent += 1


def one(handle, i, bad, tally):
    try:
        try:
            got = handle.call(i)
            tally["ok"] += 1
            if got != 7 * i:
                bad.append(("wrong", i, got))
        except KeyboardInterrupt:
            tally["interrupted"] += 1
        except Exception as e:
            bad.append((type(e).__name__, str(e)[:200]))
    except KeyboardInterrupt:  # landed in the bookkeeping above
        pass


def storm(handle, seconds, bad, tally):
    end = time.monotonic() + seconds
    count = [0]
    injector = Injector()
    injector.start()
    while True:  # every statement that runs while SIGINTs fly is inside this try
        try:
            injector.go.set()
            while time.monotonic() < end:
                count[0] += 1
                one(handle, count[0], bad, tally)
            injector.stop.set()
            injector.join(5)
            time.sleep(0.05)  # a SIGINT already sent lands here
            break
        except KeyboardInterrupt:
            pass
    return injector.sent


def settled(before, within=10.0):
    deadline = time.monotonic() + within
    while (fds(), len(children())) != before and time.monotonic() < deadline:
        time.sleep(0.02)
    return fds(), len(children())


def parent():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    seen = {}
    for name, make in (("process", lambda: Process(Seven)),
                       ("pool", lambda: ProcessPool(Seven, size=2))):
        bad, tally = [], {"ok": 0, "interrupted": 0}
        with make() as h:
            h.call(0)
            before = (fds(), len(children()))
            sent = storm(h, 4.0, bad, tally)
            seen[name] = {"bad": bad, "sent": sent, **tally,
                          "after": [h.call(i) for i in range(1, 4)],
                          "before": before, "settled": settled(before),
                          "zombies": zombies()}
    emit(**seen)
"""


def test_real_sigints_during_tiny_calls_leave_no_half_state(run_script) -> None:
    """Thousands of tiny calls without a timeout (the flat path) on a Process and on
    a pool, SIGINT sent to the main thread every few milliseconds: each call gives
    its value or KeyboardInterrupt, never a wrong value, a ProtocolError or a
    spurious crash; afterwards calls work and no fd, worker or zombie is left."""
    (seen,) = records(run_script(program(INTERRUPTED + MAIN), timeout=60))
    for name in ("process", "pool"):
        case = seen[name]
        assert case["bad"] == [], case
        assert case["interrupted"] > 20 and case["ok"] > 200, case
        assert case["after"] == [7, 14, 21], case
        assert case["settled"] == case["before"], case
        assert case["zombies"] == 0, case
