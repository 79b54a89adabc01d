"""The Future of a submitted call, and where its done-callbacks run.

::

    driver thread (holds a worker)          callback thread (one per handle)
    ------------------------------          --------------------------------
    CallFuture.finish(result | error)
      state set, result() waiters woken
      library hooks run here (they only
      hand the outcome on: a queue put,
      loop.call_soon_threadsafe)
      user callbacks posted  ------------>  each callback in turn; any BaseException
                                            (SystemExit too) is logged on
                                            logging.getLogger("tarnish_py")

User code never runs on a thread that holds a worker or the dispatcher's lock:
a callback may close the handle, make another call on it, or raise
``SystemExit``, and no worker stalls. ``result()`` never waits for a callback.
The cost is one thread hop per future *that has callbacks*; a call nobody
attached a callback to costs nothing more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CallFuture", "CallbackRunner", "wait_async"]

LOGGER = logging.getLogger("tarnish_py")

_PENDING = "PENDING"
_RUNNING = "RUNNING"
_CANCELLED = "CANCELLED"
_NOTIFIED = "CANCELLED_AND_NOTIFIED"

Hook = Callable[["CallFuture"], None]


class CallbackRunner:
    """Runs the done-callbacks of one handle's futures, in order, on its own thread.

    The thread starts with the first callback and ends once the handle is closed
    and every callback posted has run. It is not a daemon: callbacks of calls
    failed at interpreter exit still run (the exit hook closes every handle first).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[CallFuture, list[Hook]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def post(self, future: CallFuture, callbacks: list[Hook]) -> None:
        self._queue.put((future, callbacks))
        here = False
        with self._lock:
            if self._closed:
                self._queue.put(None)  # the thread ends once this callback has run
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self._name, daemon=False)
                try:
                    thread.start()
                except RuntimeError:  # the interpreter is ending: no thread any more
                    here = True
                else:
                    self._thread = thread
        if here:
            self._drain_here()

    def close(self) -> None:
        """No new handle activity: end the thread once the queue is empty."""
        with self._lock:
            self._closed = True
        self._queue.put(None)

    def forget_after_fork(self) -> None:
        """In a forked child: the thread does not exist here."""
        self._lock = threading.Lock()
        self._thread = None
        self._closed = True
        self._queue = queue.SimpleQueue()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            _run_callbacks(*item)
            del item  # an idle thread keeps no future alive

    def _drain_here(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _run_callbacks(*item)


def _run_callbacks(future: CallFuture, callbacks: list[Hook]) -> None:
    for callback in callbacks:
        try:
            callback(future)
        except BaseException:  # SystemExit too: a callback never takes a thread down
            LOGGER.exception("a done-callback of %r raised", future)


class CallFuture(cf.Future):  # type: ignore[type-arg]
    """A Future whose ``cancel()`` also works while the call runs (it kills the
    worker), whose cancelled queued calls are done at once (``wait``,
    ``as_completed``), and whose callbacks run on the handle's callback thread."""

    def __init__(self, runner: CallbackRunner) -> None:
        super().__init__()
        # A C-level lock we can enter directly: ``with self._lock`` has no signal
        # check between taking the lock and entering the block, whereas a Ctrl-C
        # landing in Condition.__enter__ after it took the lock leaks it for good.
        self._lock = threading.RLock()
        self._condition = threading.Condition(self._lock)
        self._runner = runner
        self._hooks: list[Hook] = []
        #: Set while the call runs: kills its worker (cancel of a running call).
        self.on_cancel_running: Callable[[], None] | None = None

    # -- the dispatcher's side ---------------------------------------------

    def claim(self) -> bool:
        """PENDING -> RUNNING; False when cancelled. Idempotent: only the dispatcher
        moves a CallFuture to RUNNING, so a retry after an interrupt says True again."""
        with self._lock:
            state = self._state
            if state == _PENDING:
                self._state = _RUNNING
                return True
            if state == _CANCELLED:  # cancelled by the base class's cancel()
                self._state = _NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
            return bool(state == _RUNNING)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """Settle the call (unless it was cancelled); let go of the call's worker."""
        self.on_cancel_running = None
        try:
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(result)
        except cf.InvalidStateError:
            pass  # cancelled meanwhile: the outcome goes nowhere

    def add_hook(self, hook: Hook) -> None:
        """A library callback: runs on the thread that settles the future. It must
        be quick and must not raise or block (a queue put, a loop wake-up)."""
        with self._lock:
            if self._state not in (_PENDING, _RUNNING):
                done = True
            else:
                self._hooks.append(hook)
                done = False
        if done:
            hook(self)

    def cancel_queued(self) -> bool:
        """Cancel the call only if it has not started (running calls go on)."""
        with self._lock:
            if self._state != _PENDING:
                return False
        return self.cancel()

    # -- Future ------------------------------------------------------------

    def cancel(self) -> bool:
        with self._lock:
            state = self._state
            if state in (_CANCELLED, _NOTIFIED):
                return True
            if state not in (_PENDING, _RUNNING):
                return False
            kill = self.on_cancel_running if state == _RUNNING else None
            # Done at once, for wait() and as_completed() too: the dispatcher
            # drops a cancelled call when its turn comes.
            self._state = _NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        if kill is not None:
            kill()
        self._invoke_callbacks()
        return True

    def _invoke_callbacks(self) -> None:
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            try:
                hook(self)
            except Exception:  # pragma: no cover - hooks are ours and do not raise
                LOGGER.exception("internal callback of %r raised", self)
        callbacks: list[Hook] = list(self._done_callbacks)  # type: ignore[attr-defined]
        if callbacks:
            self._runner.post(self, callbacks)


async def wait_async(future: CallFuture) -> Any:
    """Await a CallFuture from asyncio; cancelling the awaiting task cancels the call."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def done(settled: CallFuture) -> None:
        try:
            loop.call_soon_threadsafe(_copy_outcome, settled, waiter)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    future.add_hook(done)
    try:
        return await waiter
    except asyncio.CancelledError:
        future.cancel()
        raise


def _copy_outcome(source: CallFuture, waiter: asyncio.Future[Any]) -> None:
    if waiter.done():
        return
    if source.cancelled():
        waiter.cancel()
        return
    error = source.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(source.result())
