"""Python values <-> msgpack: the ext types that make values come back equal. Pure.

::

    plain objects --pack--> msgpack bytes --unpack--> equal plain objects
                  (msgpack calls _default for what it has no type for; ext
                  types carry it; ext_hook turns them back)

msgpack has no type for much of what pydantic validates; those values travel as
msgpack ext types (``_EXT_*`` below) so they come back *equal*: integers beyond
64 bits, Decimal, UUID, datetime/date/time/timedelta (naive or aware), sets,
frozensets, tuples and complex numbers. Bytes travel as msgpack bin. Enum
members travel as their value: the receiving side's type adapter turns them
back into members. A reference to a raw segment (``_segments``) resolves only
while an envelope's message is decoded.

Frames and messages are ``_wire``'s business (it re-exports :func:`pack`,
:func:`packer` and :func:`unpack`, the wire's one entry).
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

from . import _segments
from ._errors import ProtocolError

__all__ = ["MAX_NESTING", "ext_hook", "pack", "packer", "unpack"]

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


def ext_hook(code: int, data: bytes) -> Any:
    decode = _DECODERS.get(code)
    if decode is None:
        raise ProtocolError(f"unknown msgpack ext type {code}")
    return decode(data)


def unpack(data: bytes | bytearray) -> Any:
    """Decode what :func:`pack` made."""
    return msgpack.unpackb(
        data,
        ext_hook=ext_hook,
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
