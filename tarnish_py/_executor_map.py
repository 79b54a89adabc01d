"""``IsolatedExecutor.map(chunksize > 1)``: the pool's batched map, run by a thread of its own.

::

    map(fn, *iterables, chunksize=k)      the caller's thread, before map() returns:
      zip(*iterables) -> Signature.dump_arguments each -> records      (all of them)
      Feeder(pool._ordered_map(records, k, stopper)).start() ---------------.
                                                                            |
    feeder thread "tarnish_py-executor-map"                                 v
      for raw in the batched map:             (ProcessPool.map: batches of k, crash
          stopped? -> break                    attribution, no input twice, in order)
          results.put(load_result(raw))       (SimpleQueue: one put per result)
      last: results.put(Last(None | error | CancelledError)); on_end(feeder)

    MapIterator.__next__ (the consumer)
      results.get(timeout=deadline - now) -> a result | raise Last.error | StopIteration
      close() / garbage collection / a raised error / the deadline / Ctrl-C:
          stopper.set() -> the batched map wakes from its poll and ends: idle
          workers go back at once, a batch still running is told to stop after
          its current input and drained by the map's own short-lived thread

Why a thread: ``Executor.map`` starts the work when it is called, and the batched
map is a generator driven by whoever advances it. One thread per map (never one
per input) keeps what an input costs the parent to a put and a get on a
``SimpleQueue`` beside the batched map's own ~0.5 µs; the consumer wakes only
when it has emptied the queue. The queue is unbounded, as the standard library's
list of Futures is: every result is kept until it is read.

Why ``return_exceptions=False`` in the feeder: the first failure ends the batched
map at once, so the inputs after it that have not started are dropped right
away; the standard library drops them only when the consumer reaches the
failure, and the results in between could never be seen either way (the
iterator ends with the error).

Why a ``Stopper`` (a flag and a pipe the map's ``poll()`` also watches): a flag
read between results would be seen only at the next result, which may be many
long inputs away; with it, abandoning the iterator leaves at most the inputs
that are running to finish, as the standard library leaves its running calls.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterator
from queue import Empty, SimpleQueue
from typing import Any

from ._stopper import Stopper

__all__ = ["Feeder", "MapIterator"]


class _Last:
    """The feeder's last item: ``error`` (None: the map ended) is what the consumer raises."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Feeder:
    """One map in flight: drives the batched map from its thread, results into a queue."""

    def __init__(
        self,
        total: int,
        on_end: Callable[[Feeder], None],
    ) -> None:
        self.total = total
        self.results: SimpleQueue[Any] = SimpleQueue()
        self.stopper = Stopper()
        self.cancelled = False  # stopped by shutdown(cancel_futures=True)
        self.ended = threading.Event()
        self._on_end = on_end
        self._thread: threading.Thread | None = None

    def start(self, source: Iterator[Any], load: Callable[[Any], Any] | None) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(source, load), name="tarnish_py-executor-map", daemon=True
        )
        self._thread.start()

    def stop(self, cancel: bool = False) -> None:
        """End the map: inputs not yet started never run (any thread, idempotent)."""
        if cancel:
            self.cancelled = True
        self.stopper.set()

    def _run(self, source: Iterator[Any], load: Callable[[Any], Any] | None) -> None:
        put = self.results.put
        requested = self.stopper
        count = 0
        last = _Last(None)
        try:
            for raw in source:
                if requested.requested:
                    break
                put(raw if load is None else load(raw))
                count += 1
        except BaseException as exc:  # a failed input (or a closed pool): raised in its turn
            last = _Last(exc)
        finally:
            try:
                _close(source)
            finally:
                self.stopper.close()  # the map has ended: nothing polls it any more
                if last.error is None and count < self.total:
                    last = _Last(cf.CancelledError() if self.cancelled else None)
                put(last)
                self.ended.set()
                self._on_end(self)


def _close(source: Iterator[Any]) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()  # the batched map gives its workers back (a running batch is drained)


class MapIterator(Iterator[Any]):
    """What ``IsolatedExecutor.map`` returns: the results in order, under one deadline.

    Abandoning it (``close()``, dropping it, an error it raised, ``break``) stops
    the map: the inputs not yet started never run.
    """

    def __init__(self, feeder: Feeder, deadline: float | None, timeout: float | None) -> None:
        self._feeder: Feeder | None = feeder
        self._deadline = deadline
        self._timeout = timeout

    def __iter__(self) -> MapIterator:
        return self

    def __next__(self) -> Any:
        feeder = self._feeder
        if feeder is None:
            raise StopIteration
        try:
            if self._deadline is None:
                item = feeder.results.get()
            else:
                item = feeder.results.get(timeout=max(0.0, self._deadline - time.monotonic()))
        except Empty:
            self.close()
            raise cf.TimeoutError(
                f"IsolatedExecutor.map: not every result came within {self._timeout} s"
            ) from None
        except BaseException:  # Ctrl-C while waiting: the map stops, nothing is left half done
            self.close()
            raise
        if type(item) is _Last:
            self._feeder = None  # the feeder has ended
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the map now; the results not yet read are dropped."""
        feeder, self._feeder = self._feeder, None
        if feeder is not None:
            feeder.stop()

    def __del__(self) -> None:
        self.close()
