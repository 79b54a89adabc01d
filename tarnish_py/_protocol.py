"""The messages parent and worker exchange: the only module that knows their layout.

::

    worker -> parent   Hello(token, version, pid)   once, right after start
                       Result(call_id, value)
                       Error(call_id, type_name, message, traceback)
                       Fatal(message, token)        the worker cannot serve
    parent -> worker   Call(call_id, value)
                       Shutdown()
                       StateRequest(kind, call_id, value)   SNAPSHOT, RESTORE or CALL_KEEP
                                                            (``_snapshot``); answered by
                                                            Result or Error
                       Batch(batch_id, flags, values)  a batched map's inputs (``_batch``)
    worker -> parent   BatchItem / BatchDone / ArenaInfo   its replies (``_batch_worker``)

On the wire each is a msgpack array ``[KIND, *fields]`` in one COBS frame
(``_wire``); a Call, StateRequest or Result whose value holds large bytes is
that array packed with references, in an envelope frame followed by the bytes
raw (``_segments``: the slot and the worker loop split it; batches never do).
The worker writes one extra 0x00 before Hello so that anything a program
wrote to stdout before it could move fd 1 away ends in a frame of its own,
which the parent treats as noise. Hello and Fatal carry the random token the
parent put in this worker's environment marker: bytes a program wrote before
it imported tarnish_py cannot know it, so noise never passes for either.

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
    "CALL_KEEP",
    "ERROR",
    "FATAL",
    "HELLO",
    "NOT_RESULT",
    "PROTOCOL_VERSION",
    "RESTORE",
    "RESULT",
    "SHUTDOWN",
    "SNAPSHOT",
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
    "StateRequest",
    "call_fields",
    "fatal_frame",
    "hello_frame",
    "parse_batch_reply",
    "parse_reply",
    "parse_request",
    "parse_startup",
    "result_value",
    "shutdown_frame",
]

PROTOCOL_VERSION: Final = 2  # 2: Hello and Fatal carry the spawn's token

HELLO: Final = 0
CALL: Final = 1
RESULT: Final = 2
ERROR: Final = 3
SHUTDOWN: Final = 4
FATAL: Final = 5
# State requests (SPEC §7, ``_snapshot``): [kind, call_id, value], answered like a call.
SNAPSHOT: Final = 6  # value None; the Result is the task's state
RESTORE: Final = 7  # value: the state; the Result is None
CALL_KEEP: Final = 8  # a Call whose Result is [output, state] (restore_on_crash)
_STATE_KINDS: Final = (SNAPSHOT, RESTORE, CALL_KEEP)


class Hello(NamedTuple):
    version: Any  # compared, never trusted: another version may send anything
    pid: Any


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


class StateRequest(NamedTuple):
    kind: int  # SNAPSHOT, RESTORE or CALL_KEEP
    call_id: int
    value: Any


Reply = Result | Error


# -- building ----------------------------------------------------------------


def hello_frame(pid: int, token: str) -> bytes:
    # The token comes first, so that any later version is recognised by it.
    return _wire.encode_frame([HELLO, token, PROTOCOL_VERSION, pid])


def fatal_frame(message: str, token: str) -> bytes:
    return _wire.encode_frame([FATAL, message, token])


def shutdown_frame() -> bytes:
    return _wire.encode_frame([SHUTDOWN])


def error_packed(error: Error, limit: int | None = None) -> bytes:
    """The packed Error; with ``limit``, its texts cut until it fits in ``limit`` bytes
    (the head of the message, the tail of the traceback: where the error is)."""
    packed = _wire.pack([ERROR, *error])
    budget = limit
    while budget is not None and len(packed) > budget and budget > 0:
        budget //= 2
        assert limit is not None
        shorter = error._replace(
            type_name=_cut_head(error.type_name, budget // 2),
            message=_cut_head(error.message, budget // 2),
            traceback=_cut_tail(error.traceback, budget // 2),
        )
        packed = _wire.pack([ERROR, *shorter])
        if len(packed) <= limit:
            break
    return packed  # a limit too small for anything: the parent reports it


_CUT = " [... cut to fit max_message_bytes]"


def _cut_head(text: str, size: int) -> str:
    """``text``, or its beginning and a note, in at most ``size`` UTF-8 bytes."""
    data = text.encode("utf-8", "replace")
    if len(data) <= size:
        return text
    if size <= len(_CUT):
        return data[:size].decode("utf-8", "ignore")
    return data[: size - len(_CUT)].decode("utf-8", "ignore") + _CUT


def _cut_tail(text: str, size: int) -> str:
    """``text``, or a note and its end, in at most ``size`` UTF-8 bytes."""
    data = text.encode("utf-8", "replace")
    if len(data) <= size:
        return text
    if size <= len(_CUT):
        return data[len(data) - size :].decode("utf-8", "ignore")
    return _CUT.strip() + "\n" + data[len(data) - size + len(_CUT) :].decode("utf-8", "ignore")


class Packer:
    """Packs calls and results with one reused msgpack Packer (one thread at a time).

    Returns the packed message, so that its size can be checked against
    ``max_message_bytes`` before :func:`_wire.frame_packed` frames it.
    """

    __slots__ = ("_pack", "pack_list")

    def __init__(self) -> None:
        self._pack: Callable[[Any], bytes] = _wire.packer()
        #: The packer itself, for a hot path that builds ``[kind, *fields]`` in place.
        self.pack_list = self._pack

    def call(self, call_id: int, value: Any, kind: int = CALL) -> bytes:
        return self._pack([kind, call_id, value])

    def result(self, call_id: int, value: Any) -> bytes:
        return self._pack([RESULT, call_id, value])


# -- parsing -----------------------------------------------------------------


def parse_startup(message: list[Any], token: str) -> Hello | Fatal | None:
    """A message seen before the handshake; None for one that is neither Hello nor
    Fatal with this spawn's ``token`` (noise, however much it looks like them)."""
    kind = message[0]
    if kind == HELLO and len(message) >= 4 and message[1] == token:
        return Hello(message[2], message[3])
    if kind == FATAL and len(message) == 3 and message[2] == token:
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


# The hot path of a call parses without building a record: a NamedTuple costs a
# Python-level __new__, more than the rest of the parse.

NOT_RESULT: Final[Any] = object()  # what result_value returns for any other reply


def result_value(message: list[Any], call_id: int) -> Any:
    """The value of a Result to call ``call_id``; NOT_RESULT for any other message
    (:func:`parse_reply` then says what it is)."""
    if len(message) == 3 and message[0] == RESULT and message[1] == call_id:
        return message[2]
    return NOT_RESULT


def call_fields(message: list[Any]) -> tuple[int, Any] | None:
    """(call_id, value) of a Call; None for any other request (:func:`parse_request`)."""
    if message[0] == CALL and len(message) == 3:
        return message[1], message[2]
    return None


def parse_request(message: list[Any]) -> Request:
    """What the parent asks of a worker."""
    kind = message[0]
    if kind == CALL and len(message) == 3:
        return Call(message[1], message[2])
    if kind == SHUTDOWN:
        return Shutdown()
    if kind in _STATE_KINDS and len(message) == 3:
        return StateRequest(kind, message[1], message[2])
    if kind == BATCH and len(message) == 4 and isinstance(message[3], list):
        return Batch(message[1], message[2], message[3])
    raise ProtocolError(f"unexpected message kind {kind!r} from the parent")


# -- batched map (``_batch`` in the parent, ``_batch_worker`` in the worker) ---

BATCH: Final = 9  # parent -> worker: [BATCH, batch_id, flags, [value, ...]]
BATCH_ITEM: Final = 10  # worker -> parent: [BATCH_ITEM, batch_id, index, reply]
BATCH_DONE: Final = 11  # worker -> parent: [BATCH_DONE, batch_id, count, seconds]
ARENA: Final = 12  # worker -> parent: [ARENA, fd, size], once per worker

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


Request = Call | Shutdown | StateRequest | Batch
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
