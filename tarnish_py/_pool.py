"""``ProcessPool``: N crash-isolated workers behind one handle.

::

    call(x)   caller's thread takes the next free worker in round-robin order
              (or waits in FIFO order) and talks to it directly
    submit(x) the call joins the same FIFO; the worker's driver thread runs it
    map(xs)   lazy: keeps about two calls per worker in flight, yields results
              in input order (or as they finish), pulling inputs as it goes

A crash fails only the call that crashed; that worker is replaced and the pool
keeps its size.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Literal, overload

from ._future import CallFuture
from ._handle import _Handle
from ._settings import DEFAULTS, Settings
from ._task import In, Out, Task

__all__ = ["ProcessPool"]

_IN_FLIGHT_PER_WORKER = 2


class ProcessPool(_Handle[In, Out]):
    """A pool of ``size`` worker processes running ``task`` (default: one per CPU).

    >>> with ProcessPool(Double, size=2) as pool:        # doctest: +SKIP
    ...     list(pool.map(range(5)))
    [0, 2, 4, 6, 8]

    Workers start concurrently. Calls go round-robin to free workers; when
    all are busy they wait in FIFO order. Any number of threads may call.
    """

    def __init__(
        self,
        task: type[Task[In, Out]],
        size: int | None = None,
        *,
        timeout: float | None = DEFAULTS.timeout,
        shutdown_timeout: float = DEFAULTS.shutdown_timeout,
        spawn_timeout: float = DEFAULTS.spawn_timeout,
        max_message_bytes: int = DEFAULTS.max_message_bytes,
    ) -> None:
        if size is None:
            size = os.cpu_count() or 1
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int, not {size!r}")
        settings = Settings(
            timeout=timeout,
            shutdown_timeout=shutdown_timeout,
            spawn_timeout=spawn_timeout,
            max_message_bytes=max_message_bytes,
        )
        self._start(task, size, settings)

    @property
    def size(self) -> int:
        """The number of workers (constant: a crashed worker is replaced)."""
        return len(self._dispatcher.slots)

    @property
    def pids(self) -> list[int | None]:
        """The workers' process ids, in slot order."""
        return [slot.pid for slot in self._dispatcher.slots]

    @overload
    def map(
        self,
        inputs: Iterable[In],
        *,
        ordered: bool = ...,
        return_exceptions: Literal[False] = ...,
        timeout: float | None = ...,
    ) -> Iterator[Out]: ...

    @overload
    def map(
        self,
        inputs: Iterable[In],
        *,
        ordered: bool = ...,
        return_exceptions: Literal[True],
        timeout: float | None = ...,
    ) -> Iterator[Out | BaseException]: ...

    def map(
        self,
        inputs: Iterable[In],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Run the task on every input; a lazy iterator of the results.

        Inputs are pulled as workers free up, so ``inputs`` may be a generator
        of any length. ``ordered=False`` yields each result as soon as it is
        ready. With ``return_exceptions=True`` a failed input yields its
        exception (``WorkerCrashed``, ``TaskError``, ``ValidationError``...) in
        its place and the others go on; otherwise the first failure is raised
        and the calls not yet started are dropped. ``timeout`` applies to each
        call, as in :meth:`call`.
        """
        window = _IN_FLIGHT_PER_WORKER * self.size
        if ordered:
            return _map_ordered(self, iter(inputs), window, return_exceptions, timeout)
        return _map_unordered(self, iter(inputs), window, return_exceptions, timeout)


def _submit(pool: ProcessPool[Any, Any], item: Any, timeout: float | None) -> cf.Future[Any]:
    """The item's call; for an invalid input (or a closed pool), a done Future holding
    the error, which takes the item's place: the items before it come first."""
    try:
        return pool.submit(item, timeout=timeout)
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


def _map_ordered(
    pool: ProcessPool[Any, Any],
    inputs: Iterator[Any],
    window: int,
    return_exceptions: bool,
    timeout: float | None,
) -> Iterator[Any]:
    pending: deque[cf.Future[Any]] = deque()
    try:
        for item in inputs:
            future = _submit(pool, item, timeout)
            pending.append(future)
            if not return_exceptions and _failed_at_once(future):
                break  # raised in its turn; no input after it is pulled
            if len(pending) >= window:
                yield _outcome(pending.popleft(), return_exceptions)
        while pending:
            yield _outcome(pending.popleft(), return_exceptions)
    finally:
        _drop(pending)


def _map_unordered(
    pool: ProcessPool[Any, Any],
    inputs: Iterator[Any],
    window: int,
    return_exceptions: bool,
    timeout: float | None,
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
                future = _submit(pool, item, timeout)
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
