"""The wire: messages <-> COBS frames, and the reader that finds them. Pure, no I/O.

::

    message (a list) --pack (``_values``)--> bytes --COBS--> frame without zeros
                     --+ b"\\x00"--> pipe
    pipe --FrameReader.feed--> messages (lists) --> plain objects

    large bytes (``_segments``): envelope_frame(packed, lengths) + raw segments
    pipe --feed--> envelope seen (strict reader only) --> raw mode: the next
         sum(lengths) bytes go into the segments (``raw`` / ``filled`` to read
         them in place) --> the packed message, its references resolved

What a message *means* is ``_protocol``'s business, and how a value becomes
msgpack ``_values``' (its :func:`pack`, :func:`packer` and :func:`unpack` are
re-exported here: the wire is the one entry to both).
"""

from __future__ import annotations

from typing import Any, Final

import msgpack
from cobs import cobs

from . import _segments
from ._errors import ProtocolError
from ._values import ext_hook, pack, packer, unpack

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
            ext_hook=ext_hook,
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

    @property
    def idle(self) -> bool:
        """Between frames: no part of a frame nor of announced segments held."""
        return not self._buf and self._sink is None

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
