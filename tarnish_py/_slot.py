"""One worker position, and the one place where private failures become public errors.

::

    Slot.spawn()   _spawn.start -> Conn              (no waiting)
    Slot.ready()   Conn.handshake          Deadline / Eof / Refused  -> SpawnError
    Slot.call()    Conn.request(Call)      Eof       -> WorkerCrashed (or ClosedError,
                                                        CancelledError when we killed it)
                                           Deadline  -> TaskTimeout
                                           BadMessage, wrong reply -> ProtocolError
                   _protocol.Error                   -> TaskError
    after any failure: kill, reap, start a replacement (never reuse a half-alive worker)

A slot is held by one thread at a time (``_dispatch`` sees to it); any thread
may :meth:`Slot.kill` its worker, and the holder then sees EOF.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import enum
import os
import threading
import time
from typing import Any

from . import _protocol, _spawn, _wire
from ._boot import WorkerConfig
from ._conn import BadMessage, Conn, Deadline, Eof, Refused
from ._errors import (
    ClosedError,
    ProtocolError,
    SpawnError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
    describe_exit,
    exit_text,
)
from ._settings import Settings

__all__ = ["Kill", "Slot", "WorkerSpec"]


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


class WorkerSpec:
    """How to start a worker of one handle: its command line and its config."""

    __slots__ = ("argv", "config", "settings")

    def __init__(self, module: str, name: str, settings: Settings) -> None:
        self.settings = settings
        self.argv = _spawn.command_for(module, f"{module}.{name.lstrip('@')}")
        self.config = WorkerConfig(
            module=module,
            name=name,
            max_message_bytes=settings.max_message_bytes,
            parent_pid=os.getpid(),
            sys_path=None if module == "__main__" else _spawn.absolute_sys_path(),
        )

    def config_now(self) -> WorkerConfig:
        """The config for a worker started now: it works in the parent's current folder."""
        try:
            cwd = os.getcwd()
        except OSError:  # pragma: no cover - the current folder was deleted
            cwd = None
        if cwd != self.config.cwd:
            self.config = dataclasses.replace(self.config, cwd=cwd)
        return self.config


class Slot:
    """One worker position: a Conn that is replaced whenever it fails."""

    def __init__(self, index: int, spec: WorkerSpec) -> None:
        self.index = index
        self.kill_reason: Kill | None = None
        # The submitted call running here, so that cancelling one call never
        # kills the next: a cancel acts only while its own call is in flight.
        self.job_lock = threading.Lock()
        self.current_job: Any = None
        self._spec = spec
        self._limit = spec.settings.max_message_bytes
        self._conn: Conn | None = None
        self._spawn_error: SpawnError | None = None
        self._next_id = 0
        self._pack = _protocol.Packer()  # one holder at a time: a reused Packer is safe
        self._closing = False

    @property
    def pid(self) -> int | None:
        conn = self._conn
        return conn.pid if conn is not None else None

    def is_running(self) -> bool:
        conn = self._conn
        return conn is not None and conn.alive()

    # -- starting ----------------------------------------------------------

    def spawn(self) -> None:
        """Start a worker process now; its handshake is awaited by the next call."""
        if self._closing:
            return
        try:
            popen = _spawn.start(self._spec.config_now(), self._spec.argv)
        except SpawnError as exc:
            self._spawn_error = exc
            return
        self._spawn_error = None
        self._conn = Conn(popen, self._limit)

    def ready(self) -> Conn:
        """The slot's worker, started and handshaken (one attempt; no retry loop)."""
        conn = self._conn
        if conn is not None and conn.ready:
            return conn
        if conn is None:
            if self._spawn_error is None:
                self.spawn()
            if self._spawn_error is not None:
                error, self._spawn_error = self._spawn_error, None
                raise error
            conn = self._conn
            assert conn is not None
        timeout = self._spec.settings.spawn_timeout
        try:
            conn.handshake(time.monotonic() + timeout)
        except (Deadline, Eof, Refused) as exc:
            self._conn = None
            if self.kill_reason is Kill.CLOSE:
                raise ClosedError("the handle was closed while its worker was starting") from None
            raise _spawn_error(exc, conn, timeout) from None
        return conn

    # -- calling -----------------------------------------------------------

    def call(self, payload: Any, timeout: float | None) -> Any:
        """Run one call on this slot's worker and return the raw result."""
        conn = self.ready()
        self._next_id += 1
        call_id = self._next_id
        packed = self._pack.call(call_id, payload)
        if len(packed) > self._limit:
            raise ValueError(
                f"the input takes {len(packed)} bytes, more than max_message_bytes "
                f"({self._limit}); raise max_message_bytes or send less"
            )
        deadline = time.monotonic() + timeout if timeout is not None else None
        if self.kill_reason is not None:
            conn.kill()
        try:
            message = conn.request(_wire.frame_packed(packed), deadline)
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
        if type(reply) is _protocol.Result:
            return reply.value
        assert isinstance(reply, _protocol.Error)
        error = TaskError(reply.type_name, reply.message, reply.traceback)
        error.__cause__ = _RemoteTraceback(reply.traceback)
        raise error

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
        if self._conn is conn:
            self._conn = None
        if not self._closing and self.kill_reason is not Kill.CLOSE:
            self.spawn()

    def restart(self, grace: float = 0.0) -> None:
        """Replace the worker: ask it to exit (its task's close() runs), wait up to
        ``grace`` seconds, kill it, then start a fresh one."""
        conn = self._conn
        if conn is not None:
            self._ask_to_exit(conn)
            conn.finish(grace)
            self._conn = None
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
        self._closing = True
        conn = self._conn
        if conn is not None:
            self._ask_to_exit(conn)

    @staticmethod
    def _ask_to_exit(conn: Conn) -> None:
        if conn.ready:
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

    def disown(self) -> None:
        """In a forked child: forget the parent's worker without touching it."""
        conn, self._conn = self._conn, None
        self._closing = True
        self.job_lock = threading.Lock()  # another thread may have held it at the fork
        if conn is not None:
            conn.disown()


def _spawn_error(exc: Exception, conn: Conn, spawn_timeout: float) -> SpawnError:
    """Why a worker never became ready, with its stderr."""
    tail = conn.stderr_tail()
    if isinstance(exc, Deadline):
        return SpawnError(
            f"the worker did not become ready within {spawn_timeout:g} s (spawn_timeout)", tail
        )
    if isinstance(exc, Refused):
        return SpawnError(str(exc), tail)
    exitcode, sig = describe_exit(conn.returncode)
    was = "was " if sig is not None else ""
    return SpawnError(f"the worker {was}{exit_text(exitcode, sig)} before it was ready", tail)
