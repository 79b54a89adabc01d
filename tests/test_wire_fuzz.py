"""Fuzzed wire: whatever bytes a worker writes, in whatever chunks they arrive,
the FrameReader yields messages or raises ProtocolError, and its buffer stays
bounded by the frame limit.

max_message_bytes is small (256) so that the limit is hit often; it also keeps
nested ext types too shallow to reach the C-stack overflow that
test_wire.py::test_deeply_nested_ext_frames_do_not_crash_the_reader shows.
"""

from __future__ import annotations

from typing import Any

import pytest
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tarnish_py import ProtocolError, _protocol, _wire

MAX = 256
LIMIT = _wire.frame_limit(MAX)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.timeout(60)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**100), max_value=2**100),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.decimals(allow_nan=False, places=3),
    st.uuids(),
    st.datetimes(),
    st.timedeltas(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.integers() | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
messages = st.tuples(
    st.sampled_from([_protocol.RESULT, _protocol.CALL]), st.integers(0, 2**32), values
).map(list)


def ext_message(code: int, data: bytes) -> bytes:
    """[RESULT, 1, ext] packed by hand: msgpack.ExtType refuses the negative (reserved) codes."""
    header = b"\xc7" + bytes([len(data)]) + code.to_bytes(1, "big", signed=True)
    return b"\x93\x02\x01" + header + data


ext_payloads = st.builds(ext_message, st.integers(-128, 127), st.binary(max_size=40))
segments = st.one_of(
    st.binary(max_size=300),  # raw noise, zeros included
    st.binary(max_size=300).map(lambda b: cobs.encode(b) + b"\x00"),  # valid COBS, junk msgpack
    ext_payloads.map(_wire.frame_packed),  # valid msgpack, any ext type
    messages.map(_wire.encode_frame),  # a real message
    st.integers(0, 3 * LIMIT).map(lambda n: b"\x01" * n),  # long runs without a terminator
    st.just(b"\x00"),
)
streams = st.lists(segments, max_size=12).map(b"".join)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed_until_error(reader: _wire.FrameReader, chunks: list[bytes]) -> list[Any]:
    """Feed ``chunks``; stop at the first ProtocolError (the worker would be killed)."""
    out: list[Any] = []
    for chunk in chunks:
        try:
            out.extend(reader.feed(chunk))
        except ProtocolError:
            assert reader.pending <= LIMIT + len(chunk)
            break
        assert reader.pending <= LIMIT
    return out


cut_lists = st.lists(st.integers(min_value=0, max_value=10**6), max_size=20)


@FUZZ
@given(streams, cut_lists)
def test_strict_reader_yields_only_messages_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    for message in feed_until_error(_wire.FrameReader(MAX), chunked(data, cuts)):
        assert isinstance(message, list) and message and isinstance(message[0], int)


@FUZZ
@given(streams, cut_lists)
def test_non_strict_reader_yields_only_messages_or_noise(data: bytes, cuts: list[int]) -> None:
    for item in feed_until_error(_wire.FrameReader(MAX, strict=False), chunked(data, cuts)):
        assert isinstance(item, bytes) or (isinstance(item, list) and isinstance(item[0], int))
        if isinstance(item, bytes):
            assert b"\x00" not in item and 0 < len(item) <= LIMIT


@FUZZ
@given(st.binary(max_size=4 * LIMIT), st.integers(1, 2 * LIMIT))
def test_pending_stays_bounded_in_fixed_chunks(data: bytes, size: int) -> None:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    feed_until_error(_wire.FrameReader(MAX), chunks)


@FUZZ
@given(st.lists(messages, min_size=1, max_size=8), cut_lists)
def test_valid_messages_split_anywhere_decode_identically(
    batch: list[list[Any]], cuts: list[int]
) -> None:
    frames = [_wire.encode_frame(m) for m in batch]
    data = b"".join(frames)
    whole = _wire.FrameReader(max(map(len, frames))).feed(data)
    assert whole == [_wire.unpack(_wire.pack(m)) for m in batch]
    reader = _wire.FrameReader(max(map(len, frames)))
    pieces = [m for chunk in chunked(data, cuts) for m in reader.feed(chunk)]
    assert pieces == whole
    assert reader.pending == 0


@FUZZ
@given(st.lists(messages, min_size=1, max_size=4), st.binary(max_size=200))
def test_noise_before_the_handshake_does_not_hide_messages(
    batch: list[list[Any]], noise: bytes
) -> None:
    # The worker writes a 0x00 before HELLO so anything before it is a frame of
    # its own; with strict=False that frame comes back as bytes (or, by chance,
    # as a message) and every real message follows intact.
    data = noise + b"\x00" + b"".join(_wire.encode_frame(m) for m in batch)
    reader = _wire.FrameReader(1 << 20, strict=False)
    out = reader.feed(data)
    assert out[len(out) - len(batch) :] == [_wire.unpack(_wire.pack(m)) for m in batch]
    assert len(out) - len(batch) <= noise.count(b"\x00") + 1
