"""``ProcessPool``: N crash-isolated workers behind one handle.

::

    call(x)   caller's thread takes the next free worker in round-robin order
              (or waits in FIFO order) and talks to it directly
    submit(x) the call joins the same FIFO; the worker's driver thread runs it
    map(xs)   lazy, in batches driven by the consuming thread (``_batch``): yields
              results in input order (or as they finish), pulling inputs as it goes

A crash fails only the call that crashed; that worker is replaced and the pool
keeps its size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any, Literal, overload

from typing_extensions import Unpack

from . import _snapshot
from ._batch import batched_map, check_chunksize
from ._handle import _Handle
from ._percall import per_call_map
from ._settings import HandleKeywords, Settings
from ._stopper import Stopper
from ._task import In, Out, Task

__all__ = ["ProcessPool"]

_IN_FLIGHT_PER_WORKER = 2  # per-call maps: calls in flight per worker


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
        restore_on_crash: bool = False,
        **keywords: Unpack[HandleKeywords],
    ) -> None:
        """Start ``size`` workers (default ``os.cpu_count()``) for ``task``.

        Keywords: as :class:`Process` (SPEC §2), ``restore_on_crash`` included:
        each worker position keeps its own state.
        """
        if size is None:
            size = os.cpu_count() or 1
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive int, not {size!r}")
        settings = Settings.of(keywords, "ProcessPool()")
        _snapshot.check_restore_on_crash(task, restore_on_crash, "ProcessPool()")
        self._start(task, size, settings)
        if restore_on_crash:
            for slot in self._dispatcher.slots:
                slot.keeper = _snapshot.StateKeeper()

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
        chunksize: int | None = ...,
    ) -> Iterator[Out]: ...

    @overload
    def map(
        self,
        inputs: Iterable[In],
        *,
        ordered: bool = ...,
        return_exceptions: Literal[True],
        timeout: float | None = ...,
        chunksize: int | None = ...,
    ) -> Iterator[Out | BaseException]: ...

    @overload
    def map(
        self,
        inputs: Iterable[In],
        *,
        ordered: bool = ...,
        return_exceptions: bool,
        timeout: float | None = ...,
    ) -> Iterator[Out | BaseException]: ...

    def map(
        self,
        inputs: Iterable[In],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        timeout: float | None = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Run the task on every input; a lazy iterator of the results.

        Inputs are pulled as workers free up, so ``inputs`` may be a generator
        of any length. ``ordered=False`` yields each result as soon as it is
        ready. With ``return_exceptions=True`` a failed input yields its
        exception (``WorkerCrashed``, ``TaskError``, ``ValidationError``...) in
        its place and the others go on — a tarnish_py error names its input in
        ``.input`` (and the worker in ``.pid``), so ``ordered=False`` loses
        nothing; otherwise the first failure is raised and the calls not yet
        started are dropped. ``timeout`` applies to each call, as in :meth:`call`.

        Inputs travel in batches of ``chunksize`` (None: chosen as the map goes,
        from 1 up to a few ms of work per batch), which batching never lets a
        user see: a crash fails exactly the input that was running, no input
        runs twice and no finished result is lost (``_batch``).
        """
        if self._per_call():  # each input must pass the slot's per-call hooks (``_percall``)
            check_chunksize(chunksize)
            submit = partial(self.submit, timeout=timeout)
            window = _IN_FLIGHT_PER_WORKER * self.size
            return per_call_map(submit, iter(inputs), window, ordered, return_exceptions)
        return batched_map(
            self._dispatcher,
            inputs,
            ordered=ordered,
            return_exceptions=return_exceptions,
            timeout=timeout,
            chunksize=chunksize,
        )

    def _per_call(self) -> bool:
        settings = self._dispatcher.settings
        return bool(settings.max_calls or settings.max_memory) or any(
            slot.keeper is not None for slot in self._dispatcher.slots
        )

    def _ordered_map(self, inputs: Iterable[In], chunksize: int, stop: Stopper) -> Iterator[Out]:
        """``map(inputs, chunksize=chunksize)``, which ``stop`` ends from another thread.

        For ``IsolatedExecutor.map``, whose own thread drives it: a batched map
        wakes up at once; the per-call one ends after its next result.
        """
        if self._per_call():
            return self.map(inputs, chunksize=chunksize)
        return batched_map(self._dispatcher, inputs, ordered=True, return_exceptions=False,
                           timeout=None, chunksize=chunksize, stop=stop)
