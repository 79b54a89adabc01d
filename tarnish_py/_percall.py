"""``map`` one call at a time, for pools whose every call must pass through its slot.

::

    map(xs) with restore_on_crash, max_calls or max_memory
        -> submit(x) per input, about two per worker in flight (a Future each)
        -> results in input order, or as they finish

A batched map (``_batch``) runs inputs past the slot's per-call hooks: the
state kept for ``restore_on_crash`` and the counters of recycling. Pools with
those on use this slower path, which keeps every promise of ``map``: lazy
inputs, ``return_exceptions``, and an invalid input's ValidationError in its
place, after the results before it.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._future import CallFuture

__all__ = ["per_call_map"]

Submit = Callable[[Any], "cf.Future[Any]"]


def per_call_map(
    submit: Submit, inputs: Iterator[Any], window: int, ordered: bool, return_exceptions: bool
) -> Iterator[Any]:
    """The outcome of every input, each through ``submit``; at most ``window`` in flight."""
    if ordered:
        return _ordered(submit, inputs, window, return_exceptions)
    return _unordered(submit, inputs, window, return_exceptions)


def _submit(submit: Submit, item: Any) -> cf.Future[Any]:
    """The item's call; for an invalid input (or a closed pool), a done Future holding
    the error, which takes the item's place: the items before it come first."""
    try:
        return submit(item)
    except Exception as exc:
        failed: cf.Future[Any] = cf.Future()
        failed.set_exception(exc)
        return failed


def _failed_at_once(future: cf.Future[Any]) -> bool:
    return type(future) is cf.Future  # a CallFuture is a call; a plain Future an error


def _outcome(future: cf.Future[Any], return_exceptions: bool) -> Any:
    if not return_exceptions:
        return future.result()
    exc = future.exception()
    return exc if exc is not None else future.result()


def _drop(futures: Iterable[cf.Future[Any]]) -> None:
    # Drops queued calls, leaves running ones to finish.
    for future in futures:
        if isinstance(future, CallFuture):
            future.cancel_queued()


def _when_done(future: cf.Future[Any], done: queue.SimpleQueue[cf.Future[Any]]) -> None:
    if isinstance(future, CallFuture):
        future.add_hook(done.put)  # on the driver: no hop to the callback thread
    else:
        future.add_done_callback(done.put)


def _ordered(
    submit: Submit, inputs: Iterator[Any], window: int, return_exceptions: bool
) -> Iterator[Any]:
    pending: deque[cf.Future[Any]] = deque()
    try:
        for item in inputs:
            future = _submit(submit, item)
            pending.append(future)
            if not return_exceptions and _failed_at_once(future):
                break  # raised in its turn; no input after it is pulled
            if len(pending) >= window:
                yield _outcome(pending.popleft(), return_exceptions)
        while pending:
            yield _outcome(pending.popleft(), return_exceptions)
    finally:
        _drop(pending)


def _unordered(
    submit: Submit, inputs: Iterator[Any], window: int, return_exceptions: bool
) -> Iterator[Any]:
    done: queue.SimpleQueue[cf.Future[Any]] = queue.SimpleQueue()
    running: set[cf.Future[Any]] = set()
    try:
        exhausted = False
        while True:
            while not exhausted and len(running) < window:
                item = next(inputs, _END)
                if item is _END:
                    exhausted = True
                    break
                future = _submit(submit, item)
                running.add(future)
                _when_done(future, done)
                if not return_exceptions and _failed_at_once(future):
                    exhausted = True  # raised when it comes out; no input after it
            if not running:
                return
            finished = done.get()
            running.discard(finished)
            yield _outcome(finished, return_exceptions)
    finally:
        _drop(running)


_END: Any = object()
