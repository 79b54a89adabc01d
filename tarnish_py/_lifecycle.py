"""What happens to every live handle at interpreter exit, at fork, and when a
handle is garbage collected.

::

    Dispatcher created    register(d)            a weak set of live dispatchers
    handle collected      close_later(d)         queued; a fresh low-level thread closes
    interpreter exit      close_all_at_exit()    before threads are joined; no grace for
                                                 running calls after an unhandled Ctrl-C
    os.fork() (child)     every live d.forget_after_fork(): dead here, touches nothing

Why a collected handle is closed on another thread: the garbage collector runs
on whatever thread happens to allocate, maybe a driver thread holding a worker,
maybe a thread inside the dispatcher's lock. Closing there would wait for
itself. ``close_later`` only puts the dispatcher on a queue (safe in a
finalizer) and starts a ``_thread`` thread, which takes none of
``threading``'s Python-level locks (a collection can run while one is held)
and only starts the dispatcher's closer thread.
"""

from __future__ import annotations

import _thread
import os
import queue
import sys
import threading
import weakref
from typing import Protocol

__all__ = ["close_all_at_exit", "close_later", "install_exit_hook", "register"]

# A second Ctrl-C can land in the clean-up of the first: each clean-up is
# retried this many times before an interrupt gets through.
TRIES = (1, 2, 3)


class Closable(Protocol):
    @property
    def closed(self) -> bool: ...

    def close(
        self, timeout: float | None = None, *, hurry: bool = False, wait: bool = True
    ) -> None: ...

    def forget_after_fork(self) -> None: ...


_live: weakref.WeakSet[Closable] = weakref.WeakSet()
_to_close: queue.SimpleQueue[Closable] = queue.SimpleQueue()
_exit_hook_lock = threading.Lock()
_exit_hook_installed = False


def register(dispatcher: Closable) -> None:
    _live.add(dispatcher)


def forget(dispatcher: Closable) -> None:
    _live.discard(dispatcher)


# -- garbage collection ----------------------------------------------------------


def close_later(dispatcher: Closable) -> None:
    """The finalizer of a handle: close its dispatcher soon, on a thread of its own."""
    if dispatcher.closed:
        return
    _to_close.put(dispatcher)  # SimpleQueue.put is safe in a finalizer
    try:
        _thread.start_new_thread(_close_queued, ())
    except RuntimeError:  # pragma: no cover - the interpreter is ending: the exit hook closes
        pass


def _close_queued() -> None:
    while True:
        try:
            dispatcher = _to_close.get_nowait()
        except queue.Empty:
            return
        try:
            # Only start it: waiting here (Thread.join) would register this
            # low-level thread with threading for good.
            dispatcher.close(wait=False)
        except BaseException:  # pragma: no cover - nothing to report to, nobody waiting
            pass
        del dispatcher


# -- interpreter exit ----------------------------------------------------------


def _ended_by_ctrl_c() -> bool:
    # After an unhandled exception the interpreter sets sys.last_type before
    # it runs the threading exit hooks.
    last = getattr(sys, "last_type", None)
    return isinstance(last, type) and issubclass(last, KeyboardInterrupt)


def close_all_at_exit() -> None:
    """Close every live handle. When Ctrl-C ends the program (or comes while
    closing), running calls are killed at once instead of waited for, and a
    further Ctrl-C is absorbed: one traceback is enough."""
    hurry = _ended_by_ctrl_c()
    for dispatcher in list(_live):
        for _ in TRIES:
            try:
                dispatcher.close(hurry=hurry)
                break
            except BaseException:  # Ctrl-C while closing: hurry up, say nothing
                hurry = True


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
    register_hook = getattr(threading, "_register_atexit", None)
    if register_hook is not None:
        try:
            register_hook(close_all_at_exit)
            return
        except RuntimeError:  # pragma: no cover - already shutting down
            pass
    import atexit

    atexit.register(close_all_at_exit)


# -- fork ------------------------------------------------------------------------


def _after_fork_in_child() -> None:
    # The child owns none of the parent's workers: its inherited handles are dead
    # (ClosedError) and must never signal, message or reap those workers.
    global _to_close
    dispatchers = list(_live)
    _live.clear()
    _to_close = queue.SimpleQueue()
    for dispatcher in dispatchers:
        dispatcher.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
