"""One worker position, and the one place where private failures become public errors.

::

    Slot.spawn()   a starter thread: WorkerSpec.start -> Conn, joined (no handshake)
    Slot.ready()   Conn.handshake          NotReady / Eof / Refused  -> SpawnError
                                           Deadline (the call's)     -> TaskTimeout,
                                                                        worker kept
    Slot.call()    Conn.request(Call)      Eof       -> WorkerCrashed (or ClosedError,
                                                        CancelledError when we killed it)
                                           Deadline  -> TaskTimeout
                                           BadMessage, wrong reply -> ProtocolError
                   _protocol.Error                   -> TaskError
    after any failure: kill, reap, start a replacement (never reuse a half-alive worker)

A slot is held by one thread at a time (``_dispatch`` sees to it); any thread
may :meth:`Slot.kill` its worker, and the holder then sees EOF.

Interrupted at any instant (Ctrl-C raises in the holder's thread), a slot is
left in a state the next holder recognises: a Conn is ``idle`` only between
whole exchanges, so one cut short is dropped (killed, reaped) and replaced,
never reused; a worker is started, and its Conn built and stored, by a starter
thread that the interrupt cannot reach, so no started process is ever lost.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import threading
import time
from typing import Any

from cobs import cobs

from . import _protocol, _segments, _wire
from ._conn import BadMessage, Conn, Deadline, Eof, NotReady, Refused
from ._errors import (
    ClosedError,
    ProtocolError,
    SpawnError,
    TaskTimeout,
    WorkerCrashed,
    describe_exit,
    exit_text,
    task_error,
)
from ._recycle import Recycler
from ._snapshot import StateKeeper
from ._workerspec import WorkerSpec

__all__ = ["Kill", "Slot"]

_RESULT = _protocol.RESULT
_cobs_encode = cobs.encode  # _wire.frame_packed inlined on the hot path
_EARLY = _segments.EARLY  # a global: read on every call


class Kill(enum.Enum):
    """Why another thread killed a slot's worker."""

    CLOSE = "close"
    CANCEL = "cancel"


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of a TaskError."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class Slot:
    """One worker position: a Conn that is replaced whenever it fails."""

    def __init__(self, index: int, spec: WorkerSpec) -> None:
        self.index = index
        self.kill_reason: Kill | None = None
        # The submitted call running here, so that cancelling one call never
        # kills the next: a cancel acts only while its own call is in flight.
        self.job_lock = threading.Lock()
        self.current_job: Any = None
        self.call_pid: int | None = None  # the worker of the last call (for its errors)
        self._spec = spec
        self._limit = spec.settings.max_message_bytes
        # A packed input this long may hold large bytes, or exceed the limit.
        self._large = min(_segments.THRESHOLD, self._limit + 1)
        self._conn: Conn | None = None
        self._spawn_error: SpawnError | None = None
        self._starter: threading.Thread | None = None
        self._lock = threading.Lock()  # _conn and _spawn_error, against the starter
        self._next_id = 0
        self._pack = _protocol.Packer()  # one holder at a time: a reused Packer is safe
        self._pack_list = self._pack.pack_list  # Packer.call inlined on the hot path
        self._closing = False
        #: restore_on_crash (SPEC §7): set by the handle; see ``_snapshot.StateKeeper``.
        self.keeper: StateKeeper | None = None
        self._recycler = Recycler.of(spec.settings)  # max_calls / max_memory, or None

    @property
    def pid(self) -> int | None:
        conn = self._conn
        return conn.pid if conn is not None else None

    def is_running(self) -> bool:
        conn = self._conn
        return conn is not None and conn.alive()

    # -- starting ----------------------------------------------------------

    def spawn(self) -> None:
        """Start a worker process now; its handshake is awaited by the next call.

        A starter thread starts it and stores its Conn; this thread only waits.
        Interrupted, the wait ends, never the start: the starter finishes, and
        the next ready() finds the worker (or its SpawnError).
        """
        if self._closing:
            return
        starter = threading.Thread(
            target=self._start_worker, name=f"tarnish_py-start-{self.index}", daemon=True
        )
        try:
            starter.start()
        except RuntimeError as exc:  # no thread to be had: nothing was started
            self._spawn_error = SpawnError(f"cannot start a worker: {exc}")
            return
        self._starter = starter
        starter.join()
        self._starter = None

    def _start_worker(self) -> None:
        """In the starter thread: a started worker, stored in the slot, or its SpawnError."""
        try:
            conn = self._spec.start()
        except BaseException as exc:
            if not isinstance(exc, SpawnError):
                exc = SpawnError(f"cannot start a worker: {exc!r}")
            with self._lock:
                if self._conn is None:
                    self._spawn_error = exc
            return
        with self._lock:
            if self._conn is None and not self._closing:
                self._conn, self._spawn_error = conn, None
                return
        # Another start won (after an interrupted wait), or the slot closed meanwhile.
        conn.kill()
        conn.finish()

    def _await_starter(self) -> None:
        starter = self._starter
        if starter is not None:
            starter.join()
            self._starter = None

    def ready(self, deadline: float | None = None, timeout: float | None = None) -> Conn:
        """The slot's worker, started and handshaken (one attempt; no retry loop).

        With a call's ``deadline``, waiting for a starting worker ends there:
        TaskTimeout(``timeout``), and the worker is left to start for a later call.
        """
        conn = self._conn
        if conn is not None and conn.idle and not conn.killed:
            return conn
        self._await_starter()
        conn = self._conn
        if conn is not None and not conn.fresh():
            self._drop(conn)  # cut short mid-call or mid-handshake, or killed: never reused
            conn = None
        if conn is None:
            conn = self._started()
        try:
            conn.handshake(deadline)
        except Deadline:
            raise TaskTimeout(
                timeout or 0.0, "the worker was still starting; it goes on, for the next call"
            ) from None
        except (NotReady, Eof, Refused) as exc:
            self._clear(conn)
            if self.kill_reason is Kill.CLOSE:
                raise ClosedError("the handle was closed while its worker was starting") from None
            raise _spawn_error(exc, conn, self._spec.settings.spawn_timeout) from None
        return conn

    def _started(self) -> Conn:
        """A newly started worker (not yet handshaken), or the SpawnError of the start."""
        if self._spawn_error is None and self._conn is None:
            self.spawn()
        error, self._spawn_error = self._spawn_error, None
        if error is not None:
            raise error
        conn = self._conn
        if conn is None:
            raise ClosedError("the handle is closed")
        return conn

    # -- calling -----------------------------------------------------------

    def call(self, payload: Any, timeout: float | None, kind: int = _protocol.CALL) -> Any:
        """Run one call (or state request, ``kind``) on this slot's worker; the raw result.

        ``timeout`` bounds the whole call: the wait for a starting worker, sending
        the input, the run, and receiving the result.
        """
        deadline = time.monotonic() + timeout if timeout is not None else None
        self.call_pid = None
        conn = self._conn
        if conn is None or not conn.idle or conn.killed:
            conn = self.ready(deadline, timeout)
        self.call_pid = conn.pid
        keeper = self.keeper
        if keeper is not None:  # a replacement worker gets the kept state first
            kind = keeper.before(conn, kind, self.call, timeout)
        self._next_id += 1
        call_id = self._next_id
        split = None
        if type(payload) in _EARLY:  # bytes, a model's dict: may hold large bytes
            packed, split = self._pack_large(call_id, payload, kind, None)
        else:
            packed = self._pack_list([kind, call_id, payload])
            if len(packed) >= self._large:
                packed, split = self._pack_large(call_id, payload, kind, packed)
        if self.kill_reason is not None:
            conn.kill()
        conn.idle = False  # until the whole reply is in: an interrupt leaves it False
        try:
            if split is None:
                message = conn.request(_cobs_encode(packed) + b"\x00", deadline)
            else:
                frame = _wire.envelope_frame(packed, split.lengths)
                message = conn.request_segments(frame, split.buffers, deadline)
            # _protocol.result_value inlined: a Result to this call, or parse_reply
            # says what else it is.
            if len(message) == 3 and message[0] == _RESULT and message[1] == call_id:
                value = message[2]
                reply = None
            else:
                reply = _protocol.parse_reply(message, call_id)
        except Eof:
            raise self._lost(conn) from None
        except Deadline:
            self._discard(conn)
            raise TaskTimeout(timeout or 0.0) from None
        except (BadMessage, ProtocolError) as exc:
            self._discard(conn)
            raise ProtocolError(f"the worker broke the protocol and was killed: {exc}") from exc
        except BaseException:
            # KeyboardInterrupt (or anything) mid-call: a half-read frame may be in
            # flight, so this worker is never reused.
            self._discard(conn)
            raise
        conn.idle = True
        if self._recycler is not None:
            self._recycle_if_due(conn)
        if reply is None:
            if keeper is not None:
                return keeper.after(conn, kind, payload, value)
            return value
        assert isinstance(reply, _protocol.Error)  # result_value took every Result
        error = task_error(reply.type_name, reply.message, reply.traceback)
        error.__cause__ = _RemoteTraceback(reply.traceback)
        raise error

    def _pack_large(
        self, call_id: int, payload: Any, kind: int, packed: bytes | None
    ) -> tuple[bytes, _segments.Split | None]:
        """A call whose input may hold large bytes: they travel out of band
        (``_segments``). ValueError past max_message_bytes, segments counted."""
        return _segments.pack_large(
            lambda value: self._pack.call(call_id, value, kind), payload, packed,
            self._limit, "input", "; raise max_message_bytes or send less",
        )

    def _recycle_if_due(self, conn: Conn) -> None:
        """max_calls / max_memory (``_recycle``): retire a worker after its reply."""
        assert self._recycler is not None
        reason = self._recycler.due(conn)
        if reason is None:
            return
        if self._conn is conn:
            self._conn = None
        self._recycler.retire(conn, reason)
        if not self._closing and self.kill_reason is not Kill.CLOSE:
            self.spawn()  # as after a crash: the next call waits for its handshake

    def _lost(self, conn: Conn) -> BaseException:
        """The worker closed the channel: find out why, replace it, say what happened."""
        returncode = conn.finish()
        reason = self.kill_reason
        tail = conn.stderr_tail()
        self._replace(conn)
        if reason is Kill.CLOSE:
            return ClosedError("the handle was closed while the call was running")
        if reason is Kill.CANCEL:
            self.kill_reason = None  # handled: the replacement is not to be killed
            return cf.CancelledError()
        if conn.outlived_eof:
            return ProtocolError("the worker closed its channel but kept running; it was killed")
        exitcode, sig = describe_exit(returncode)
        return WorkerCrashed(exitcode, sig, tail)

    def _discard(self, conn: Conn) -> None:
        """Kill a worker that may not be reused, and start its replacement."""
        conn.kill()
        self._replace(conn)

    def _replace(self, conn: Conn) -> None:
        conn.finish()
        self._clear(conn)
        if not self._closing and self.kill_reason is not Kill.CLOSE:
            self.spawn()

    def _drop(self, conn: Conn) -> None:
        """Kill and reap ``conn`` (again, if an interrupt cut that short before)."""
        conn.kill()
        conn.finish()
        self._clear(conn)

    def _clear(self, conn: Conn) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def restart(self, grace: float = 0.0) -> None:
        """Replace the worker: ask it to exit (its task's close() runs), wait up to
        ``grace`` seconds, kill it, then start a fresh one."""
        self._await_starter()
        conn = self._conn
        if conn is not None:
            if conn.idle and not conn.killed:
                self._ask_to_exit(conn)
                conn.finish(grace)
            self._drop(conn)
        if self.kill_reason is Kill.CLOSE:
            raise ClosedError("the handle was closed while its worker restarted")
        self._spawn_error = None
        self.ready()

    # -- from other threads ------------------------------------------------

    def kill(self, reason: Kill) -> None:
        """From any thread: kill the worker of a running call."""
        self.kill_reason = reason
        conn = self._conn
        if conn is not None:
            conn.kill()

    def cancel_job(self, job: object) -> None:
        """From any thread: kill the worker if (and only if) ``job`` is running on it."""
        with self.job_lock:
            if self.current_job is job:
                self.kill(Kill.CANCEL)

    def end_job(self) -> None:
        """The holder, after a submitted call: a cancel that landed late (after the
        reply) has killed the worker, which must not serve the next call."""
        with self.job_lock:
            self.current_job = None
            late_cancel = self.kill_reason is Kill.CANCEL
        if late_cancel:
            self.kill_reason = None
            conn = self._conn
            if conn is not None:
                self._discard(conn)

    # -- closing -----------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Ask the (idle) worker to exit; the holder calls this."""
        with self._lock:
            self._closing = True
        self._await_starter()
        conn = self._conn
        if conn is not None:
            self._ask_to_exit(conn)

    @staticmethod
    def _ask_to_exit(conn: Conn) -> None:
        """Ask a worker to exit if it is between whole exchanges; else kill it."""
        if conn.idle and not conn.killed:
            try:
                conn.send(_protocol.shutdown_frame(), time.monotonic() + 1.0)
            except (Eof, Deadline, OSError):
                conn.kill()
        else:
            conn.kill()

    def end_shutdown(self, deadline: float) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(max(0.0, deadline - time.monotonic()))
        if self._recycler is not None:
            self._recycler.join(deadline)  # workers retired by max_calls / max_memory

    def disown(self) -> None:
        """In a forked child: forget the parent's worker without touching it."""
        conn, self._conn = self._conn, None
        self._closing = True
        self.job_lock = threading.Lock()  # another thread may have held it at the fork
        self._lock = threading.Lock()
        if conn is not None:
            conn.disown()


def _spawn_error(exc: Exception, conn: Conn, spawn_timeout: float) -> SpawnError:
    """Why a worker never became ready, with its stderr."""
    tail = conn.stderr_tail()
    if isinstance(exc, NotReady):
        return SpawnError(
            f"the worker did not become ready within {spawn_timeout:g} s (spawn_timeout)", tail
        )
    if isinstance(exc, Refused):
        return SpawnError(str(exc), tail)
    exitcode, sig = describe_exit(conn.returncode)
    was = "was " if sig is not None else ""
    return SpawnError(f"the worker {was}{exit_text(exitcode, sig)} before it was ready", tail)
