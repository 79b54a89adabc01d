"""Dispatch and lifecycle shared by ``Process`` (one slot) and ``ProcessPool``.

::

    call(x)    Codec.encode_input(x) -> acquire a free slot (round-robin; else wait,
               FIFO) -> Slot.call in the caller's own thread -> release ->
               Codec.decode_output
    submit(x)  Codec.encode_input(x) -> a _Job in the same FIFO -> the slot's driver
               thread runs it -> Future
    close()    refuse new calls, fail queued ones, let running ones finish until
               shutdown_timeout, then kill; every handle is closed at exit

A caller's thread talks to the worker itself, so a synchronous call costs no
thread hop. A slot is held by exactly one thread at a time; other threads only
ever *kill* a slot's worker (close, cancel), never read, write or reap it.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ._errors import ClosedError, TarnishError, for_call
from ._settings import check_call_timeout
from ._slot import Kill, Slot, WorkerSpec
from ._task import Codec

__all__ = ["CallFuture", "Dispatcher", "install_exit_hook"]


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


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
    __slots__ = ("future", "input", "payload", "timeout")

    def __init__(
        self, future: CallFuture, input: Any, payload: Any, timeout: float | None
    ) -> None:
        self.future = future
        self.input = input  # validated: errors carry it
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

    def __init__(self, spec: WorkerSpec, size: int, codec: Codec) -> None:
        self.spec = spec
        self.settings = spec.settings
        self.slots = [Slot(i, spec) for i in range(size)]
        self._codec = codec
        self._cond = threading.Condition(threading.Lock())
        self._waiters: deque[_Waiter | _Job] = deque()
        self._next = 0  # round-robin position
        self._state = _State.OPEN
        #: Run first in close(), with the grace in seconds: a batched map (``_batch``)
        #: suspended between its results lets go of the workers it holds.
        self.close_hooks: list[Callable[[float], None]] = []
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
        driver: _Driver | None = slot.driver
        if driver is None:
            driver = slot.driver = _Driver(self, slot)
            driver.start()
        return driver

    # -- calls -------------------------------------------------------------

    def call(self, value: Any, timeout: float | None) -> Any:
        if timeout is not None:
            check_call_timeout(timeout)
        value = self._codec.validate_input(value)
        payload = self._codec.dump_input(value)
        try:
            slot = self.acquire()
        except TarnishError as exc:  # closed
            for_call(exc, value, None)
            raise
        try:
            raw = slot.call(payload, timeout if timeout is not None else self.settings.timeout)
        except TarnishError as exc:
            for_call(exc, value, slot.call_pid)  # before release: the slot is still ours
            raise
        finally:
            self.release(slot)
        return self._codec.decode_output(raw)

    def submit(self, value: Any, timeout: float | None) -> CallFuture:
        if timeout is not None:
            check_call_timeout(timeout)
        value = self._codec.validate_input(value)
        job = _Job(CallFuture(), value, self._codec.dump_input(value), timeout)
        with self._cond:
            if self._state is not _State.OPEN:
                raise for_call(ClosedError("the handle is closed"), value, None)
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
        timeout = job.timeout if job.timeout is not None else self.settings.timeout
        try:
            try:
                raw = slot.call(job.payload, timeout)
            finally:
                slot.end_job()
            result = self._codec.decode_output(raw)
        except BaseException as exc:
            if isinstance(exc, TarnishError):
                for_call(exc, job.input, slot.call_pid)
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
            grace = self.settings.shutdown_timeout if timeout is None else timeout
            for hook in list(self.close_hooks):
                hook(grace)
            self._fail_queued(queued)
            self._shut_down(timeout, owned)
        except BaseException:
            # Interrupted (Ctrl-C): nothing graceful is left to wait for.
            for slot in self.slots:
                slot.kill(Kill.CLOSE)
            for slot in owned:
                slot.end_shutdown(time.monotonic())
            raise
        finally:
            for slot in self.slots:
                if slot.driver is not None:
                    slot.driver.stop()
            self.spec.launcher.close()  # the fork server, once its workers are gone
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
                        for_call(
                            ClosedError("the handle was closed before the call started"),
                            waiter.input,
                            None,
                        )
                    )
                except cf.InvalidStateError:
                    pass

    def _shut_down(self, timeout: float | None, owned: list[Slot]) -> None:
        """Take every slot as its call ends (killing those past the deadline), then
        ask each worker to exit and reap it."""
        grace = self.settings.shutdown_timeout if timeout is None else timeout
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
                            slot.kill(Kill.CLOSE)
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
