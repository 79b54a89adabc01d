"""Slots, dispatch and lifecycle shared by ``Process`` (one slot) and ``ProcessPool``.

::

    call(x)    validate x -> acquire a free slot (round-robin; else wait, FIFO)
               -> Slot.call in the caller's own thread -> release -> validate result
    submit(x)  validate x -> a _Job in the same FIFO -> the slot's driver thread
               runs it -> Future
    Slot       one worker position: its Conn, replaced after a crash, timeout or
               protocol error (started at once, ready for the next call)

A caller's thread talks to the worker itself, so a synchronous call costs no
thread hop. A slot is held by exactly one thread at a time; other threads only
ever *kill* a slot's worker (close, cancel), never read, write or reap it.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import enum
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from . import _spawn, _wire
from ._conn import Conn, Deadline, Eof, describe_exit
from ._errors import ClosedError, ProtocolError, SpawnError, TaskError, TaskTimeout, WorkerCrashed

__all__ = ["CallFuture", "Dispatcher", "Options"]


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _Kill(enum.Enum):
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


class Options:
    """The settings of a handle, shared by its slots."""

    __slots__ = (
        "argv",
        "config",
        "max_message_bytes",
        "shutdown_timeout",
        "spawn_timeout",
        "timeout",
    )

    def __init__(
        self,
        module: str,
        name: str,
        *,
        timeout: float | None,
        shutdown_timeout: float,
        spawn_timeout: float,
        max_message_bytes: int,
    ) -> None:
        for what, value in (
            ("timeout", timeout),
            ("shutdown_timeout", shutdown_timeout),
            ("spawn_timeout", spawn_timeout),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
        if not isinstance(max_message_bytes, int) or max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be a positive int, not {max_message_bytes!r}")
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self.spawn_timeout = spawn_timeout
        self.max_message_bytes = max_message_bytes
        self.argv = _spawn.command_for(module, f"{module}.{name.lstrip('@')}")
        self.config = _spawn.WorkerConfig(
            module=module,
            name=name,
            max_message_bytes=max_message_bytes,
            parent_pid=os.getpid(),
            sys_path=None if module == "__main__" else _spawn.absolute_sys_path(),
        )

    def config_now(self) -> _spawn.WorkerConfig:
        """The config for a worker started now: it works in the parent's current folder."""
        try:
            cwd = os.getcwd()
        except OSError:  # pragma: no cover - the current folder was deleted
            cwd = None
        if cwd == self.config.cwd:
            return self.config
        self.config = dataclasses.replace(self.config, cwd=cwd)
        return self.config


class Slot:
    """One worker position: a Conn that is replaced whenever it fails."""

    def __init__(self, index: int, options: Options) -> None:
        self.index = index
        self.busy = False
        self.kill_reason: _Kill | None = None
        self.driver: _Driver | None = None
        # The submitted call running here, so that cancelling one call never
        # kills the next: a cancel acts only while its own call is in flight.
        self.job_lock = threading.Lock()
        self.current_job: _Job | None = None
        self._options = options
        self._conn: Conn | None = None
        self._spawn_error: SpawnError | None = None
        self._next_id = 0
        self._pack = _wire.packer()  # one holder at a time: a reused Packer is safe
        self._closing = False

    @property
    def pid(self) -> int | None:
        conn = self._conn
        return conn.pid if conn is not None else None

    def is_running(self) -> bool:
        conn = self._conn
        return conn is not None and conn.alive()

    def spawn(self) -> None:
        """Start a worker process now; its handshake is awaited by the next call."""
        if self._closing:
            return
        try:
            popen = _spawn.start(self._options.config_now(), self._options.argv)
        except SpawnError as exc:
            self._spawn_error = exc
            return
        self._spawn_error = None
        self._conn = Conn(popen, self._options.max_message_bytes)

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
        timeout = self._options.spawn_timeout
        try:
            conn.handshake(time.monotonic() + timeout, timeout)
        except SpawnError:
            self._conn = None
            if self.kill_reason is _Kill.CLOSE:
                raise ClosedError("the handle was closed while its worker was starting") from None
            raise
        return conn

    def call(self, payload: Any, timeout: float | None) -> Any:
        """Run one call on this slot's worker and return the raw result."""
        conn = self.ready()
        self._next_id += 1
        call_id = self._next_id
        packed = self._pack([_wire.CALL, call_id, payload])
        limit = self._options.max_message_bytes
        if len(packed) > limit:
            raise ValueError(
                f"the input takes {len(packed)} bytes, more than max_message_bytes ({limit}); "
                "raise max_message_bytes or send less"
            )
        deadline = time.monotonic() + timeout if timeout is not None else None
        if self.kill_reason is not None:
            conn.kill()
        try:
            message = conn.request(_wire.frame_packed(packed), deadline)
        except Eof:
            raise self._lost(conn) from None
        except Deadline:
            conn.kill()
            self._replace(conn)
            raise TaskTimeout(timeout or 0.0) from None
        except ProtocolError as exc:
            conn.kill()
            self._replace(conn)
            raise ProtocolError(f"the worker broke the protocol and was killed: {exc}") from exc
        except BaseException:
            # KeyboardInterrupt (or anything) mid-call: a half-read frame may be in
            # flight, so this worker is never reused.
            conn.kill()
            self._replace(conn)
            raise
        kind = message[0]
        if kind == _wire.RESULT and len(message) == 3 and message[1] == call_id:
            return message[2]
        if kind == _wire.ERROR and len(message) == 5 and message[1] == call_id:
            _, _, type_name, text, tb = message
            error = TaskError(str(type_name), str(text), str(tb))
            error.__cause__ = _RemoteTraceback(str(tb))
            raise error
        conn.kill()
        self._replace(conn)
        raise ProtocolError(f"unexpected reply to call {call_id}: {message!r:.200}")

    def _lost(self, conn: Conn) -> Exception:
        """The worker closed the channel: find out why, replace it, say what happened."""
        returncode = conn.finish()
        reason = self.kill_reason
        tail = conn.stderr_tail()
        self._replace(conn)
        if reason is _Kill.CLOSE:
            return ClosedError("the handle was closed while the call was running")
        if reason is _Kill.CANCEL:
            self.kill_reason = None  # handled: the replacement is not to be killed
            return cf.CancelledError()
        if conn.outlived_eof:
            return ProtocolError("the worker closed its channel but kept running; it was killed")
        exitcode, sig = describe_exit(returncode)
        return WorkerCrashed(exitcode, sig, tail)

    def _replace(self, conn: Conn) -> None:
        conn.finish()
        if self._conn is conn:
            self._conn = None
        if not self._closing and self.kill_reason is not _Kill.CLOSE:
            self.spawn()

    def restart(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.kill()
            conn.finish()
            self._conn = None
        self._spawn_error = None
        self.ready()

    def kill(self, reason: _Kill) -> None:
        """From any thread: kill the worker of a running call."""
        self.kill_reason = reason
        conn = self._conn
        if conn is not None:
            conn.kill()

    def cancel_job(self, job: _Job) -> None:
        """From any thread: kill the worker if (and only if) ``job`` is running on it."""
        with self.job_lock:
            if self.current_job is job:
                self.kill(_Kill.CANCEL)

    def end_job(self) -> None:
        """The holder, after a submitted call: a cancel that landed late (after the
        reply) has killed the worker, which must not serve the next call."""
        with self.job_lock:
            self.current_job = None
            late_cancel = self.kill_reason is _Kill.CANCEL
        if late_cancel:
            self.kill_reason = None
            conn = self._conn
            if conn is not None:
                conn.kill()
                self._replace(conn)

    def begin_shutdown(self) -> None:
        """Ask the (idle) worker to exit; the holder calls this."""
        self._closing = True
        conn = self._conn
        if conn is None:
            return
        if conn.ready:
            try:
                conn.send(_wire.encode_frame([_wire.SHUTDOWN]), time.monotonic() + 1.0)
            except (Eof, Deadline, OSError):
                conn.kill()
        else:
            conn.kill()

    def end_shutdown(self, deadline: float) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(max(0.0, deadline - time.monotonic()))


class CallFuture(cf.Future):  # type: ignore[type-arg]
    """A Future whose ``cancel()`` also works while the call runs: it kills the worker."""

    _on_cancel_running: Callable[[], None] | None = None

    def cancel(self) -> bool:
        with self._condition:
            if self._state != "RUNNING":
                return super().cancel()
            kill = self._on_cancel_running
            self._state = "CANCELLED_AND_NOTIFIED"
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        if kill is not None:
            kill()  # before the callbacks, which may take their time
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True


def _settle(future: CallFuture, result: Any = None, error: BaseException | None = None) -> None:
    if future.cancelled():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except cf.InvalidStateError:
        pass  # cancelled meanwhile: the outcome goes nowhere


class _Job:
    __slots__ = ("future", "payload", "timeout")

    def __init__(self, future: CallFuture, payload: Any, timeout: float | None) -> None:
        self.future = future
        self.payload = payload
        self.timeout = timeout


class _Waiter:
    """A synchronous caller waiting for a slot."""

    __slots__ = ("event", "slot")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.slot: Slot | None = None


class _Driver(threading.Thread):
    """Runs the submitted calls assigned to one slot."""

    def __init__(self, dispatcher: Dispatcher, slot: Slot) -> None:
        super().__init__(name=f"tarnish_py-driver-{slot.index}", daemon=True)
        self._dispatcher = dispatcher
        self._slot = slot
        self._cond = threading.Condition(threading.Lock())
        self._job: _Job | None = None
        self._stopping = False  # not _stop: that would hide Thread._stop

    def give(self, job: _Job) -> None:
        with self._cond:
            self._job = job
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._stopping:
                    self._cond.wait()
                if self._job is None:
                    return
                job, self._job = self._job, None
            next_job: _Job | None = job
            while next_job is not None:
                settle = self._dispatcher.run_job(self._slot, next_job)
                # Free the slot before the Future's callbacks run: one of them may
                # well close the handle, or make another call.
                next_job = self._dispatcher.release(self._slot, driver=self)
                settle()


class Dispatcher:
    """The machinery behind a handle; it never references the handle itself."""

    def __init__(
        self,
        options: Options,
        size: int,
        adapters: tuple[TypeAdapter[Any], TypeAdapter[Any]],
        in_type: Any = None,
        out_type: Any = None,
    ) -> None:
        self.options = options
        self.slots = [Slot(i, options) for i in range(size)]
        self._in, self._out = adapters
        self._dump_in = _wire.dumper(self._in, in_type)
        # A plain Out (int, str, bytes...) was validated in the worker and arrives as is.
        self._plain_out = _wire.is_plain(out_type)
        self._cond = threading.Condition(threading.Lock())
        self._waiters: deque[_Waiter | _Job] = deque()
        self._next = 0  # round-robin position
        self._state = _State.OPEN
        _live.add(self)

    # -- starting ----------------------------------------------------------

    def start(self) -> None:
        """Start every worker at once, then wait for each handshake."""
        for slot in self.slots:
            slot.spawn()
        try:
            for slot in self.slots:
                slot.ready()
        except BaseException:
            self.close(0.5)
            raise

    # -- dispatch ----------------------------------------------------------

    def _take_free(self) -> Slot | None:
        slots = self.slots
        n = len(slots)
        for k in range(n):
            slot = slots[(self._next + k) % n]
            if not slot.busy:
                slot.busy = True
                slot.kill_reason = None
                self._next = (slot.index + 1) % n
                return slot
        return None

    def acquire(self) -> Slot:
        with self._cond:
            if self._state is not _State.OPEN:
                raise ClosedError("the handle is closed")
            if not self._waiters:
                slot = self._take_free()
                if slot is not None:
                    return slot
            waiter = _Waiter()
            self._waiters.append(waiter)
        try:
            waiter.event.wait()
        except BaseException:
            with self._cond:
                if waiter.slot is None:
                    self._waiters.remove(waiter)
                    waiter.slot = None
            if waiter.slot is not None:
                self.release(waiter.slot)
            raise
        if waiter.slot is None:
            raise ClosedError("the handle was closed before the call started")
        return waiter.slot

    def release(self, slot: Slot, driver: _Driver | None = None) -> _Job | None:
        """Give the slot to the first waiter, or mark it free.

        Returns a job for ``driver`` to run next when the slot passes to a
        submitted call and the caller is that slot's own driver.
        """
        with self._cond:
            while self._waiters and self._state is _State.OPEN:
                waiter = self._waiters.popleft()
                if isinstance(waiter, _Waiter):
                    slot.kill_reason = None
                    waiter.slot = slot
                    waiter.event.set()
                    return None
                if not self._start_job(slot, waiter):
                    continue
                if driver is not None and driver is slot.driver:
                    return waiter
                self._driver(slot).give(waiter)
                return None
            slot.busy = False
            if self._state is not _State.OPEN:
                self._cond.notify_all()  # close() is waiting for the slot
        return None

    def _start_job(self, slot: Slot, job: _Job) -> bool:
        slot.kill_reason = None
        with slot.job_lock:
            slot.current_job = job
        job.future._on_cancel_running = lambda: slot.cancel_job(job)
        if job.future.set_running_or_notify_cancel():
            return True
        with slot.job_lock:
            slot.current_job = None
        return False

    def _driver(self, slot: Slot) -> _Driver:
        if slot.driver is None:
            slot.driver = _Driver(self, slot)
            slot.driver.start()
        return slot.driver

    # -- calls -------------------------------------------------------------

    def call(self, value: Any, timeout: float | None) -> Any:
        payload = self._in.validate_python(value)
        if self._dump_in is not None:
            payload = self._dump_in(payload)
        slot = self.acquire()
        try:
            raw = slot.call(payload, timeout if timeout is not None else self.options.timeout)
        finally:
            self.release(slot)
        return raw if self._plain_out else self._out.validate_python(raw)

    def submit(self, value: Any, timeout: float | None) -> CallFuture:
        payload = self._in.validate_python(value)
        if self._dump_in is not None:
            payload = self._dump_in(payload)
        job = _Job(CallFuture(), payload, timeout)
        with self._cond:
            if self._state is not _State.OPEN:
                raise ClosedError("the handle is closed")
            slot = None if self._waiters else self._take_free()
            if slot is None:
                self._waiters.append(job)
                return job.future
            started = self._start_job(slot, job)
        if started:
            self._driver(slot).give(job)
        else:  # pragma: no cover - nobody can cancel a future not yet returned
            self.release(slot)
        return job.future

    def run_job(self, slot: Slot, job: _Job) -> Callable[[], None]:
        """Run a submitted call on ``slot``; return what settles its Future."""
        future = job.future
        timeout = job.timeout if job.timeout is not None else self.options.timeout
        try:
            try:
                raw = slot.call(job.payload, timeout)
            finally:
                slot.end_job()
            result = self._out.validate_python(raw)
        except BaseException as exc:
            error = exc
            return lambda: _settle(future, error=error)
        return lambda: _settle(future, result=result)

    # -- closing -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state is not _State.OPEN

    def close(self, timeout: float | None = None) -> None:
        """Refuse new calls, let running ones finish until the deadline, then kill."""
        with self._cond:
            if self._state is not _State.OPEN:
                while self._state is not _State.CLOSED:
                    self._cond.wait(0.1)
                return
            self._state = _State.CLOSING
            queued = list(self._waiters)
            self._waiters.clear()
        owned: list[Slot] = []
        try:
            self._fail_queued(queued)
            self._shut_down(timeout, owned)
        except BaseException:
            # Interrupted (Ctrl-C): nothing graceful is left to wait for.
            for slot in self.slots:
                slot.kill(_Kill.CLOSE)
            for slot in owned:
                slot.end_shutdown(time.monotonic())
            raise
        finally:
            for slot in self.slots:
                if slot.driver is not None:
                    slot.driver.stop()
            with self._cond:
                self._state = _State.CLOSED
                self._cond.notify_all()
            _live.discard(self)

    def _fail_queued(self, queued: list[_Waiter | _Job]) -> None:
        for waiter in queued:
            if isinstance(waiter, _Waiter):
                waiter.event.set()  # slot None: ClosedError in acquire()
            elif not waiter.future.cancelled():
                try:
                    waiter.future.set_exception(
                        ClosedError("the handle was closed before the call started")
                    )
                except cf.InvalidStateError:
                    pass
    def _shut_down(self, timeout: float | None, owned: list[Slot]) -> None:
        """Take every slot as its call ends (killing those past the deadline), then
        ask each worker to exit and reap it."""
        grace = self.options.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + grace
        killed = False
        with self._cond:
            while True:
                for slot in self.slots:
                    if not slot.busy:
                        slot.busy = True
                        owned.append(slot)
                if len(owned) == len(self.slots):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not killed:
                    killed = True
                    for slot in self.slots:
                        if slot not in owned:
                            slot.kill(_Kill.CLOSE)
                    deadline = time.monotonic() + 10.0  # the holder only has to reap
                elif remaining <= 0:
                    break  # pragma: no cover - a holder that never lets go
                self._cond.wait(max(remaining, 0.01))
        for slot in owned:
            slot.begin_shutdown()
        for slot in owned:
            slot.end_shutdown(deadline if not killed else time.monotonic())


_live: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_installed = False


def close_all_at_exit() -> None:
    for dispatcher in list(_live):
        try:
            dispatcher.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass


def install_exit_hook() -> None:
    """Close every handle at interpreter exit, before threads are joined.

    ``threading._register_atexit`` hooks run before non-daemon threads are
    joined (and before concurrent.futures joins its own), so a thread stuck in a
    call is released with ClosedError instead of hanging the exit.
    """
    global _exit_hook_installed
    with _exit_hook_lock:
        if _exit_hook_installed:
            return
        _exit_hook_installed = True
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(close_all_at_exit)
            return
        except RuntimeError:  # pragma: no cover - already shutting down
            pass
    import atexit

    atexit.register(close_all_at_exit)
