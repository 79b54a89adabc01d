"""The messages parent and worker exchange: the only module that knows their layout.

::

    worker -> parent   Hello(version, pid)          once, right after start
                       Result(call_id, value)
                       Error(call_id, type_name, message, traceback)
                       Fatal(message)               the worker cannot serve
    parent -> worker   Call(call_id, value)
                       Shutdown()
                       Batch(batch_id, flags, values)  a batched map's inputs (``_batch``)
    worker -> parent   BatchItem / BatchDone / ArenaInfo   its replies (``_batch_worker``)

On the wire each is a msgpack array ``[KIND, *fields]`` in one COBS frame
(``_wire``). The worker writes one extra 0x00 before Hello so that anything a
program wrote to stdout before it could move fd 1 away ends in a frame of its
own, which the parent treats as noise.

Builders return frames (or packed bytes, for the size check against
``max_message_bytes``); parsers take what ``FrameReader`` yields and return the
records below, raising ``ProtocolError`` for anything malformed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

from . import _wire
from ._errors import ProtocolError

__all__ = [
    "ARENA",
    "BATCH",
    "BATCH_DONE",
    "BATCH_ITEM",
    "BATCH_STAMP",
    "BATCH_USE_ARENA",
    "CALL",
    "ERROR",
    "FATAL",
    "HELLO",
    "PROTOCOL_VERSION",
    "RESULT",
    "SHUTDOWN",
    "ArenaInfo",
    "Batch",
    "BatchDone",
    "BatchItem",
    "Call",
    "Error",
    "Fatal",
    "Hello",
    "Result",
    "Shutdown",
    "fatal_frame",
    "hello_frame",
    "parse_batch_reply",
    "parse_reply",
    "parse_request",
    "parse_startup",
    "shutdown_frame",
]

PROTOCOL_VERSION: Final = 1

HELLO: Final = 0
CALL: Final = 1
RESULT: Final = 2
ERROR: Final = 3
SHUTDOWN: Final = 4
FATAL: Final = 5


class Hello(NamedTuple):
    version: Any  # compared, never trusted: another version may send anything
    pid: int


class Call(NamedTuple):
    call_id: int
    value: Any


class Result(NamedTuple):
    call_id: int
    value: Any


class Error(NamedTuple):
    call_id: int
    type_name: str
    message: str
    traceback: str


class Fatal(NamedTuple):
    message: str


class Shutdown(NamedTuple):
    pass


Reply = Result | Error


# -- building ----------------------------------------------------------------


def hello_frame(pid: int) -> bytes:
    return _wire.encode_frame([HELLO, PROTOCOL_VERSION, pid])


def fatal_frame(message: str) -> bytes:
    return _wire.encode_frame([FATAL, message])


def shutdown_frame() -> bytes:
    return _wire.encode_frame([SHUTDOWN])


def error_packed(error: Error) -> bytes:
    return _wire.pack([ERROR, *error])


class Packer:
    """Packs calls and results with one reused msgpack Packer (one thread at a time).

    Returns the packed message, so that its size can be checked against
    ``max_message_bytes`` before :func:`_wire.frame_packed` frames it.
    """

    __slots__ = ("_pack",)

    def __init__(self) -> None:
        self._pack: Callable[[Any], bytes] = _wire.packer()

    def call(self, call_id: int, value: Any) -> bytes:
        return self._pack([CALL, call_id, value])

    def result(self, call_id: int, value: Any) -> bytes:
        return self._pack([RESULT, call_id, value])


# -- parsing -----------------------------------------------------------------


def parse_startup(message: list[Any]) -> Hello | Fatal | None:
    """A message seen before the handshake; None for one that is neither (noise)."""
    kind = message[0]
    if kind == HELLO and len(message) == 3:
        return Hello(message[1], message[2])
    if kind == FATAL and len(message) == 2:
        return Fatal(str(message[1]))
    return None


def parse_reply(message: list[Any], call_id: int) -> Reply:
    """The worker's answer to call ``call_id``."""
    kind = message[0]
    if len(message) == 3 and kind == RESULT and message[1] == call_id:
        return Result(call_id, message[2])
    if len(message) == 5 and kind == ERROR and message[1] == call_id:
        return Error(call_id, str(message[2]), str(message[3]), str(message[4]))
    raise ProtocolError(f"unexpected reply to call {call_id}: {message!r:.200}")


def parse_request(message: list[Any]) -> Request:
    """What the parent asks of a worker."""
    kind = message[0]
    if kind == CALL and len(message) == 3:
        return Call(message[1], message[2])
    if kind == SHUTDOWN:
        return Shutdown()
    if kind == BATCH and len(message) == 4 and isinstance(message[3], list):
        return Batch(message[1], message[2], message[3])
    raise ProtocolError(f"unexpected message kind {kind!r} from the parent")


# -- batched map (``_batch`` in the parent, ``_batch_worker`` in the worker) ---

BATCH: Final = 6  # parent -> worker: [BATCH, batch_id, flags, [value, ...]]
BATCH_ITEM: Final = 7  # worker -> parent: [BATCH_ITEM, batch_id, index, reply]
BATCH_DONE: Final = 8  # worker -> parent: [BATCH_DONE, batch_id, count, seconds]
ARENA: Final = 9  # worker -> parent: [ARENA, fd, size], once per worker

BATCH_USE_ARENA: Final = 1  # flag: leave results in the shared arena (``_arena``)
BATCH_STAMP: Final = 2  # flag: stamp each input's start time (a timeout applies)


class Batch(NamedTuple):
    batch_id: int
    flags: int
    values: list[Any]


class BatchItem(NamedTuple):
    """One input's reply sent on the pipe (no arena, an error, or a large result)."""

    batch_id: int
    position: int  # the input's place in the batch
    reply: Reply


class BatchDone(NamedTuple):
    """The worker ran ``ran`` inputs of the batch (fewer when the parent said stop)."""

    batch_id: int
    ran: int
    seconds: float


class ArenaInfo(NamedTuple):
    """The worker's arena: a memfd the parent opens as /proc/<pid>/fd/<fd>."""

    fd: int
    size: int


Request = Call | Shutdown | Batch
BatchReply = BatchItem | BatchDone | ArenaInfo


def parse_batch_reply(message: list[Any]) -> BatchReply:
    """What a worker sends while it runs a batch."""
    kind = message[0]
    if kind == BATCH_DONE and len(message) == 4:
        return BatchDone(message[1], message[2], message[3])
    if kind == BATCH_ITEM and len(message) == 4 and isinstance(message[3], list):
        index = message[2]
        return BatchItem(message[1], index, parse_reply(message[3], index))
    if kind == ARENA and len(message) == 3:
        return ArenaInfo(message[1], message[2])
    raise ProtocolError(f"unexpected message during a batch: {message!r:.200}")
