"""One worker lent to a batched map: send a batch, take in its replies, and after a
crash or a timeout say exactly which input was running.

::

    Lane.send(run)        [BATCH, b, flags, payloads] --pipe--> worker   (one write)
    Lane.take(messages)   ArenaInfo -> map the arena; BatchItem -> kept by index;
                          BatchDone(b, count) -> the batch's outcomes
    Lane.outcomes(n)      inputs 0..n-1: values from the arena (one msgpack call),
                          the inline replies in between
    Lane.settle_lost()    after EOF (a crash) or a kill (a timeout): which inputs
                          finished, which one ran, which never started

The map's thread drives every lane itself (``_batch``): nothing here blocks
except a send into a full pipe and the reads after a kill, which end at EOF.

The hooks into the core that this needs (private names of ``_slot``, ``_conn``
and ``_dispatch``) are gathered at the bottom, so that they can be re-pointed
in one place.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Any

from . import _arena, _protocol, _wire
from ._conn import BadMessage, Conn
from ._dispatch import Dispatcher
from ._errors import ProtocolError, TaskError
from ._slot import Slot, _RemoteTraceback

__all__ = ["Failed", "Lane", "Run", "Sent", "has_waiters", "tag", "try_acquire"]


def tag(error: BaseException, item: Any, pid: int | None) -> BaseException:
    """Name the input (and the worker) on the error, as a call's errors do."""
    for name, value in (("input", item), ("pid", pid)):
        if value is not None and getattr(error, name, None) is None:
            try:
                setattr(error, name, value)
            except (AttributeError, TypeError):  # pragma: no cover - a read-only error type
                pass
    return error


class Failed:
    """An input's failure, in the place of its result."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Run:
    """Consecutive inputs (seq, seq + 1, ...) ready to be sent: as given, and as payloads."""

    __slots__ = ("items", "payloads", "seq")

    def __init__(self, seq: int, items: list[Any], payloads: list[Any]) -> None:
        self.seq = seq
        self.items = items
        self.payloads = payloads

    def tail(self, start: int) -> Run:
        return Run(self.seq + start, self.items[start:], self.payloads[start:])


class Sent:
    """The batch a lane's worker is running."""

    __slots__ = ("arena", "bid", "flags", "inline", "last_seen", "pid", "run", "sent_at")

    def __init__(
        self, run: Run, bid: int, flags: int, arena: _arena.Arena | None, pid: int
    ) -> None:
        self.run = run
        self.pid = pid
        self.bid = bid
        self.flags = flags
        self.arena = arena if flags & _protocol.BATCH_USE_ARENA else None
        self.inline: dict[int, _protocol.Reply] = {}
        self.sent_at = self.last_seen = time.monotonic()


# The arena of each live worker, mapped once and used by every map after it.
_arenas: weakref.WeakKeyDictionary[Conn, _arena.Arena | None] = weakref.WeakKeyDictionary()


class Lane:
    """A slot held by one map; its worker runs at most one batch at a time."""

    def __init__(self, slot: Slot, limit: int) -> None:
        self.slot = slot
        self.limit = limit
        self.sent: Sent | None = None

    # -- the worker ------------------------------------------------------------

    def conn(self) -> Conn | None:
        return slot_conn(self.slot)

    def is_ready(self) -> bool:
        conn = slot_conn(self.slot)
        return conn is not None and conn.ready

    def start(self) -> None:
        """Handshake with a started worker (or start one): SpawnError, ClosedError."""
        self.slot.ready()

    def poll_fds(self) -> tuple[int, int] | None:
        """The fds to wait on: replies of a running batch (or a starting worker's
        Hello), and the worker's pidfd (-1 where there is none)."""
        conn = slot_conn(self.slot)
        if conn is None or (self.sent is None and conn.ready):
            return None
        return conn_fds(conn)

    def end_group(self) -> None:
        """The worker exited: kill its process group (what it forked), so that EOF comes."""
        conn = slot_conn(self.slot)
        if conn is not None:
            conn.kill()

    # -- sending -----------------------------------------------------------------

    def send(self, run: Run, bid: int, stamp: bool, pack: Any, deadline: float | None) -> None:
        """Send ``run`` as batch ``bid``; ValueError if it exceeds max_message_bytes."""
        conn = slot_conn(self.slot)
        assert conn is not None and self.sent is None
        arena = _arenas.get(conn)
        flags = _protocol.BATCH_USE_ARENA if arena is not None else 0
        if stamp:
            flags |= _protocol.BATCH_STAMP
        packed = pack([_protocol.BATCH, bid, flags, run.payloads])
        if len(packed) > self.limit:
            raise ValueError(
                f"the input takes {len(packed)} bytes, more than max_message_bytes "
                f"({self.limit}); raise max_message_bytes or send less"
            )
        self.sent = Sent(run, bid, flags, arena, conn.pid)
        # Not idle until the batch's last reply is in: a map cut short at any
        # instant (Ctrl-C) leaves it so, and the slot never reuses this worker.
        conn.idle = False
        conn.send(_wire.frame_packed(packed), deadline)  # Eof, Deadline: the caller's

    def stop(self) -> None:
        """Ask the worker to end its batch before its next input (a hint: it may be late)."""
        sent = self.sent
        if sent is not None and sent.arena is not None:
            sent.arena.stop(sent.bid)

    # -- receiving ---------------------------------------------------------------

    def pump(self) -> tuple[list[Any], bool]:
        """The messages one read brings (the fd is readable), and whether it hit EOF."""
        conn = slot_conn(self.slot)
        assert conn is not None
        return conn_pump(conn)

    def take(self, messages: list[Any]) -> _protocol.BatchDone | None:
        """File the worker's messages; the BatchDone among them, if any."""
        done = None
        sent = self.sent
        for message in messages:
            reply = _protocol.parse_batch_reply(message)
            if isinstance(reply, _protocol.ArenaInfo):
                self._attach(reply)
                continue
            if sent is None or reply.batch_id != sent.bid or done is not None:
                raise ProtocolError(f"a reply to no batch in flight: {message!r:.200}")
            if type(reply) is _protocol.BatchItem:
                sent.inline[reply.position] = reply.reply
                sent.last_seen = time.monotonic()
            else:
                assert type(reply) is _protocol.BatchDone
                if not 0 <= reply.ran <= len(sent.run.items):
                    raise ProtocolError(f"batch {sent.bid}: count {reply.ran} out of range")
                done = reply
                conn = slot_conn(self.slot)
                if conn is not None:
                    conn.idle = True  # the batch's last reply: a whole exchange again
        return done

    def forget(self, conn: Conn | None) -> None:
        """Unmap the arena of a worker that is gone."""
        if conn is not None:
            arena = _arenas.pop(conn, None)
            if arena is not None:
                arena.close()

    def _attach(self, info: _protocol.ArenaInfo) -> None:
        conn = slot_conn(self.slot)
        if conn is not None and conn not in _arenas:
            _arenas[conn] = _arena.Arena.attach(conn.pid, info.fd, info.size)

    def outcomes(self, sent: Sent, count: int, decode: Any) -> list[Any]:
        """Inputs 0..count-1 of ``sent``: decoded values, or Failed."""
        inline = sent.inline
        in_arena = count - sum(1 for i in inline if i < count)
        raw: list[Any] = []
        if sent.arena is not None:
            raw = sent.arena.values(sent.bid, in_arena)
        elif in_arena:
            raise ProtocolError(f"batch {sent.bid}: {in_arena} results missing")
        if len(raw) < in_arena:
            raise ProtocolError(f"batch {sent.bid}: {in_arena - len(raw)} results missing")
        if not inline:
            try:
                return [decode(value) for value in raw]
            except Exception:
                return [_decoded(decode, value) for value in raw]
        out: list[Any] = []
        next_raw = iter(raw)
        for k in range(count):
            reply = inline.get(k)
            if reply is None:
                out.append(_decoded(decode, next(next_raw)))
            elif type(reply) is _protocol.Result:
                out.append(_decoded(decode, reply.value))
            else:
                assert type(reply) is _protocol.Error
                error = TaskError(reply.type_name, reply.message, reply.traceback)
                error.__cause__ = _RemoteTraceback(reply.traceback)
                out.append(Failed(tag(error, sent.run.items[k], sent.pid)))
        return out

    # -- after a crash or a kill ---------------------------------------------------

    def drain_to_eof(self) -> None:
        """Read what the (dying) worker sent until EOF, filing its replies."""
        eof = False
        while not eof:
            try:
                messages, eof = self.pump()
                self.take(messages)
            except (BadMessage, ProtocolError):
                return  # a broken tail: what was filed before it stands

    def finished(self, sent: Sent) -> tuple[int, bool]:
        """After the worker died: (inputs finished, whether the next one had started).

        With an arena, the progress word says which input had started; it finished
        if its reply is inline or its record is whole in the arena. A batch the
        worker had not yet marked as started is blamed on its first input (the
        worker died while reading it). Without an arena, the inline replies count.
        """
        n = len(sent.run.items)
        arena = sent.arena
        if arena is None:
            done = 0
            while done in sent.inline:
                done += 1
            return done, done < n
        if not arena.started(sent.bid):
            return 0, n > 0
        k, _ = arena.progress(sent.bid)
        k = min(k, n)
        if k == n:
            return n, False
        if k in sent.inline:
            return k + 1, False
        in_arena = k - sum(1 for i in sent.inline if i < k)
        try:
            whole = arena.values(sent.bid, in_arena + 1)
        except ProtocolError:
            whole = []
        if len(whole) == in_arena + 1:
            return k + 1, False  # died after input k finished, before k + 1 began
        return k, True

    def running_since(self, sent: Sent) -> float | None:
        """When the input now running started (monotonic s); None when none runs."""
        arena = sent.arena
        if arena is None:
            return max(sent.sent_at, sent.last_seen)
        if not arena.started(sent.bid):
            return sent.sent_at
        k, start_ns = arena.progress(sent.bid)
        if k >= len(sent.run.items):
            return None
        return start_ns / 1e9


def _decoded(decode: Any, value: Any) -> Any:
    try:
        return decode(value)
    except Exception as exc:  # an invalid result fails its input only
        return Failed(exc)


# -- hooks into the core (private names; re-point here after a core change) -------------


def slot_conn(slot: Slot) -> Conn | None:
    """The slot's current worker, started or not (``Slot._conn``)."""
    return slot._conn


def conn_fds(conn: Conn) -> tuple[int, int]:
    """The fd the worker's replies arrive on, and its pidfd (``Conn._r``, ``Conn._pidfd``)."""
    return conn._r, conn._pidfd


def conn_pump(conn: Conn) -> tuple[list[Any], bool]:
    """One read from a readable worker: its complete messages, and whether it was EOF.

    Uses ``Conn``'s inbox, read buffer and FrameReader, as ``Conn._next`` does.
    """
    messages = list(conn._inbox)
    conn._inbox.clear()
    conn.clean = False  # Conn._next looks at the reader again
    n = os.readv(conn._r, [conn._buf])
    if n == 0:
        return messages, True
    try:
        messages.extend(conn._reader.feed(conn._buf[:n]))
    except ProtocolError as exc:
        raise BadMessage(str(exc)) from exc
    return messages, False


def slot_lost(slot: Slot, conn: Conn) -> BaseException:
    """The worker closed its channel: reap, replace, and the public error (``Slot._lost``)."""
    return slot._lost(conn)


def slot_discard(slot: Slot, conn: Conn) -> None:
    """Kill and replace a worker that must not be reused (``Slot._discard``)."""
    slot._discard(conn)


def try_acquire(dispatcher: Dispatcher) -> Slot | None:
    """A free slot now, or None: never waits, never jumps the FIFO of waiting callers."""
    return dispatcher.try_acquire()


def has_waiters(dispatcher: Dispatcher) -> bool:
    """Whether other callers wait for a slot (a map then lends its idle workers back)."""
    return bool(dispatcher._waiters)


def codec_of(dispatcher: Dispatcher) -> Any:
    """The task's Codec (``Dispatcher._codec``)."""
    return dispatcher._codec
