"""Unit tests of large values out of band (``_segments`` and FrameReader's raw mode),
no processes: a message is split and framed as a sender does, its bytes fed to a
reader in every way they may arrive, and it must come back equal, with its types.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tarnish_py import ProtocolError, _protocol, _segments, _wire

T = _segments.THRESHOLD
MAX = 1 << 24
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.timeout(60)


def wire_bytes(message: list[Any]) -> bytes:
    """What a sender writes for ``message``: one frame, or an envelope and its segments."""
    kind, call_id, value = message
    packed, split = _segments.pack_large(
        lambda v: _wire.pack([kind, call_id, v]),
        value,
        None if type(value) in _segments.EARLY else _wire.pack(message),
        MAX,
        "value",
    )
    if split is None:
        return _wire.frame_packed(packed)
    frame = _wire.envelope_frame(packed, split.lengths)
    return frame + b"".join(bytes(b) for b in split.buffers)


def feed_in(reader: _wire.FrameReader, data: bytes, cuts: list[int]) -> list[Any]:
    out: list[Any] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += reader.feed(data[start:cut])
        start = cut
    return out


def read_raw(reader: _wire.FrameReader, data: bytes, chunk: int) -> list[Any]:
    """Read as Conn and the worker do: frames through feed(), segments straight
    into ``reader.raw`` (at most ``chunk`` bytes a read)."""
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        views = reader.raw
        if views is None:
            out += reader.feed(data[pos : pos + chunk])
            pos += chunk
            continue
        n = 0
        for view in views:  # a readv of at most ``chunk`` bytes
            k = min(len(view), chunk - n, len(data) - pos - n)
            view[:k] = data[pos + n : pos + n + k]
            n += k
        pos += n
        out += reader.filled(n)
    return out


# --- the sender's walk -----------------------------------------------------------


@pytest.mark.parametrize(("size", "out_of_band"), [(T - 1, False), (T, True), (T + 1, True)])
def test_threshold_boundary(size: int, out_of_band: bool) -> None:
    data = os.urandom(size)
    split = _segments.split(data)
    assert (split is not None) == out_of_band
    message = [_protocol.RESULT, 3, data]
    (got,) = _wire.FrameReader(MAX).feed(wire_bytes(message))
    assert got == message and type(got[2]) is bytes


def test_scalars_small_values_and_big_trees_stay_in_band() -> None:
    assert int not in _segments.EARLY and str not in _segments.EARLY
    # Before packing, a dict is looked at only for bytes-likes it holds itself.
    assert _segments.split_early({"a": [b"x" * T]}) is None
    assert _segments.split_early({"a": b"x" * T}) is not None
    assert _segments.split([b"x" * 100, {"a": 1}]) is None
    assert _segments.split(b"") is None
    # A tree too big to walk cheaply travels in band, whatever it holds.
    assert _segments.split([0] * 1000 + [b"x" * T]) is None
    nested: Any = b"x" * T
    for _ in range(40):
        nested = [nested]
    assert _segments.split(nested) is None


def test_nested_values_are_replaced_without_touching_the_callers_containers() -> None:
    big, other = os.urandom(T), os.urandom(2 * T)
    value = {"a": [1, big, (other, "x")], "b": {"c": b"small"}, "d": "text"}
    split = _segments.split(value)
    assert split is not None
    assert split.lengths == [T, 2 * T] and split.size == 3 * T
    assert value["a"][1] is big and value["a"][2][0] is other  # unchanged
    assert split.value["b"] is value["b"]  # untouched branches are shared, not copied
    assert isinstance(split.value["a"][1], msgpack.ExtType)
    (got,) = _wire.FrameReader(MAX).feed(wire_bytes([_protocol.CALL, 1, value]))
    assert got == [_protocol.CALL, 1, value]
    assert type(got[2]["a"][2]) is tuple


def test_bytes_likes_arrive_as_bytes() -> None:
    raw = os.urandom(3 * T)
    shaped = memoryview(bytearray(raw)).cast("B", (3, T))
    value = [bytearray(raw), memoryview(raw), shaped]
    split = _segments.split(value)
    assert split is not None and split.lengths == [3 * T, 3 * T, 3 * T]
    (got,) = _wire.FrameReader(MAX).feed(wire_bytes([_protocol.RESULT, 1, value]))
    assert got[2] == [raw, raw, raw] and all(type(v) is bytes for v in got[2])
    # Not contiguous (msgpack refuses such a view): copied once by the sender.
    strided = memoryview(raw)[::3]
    assert _segments.split(strided) is not None
    (got,) = _wire.FrameReader(MAX).feed(wire_bytes([_protocol.RESULT, 1, strided]))
    assert got[2] == raw[::3] and type(got[2]) is bytes


def test_at_most_max_segments_then_in_band() -> None:
    value = [b"x" * T] * (_segments.MAX_SEGMENTS + 3)
    walk = _segments._Walk()
    walk.budget = 10**6
    replaced = walk.visit(value, 0)
    assert len(walk.buffers) == _segments.MAX_SEGMENTS
    assert replaced[-1] is value[-1]


# --- the reader's raw mode ---------------------------------------------------------

MESSAGES = [
    [_protocol.RESULT, 1, os.urandom(T)],
    [_protocol.RESULT, 2, "small"],
    [_protocol.CALL, 3, [os.urandom(T + 5), b"", {"k": os.urandom(2 * T + 1)}]],
    [_protocol.RESULT, 4, None],
]
STREAM = b"".join(wire_bytes(m) for m in MESSAGES)


@FUZZ
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_messages_and_segments_fed_in_any_split(cuts: list[int]) -> None:
    assert feed_in(_wire.FrameReader(MAX), STREAM, cuts) == MESSAGES


@FUZZ
@given(st.integers(min_value=1, max_value=3 * T))
def test_segments_read_in_place_in_any_chunk_size(chunk: int) -> None:
    assert read_raw(_wire.FrameReader(MAX), STREAM, chunk) == MESSAGES


def test_every_cut_around_a_segment_boundary() -> None:
    message = [_protocol.RESULT, 9, [os.urandom(T), os.urandom(T)]]
    data = wire_bytes(message) + _wire.encode_frame([_protocol.RESULT, 10, 1])
    frame_end = data.index(b"\x00") + 1
    for cut in [*range(frame_end - 2, frame_end + 3), frame_end + T - 1, frame_end + T,
                frame_end + T + 1, len(data) - 3]:
        got = feed_in(_wire.FrameReader(MAX), data, [cut])
        assert got == [message, [_protocol.RESULT, 10, 1]], cut


def test_many_envelopes_in_one_chunk_need_no_recursion() -> None:
    # A hostile sender: thousands of envelopes with empty segments, in one read.
    one = _wire.envelope_frame(_wire.pack([_protocol.RESULT, 1, 0]), [0])
    assert len(_wire.FrameReader(MAX).feed(one * 5000)) == 5000


def test_an_announced_total_past_the_limit_is_refused_before_allocating(monkeypatch) -> None:
    allocated: list[int] = []
    monkeypatch.setattr(_segments, "_blank", lambda n: allocated.append(n))
    frame = _wire.envelope_frame(_wire.pack([_protocol.RESULT, 1, 0]), [10 << 30])
    for reader in (_wire.FrameReader(MAX), _wire.FrameReader(MAX)):
        with pytest.raises(ProtocolError, match="announcing .* exceeds max_message_bytes"):
            reader.feed(frame)
        frame = b"\x00" + frame + b"garbage"  # the slow path too
    # The frame counts too: segments of exactly the limit are too much.
    packed = _wire.pack([_protocol.RESULT, 1, 0])
    with pytest.raises(ProtocolError, match="max_message_bytes"):
        _wire.FrameReader(MAX).feed(_wire.envelope_frame(packed, [MAX - len(packed) + 1]))
    assert allocated == []


def test_a_non_strict_reader_takes_an_envelope_for_noise() -> None:
    """Before the handshake, an envelope is stdout noise: it never makes the reader
    swallow the bytes after it as a segment."""
    envelope = _wire.envelope_frame(_wire.pack([_protocol.RESULT, 1, 0]), [T])
    after = _wire.encode_frame([_protocol.HELLO, "token", 2, 1])
    reader = _wire.FrameReader(MAX, strict=False)
    got = reader.feed(envelope + after)
    assert isinstance(got[0], bytes) and got[1] == [_protocol.HELLO, "token", 2, 1]
    assert reader.raw is None
    assert isinstance(_wire.FrameReader(MAX, strict=False).feed(envelope)[0], bytes)


@pytest.mark.parametrize(
    "packed",
    [
        # A reference to a segment, with no envelope.
        _wire.pack([_protocol.RESULT, 1, msgpack.ExtType(_segments.EXT_SEGMENT, bytes(4))]),
        # An envelope that is not at the top of the frame.
        _wire.pack([_protocol.RESULT, 1, msgpack.ExtType(_segments.EXT_ENVELOPE, b"\x90")]),
        # Malformed envelopes.
        msgpack.packb(msgpack.ExtType(_segments.EXT_ENVELOPE, b"\xc1")),
        msgpack.packb(msgpack.ExtType(_segments.EXT_ENVELOPE, msgpack.packb([[-1], b""]))),
        msgpack.packb(msgpack.ExtType(_segments.EXT_ENVELOPE, msgpack.packb([["x"], b""]))),
        msgpack.packb(msgpack.ExtType(_segments.EXT_ENVELOPE, msgpack.packb([[1] * 1001, b""]))),
    ],
    ids=["ref_without_envelope", "nested_envelope", "garbage", "negative", "not_int", "too_many"],
)
def test_forged_references_and_envelopes_are_protocol_errors(packed: bytes) -> None:
    with pytest.raises(ProtocolError):
        _wire.FrameReader(MAX).feed(_wire.frame_packed(packed) + b"\x00" * 8)


def test_a_reference_past_the_announced_segments_is_a_protocol_error() -> None:
    ref = msgpack.ExtType(_segments.EXT_SEGMENT, (1).to_bytes(4, "little"))
    frame = _wire.envelope_frame(_wire.pack([_protocol.RESULT, 1, ref]), [3])
    with pytest.raises(ProtocolError, match="segment 1"):
        _wire.FrameReader(MAX).feed(frame + b"abc")


def test_the_inner_message_must_be_a_message() -> None:
    frame = _wire.envelope_frame(_wire.pack("not a message"), [2])
    with pytest.raises(ProtocolError, match="not a message"):
        _wire.FrameReader(MAX).feed(frame + b"ab")


def test_pack_large_counts_the_segments_against_the_limit() -> None:
    def pack(v: Any) -> bytes:
        return _wire.pack([_protocol.RESULT, 1, v])

    value = {"a": b"x" * T, "b": [b"y" * T]}
    packed, split = _segments.pack_large(pack, value, None, 4 * T, "result")
    assert split is not None and split.lengths == [T, T] and len(packed) < 100
    with pytest.raises(ValueError, match=r"the result takes \d+ bytes, more than max_message"):
        _segments.pack_large(pack, value, None, 2 * T, "result")
    small = pack([1, 2])  # under the threshold: never walked, only checked
    assert _segments.pack_large(pack, [1, 2], small, 100, "input") == (small, None)
    with pytest.raises(ValueError, match="the input takes"):
        _segments.pack_large(pack, [1, 2], small, 3, "input")


def test_consumed_after_partial_writes() -> None:
    views = [memoryview(b"abc"), memoryview(b""), memoryview(b"defg")]
    assert [bytes(v) for v in _segments.consumed(views, 0)] == [b"abc", b"", b"defg"]
    assert [bytes(v) for v in _segments.consumed(views, 2)] == [b"c", b"", b"defg"]
    assert [bytes(v) for v in _segments.consumed(views, 3)] == [b"defg"]
    assert [bytes(v) for v in _segments.consumed(views, 5)] == [b"fg"]
    assert _segments.consumed(views, 7) == []


def test_write_all_writes_frame_and_segments_in_order() -> None:
    r, w = os.pipe()
    try:
        chunks: list[Any] = [b"head", bytearray(b"mid"), memoryview(b"tail")]
        _segments.write_all(w, chunks)
        assert os.read(r, 100) == b"headmidtail"
    finally:
        os.close(r)
        os.close(w)


def test_idle_only_between_frames_and_segments() -> None:
    """``idle`` is what lets Conn and the worker loop decode a one-frame read in place:
    never while part of a frame or of announced segments is held."""
    reader = _wire.FrameReader(MAX)
    assert reader.idle
    small = wire_bytes([_protocol.CALL, 1, 7])
    large = wire_bytes([_protocol.CALL, 2, bytes(_segments.THRESHOLD)])
    assert reader.feed(small[:2]) == [] and not reader.idle
    assert reader.feed(small[2:]) == [[_protocol.CALL, 1, 7]] and reader.idle
    envelope_end = large.index(b"\x00") + 1
    assert reader.feed(large[:envelope_end]) == [] and not reader.idle  # segments to come
    assert reader.feed(large[envelope_end:-1]) == [] and not reader.idle
    (message,) = reader.feed(large[-1:])
    assert message[1] == 2 and len(message[2]) == _segments.THRESHOLD and reader.idle
