"""Dispatch and lifecycle shared by ``Process`` (one slot) and ``ProcessPool``.

::

    call(x)    Codec.encode_input(x) -> a _Waiter token takes a free slot (round-robin;
               else it waits in the FIFO) -> Slot.call in the caller's own thread ->
               the token gives the slot back (to the next in line) -> decode_output
    submit(x)  Codec.encode_input(x) -> a _Job in the same FIFO -> the slot's driver
               thread runs it -> CallFuture (callbacks: see ``_future``)
    close()    refuse new calls; a closer thread (every caller joins it) fails the
               queued calls, lets running ones finish until the grace ends, then
               kills; it never waits for a slot held by a thread that is in close()

A caller's thread talks to the worker itself, so a synchronous call costs no
thread hop. Who holds each slot is written in one table, ``_holders`` (a token,
a job, or the closer); other threads only ever *kill* a slot's worker (close,
cancel), never read, write or reap it.

Ctrl-C can raise KeyboardInterrupt in the main thread wherever the interpreter
checks for signals: at a call, a return, a loop's back edge. So:

- every change of the tables is a straight run of stores ending in at most one
  C call, under a C-level lock (``with lock:``; never a Condition's Python-level
  ``__enter__``): an interrupt lands before it or after it, never inside;
- what a caller holds or waits for is recorded on its token, not in a local
  variable an interrupt could lose, and giving the token back is idempotent and
  retried once if a second Ctrl-C lands in it (the retry wraps the call: a
  call's entry is itself a place where an interrupt can land);
- a driver thread is started with its dispatcher, so handing it a job is one
  ``SimpleQueue.put``;
- close() runs on its own thread: an interrupt only tells it to hurry.

User code never runs on a driver (see ``_future``), so no callback can wait
for the slot its own thread holds.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from . import _lifecycle
from ._errors import ClosedError, TarnishError, for_call
from ._future import CallbackRunner, CallFuture
from ._settings import check_call_timeout
from ._slot import Kill, Slot
from ._task import Codec
from ._workerspec import WorkerSpec

__all__ = ["CallFuture", "Dispatcher"]

T = TypeVar("T")

_REAP_GRACE = 3.0  # after a kill, how long the holder of a slot may take to let go
_HURRIED_GRACE = 0.25  # idle workers' grace when Ctrl-C is ending the program
_get_ident = threading.get_ident


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_OPEN = _State.OPEN  # a module global: read on every call


class _Waiter:
    """A synchronous caller's claim on a slot: granted (``slot``), or waiting (``lock``)."""

    __slots__ = ("ident", "lock", "slot")

    def __init__(self) -> None:
        self.slot: Slot | None = None
        self.lock: Any = None  # a held _thread lock; released to wake the caller
        self.ident = _get_ident()

    def wake(self) -> None:
        try:
            self.lock.release()
        except RuntimeError:  # woken already (a retried hand-over)
            pass


class _Job:
    """A submitted call; ``given`` once it is on its driver's queue."""

    __slots__ = ("future", "given", "input", "payload", "timeout")

    def __init__(
        self, future: CallFuture, input: Any, payload: Any, timeout: float | None
    ) -> None:
        self.future = future
        self.input = input  # validated: errors carry it
        self.payload = payload
        self.timeout = timeout
        self.given = False


_CLOSER = object()  # the holder of a slot that close() has taken


class _Driver:
    """The thread that runs the submitted calls assigned to one slot."""

    def __init__(self, dispatcher: Dispatcher, slot: Slot) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self._run, args=(dispatcher, slot), name=f"tarnish_py-driver-{slot.index}",
            daemon=True,
        )

    def _run(self, dispatcher: Dispatcher, slot: Slot) -> None:
        jobs = self.jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            dispatcher.serve(slot, job)
            job = None  # an idle driver keeps nothing of a finished call


class Dispatcher:
    """The machinery behind a handle; it never references the handle itself."""

    def __init__(self, spec: WorkerSpec, size: int, codec: Codec) -> None:
        self.spec = spec
        self.settings = spec.settings
        self.slots = [Slot(i, spec) for i in range(size)]
        self._codec = codec
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters: deque[_Waiter | _Job] = deque()
        self._holders: list[object | None] = [None] * size
        self._left: set[int] = set()  # slots close() left to their holder to reap
        self._next = 0  # round-robin position
        self._after = [(i + 1) % size for i in range(size)]  # the position after each slot
        self._state = _State.OPEN
        # Closing: the closer thread, the threads waiting for it, what it works on.
        self._closer: threading.Thread | None = None
        self._closer_lock = threading.Lock()
        self._closer_ran = False
        self._joiners: set[int] = set()
        self._hurry = False
        self._grace = self.settings.shutdown_timeout
        self._queued_at_close: list[_Waiter | _Job] = []
        self._runner = CallbackRunner(f"tarnish_py-callbacks-{spec.config.name}")
        self._drivers = [_Driver(self, slot) for slot in self.slots]
        #: Run first in close(), with the grace in seconds: a batched map (``_batch``)
        #: suspended between its results lets go of the workers it holds.
        self.close_hooks: list[Callable[[float], None]] = []
        _lifecycle.register(self)

    # -- starting ----------------------------------------------------------

    def start(self) -> None:
        """Start every worker at once, then wait for each handshake."""
        try:
            for driver in self._drivers:
                driver.thread.start()
            for slot in self.slots:
                slot.spawn()
            for slot in self.slots:
                slot.ready()
        except BaseException:
            self.close(0.5)
            raise

    # -- taking and giving back a slot -------------------------------------

    def _free_index(self) -> int:
        holders = self._holders
        n = len(holders)
        for k in range(n):
            i = (self._next + k) % n
            if holders[i] is None:
                return i
        return -1

    def _acquire(self, token: _Waiter) -> Slot:
        """A slot for ``token``'s caller; the caller must give the token back."""
        with self._lock:
            if self._state is not _OPEN:
                raise ClosedError("the handle is closed")
            i = self._next  # uncontended, the slot in turn is free: no search
            if self._holders[i] is not None or self._waiters:
                i = -1 if self._waiters else self._free_index()
            if i >= 0:
                slot = self.slots[i]
                slot.kill_reason = None
                token.slot = slot
                self._holders[i] = token
                self._next = self._after[i]
                return slot
            lock = threading.Lock()
            lock.acquire()
            token.lock = lock
            self._waiters.append(token)
        token.lock.acquire()  # released by whoever hands us a slot, or by close()
        granted = token.slot
        if granted is None:
            raise ClosedError("the handle was closed before the call started")
        return granted

    def try_acquire(self) -> Slot | None:
        """A free slot now, or None: never waits, never jumps the FIFO of waiting
        callers (a batched map borrows workers so). Give it back with ``release``."""
        token = _Waiter()
        with self._lock:
            if self._state is not _State.OPEN or self._waiters:
                return None
            i = self._free_index()
            if i < 0:
                return None
            slot = self.slots[i]
            slot.kill_reason = None
            token.slot = slot
            self._holders[i] = token
            self._next = (i + 1) % len(self.slots)
            return slot

    def give_back(self, token: _Waiter) -> None:
        """Give back whatever ``token`` holds or waits for; safe to repeat."""
        slot = token.slot
        if slot is None:
            with self._lock:
                slot = token.slot
                if slot is None:
                    try:
                        self._waiters.remove(token)
                    except ValueError:
                        pass
                    return
        self._pass_on(slot, token)

    def acquire(self, token: _Waiter | None = None) -> Slot:
        """Take a slot (waiting for one); give it back with ``release`` or ``give_back``."""
        if token is None:
            token = _Waiter()
        try:
            return self._acquire(token)
        except BaseException:
            self._give_back_interrupted(token)
            raise

    def release(self, slot: Slot) -> None:
        self._pass_on(slot, self._holders[slot.index])

    def hold(self, fn: Callable[[Slot], T]) -> T:
        """Run ``fn(slot)`` holding a slot (waiting for one)."""
        token = _Waiter()
        try:
            result = fn(self._acquire(token))
        except BaseException:
            self._give_back_interrupted(token)
            raise
        try:
            self.give_back(token)
        except BaseException:  # a Ctrl-C landed in it: finish, then let it through
            self.give_back(token)
            raise
        return result

    def _give_back_interrupted(self, token: _Waiter) -> None:
        """``give_back`` while an exception is on its way up. The interpreter may
        raise a second Ctrl-C at the very entry of a call, so the retry wraps the
        call; that second one is absorbed (one traceback is enough)."""
        try:
            self.give_back(token)
        except BaseException:
            self.give_back(token)

    def _pass_on(self, slot: Slot, holder: object) -> _Job | None:
        """Hand the slot ``holder`` holds to the first in line, or mark it free.

        Idempotent: run again after an interrupt, it only finishes waking whoever
        holds the slot now. Returns the next job when ``holder`` is a job (its
        driver runs the next one itself).
        """
        i = slot.index
        job: _Job | None = None
        reap = False
        with self._lock:
            if self._holders[i] is holder and not self._waiters and self._state is _OPEN:
                self._holders[i] = None  # the common case: nobody waits, nothing to hand on
                return None
            if self._holders[i] is holder:
                if self._waiters and self._state is _State.OPEN:
                    self._grant_next(slot)
                else:
                    self._holders[i] = None
                    if self._state is not _State.OPEN:
                        reap = i in self._left
                        self._cond.notify_all()  # close() may wait for this slot
            current = self._holders[i]
            if type(current) is _Job and not current.given:
                current.given = True
                if type(holder) is _Job:
                    job = current
                else:
                    self._drivers[i].jobs.put(current)
        if type(current) is _Waiter and current is not holder:
            current.wake()
        elif reap:  # close() did not wait for this slot: its holder shuts it down
            slot.begin_shutdown()
            slot.end_shutdown(time.monotonic())
        return job

    def _grant_next(self, slot: Slot) -> None:
        """Under the lock: the slot goes to the first waiter or live job, else it is free."""
        i = slot.index
        waiters = self._waiters
        while waiters:
            first = waiters[0]
            if type(first) is _Waiter:
                slot.kill_reason = None
                first.slot = slot
                self._holders[i] = first
                waiters.popleft()
                return
            assert isinstance(first, _Job)
            if first.future.claim():  # idempotent: a retry finds it RUNNING
                self._start_job(slot, first)
                self._holders[i] = first
                waiters.popleft()
                return
            waiters.popleft()  # cancelled while queued
        self._holders[i] = None

    def _start_job(self, slot: Slot, job: _Job) -> None:
        slot.kill_reason = None
        with slot.job_lock:
            slot.current_job = job
        job.future.on_cancel_running = partial(slot.cancel_job, job)

    # -- calls -------------------------------------------------------------

    def call(self, value: Any, timeout: float | None) -> Any:
        if timeout is not None:
            check_call_timeout(timeout)
        codec = self._codec
        if type(value) is codec.plain_in:  # validates to itself (``Codec.plain_in``)
            payload = value
        else:
            value = codec.validate_input(value)
            payload = codec.dump_input(value)
        token = _Waiter()
        slot: Slot | None = None
        try:
            with self._lock:  # _acquire's uncontended case inlined: the slot in turn is free
                i = self._next
                if self._holders[i] is None and not self._waiters and self._state is _OPEN:
                    slot = self.slots[i]
                    slot.kill_reason = None
                    token.slot = slot
                    self._holders[i] = token
                    self._next = self._after[i]
            if slot is None:
                slot = self._acquire(token)
            raw = slot.call(payload, timeout if timeout is not None else self.settings.timeout)
        except BaseException as exc:
            try:
                if isinstance(exc, TarnishError):  # name the call's input and worker
                    for_call(exc, value, None if slot is None else slot.call_pid)
            finally:
                try:
                    self.give_back(token)
                except BaseException:  # a second Ctrl-C: absorbed, the first is on its way up
                    self.give_back(token)
            raise
        try:
            with self._lock:  # _pass_on's common case inlined: nobody waits
                i = slot.index
                free = self._holders[i] is token and not self._waiters and self._state is _OPEN
                if free:
                    self._holders[i] = None
            if not free:
                self._pass_on(slot, token)
        except BaseException:  # a Ctrl-C landed in it: finish, then let it through
            self.give_back(token)
            raise
        return raw if type(raw) is codec.plain_out else codec.decode_output(raw)

    def submit(self, value: Any, timeout: float | None) -> CallFuture:
        if timeout is not None:
            check_call_timeout(timeout)
        value = self._codec.validate_input(value)
        payload = self._codec.dump_input(value)
        future = CallFuture(self._runner)
        job = _Job(future, value, payload, timeout)
        with self._lock:
            if self._state is not _State.OPEN:
                raise for_call(ClosedError("the handle is closed"), value, None)
            i = -1 if self._waiters else self._free_index()
            if i < 0:
                self._waiters.append(job)
                return future
            slot = self.slots[i]
            future.claim()  # nobody else has this future yet
            self._start_job(slot, job)
            job.given = True
            self._holders[i] = job
            self._next = (i + 1) % len(self.slots)
            self._drivers[i].jobs.put(job)
        return future

    def serve(self, slot: Slot, job: _Job | None) -> None:
        """On ``slot``'s driver: run ``job``, and the jobs the slot passes to next."""
        while job is not None:
            settle = self._run_job(slot, job)
            # Free the slot before the Future settles: a caller woken by the
            # result finds the worker free.
            job = self._pass_on(slot, job)
            settle()

    def _run_job(self, slot: Slot, job: _Job) -> Callable[[], None]:
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
            return partial(future.finish, None, exc)
        return partial(future.finish, result)

    # -- closing -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state is not _State.OPEN

    def close(
        self, timeout: float | None = None, *, hurry: bool = False, wait: bool = True
    ) -> None:
        """Refuse new calls, let running ones finish until the deadline, then kill.

        The work is done by a closer thread that every caller joins, so a Ctrl-C
        never lands in the middle of it: it only tells the closer to hurry.
        ``hurry`` (Ctrl-C is ending the program): running calls are killed at
        once, idle workers get a short grace. A slot held by a thread that is
        itself in close() (a signal handler interrupted its call) is killed, never
        waited for. ``wait=False`` only starts the closing.
        """
        me = _get_ident()
        new = threading.Thread(target=self._close, name="tarnish_py-close", daemon=False)
        with self._lock:
            if self._state is _State.OPEN:
                self._state = _State.CLOSING
                self._queued_at_close = list(self._waiters)
                self._waiters.clear()
                self._grace = self.settings.shutdown_timeout if timeout is None else timeout
                self._closer = new
            closer = self._closer
            self._joiners.add(me)
            if hurry:
                self._hurry = True
        if closer is None:  # a forked child's copy: closed from the start
            return
        try:
            with self._closer_lock:
                if closer.ident is None and not self._closer_ran:
                    try:
                        closer.start()
                    except RuntimeError:  # the interpreter is ending: close on this thread
                        self._close()
            if wait:
                closer.join()
        except BaseException:
            self._hurry = True  # Ctrl-C while closing: the closer kills what still runs
            raise

    def close_hurried(self) -> None:
        """Close with no grace for running calls, absorbing a further Ctrl-C: one is
        already on its way up (``with`` left by KeyboardInterrupt)."""
        for _ in _lifecycle.TRIES:
            try:
                self.close(hurry=True)
                return
            except BaseException:
                continue

    def _close(self) -> None:
        """On the closer thread: fail the queued calls, shut every slot down."""
        self._closer_ran = True
        owned: list[Slot] = []
        try:
            for hook in list(self.close_hooks):
                hook(self._grace)
            self._fail_queued(self._queued_at_close)
            self._queued_at_close = []
            self._shut_down(owned)
        except BaseException:  # pragma: no cover - a bug: never leave workers behind
            for slot in self.slots:
                slot.kill(Kill.CLOSE)
            for slot in owned:
                slot.end_shutdown(time.monotonic())
            raise
        finally:
            for driver in self._drivers:
                driver.jobs.put(None)
            self._runner.close()
            self.spec.launcher.close()  # the fork server, once its workers are gone
            with self._lock:
                self._state = _State.CLOSED
                self._cond.notify_all()
            _lifecycle.forget(self)

    def _fail_queued(self, queued: list[_Waiter | _Job]) -> None:
        for waiter in queued:
            if type(waiter) is _Waiter:
                waiter.wake()  # slot None: ClosedError in _acquire()
            elif waiter.future.claim():  # type: ignore[union-attr]
                error = ClosedError("the handle was closed before the call started")
                for_call(error, waiter.input, None)  # type: ignore[union-attr]
                waiter.future.finish(None, error)  # type: ignore[union-attr]

    def _shut_down(self, owned: list[Slot]) -> None:
        """Take every slot as its call ends and ask its worker to exit at once; kill
        the calls still running at the deadline; reap."""
        start = time.monotonic()
        deadline = start + self._grace
        killed = False
        while True:
            taken, waiting = self._take_slots(owned)
            owned.extend(taken)
            for slot in taken:
                slot.begin_shutdown()
            if not waiting:
                break
            if taken:
                continue
            now = time.monotonic()
            if self._hurry:
                deadline = min(deadline, now)
            if now < deadline:
                with self._lock:
                    self._cond.wait(min(deadline - now, 0.1))
            elif not killed:
                killed = True
                deadline = now + _REAP_GRACE  # the holders only have to reap
                for i in waiting:
                    self.slots[i].kill(Kill.CLOSE)
            else:  # holders that never let go: theirs to reap
                with self._lock:
                    self._left.update(waiting)
                break
        idle_grace = min(self._grace, _HURRIED_GRACE) if self._hurry else self._grace
        for slot in owned:
            slot.end_shutdown(start + idle_grace)

    def _take_slots(self, owned: list[Slot]) -> tuple[list[Slot], list[int]]:
        """The free slots, now the closer's; and the slots still held by others. A
        slot held by a thread waiting in close() is killed and left to that thread:
        it reaps the worker when it resumes."""
        taken: list[Slot] = []
        waiting: list[int] = []
        with self._lock:
            for i, slot in enumerate(self.slots):
                if slot in owned or i in self._left:
                    continue
                if self._holders[i] is None:
                    self._holders[i] = _CLOSER
                    taken.append(slot)
                elif self._holder_ident(i) in self._joiners:
                    self._left.add(i)
                    slot.kill(Kill.CLOSE)
                else:
                    waiting.append(i)
        return taken, waiting

    def _holder_ident(self, i: int) -> int | None:
        holder = self._holders[i]
        if type(holder) is _Waiter:
            return holder.ident
        return self._drivers[i].thread.ident if type(holder) is _Job else None

    # -- fork --------------------------------------------------------------

    def forget_after_fork(self) -> None:
        """In a forked child: dead (ClosedError), and never touching the parent's
        workers. The locks are new: another thread may have held them at the fork."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closer_lock = threading.Lock()
        self._closer = None
        self._state = _State.CLOSED
        self._waiters = deque()
        for slot in self.slots:
            slot.disown()
        self._runner.forget_after_fork()
