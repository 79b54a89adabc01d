"""Large binary values out of band: raw segments that follow the frame announcing them.

::

    sender    pack_large       a bytes-like, or a model's dict, before packing; any
                               other value only once it packed to THRESHOLD bytes
                               or more (small messages are never walked): every
                               bytes / bytearray / memoryview of THRESHOLD bytes or
                               more (top level, or in lists, dicts, tuples) -> a
                               reference ext [EXT_SEGMENT: index]; the total,
                               segments counted, checked against max_message_bytes
              envelope(packed) [EXT_ENVELOPE: [lengths, packed message]] -> one
                               small COBS frame (``_wire.envelope_frame``)
              writev           frame + segments in one system call, from the
                               caller's own buffers (no copy in user space)
    pipe      <frame announcing 3 MiB, 1 MiB><3 MiB raw><1 MiB raw><next frame>
    receiver  FrameReader      sees the envelope, checks len(message) + sum(lengths)
                               against max_message_bytes BEFORE allocating, then
                               fills one new bytes object per segment (Sink): bytes
                               already buffered first, the rest read straight into
                               place (``FrameReader.raw`` / ``filled``)
              resolving(segs)  the packed message is decoded; each reference ext
                               becomes its segment, as bytes

Why raw pipe segments and not shared memory: the kernel copies the bytes
into the pipe and out of it, and the receiver's copy lands in the very bytes
object it returns. A memfd would save one kernel copy but add a user-space
one (a bytes value cannot live in a mapping), plus a create, a map and an
unmap per call, and the question of who closes it when either side is
SIGKILLed mid-call. Here there is nothing to create, name or clean up: a
transfer cut short leaves only a pipe that closes with its process, so no
segment can outlive its call. COBS and msgpack never see the
megabytes: the frame carries their lengths, and a reader takes the next
``sum(lengths)`` bytes as they are, which is safe because it knows how many
to take before the first arrives.

The envelope is honoured only by a strict reader (after the handshake): a
program's stdout noise before it can never make the parent swallow raw bytes.
A reference ext outside an envelope is a ProtocolError, and so is an envelope
anywhere but at the top of a frame.

Pure: no I/O but :func:`write_all` (a blocking fd, the worker's side).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, NamedTuple, TypeAlias

import msgpack

from ._errors import ProtocolError

__all__ = [
    "EARLY",
    "EXT_ENVELOPE",
    "EXT_SEGMENT",
    "MAX_SEGMENTS",
    "THRESHOLD",
    "Envelope",
    "Sink",
    "Split",
    "announced",
    "consumed",
    "envelope",
    "pack_large",
    "resolve",
    "resolving",
    "split",
    "split_early",
    "split_packed",
    "write_all",
]

#: Values this long or longer travel out of band: below it, COBS costs less than
#: the extra system call and the envelope.
THRESHOLD: Final = 64 * 1024
#: At most this many segments per message (IOV_MAX is 1024 on Linux: the frame and
#: every segment fit in one writev). Further large values travel in band.
MAX_SEGMENTS: Final = 1000
EXT_ENVELOPE: Final = 100
EXT_SEGMENT: Final = 101
#: A value of these types is looked at before it is packed (:func:`split_early`),
#: so that a large bytes-like, or one in a model's dump, is never packed in band.
#: Other containers are walked only once they are known to pack to THRESHOLD
#: bytes or more (:func:`split_packed`): small messages, the tiny call, never are.
EARLY: Final = frozenset({bytes, bytearray, memoryview, dict})
_BYTES_LIKE: Final = frozenset({bytes, bytearray, memoryview})
_CONTAINERS: Final = frozenset({list, dict, tuple})
_BYTES: Final = (bytes, bytearray, memoryview)
# What pydantic's python-mode dumps hold besides containers and bytes.
_SCALARS: Final = frozenset(
    {int, str, float, bool, type(None), _dt.datetime, _dt.date, _dt.time, _dt.timedelta,
     decimal.Decimal, uuid.UUID}
)
#: Containers and their items a walk may look at before it gives up (then the value
#: travels in band): what bounds its cost, to some 20 µs at worst.
_WALK_BUDGET: Final = 256
_MAX_DEPTH: Final = 32
_IOV_MAX: Final = 1024

Buffer: TypeAlias = "bytes | bytearray | memoryview"


class Split(NamedTuple):
    """A value with its large bytes-likes replaced by references, and those bytes."""

    value: Any
    buffers: list[Buffer]
    lengths: list[int]
    size: int  # sum(lengths)


class _GiveUp(Exception):
    """The walk hit its budget: the value travels in band, as it is."""


class _Walk:
    __slots__ = ("budget", "buffers", "lengths")

    def __init__(self) -> None:
        self.budget = _WALK_BUDGET
        self.buffers: list[Buffer] = []
        self.lengths: list[int] = []

    def visit(self, value: Any, depth: int) -> Any:
        """``value``, or a copy of it with references in place of large bytes-likes
        (the caller's containers are never changed)."""
        kind = type(value)
        if kind in _SCALARS:
            return value
        if kind is not list and kind is not dict and kind is not tuple:
            return self._bytes(value) if isinstance(value, _BYTES) else value
        self.budget -= 1 + len(value)
        if self.budget < 0 or depth >= _MAX_DEPTH:
            raise _GiveUp
        if set(map(type, value.values() if kind is dict else value)) <= _SCALARS:
            return value  # a container of scalars only, seen in C
        if kind is dict:
            changed: dict[Any, Any] | None = None
            for key, item in value.items():
                if type(item) not in _SCALARS and (new := self.visit(item, depth + 1)) is not item:
                    if changed is None:
                        changed = dict(value)
                    changed[key] = new
            return value if changed is None else changed
        replaced: list[Any] | None = None
        for i, item in enumerate(value):
            if type(item) not in _SCALARS and (new := self.visit(item, depth + 1)) is not item:
                if replaced is None:
                    replaced = list(value)
                replaced[i] = new
        if replaced is None:
            return value
        return replaced if kind is list else tuple(replaced)

    def _bytes(self, value: Buffer) -> Any:
        if isinstance(value, memoryview):
            size = value.nbytes
            if size >= THRESHOLD:
                value = _contiguous(value)
        else:
            size = len(value)
        if size < THRESHOLD or len(self.buffers) >= MAX_SEGMENTS:
            return value
        index = len(self.buffers)
        self.buffers.append(value)
        self.lengths.append(size)
        return msgpack.ExtType(EXT_SEGMENT, index.to_bytes(4, "little"))


def _contiguous(view: memoryview) -> Buffer:
    """One run of bytes, as writev needs: the view itself when it is one, else a copy."""
    if view.c_contiguous:
        try:
            return view.cast("B")
        except (TypeError, ValueError):  # a format cast() refuses
            pass
    return view.tobytes()


def split(value: Any) -> Split | None:
    """``value`` with its large bytes-likes taken out; None when it has none (or when
    it is too big a tree to walk cheaply: then it travels in band)."""
    kind = type(value)
    # The common small cases, without a walk: short bytes, a model's flat dict.
    if kind is bytes or kind is bytearray:
        if len(value) < THRESHOLD:
            return None
    elif kind is dict:
        if len(value) < _WALK_BUDGET and set(map(type, value.values())) <= _SCALARS:
            return None
    walk = _Walk()
    try:
        replaced = walk.visit(value, 0)
    except _GiveUp:
        return None
    if not walk.buffers:
        return None
    return Split(replaced, walk.buffers, walk.lengths, sum(walk.lengths))


def split_early(value: Any) -> Split | None:
    """Before packing (for a value of an EARLY type): :func:`split` of a bytes-like,
    or of a dict that holds one directly; None for any other dict."""
    if type(value) is dict and _BYTES_LIKE.isdisjoint(map(type, value.values())):
        return None
    return split(value)


def split_packed(
    value: Any, packed: bytes, pack: Callable[[Any], bytes]
) -> tuple[bytes, Split | None]:
    """``packed``: the message of ``value`` packed in band, THRESHOLD bytes or more.
    If ``value`` is a container that holds large bytes-likes, the message packed
    again with ``pack`` without them, and its split; else ``packed`` as it is."""
    found = split(value) if type(value) in _CONTAINERS else None
    return (packed, None) if found is None else (pack(found.value), found)


def pack_large(
    pack: Callable[[Any], bytes],
    value: Any,
    packed: bytes | None,
    limit: int,
    what: str,
    hint: str = "",
) -> tuple[bytes, Split | None]:
    """Pack the message of a value that may hold large bytes-likes (the slow path).

    ``pack`` packs the message of a value; ``packed`` is the message already
    packed in band, or None for a value of an EARLY type (looked at before
    packing, so that a large bytes-like is never packed in band). Returns the
    packed message and the split of its large bytes (None: all in band). A
    ValueError when the message and its segments take more than ``limit``.
    """
    found = None
    if packed is None:
        found = split_early(value)
        packed = pack(value if found is None else found.value)
    if found is None and len(packed) >= THRESHOLD:
        packed, found = split_packed(value, packed, pack)
    size = len(packed) if found is None else len(packed) + found.size
    if size > limit:
        raise ValueError(
            f"the {what} takes {size} bytes, more than max_message_bytes ({limit}){hint}"
        )
    return packed, found


def envelope(packed: bytes, lengths: list[int]) -> bytes:
    """The packed envelope of a packed message whose segments have ``lengths``."""
    data = msgpack.packb([lengths, packed], use_bin_type=True)
    return msgpack.packb(msgpack.ExtType(EXT_ENVELOPE, data))  # type: ignore[no-any-return]


class Envelope(NamedTuple):
    """A frame that announces segments: their lengths, and the packed message."""

    lengths: list[int]
    packed: bytes

    @property
    def size(self) -> int:
        """What the message weighs against max_message_bytes."""
        return len(self.packed) + sum(self.lengths)


# Header bytes of a msgpack ext at the top of a frame (fixext 1-16, ext 8/16/32).
_EXT_HEADS: Final = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def announced(data: bytes) -> Envelope | None:
    """The envelope ``data`` (a decoded frame) is, or None if it is none."""
    if not data or data[0] not in _EXT_HEADS:
        return None
    try:
        top = msgpack.unpackb(data)
        if not isinstance(top, msgpack.ExtType) or top.code != EXT_ENVELOPE:
            return None
        lengths, packed = msgpack.unpackb(top.data, raw=False)
    except Exception as exc:
        raise ProtocolError(f"malformed segment envelope: {exc}") from exc
    if (
        not isinstance(lengths, list)
        or not isinstance(packed, bytes)
        or len(lengths) > MAX_SEGMENTS
        or not all(type(n) is int and n >= 0 for n in lengths)
    ):
        raise ProtocolError(f"malformed segment envelope: {lengths!r:.200}")
    return Envelope(lengths, packed)


class Sink:
    """The announced segments, filled in order as their bytes arrive."""

    __slots__ = ("envelope", "_parts", "_views", "_index", "_offset")

    def __init__(self, announced: Envelope) -> None:
        # The caller checked the total against max_message_bytes: now allocate.
        self.envelope = announced
        self._parts: list[bytes | bytearray] = []
        self._views: list[memoryview] = []
        for n in announced.lengths:
            part, view = _blank(n)
            self._parts.append(part)
            self._views.append(view)
        self._index = 0
        self._offset = 0
        self._skip_full()

    @property
    def done(self) -> bool:
        return self._index >= len(self._views)

    def _skip_full(self) -> None:
        views = self._views
        while self._index < len(views) and self._offset >= len(views[self._index]):
            self._index += 1
            self._offset = 0

    def take(self, data: bytes | bytearray, start: int = 0) -> int:
        """Copy bytes of ``data`` from ``start`` on into the segments; where it stopped."""
        source = memoryview(data)
        pos = start
        while pos < len(source) and not self.done:
            view = self._views[self._index]
            k = min(len(view) - self._offset, len(source) - pos)
            view[self._offset : self._offset + k] = source[pos : pos + k]
            pos += k
            self.advance(k)
        return pos

    def views(self) -> list[memoryview]:
        """Where the next bytes go, for readv (never empty while not done)."""
        views = self._views
        first = views[self._index][self._offset :]
        return [first, *(v for v in views[self._index + 1 : self._index + _IOV_MAX] if v)]

    def advance(self, n: int) -> None:
        """``n`` more bytes are in place (read into :meth:`views`)."""
        views = self._views
        while n > 0:
            room = len(views[self._index]) - self._offset
            if n < room:
                self._offset += n
                return
            n -= room
            self._index += 1
            self._offset = 0
        self._skip_full()

    def segments(self) -> list[bytes]:
        """The filled segments as bytes, releasing the buffers."""
        parts, self._parts, self._views = self._parts, [], []
        parts.reverse()
        out = []
        while parts:  # a bytearray (no bytes could be made in place) is copied once
            part = parts.pop()
            out.append(part if type(part) is bytes else bytes(part))
        return out


_api: Any = None  # (PyBytes_FromStringAndSize, PyMemoryView_FromMemory); False: none
_BYTES_DATA: Final = sys.getsizeof(b"") - 1  # where a bytes object's data begins
_PYBUF_WRITE: Final = 0x200


def _blank(n: int) -> tuple[bytes | bytearray, memoryview]:
    """A buffer of ``n`` bytes to read a segment into, and a writable view of it.

    On CPython, a new bytes object that nobody else holds yet, written in place
    as ``os.read`` fills the bytes it returns: what is read is the value handed
    back. A bytearray would cost a zero-fill before the read and a copy after it
    (64 MiB: ~30 ms each, more than the pipe itself). Elsewhere, or for small
    segments, a bytearray, copied once by :meth:`Sink.segments`. The view does
    not keep the bytes alive: the Sink holds both, and drops the views first.
    """
    global _api
    if _api is None:
        _api = _bytes_api()
    if _api is False or n < THRESHOLD:
        part = bytearray(n)
        return part, memoryview(part)
    new_bytes, view_of = _api
    blank = new_bytes(None, n)
    return blank, view_of(id(blank) + _BYTES_DATA, n, _PYBUF_WRITE)


def _bytes_api() -> Any:
    if sys.implementation.name != "cpython":
        return False
    try:
        import ctypes

        new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
        view_of = ctypes.pythonapi.PyMemoryView_FromMemory
    except (ImportError, AttributeError, OSError):
        return False
    new_bytes.restype = view_of.restype = ctypes.py_object
    new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    view_of.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
    return new_bytes, view_of


_current = threading.local()


@contextmanager
def resolving(segments: list[bytes]) -> Iterator[None]:
    """Within: the reference ext resolves to these segments (this thread only)."""
    _current.segments = segments
    try:
        yield
    finally:
        _current.segments = None


def resolve(data: bytes) -> bytes:
    """The segment a reference ext names (the ext decoder of EXT_SEGMENT)."""
    segments: list[bytes] | None = getattr(_current, "segments", None)
    index = int.from_bytes(data, "little")
    if segments is None or len(data) != 4 or index >= len(segments):
        raise ProtocolError(f"a reference to segment {index} that no envelope announced")
    return segments[index]


def consumed(views: list[memoryview], n: int) -> list[memoryview]:
    """``views`` without their first ``n`` bytes (after a partial writev)."""
    i = 0
    while i < len(views) and n >= len(views[i]):
        n -= len(views[i])
        i += 1
    rest = views[i:]
    if n and rest:
        rest[0] = rest[0][n:]
    return rest


def write_all(fd: int, chunks: list[Buffer]) -> None:
    """Write every chunk, in order, to a blocking ``fd`` (writev; no copies)."""
    views = [memoryview(c) for c in chunks]
    while views:
        views = consumed(views, os.writev(fd, views[:_IOV_MAX]))
