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
    "reply_to_an_older_call": "to_parent(_wire.encode_frame([RESULT, call_id() - 1, WRONG])); mute()",
}


def parent():
    seen = {}
    with Process(Forge, stderr="capture") as p:  # the noise is not UTF-8
        p.call(("pass", 0))
        for name, how in CASES.items():
            pid = p.pid
            value = os.urandom(3 * T + 5) if name.startswith("envelope") else V
            first = outcome(lambda: p.call((how, value)))
            if name.startswith("envelope"):
                first = {"value": first.get("value") == value, **{k: v for k, v in first.items() if k != "value"}}
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
