"""Unit tests of the wire: values <-> msgpack <-> COBS frames, no processes.

A value takes the path of a call: validated and dumped by the sender's type
adapter, packed into a frame, read back by a FrameReader and validated by the
receiver's adapter; it must come back equal, with the same types.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import random
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgpack
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tarnish_py import ProtocolError, _protocol, _wire

# --- helpers -------------------------------------------------------------------


def through_call(tp: Any, value: Any) -> Any:
    """``value`` after the whole path of a call's result: adapter, frame, reader, adapter."""
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(tp)
    obj = adapter.dump_python(adapter.validate_python(value))
    frame = _wire.encode_frame([_protocol.RESULT, 1, obj])
    messages = _wire.FrameReader().feed(frame)
    assert len(messages) == 1
    kind, call_id, payload = messages[0]
    assert (kind, call_id) == (_protocol.RESULT, 1)
    return adapter.validate_python(payload)


def assert_same(expected: Any, got: Any) -> None:
    """Equal, and of the same type all the way down (``1 == 1.0 == True`` is not enough)."""
    assert type(got) is type(expected), (expected, got)
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
        return
    assert got == expected
    if isinstance(expected, (list, tuple)):
        for e, g in zip(expected, got, strict=True):
            assert_same(e, g)
    elif isinstance(expected, dict):
        for (ek, ev), (gk, gv) in zip(expected.items(), got.items(), strict=True):
            assert_same(ek, gk)
            assert_same(ev, gv)


def wire_round_trip(value: Any) -> Any:
    return _wire.unpack(_wire.pack(value))


# --- types a task may use --------------------------------------------------------


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2**40


class Shape(enum.Enum):
    CIRCLE = 1
    SQUARE = "square"


class Pair(NamedTuple):
    left: int
    right: str


@dataclasses.dataclass
class Point:
    x: float
    y: float
    tags: frozenset[str] = frozenset()


class Inner(pydantic.BaseModel):
    when: dt.datetime
    amount: decimal.Decimal
    raw: bytes


class Outer(pydantic.BaseModel):
    id: uuid.UUID
    inner: Inner
    items: list[Inner]
    by_key: dict[int, tuple[str, int]]
    color: Color
    point: Point
    pair: Pair
    big: int
    labels: set[str]


UTC_PLUS_5_30 = dt.timezone(dt.timedelta(hours=5, minutes=30))
UTC_MINUS_ODD = dt.timezone(-dt.timedelta(hours=3, minutes=7, seconds=11, microseconds=5))
PARIS = ZoneInfo("Europe/Paris")

OUTER = Outer(
    id=uuid.UUID(int=2**127 + 5),
    inner=Inner(
        when=dt.datetime(2024, 2, 29, 12, tzinfo=dt.timezone.utc),
        amount=decimal.Decimal("0.1"),
        raw=b"\x00\x01",
    ),
    items=[Inner(when=dt.datetime(1, 1, 1), amount=decimal.Decimal("-1E+30"), raw=b"")],
    by_key={-(2**70): ("x", 1), 7: ("", -2)},
    color=Color.BLUE,
    point=Point(1.5, -0.0, frozenset({"a"})),
    pair=Pair(3, "three"),
    big=-(10**40),
    labels={"p", "q"},
)

CASES: list[tuple[Any, Any]] = [
    (bytes, b""),
    (bytes, b"\x00\x00\xff" * 100),
    (bytes, bytes(range(256)) * 300),  # bin 32
    (int, 2**63 - 1),
    (int, 2**64 - 1),
    (int, 2**64),
    (int, -(2**63)),
    (int, -(2**63) - 1),
    (int, 2**200 + 1),
    (int, -(2**200)),
    (int, 10**5000),  # beyond sys.int_max_str_digits: must not be sent as a decimal string
    (int, -(10**5000)),
    (decimal.Decimal, decimal.Decimal("3.14159265358979323846264338327950288")),
    (decimal.Decimal, decimal.Decimal("-0")),
    (decimal.Decimal, decimal.Decimal("1.10")),  # the exponent is kept, not just the value
    (decimal.Decimal, decimal.Decimal("1E+999999")),
    (uuid.UUID, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    (dt.datetime, dt.datetime(2024, 1, 2, 3, 4, 5, 678901)),
    (dt.datetime, dt.datetime.min),
    (dt.datetime, dt.datetime.max),
    (dt.datetime, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
    (dt.datetime, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC_PLUS_5_30)),
    (dt.datetime, dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC_MINUS_ODD)),
    (dt.datetime, dt.datetime(2024, 7, 14, 12, 0, tzinfo=PARIS)),
    (dt.datetime, dt.datetime(2024, 1, 14, 12, 0, tzinfo=PARIS)),
    (dt.date, dt.date(1, 1, 1)),
    (dt.date, dt.date(2024, 2, 29)),
    (dt.time, dt.time()),
    (dt.time, dt.time(23, 59, 59, 999999)),
    (dt.time, dt.time(1, 2, 3, 4, tzinfo=UTC_PLUS_5_30)),
    (dt.time, dt.time(1, 2, 3, tzinfo=UTC_MINUS_ODD)),
    (dt.timedelta, dt.timedelta(0)),
    (dt.timedelta, dt.timedelta(days=3, seconds=4, microseconds=5)),
    (dt.timedelta, dt.timedelta(microseconds=-1)),
    (dt.timedelta, dt.timedelta.min),
    (dt.timedelta, dt.timedelta.max),
    (set[int], {1, 2, 3}),
    (set[int], set()),
    (frozenset[str], frozenset({"a", "b"})),
    (tuple[int, str, bytes], (1, "a", b"b")),
    (tuple[int, ...], ()),
    (dict[tuple[int, tuple[str, int]], str], {(1, ("a", 2)): "x", (3, ("", -4)): "y"}),
    (dict[frozenset[int], int], {frozenset({1, 2}): 3}),
    (dict[int, str], {1: "a", -(2**70): "b", 0: "c"}),
    (Color, Color.RED),
    (Level, Level.LOW),
    (Level, Level.HIGH),
    (Shape, Shape.CIRCLE),
    (Shape, Shape.SQUARE),
    (list[Color], [Color.BLUE, Color.RED]),
    (Point, Point(1.0, 2.5, frozenset({"t"}))),
    (Pair, Pair(1, "x")),
    (list[Pair], [Pair(1, "x"), Pair(2, "y")]),
    (Outer, OUTER),
    (complex, complex(1.5, -2.0)),
    (complex, complex(0, math.inf)),
    (str, ""),
    (str, "héllo, 世界 \U0001f600"),
    (str, "lone \ud800 surrogate \udfff"),
    (type(None), None),
    (bool, True),
    (bool, False),
    (float, 0.1),
    (float, -0.0),
    (float, math.inf),
    (float, -math.inf),
    (float, 5e-324),
    (Any, {"a": [1, (2, {3}), frozenset({b"x"})], 4: dt.date(2020, 1, 1), None: 2**65}),
]


@pytest.mark.parametrize(("tp", "value"), CASES, ids=lambda x: type(x).__name__)
def test_value_round_trips_through_a_call(tp: Any, value: Any) -> None:
    assert_same(value, through_call(tp, value))


def test_nan_round_trips() -> None:
    assert math.isnan(through_call(float, math.nan))
    back = through_call(complex, complex(math.nan, 1.0))
    assert math.isnan(back.real) and back.imag == 1.0
    assert wire_round_trip(decimal.Decimal("NaN")).is_nan()  # pydantic refuses it; the wire not


def test_aware_datetime_keeps_its_offset_and_instant() -> None:
    value = dt.datetime(2024, 7, 14, 12, 0, tzinfo=PARIS)
    back = through_call(dt.datetime, value)
    assert back == value
    assert back.utcoffset() == dt.timedelta(hours=2)
    assert back.isoformat() == value.isoformat()


@pytest.mark.parametrize("fold", [0, 1])
def test_zoneinfo_datetime_in_a_dst_fold_round_trips(fold: int) -> None:
    value = dt.datetime(2021, 11, 7, 1, 30, fold=fold, tzinfo=ZoneInfo("America/New_York"))
    assert through_call(dt.datetime, value) == value


class TupleValued(enum.Enum):
    ORIGIN = (0, 0)


class DecimalValued(enum.Enum):
    HALF = decimal.Decimal("0.5")


class HugeIntEnum(enum.IntEnum):
    HUGE = 2**70


@pytest.mark.parametrize(
    "member", [TupleValued.ORIGIN, DecimalValued.HALF, HugeIntEnum.HUGE], ids=str
)
def test_enum_with_a_value_msgpack_has_no_type_for(member: enum.Enum) -> None:
    assert_same(member, through_call(type(member), member))


@pytest.mark.parametrize(
    "value",
    [b"", b"x", b"\x00" * 255, b"y" * 256, b"z" * 65536, b"w" * 70000],
    ids=lambda b: f"{len(b)}B",
)
def test_bytes_travel_as_msgpack_bin(value: bytes) -> None:
    packed = _wire.pack(value)
    assert packed[0] in (0xC4, 0xC5, 0xC6)
    assert packed.endswith(value)
    # no base64 or str form anywhere: the payload is the bytes themselves
    assert len(packed) <= len(value) + 5


def test_bytes_inside_a_result_travel_as_bin() -> None:
    packed = _wire.pack([_protocol.RESULT, 1, {"data": b"\x01\x02\x03"}])
    assert b"\xc4\x03\x01\x02\x03" in packed


# --- the raw wire alone ------------------------------------------------------------------

RAW_VALUES: list[Any] = [
    {1, 2, 3},
    set(),
    frozenset({"a", (1, 2)}),
    frozenset(),
    (),
    (1, "a", (2.5, b"b"), [3]),
    [(1, 2), {3}, frozenset({4})],
    {(1, 2): {3}, frozenset({5}): (6,)},
    dt.datetime(2020, 5, 17, 1, 2, 3, 4),
    dt.datetime(2020, 5, 17, 1, 2, 3, 4, tzinfo=UTC_MINUS_ODD),
    dt.date(2020, 5, 17),
    dt.time(1, 2, 3, 4),
    dt.time(1, 2, 3, 4, tzinfo=UTC_PLUS_5_30),
    dt.timedelta(days=-1, seconds=5),
    decimal.Decimal("-12.3400"),
    decimal.Decimal("-Infinity"),
    uuid.UUID(int=0),
    uuid.UUID(int=2**128 - 1),
    2**64,
    -(2**63) - 1,
    2**1000,
    -(2**1000) + 1,
    10**5000,
    {2**100: -(2**100)},
    complex(-1, 2),
    "\udc80",
]


@pytest.mark.parametrize("value", RAW_VALUES, ids=lambda v: type(v).__name__)
def test_raw_wire_round_trip_keeps_types(value: Any) -> None:
    assert_same(value, wire_round_trip(value))


def test_raw_wire_int_boundaries() -> None:
    for exp in range(60, 140):
        for v in (2**exp - 1, 2**exp, 2**exp + 1, -(2**exp) - 1, -(2**exp), -(2**exp) + 1):
            assert_same(v, wire_round_trip(v))


def test_raw_wire_namedtuple_and_subclasses_degrade_to_base_types() -> None:
    assert_same((1, "x"), wire_round_trip(Pair(1, "x")))
    assert_same("red", wire_round_trip(Color.RED))
    assert_same(1, wire_round_trip(Shape.CIRCLE))
    assert_same(b"ab", wire_round_trip(bytearray(b"ab")))


def test_unsendable_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cannot send"):
        _wire.pack(object())


# --- hypothesis: arbitrary values -----------------------------------------------------------

fixed_offsets = st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
    ),
)
big_ints = st.integers(min_value=-(2**300), max_value=2**300)
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    big_ints,
    st.floats(allow_nan=False),
    st.text(st.characters(codec=None, exclude_categories=())),  # surrogates included
    st.binary(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.datetimes(timezones=st.none() | fixed_offsets),
    st.dates(),
    st.times(timezones=st.none() | fixed_offsets),
    st.timedeltas(),
    st.complex_numbers(allow_nan=False),
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
values = st.recursive(
    hashable_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_arbitrary_values_round_trip_on_the_raw_wire(value: Any) -> None:
    assert_same(value, wire_round_trip(value))
    frame = _wire.encode_frame([_protocol.RESULT, 9, value])
    assert frame.index(b"\x00") == len(frame) - 1
    (message,) = _wire.FrameReader().feed(frame)
    assert_same([_protocol.RESULT, 9, value], message)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_arbitrary_values_round_trip_through_an_any_call(value: Any) -> None:
    assert_same(value, through_call(Any, value))


inners = st.builds(
    Inner,
    when=st.datetimes(timezones=st.none() | fixed_offsets),
    amount=st.decimals(allow_nan=False, allow_infinity=False),
    raw=st.binary(),
)
outers = st.builds(
    Outer,
    id=st.uuids(),
    inner=inners,
    items=st.lists(inners, max_size=3),
    by_key=st.dictionaries(big_ints, st.tuples(st.text(), big_ints), max_size=3),
    color=st.sampled_from(Color),
    point=st.builds(
        Point,
        st.floats(allow_nan=False),
        st.floats(allow_nan=False),
        st.frozensets(st.text(), max_size=3),
    ),
    pair=st.builds(Pair, big_ints, st.text()),
    big=big_ints,
    labels=st.sets(st.text(), max_size=3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outers)
def test_arbitrary_models_round_trip_through_a_call(model: Outer) -> None:
    assert_same(model, through_call(Outer, model))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(Shape), st.sampled_from(Level)), max_size=5))
def test_arbitrary_enum_lists_round_trip(value: list[tuple[Shape, Level]]) -> None:
    assert_same(value, through_call(list[tuple[Shape, Level]], value))


# --- framing: any chunking decodes the same --------------------------------------------------

SMALL_MESSAGES: list[list[Any]] = [
    [_protocol.HELLO, _protocol.PROTOCOL_VERSION, 1234],
    [_protocol.RESULT, 1, None],
    [_protocol.RESULT, 2, b"\x00" * 300],  # zeros inside: COBS must hide them
    [_protocol.ERROR, 3, "ValueError", "bad", "Traceback..."],
    [_protocol.RESULT, 4, "x" * 600],  # longer than one COBS block (254)
    [_protocol.SHUTDOWN],
]
LARGE_MESSAGE: list[Any] = [_protocol.RESULT, 5, random.Random(7).randbytes(300 * 1024)]
ALL_MESSAGES = [*SMALL_MESSAGES, LARGE_MESSAGE, *SMALL_MESSAGES]


def stream_of(messages: Iterable[list[Any]]) -> bytes:
    return b"".join(_wire.encode_frame(m) for m in messages)


def feed_all(chunks: Iterable[bytes], convert: Callable[[bytes], Any] = bytes) -> list[Any]:
    reader = _wire.FrameReader()
    out: list[Any] = []
    for chunk in chunks:
        out.extend(reader.feed(convert(chunk)))
    assert reader.pending == 0
    return out


def test_small_stream_split_at_every_byte_boundary() -> None:
    data = stream_of(SMALL_MESSAGES)
    for cut in range(len(data) + 1):
        assert feed_all([data[:cut], data[cut:]]) == SMALL_MESSAGES, cut


def test_small_stream_split_at_every_pair_of_boundaries() -> None:
    data = stream_of(SMALL_MESSAGES[:3])
    for a in range(0, len(data) + 1, 7):
        for b in range(a, len(data) + 1):
            assert feed_all([data[:a], data[a:b], data[b:]]) == SMALL_MESSAGES[:3]


def test_large_stream_split_at_every_boundary_near_a_frame_edge() -> None:
    data = stream_of(ALL_MESSAGES)
    edges = [0]
    for m in ALL_MESSAGES:
        edges.append(edges[-1] + len(_wire.encode_frame(m)))
    cuts = {c for e in edges for c in range(e - 3, e + 4) if 0 <= c <= len(data)}
    cuts |= set(range(0, len(data), 4093))
    for cut in sorted(cuts):
        assert feed_all([data[:cut], data[cut:]]) == ALL_MESSAGES, cut


@pytest.mark.parametrize(
    "convert", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"]
)
def test_large_stream_in_one_byte_chunks(convert: Callable[[bytes], Any]) -> None:
    data = stream_of(ALL_MESSAGES)
    chunks = [data[i : i + 1] for i in range(len(data))]
    assert feed_all(chunks, convert) == ALL_MESSAGES


@pytest.mark.parametrize(
    "convert", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"]
)
@pytest.mark.parametrize("seed", range(20))
def test_large_stream_in_random_chunks(seed: int, convert: Callable[[bytes], Any]) -> None:
    data = stream_of(ALL_MESSAGES)
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(data):
        size = rng.choice([1, 2, 3, rng.randint(1, 300), rng.randint(1, 70000)])
        chunks.append(data[pos : pos + size])
        pos += size
    assert feed_all(chunks, convert) == ALL_MESSAGES


def test_whole_stream_in_one_feed_and_frame_by_frame() -> None:
    assert feed_all([stream_of(ALL_MESSAGES)]) == ALL_MESSAGES
    assert feed_all(_wire.encode_frame(m) for m in ALL_MESSAGES) == ALL_MESSAGES


def test_frame_packed_matches_encode_frame() -> None:
    for m in ALL_MESSAGES:
        assert _wire.frame_packed(_wire.pack(m)) == _wire.encode_frame(m)


def test_frames_end_with_a_single_zero() -> None:
    for m in ALL_MESSAGES:
        frame = _wire.encode_frame(m)
        assert frame.count(b"\x00") == 1 and frame.endswith(b"\x00")


# --- FrameReader edge cases ---------------------------------------------------------------


def test_empty_frames_are_ignored() -> None:
    reader = _wire.FrameReader()
    frame = _wire.encode_frame([_protocol.RESULT, 1, "a"])
    assert reader.feed(b"\x00") == []
    assert reader.feed(b"\x00\x00\x00") == []
    assert reader.feed(b"\x00" + frame + b"\x00\x00" + frame) == [[2, 1, "a"], [2, 1, "a"]]
    assert reader.feed(b"\x00") == []
    assert reader.pending == 0


def test_pending_counts_the_unterminated_tail() -> None:
    reader = _wire.FrameReader()
    frame = _wire.encode_frame([_protocol.RESULT, 1, "abc"])
    assert reader.feed(frame + frame[:4]) == [[2, 1, "abc"]]
    assert reader.pending == 4
    assert reader.feed(frame[4:-1]) == []
    assert reader.pending == len(frame) - 1
    assert reader.feed(b"\x00") == [[2, 1, "abc"]]
    assert reader.pending == 0


def test_max_message_bytes_must_be_positive() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError):
            _wire.FrameReader(bad)


MAX = 1000


def message_of_packed_size(size: int) -> bytes:
    """A packed RESULT of exactly ``size`` bytes without zeros (COBS's worst case)."""
    body_len = size - 6  # fixarray, kind, call id, bin 16 marker and its 2-byte length
    packed = b"\x93\x02\x01\xc5" + body_len.to_bytes(2, "big") + b"\x01" * body_len
    assert len(packed) == size and b"\x00" not in packed
    assert _wire.unpack(packed) == [_protocol.RESULT, 1, b"\x01" * body_len]
    return packed


@pytest.mark.parametrize("split", [False, True])
def test_message_of_exactly_max_bytes_is_accepted(split: bool) -> None:
    frame = _wire.frame_packed(message_of_packed_size(MAX))
    assert len(frame) - 1 <= _wire.frame_limit(MAX)
    reader = _wire.FrameReader(MAX)
    chunks = [frame[:10], frame[10:]] if split else [frame]
    messages = [m for c in chunks for m in reader.feed(c)]
    assert len(messages) == 1 and len(messages[0][2]) == MAX - 6


@pytest.mark.parametrize("split", [False, True])
def test_frame_over_the_limit_is_refused_when_its_terminator_arrives(split: bool) -> None:
    limit = _wire.frame_limit(MAX)
    frame = b"\x05" * (limit + 1) + b"\x00"
    reader = _wire.FrameReader(MAX)
    with pytest.raises(ProtocolError, match="max_message_bytes"):
        if split:
            reader.feed(frame[: limit // 2])
            reader.feed(frame[limit // 2 :])
        else:
            reader.feed(frame)


def test_frame_over_the_limit_after_a_good_frame_in_the_same_chunk() -> None:
    good = _wire.encode_frame([_protocol.RESULT, 1, "ok"])
    reader = _wire.FrameReader(MAX)
    with pytest.raises(ProtocolError, match="max_message_bytes"):
        reader.feed(good + b"\x05" * (_wire.frame_limit(MAX) + 1) + b"\x00")


def test_unterminated_bytes_piling_up_past_the_limit_are_refused() -> None:
    limit = _wire.frame_limit(MAX)
    reader = _wire.FrameReader(MAX)
    for _ in range(limit // 100):
        assert reader.feed(b"\x07" * 100) == []
    assert reader.pending <= limit
    with pytest.raises(ProtocolError, match="max_message_bytes"):
        reader.feed(b"\x07" * 200)


def test_unterminated_bytes_at_the_limit_are_still_pending() -> None:
    limit = _wire.frame_limit(MAX)
    reader = _wire.FrameReader(MAX)
    assert reader.feed(b"\x07" * limit) == []
    assert reader.pending == limit
    with pytest.raises(ProtocolError):
        reader.feed(b"\x07")


def test_a_single_oversized_chunk_without_terminator_is_refused() -> None:
    reader = _wire.FrameReader(10)
    with pytest.raises(ProtocolError):
        reader.feed(b"\x01" * 10_000)


NOISE = [
    b"hello from a print()\n",
    b"\xff\xfe garbage",
    _wire.frame_packed(_wire.pack({"a": 1}))[:-1],  # decodes, but is not a message
]
NOT_MESSAGES: list[Any] = [{"a": 1}, 5, "text", [], ["kind-not-int", 1], None]


@pytest.mark.parametrize("noise", NOISE)
def test_non_strict_reader_returns_noise_as_raw_bytes(noise: bytes) -> None:
    reader = _wire.FrameReader(strict=False)
    hello = [_protocol.HELLO, _protocol.PROTOCOL_VERSION, 42]
    out = reader.feed(noise + b"\x00" + _wire.encode_frame(hello))
    assert out == [noise, hello]
    assert isinstance(out[0], bytes)


@pytest.mark.parametrize("noise", NOISE)
def test_strict_reader_refuses_noise(noise: bytes) -> None:
    with pytest.raises(ProtocolError):
        _wire.FrameReader().feed(noise + b"\x00")


def test_reader_can_turn_strict_after_the_handshake() -> None:
    reader = _wire.FrameReader(strict=False)
    assert reader.feed(b"noise\x00" + _wire.encode_frame([_protocol.HELLO, 1, 2])) == [
        b"noise",
        [_protocol.HELLO, 1, 2],
    ]
    reader.strict = True
    with pytest.raises(ProtocolError):
        reader.feed(b"noise\x00")


@pytest.mark.parametrize("code", [0, 12, 42, 127])
def test_unknown_ext_type_is_a_protocol_error(code: int) -> None:
    packed = msgpack.packb([_protocol.RESULT, 1, msgpack.ExtType(code, b"\x01\x02")])
    with pytest.raises(ProtocolError, match="ext"):
        _wire.FrameReader().feed(_wire.frame_packed(packed))


@pytest.mark.parametrize(
    ("code", "payload"),
    [
        (2, b"not a number"),
        (3, b"short"),
        (4, b"not a datetime"),
        (5, b"2024-13-45"),
        (6, b"25:00"),
        (7, b"\x01"),
        (8, b"\xc1"),
        (8, _wire.pack([[1]])),  # a set of lists
        (10, b"\x92"),
        (11, _wire.pack([1])),
    ],
)
def test_bad_ext_payload_is_a_protocol_error(code: int, payload: bytes) -> None:
    packed = msgpack.packb([_protocol.RESULT, 1, msgpack.ExtType(code, payload)])
    with pytest.raises(ProtocolError):
        _wire.FrameReader().feed(_wire.frame_packed(packed))


@pytest.mark.parametrize("value", NOT_MESSAGES, ids=repr)
def test_a_message_that_is_not_a_list_with_an_int_kind_is_a_protocol_error(value: Any) -> None:
    with pytest.raises(ProtocolError, match="not a message"):
        _wire.FrameReader().feed(_wire.encode_frame(value))


@pytest.mark.parametrize(
    "frame", [b"\x01\x00", b"\x05\x01\x00", b"\x02\x93\x00"], ids=["empty", "bad-cobs", "truncated"]
)
def test_undecodable_frames_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        _wire.FrameReader().feed(frame)


def test_trailing_bytes_after_the_message_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        _wire.FrameReader().feed(_wire.frame_packed(_wire.pack([2, 1, 1]) + b"\x01"))


NESTED_PROBE = """
import sys
import msgpack
from tarnish_py import ProtocolError, _protocol, _wire
depth = int(sys.argv[1])
inner = _wire.pack([])
for _ in range(depth):
    inner = msgpack.packb(msgpack.ExtType(10, inner))
frame = _wire.frame_packed(b"\\x93\\x02\\x01" + inner)
try:
    _wire.FrameReader().feed(frame)
except ProtocolError:
    pass
print("survived", len(frame))
"""


def nested_probe(depth: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NESTED_PROBE, str(depth)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_shallow_nested_tuples_decode_in_a_probe_process() -> None:
    result = nested_probe(50)
    assert result.returncode == 0 and "survived" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("depth", [250, 5000])
def test_deeply_nested_ext_frames_do_not_crash_the_reader(depth: int) -> None:
    result = nested_probe(depth)
    assert result.returncode == 0 and "survived" in result.stdout, result.returncode


# --- cost: linear in the bytes fed (counted, never timed: see benchmarks/) ----------------------


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes its ``find`` calls look at, and the bytes
    that removing a prefix (``del buf[:n]``) moves."""

    searched = 0
    moved = 0

    def find(self, sub: Any, start: Any = 0, *args: Any) -> int:
        found = super().find(sub, start, *args)
        stop = len(self) if found < 0 else found + 1
        CountingBuffer.searched += stop - (start or 0)
        return found

    def __delitem__(self, key: Any) -> None:
        before = len(self)
        super().__delitem__(key)
        CountingBuffer.moved += len(self)  # what was left shifts to the front
        assert len(self) < before


@pytest.mark.parametrize("chunk", [4096, 65536])
def test_feeding_is_linear_in_the_message_size(chunk: int) -> None:
    # The work of feeding a message in chunks, counted: each byte searched for the
    # terminator once, and a bounded number of bytes moved however large the message
    # is. A reader that rescans or compacts its whole buffer per chunk is quadratic.
    for size in (1 << 20, 8 << 20):
        frame = _wire.encode_frame([_protocol.RESULT, 1, b"\x01" * size])
        reader = _wire.FrameReader()
        reader._buf = CountingBuffer()
        CountingBuffer.searched = CountingBuffer.moved = 0
        out: list[Any] = []
        for i in range(0, len(frame), chunk):
            out.extend(reader.feed(frame[i : i + chunk]))
        assert len(out) == 1 and len(out[0][2]) == size
        assert CountingBuffer.searched <= len(frame), (size, CountingBuffer.searched)
        assert CountingBuffer.moved <= len(frame), (size, CountingBuffer.moved)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 65536])
def test_each_byte_is_searched_for_the_terminator_once(chunk: int) -> None:
    # Deterministic companion of the timing test; it looks inside the reader.
    stream = stream_of([LARGE_MESSAGE, *SMALL_MESSAGES])
    reader = _wire.FrameReader()
    reader._buf = CountingBuffer()
    CountingBuffer.searched = 0
    out: list[Any] = []
    for i in range(0, len(stream), chunk):
        out.extend(reader.feed(stream[i : i + chunk]))
    assert out == [LARGE_MESSAGE, *SMALL_MESSAGES]
    assert type(reader._buf) is CountingBuffer
    assert CountingBuffer.searched <= len(stream)


def test_pending_bytes_are_not_rescanned() -> None:
    # Deterministic companion of the timing test: a chunk without a zero leaves
    # everything pending, and a later zero completes exactly one frame.
    frame = _wire.encode_frame([_protocol.RESULT, 1, b"\x01" * 200_000])
    reader = _wire.FrameReader()
    fed = 0
    for i in range(0, len(frame) - 1, 4096):
        chunk = frame[i : min(i + 4096, len(frame) - 1)]
        assert reader.feed(chunk) == []
        fed += len(chunk)
        assert reader.pending == fed
    assert len(reader.feed(b"\x00")) == 1
    assert reader.pending == 0


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
        dt.datetime(1999, 12, 31, 23, 59, 59, 5, tzinfo=dt.timezone(-dt.timedelta(0, 61, 7))),
        dt.time(1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=5, microseconds=250))),
    ],
    ids=["datetime_plus_1us", "datetime_minus_61s_7us", "time_plus_5h_250us"],
)
def test_offsets_with_microseconds_round_trip(value: Any) -> None:
    # Found by hypothesis: isoformat() writes the offset's microseconds but
    # fromisoformat() on 3.11 drops them, so the value came back in UTC.
    got = _wire.unpack(_wire.pack(value))
    assert_same(value, got)
    assert got.utcoffset() == value.utcoffset()
