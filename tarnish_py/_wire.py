"""The wire: Python values <-> msgpack <-> COBS frames. Pure, no I/O.

::

    plain objects --msgpack(+ext)--> bytes --COBS--> frame without zeros
                  --+ b"\\x00"--> pipe
    pipe --FrameReader.feed--> messages (lists) --> plain objects

    large bytes (``_segments``): envelope_frame(packed, lengths) + raw segments
    pipe --feed--> envelope seen (strict reader only) --> raw mode: the next
         sum(lengths) bytes go into the segments (``raw`` / ``filled`` to read
         them in place) --> the packed message, its references resolved

What a message *means* is ``_protocol``'s business: this module only turns
any value into a frame and back.

msgpack has no type for much of what pydantic validates; those values travel as
msgpack ext types (``_EXT_*`` below) so they come back *equal*: integers beyond
64 bits, Decimal, UUID, datetime/date/time/timedelta (naive or aware), sets,
frozensets, tuples and complex numbers. Bytes travel as msgpack bin. Enum
members travel as their value: the receiving side's type adapter turns them
back into members.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final

import msgpack
from cobs import cobs

from . import _segments
from ._errors import ProtocolError

if not getattr(cobs, "_using_extension", True):  # pragma: no cover - depends on the wheel
    raise ImportError("tarnish_py needs the C implementation of the 'cobs' package")

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FrameReader",
    "encode_frame",
    "envelope_frame",
    "frame_limit",
    "frame_packed",
    "pack",
    "packer",
    "unpack",
]

DEFAULT_MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024

_EXT_BIGINT: Final = 1
_EXT_DECIMAL: Final = 2
_EXT_UUID: Final = 3
_EXT_DATETIME: Final = 4
_EXT_DATE: Final = 5
_EXT_TIME: Final = 6
_EXT_TIMEDELTA: Final = 7
_EXT_SET: Final = 8
_EXT_FROZENSET: Final = 9
_EXT_TUPLE: Final = 10
_EXT_COMPLEX: Final = 11
_EXT_ZONED_DATETIME: Final = 12
_EXT_OFFSET_DATETIME: Final = 13  # an offset with microseconds: isoformat loses them
_EXT_OFFSET_TIME: Final = 14

# Containers inside ext types nest through msgpack calls, and each level costs
# tens of KiB of C stack: a few hundred levels would crash the reader's process.
MAX_NESTING: Final = 32
_nesting = threading.local()
_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1
_NATIVE: Final = frozenset({str, bytes, float, bool, type(None), list, dict})


def _bigint(value: int) -> msgpack.ExtType:
    # Two's complement, little-endian; str() would hit sys.int_max_str_digits.
    size = (value.bit_length() + 8) // 8
    return msgpack.ExtType(_EXT_BIGINT, value.to_bytes(size, "little", signed=True))


def _plain(value: Any) -> Any:
    """``value`` in a form msgpack packs without calling ``default`` again."""
    kind = type(value)
    if kind is int:
        return value if _INT_MIN <= value <= _UINT_MAX else _bigint(value)
    return value if kind in _NATIVE else _default(value)


def _default(obj: Any) -> Any:
    """Called by msgpack (strict_types) for every object it has no exact type for."""
    encode = _ENCODERS.get(type(obj))
    if encode is not None:
        return encode(obj)
    # Subclasses, in the order that matters (bool and enums before int, ...).
    # msgpack calls default once per object: what it returns must pack as is.
    if isinstance(obj, enum.Enum):
        return _plain(obj.value)
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return _plain(int(obj))
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, tuple):  # namedtuples
        return _ENCODERS[tuple](obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, _dt.datetime):
        return _ENCODERS[_dt.datetime](obj)
    if isinstance(obj, _dt.date):
        return _ENCODERS[_dt.date](obj)
    # Anything else pydantic knows (paths, IP addresses, patterns, models in
    # an Any field ...): its JSON form, which pydantic validates back.
    from pydantic_core import to_jsonable_python

    try:
        return to_jsonable_python(obj)
    except Exception as exc:
        raise TypeError(f"tarnish_py cannot send a value of type {type(obj).__qualname__}") from exc


_packer_options: Final[dict[str, Any]] = {
    "default": _default,
    "use_bin_type": True,
    "strict_types": True,
    "unicode_errors": "surrogatepass",
}


def pack(obj: Any) -> bytes:
    """msgpack-encode ``obj`` with the ext types of this module."""
    return msgpack.packb(obj, **_packer_options)  # type: ignore[no-any-return]


def packer() -> Callable[[Any], bytes]:
    """A faster :func:`pack` for one thread at a time (it reuses one msgpack Packer)."""
    return msgpack.Packer(autoreset=True, **_packer_options).pack  # type: ignore[no-any-return]


def _nested(step: Callable[[Any], Any], value: Any, too_deep: Exception) -> Any:
    """``step(value)`` one container level deeper, refused past MAX_NESTING."""
    counter = step.__name__  # "pack" and "unpack" count apart
    depth = getattr(_nesting, counter, 0)
    if depth >= MAX_NESTING:
        raise too_deep
    setattr(_nesting, counter, depth + 1)
    try:
        return step(value)
    finally:
        setattr(_nesting, counter, depth)


def _pack_nested(obj: Any) -> bytes:
    error = ValueError(f"cannot send tuples or sets nested more than {MAX_NESTING} deep")
    return _nested(pack, obj, error)  # type: ignore[no-any-return]


def _unpack_nested(data: bytes) -> Any:
    return _nested(unpack, data, ProtocolError(f"values nested more than {MAX_NESTING} deep"))


def _datetime(d: _dt.datetime) -> msgpack.ExtType:
    key = getattr(d.tzinfo, "key", None)  # a zoneinfo.ZoneInfo: keep the zone itself,
    if isinstance(key, str):  # or a time in a DST fold would not compare equal
        return msgpack.ExtType(_EXT_ZONED_DATETIME, pack([d.isoformat(), key]))
    offset = d.utcoffset()
    if offset is not None and offset.microseconds:
        naive = d.replace(tzinfo=None).isoformat()
        return msgpack.ExtType(_EXT_OFFSET_DATETIME, pack([naive, _micros(offset)]))
    return msgpack.ExtType(_EXT_DATETIME, d.isoformat().encode())


def _time(t: _dt.time) -> msgpack.ExtType:
    offset = t.utcoffset()
    if offset is not None and offset.microseconds:
        naive = t.replace(tzinfo=None).isoformat()
        return msgpack.ExtType(_EXT_OFFSET_TIME, pack([naive, _micros(offset)]))
    return msgpack.ExtType(_EXT_TIME, t.isoformat().encode())


def _micros(offset: _dt.timedelta) -> int:
    return (offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds


def _with_offset(parse: Callable[[str], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        iso, micros = unpack(data)
        zone = _dt.timezone(_dt.timedelta(microseconds=micros))
        return parse(iso).replace(tzinfo=zone)

    return decode


def _zoned_datetime(data: bytes) -> _dt.datetime:
    import zoneinfo

    iso, key = unpack(data)
    # From the fixed offset to the zone: astimezone sets the fold right.
    return _dt.datetime.fromisoformat(iso).astimezone(zoneinfo.ZoneInfo(key))


def _ext_hook(code: int, data: bytes) -> Any:
    decode = _DECODERS.get(code)
    if decode is None:
        raise ProtocolError(f"unknown msgpack ext type {code}")
    return decode(data)


def unpack(data: bytes | bytearray) -> Any:
    """Decode what :func:`pack` made."""
    return msgpack.unpackb(
        data,
        ext_hook=_ext_hook,
        strict_map_key=False,
        raw=False,
        unicode_errors="surrogatepass",
    )


_ENCODERS: Final[dict[type, Callable[[Any], Any]]] = {
    int: _bigint,  # only reached for ints msgpack cannot hold in 64 bits
    decimal.Decimal: lambda d: msgpack.ExtType(_EXT_DECIMAL, str(d).encode()),
    uuid.UUID: lambda u: msgpack.ExtType(_EXT_UUID, u.bytes),
    _dt.datetime: _datetime,
    _dt.date: lambda d: msgpack.ExtType(_EXT_DATE, d.isoformat().encode()),
    _dt.time: _time,
    _dt.timedelta: lambda t: msgpack.ExtType(
        _EXT_TIMEDELTA, pack([t.days, t.seconds, t.microseconds])
    ),
    set: lambda s: msgpack.ExtType(_EXT_SET, _pack_nested(list(s))),
    frozenset: lambda s: msgpack.ExtType(_EXT_FROZENSET, _pack_nested(list(s))),
    tuple: lambda t: msgpack.ExtType(_EXT_TUPLE, _pack_nested(list(t))),
    complex: lambda c: msgpack.ExtType(_EXT_COMPLEX, pack([c.real, c.imag])),
}


def _timedelta(data: bytes) -> _dt.timedelta:
    days, seconds, micros = unpack(data)
    return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)


def _complex(data: bytes) -> complex:
    real, imag = unpack(data)
    return complex(real, imag)


_DECODERS: Final[dict[int, Callable[[bytes], Any]]] = {
    _EXT_BIGINT: lambda b: int.from_bytes(b, "little", signed=True),
    _EXT_DECIMAL: lambda b: decimal.Decimal(b.decode()),
    _EXT_UUID: lambda b: uuid.UUID(bytes=b),
    _EXT_DATETIME: lambda b: _dt.datetime.fromisoformat(b.decode()),
    _EXT_DATE: lambda b: _dt.date.fromisoformat(b.decode()),
    _EXT_TIME: lambda b: _dt.time.fromisoformat(b.decode()),
    _EXT_TIMEDELTA: _timedelta,
    _EXT_SET: lambda b: set(_unpack_nested(b)),
    _EXT_FROZENSET: lambda b: frozenset(_unpack_nested(b)),
    _EXT_TUPLE: lambda b: tuple(_unpack_nested(b)),
    _EXT_COMPLEX: _complex,
    _EXT_ZONED_DATETIME: _zoned_datetime,
    _EXT_OFFSET_DATETIME: _with_offset(_dt.datetime.fromisoformat),
    _EXT_OFFSET_TIME: _with_offset(_dt.time.fromisoformat),
    _segments.EXT_SEGMENT: _segments.resolve,  # inside an envelope only (_segments)
}


def frame_limit(max_message_bytes: int) -> int:
    """The largest encoded frame (zero excluded) a message of ``max_message_bytes`` makes."""
    return max_message_bytes + max_message_bytes // 254 + 2


def encode_frame(message: Any) -> bytes:
    """One message as one frame: msgpack, COBS-encoded, ended by a single 0x00."""
    encoded: bytes = cobs.encode(pack(message))
    return encoded + b"\x00"


def frame_packed(packed: bytes) -> bytes:
    """The frame of a message already packed with :func:`pack`."""
    encoded: bytes = cobs.encode(packed)
    return encoded + b"\x00"


_cobs_decode: Final = cobs.decode
_unpackb: Final = msgpack.unpackb


def envelope_frame(packed: bytes, lengths: list[int]) -> bytes:
    """The frame announcing the segments of a message packed with references to them
    (``_segments.split``); the segments follow it on the pipe, raw."""
    return frame_packed(_segments.envelope(packed, lengths))


def _decode_frame(encoded: bytes | bytearray, envelopes: bool = False) -> Any:
    data = b""
    try:
        data = _cobs_decode(encoded)
        # unpack() inlined: this runs once per message on both sides.
        message = _unpackb(
            data,
            ext_hook=_ext_hook,
            strict_map_key=False,
            raw=False,
            unicode_errors="surrogatepass",
        )
    except ProtocolError:
        # An envelope is an ext at the top, which unpack refuses: only a strict
        # reader looks for one (``_segments``).
        announced = _segments.announced(data) if envelopes else None
        if announced is not None:
            return announced
        raise
    except Exception as exc:  # cobs.DecodeError, msgpack's errors, bad ext payloads
        raise ProtocolError(f"undecodable frame of {len(encoded)} bytes: {exc}") from exc
    if type(message) is not list or not message or not isinstance(message[0], int):
        raise ProtocolError(f"frame is not a message: {message!r:.200}")
    return message


_Envelope = _segments.Envelope  # a global: checked once per frame


def _decode_inner(packed: bytes, segments: list[bytes]) -> Any:
    """The message an envelope carried, its references resolved to ``segments``."""
    try:
        with _segments.resolving(segments):
            message = unpack(packed)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable message of {len(packed)} bytes: {exc}") from exc
    if not isinstance(message, list) or not message or not isinstance(message[0], int):
        raise ProtocolError(f"frame is not a message: {message!r:.200}")
    return message


class FrameReader:
    """Incremental decoder: feed it bytes in any chunks, get whole messages back.

    Linear in the bytes fed (each byte is searched for the terminator once),
    and it never holds more than one frame's worth past ``max_message_bytes``:
    a longer frame is a :class:`ProtocolError`.

    >>> r = FrameReader(1024)
    >>> data = encode_frame([2, 7, "hi"])
    >>> r.feed(data[:3]), r.feed(data[3:])
    ([], [[2, 7, 'hi']])
    """

    __slots__ = ("_buf", "_limit", "_max", "_scanned", "_sink", "strict")

    def __init__(
        self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *, strict: bool = True
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        self._limit = frame_limit(max_message_bytes)
        self._max = max_message_bytes
        self._sink: _segments.Sink | None = None  # segments announced, not all in yet
        #: False until the handshake: an undecodable frame is then returned as its
        #: raw bytes (stdout noise of a program starting up) instead of raising.
        self.strict = strict
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no terminator

    @property
    def pending(self) -> int:
        """Bytes received that do not yet end a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Add ``data``; return the messages it completed, oldest first."""
        if isinstance(data, memoryview):
            data = data.tobytes()
        buf = self._buf
        if not buf and self._sink is None:
            # Fast path: one whole frame in one read (the common case for calls).
            end = data.find(b"\x00")
            if end == len(data) - 1 and 0 < end <= self._limit:
                if self.strict:
                    message = _decode_frame(data[:end], True)
                else:
                    message = self._decode(data[:end])
                if type(message) is not _Envelope:
                    return [message]
                messages: list[Any] = []
                self._open(message, b"", messages)
                return messages
        messages = []
        while data:  # frames, then (after an envelope) raw segments, then frames ...
            if self._sink is None:
                data = self._frames(data, messages)
            else:
                data = self._fill(data, messages)
        return messages

    def _frames(self, data: bytes | bytearray, messages: list[Any]) -> bytes | bytearray:
        """Decode the frames ``data`` completes into ``messages``; the bytes after an
        envelope (its segments), which are not frames, are returned."""
        buf = self._buf
        buf += data
        start = 0
        scan = self._scanned
        while True:
            end = buf.find(b"\x00", scan)
            if end < 0:
                break
            if end - start > self._limit:
                raise ProtocolError(self._too_long(end - start))
            if end > start:  # an empty frame (two zeros in a row) carries nothing
                message = self._decode(buf[start:end])
                if type(message) is _Envelope:
                    rest = buf[end + 1 :]
                    buf.clear()
                    self._scanned = 0
                    return self._open(message, rest, messages)
                messages.append(message)
            start = scan = end + 1
        if start:
            del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self._limit:
            raise ProtocolError(self._too_long(len(buf)))
        return b""

    # -- raw mode: the segments an envelope announced (``_segments``) ----------

    @property
    def raw(self) -> list[memoryview] | None:
        """Where the next bytes go while announced segments are not all in (read
        into these buffers, then call :meth:`filled`); None between frames."""
        sink = self._sink
        return None if sink is None else sink.views()

    def filled(self, n: int) -> list[Any]:
        """``n`` bytes were read into :attr:`raw`: the envelope's message once whole."""
        sink = self._sink
        assert sink is not None
        sink.advance(n)
        return [self._finish()] if sink.done else []

    def _open(
        self, envelope: _segments.Envelope, rest: bytes | bytearray, messages: list[Any]
    ) -> bytes | bytearray:
        # Checked before a byte is allocated: a worker announcing 10 GiB gets nothing.
        if envelope.size > self._max:
            raise ProtocolError(
                f"a message announcing {envelope.size} bytes exceeds max_message_bytes "
                f"({self._max})"
            )
        self._sink = _segments.Sink(envelope)
        return self._fill(rest, messages)

    def _fill(self, data: bytes | bytearray, messages: list[Any]) -> bytes | bytearray:
        """Copy ``data`` into the segments; once all are in, their message goes to
        ``messages`` and the bytes after them are returned."""
        sink = self._sink
        assert sink is not None
        taken = sink.take(data)
        if not sink.done:
            return b""
        messages.append(self._finish())
        return data[taken:]

    def _finish(self) -> Any:
        sink, self._sink = self._sink, None
        assert sink is not None
        return _decode_inner(sink.envelope.packed, sink.segments())

    def _decode(self, encoded: bytes | bytearray) -> Any:
        if self.strict:
            return _decode_frame(encoded, True)
        try:
            return _decode_frame(encoded)
        except ProtocolError:
            return bytes(encoded)

    def _too_long(self, size: int) -> str:
        return (
            f"a frame of at least {size} bytes exceeds the limit of {self._limit} "
            "(max_message_bytes)"
        )
