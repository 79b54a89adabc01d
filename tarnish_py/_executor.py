"""``IsolatedExecutor``: a ``concurrent.futures.Executor`` that survives segfaults.

::

    submit(fn, *args, **kw)   reference(fn): (module, qualname), or TypeError
                              Signature(fn).dump_arguments: ValidationError / TypeError
                              -> ProcessPool(internal_task).submit(record)   [one pool,
                                 started on first submit; see _byref for the worker]
                              <- pool Future --follow--> the Future returned here
                                 (result rebuilt by fn's return annotation)
    map(fn, *iterables)       chunksize=1: submit per item; results in order under one
                              deadline. chunksize>1: every item validated now, then the
                              pool's batched map run by a thread of its own (_executor_map)
    shutdown(wait, cancel)    refuse new work; drop queued calls (cancel_futures);
                              wait for the rest (wait=True) or close once idle

The executor is a thin adapter over :class:`ProcessPool`, never a second
dispatcher: crash, timeout and error handling are the pool's, so a crash fails
one Future with ``WorkerCrashed`` and the executor stays usable (there is no
``BrokenProcessPool``).

Which kind of worker serves the pool is chosen once, when it starts: the
re-executed program (``main()`` serves, so functions of ``__main__`` are found)
when the first function lives in ``__main__`` or ``tarnish_py.main()`` is
running in the main thread; otherwise a ``python -c`` worker that imports the
functions' modules, which works without ``main()`` (REPL, notebook, pytest).
A ``__main__`` function submitted later to an importing pool is a TypeError
that says how to fix it, never a failure inside the worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from typing_extensions import ParamSpec, Unpack

from ._arena import INDEX_MASK
from ._byref import Signature, internal_task, reference
from ._errors import ClosedError
from ._executor_map import Feeder, MapIterator
from ._pool import ProcessPool
from ._settings import HandleKeywords, Settings
from ._worker import main as _tarnish_main

__all__ = ["IsolatedExecutor"]

P = ParamSpec("P")
T = TypeVar("T")

_LOGGER = logging.getLogger("concurrent.futures")


class _Once:
    """A done-callback that lets go of its target once it has run.

    A pool's Future may outlive its call (the pool's thread keeps its last
    job), and a Future keeps its callbacks: without this, it would keep the
    executor, and the Future given to the caller with its result, alive.
    """

    __slots__ = ("_target",)

    def __init__(self, target: Callable[[cf.Future[Any]], None]) -> None:
        self._target: Callable[[cf.Future[Any]], None] | None = target

    def __call__(self, future: cf.Future[Any]) -> None:
        target, self._target = self._target, None
        if target is not None:
            target(future)


class _Future(cf.Future[Any]):
    """The Future ``submit`` returns: it follows the pool's Future of the call.

    ``cancel()`` is the pool's: a queued call is dropped, a running one is
    stopped by killing its worker (a fresh one replaces it).
    """

    def __init__(self, inner: cf.Future[Any], load: Callable[[Any], Any]) -> None:
        super().__init__()
        self._inner: cf.Future[Any] | None = inner
        self._load = load
        inner.add_done_callback(_Once(self._follow))

    def cancel(self) -> bool:
        inner = self._inner
        if inner is None:
            return self.cancelled()
        if inner.cancel():
            self.cancel_now()  # the pool runs its done-callbacks on another thread
            return True
        return False

    def _drop_if_queued(self) -> None:
        """Cancel the call only if it has not started (the standard library's cancel)."""
        inner = self._inner
        if inner is not None and cf.Future.cancel(inner):
            self.cancel_now()

    def cancel_now(self) -> None:
        """Cancelled and notified at once (``cf.wait`` and ``as_completed`` wait for the
        notification); a no-op once done."""
        if not self.done() and cf.Future.cancel(self):
            try:
                self.set_running_or_notify_cancel()
            except RuntimeError:  # notified meanwhile by _follow on the pool's thread
                pass

    def _follow(self, inner: cf.Future[Any]) -> None:
        self._inner = None  # the raw result is not kept alive past this point
        try:
            if inner.cancelled():
                self.cancel_now()
                return
            error = inner.exception()
            if error is None:
                try:
                    value = self._load(inner.result())
                except Exception as exc:
                    error = exc
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(value)
        except cf.InvalidStateError:
            pass
        except BaseException:
            # A user's done-callback that raised SystemExit (cf only catches
            # Exception) must not reach the pool's thread that runs this.
            _LOGGER.exception("exception calling callback for %r", self)


def _main_is_running() -> bool:
    """Whether ``tarnish_py.main()`` is on the main thread's stack right now.

    Then the program is one that a worker can re-execute to serve calls.
    """
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    code = _tarnish_main.__code__
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _check_workers(max_workers: int | None) -> int:
    if max_workers is None:
        return os.cpu_count() or 1
    if not isinstance(max_workers, int) or isinstance(max_workers, bool):
        raise TypeError(f"max_workers must be an int or None, not {max_workers!r}")
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


def _after_shutdown() -> Exception:
    message = "cannot schedule new futures after shutdown"
    # ClosedError is meant to be a RuntimeError (SPEC §3); until it is, raise the
    # RuntimeError that concurrent.futures users catch.
    if issubclass(ClosedError, RuntimeError):
        return ClosedError(message)
    return RuntimeError(message)


class IsolatedExecutor(cf.Executor):
    """A ``concurrent.futures.Executor`` whose calls run in crash-isolated workers.

    >>> with IsolatedExecutor(max_workers=4, timeout=60) as ex:   # doctest: +SKIP
    ...     fut = ex.submit(parsers.parse_pdf, blob)
    ...     pages = list(ex.map(parsers.parse_pdf, blobs))

    ``fn`` travels by reference, never pickled: a function defined at the top
    level of an importable module, or of a program that calls
    ``tarnish_py.main()``, or an ``@task`` function. Arguments and the result
    are validated from ``fn``'s annotations; unannotated values must be plain
    data the wire carries unchanged. A segfault fails only its own Future
    with ``WorkerCrashed``; the executor stays usable. ``timeout`` (seconds)
    bounds each call: past it the worker is killed and the Future gets
    ``TaskTimeout``. The workers start on the first ``submit``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        **keywords: Unpack[HandleKeywords],
    ) -> None:
        self._max_workers = _check_workers(max_workers)
        # The pool starts on the first submit: its keywords are checked now.
        self._options = Settings.of(keywords, "IsolatedExecutor()").keywords()
        self._lock = threading.Lock()
        self._pool: ProcessPool[Any, Any] | None = None
        self._re_executed = False  # which kind of worker the pool runs
        self._calls: dict[Any, tuple[str, str, Signature]] = {}  # fn -> how it is called
        # The pool's Futures not yet done, and the Futures given for them.
        self._outstanding: dict[cf.Future[Any], _Future] = {}
        self._maps: set[Feeder] = set()  # maps with chunksize > 1 still running
        self._shutdown = False
        self._close_when_idle = False

    # -- submitting --------------------------------------------------------

    def _call_for(self, fn: Callable[..., Any]) -> tuple[str, str, Signature]:
        """(module, qualname, signature) of ``fn``; TypeError if it cannot travel."""
        try:
            return self._calls[fn]
        except (KeyError, TypeError):  # TypeError: an unhashable callable
            pass
        call = (*reference(fn), Signature(fn))
        try:
            self._calls[fn] = call
        except TypeError:
            pass
        return call

    def _pool_for(self, module: str, qualname: str) -> ProcessPool[Any, Any]:
        """The pool (started now if need be) whose workers can find ``module``."""
        pool = self._pool
        if pool is None:
            re_executed = module == "__main__" or _main_is_running()
            pool = ProcessPool(internal_task(re_executed), self._max_workers, **self._options)
            self._pool, self._re_executed = pool, re_executed
        elif module == "__main__" and not self._re_executed:
            raise TypeError(
                f"{qualname} is defined in the program's __main__, but this executor's "
                "workers import modules (tarnish_py.main() was not running when they "
                "started, and the first function submitted came from a module). End the "
                "program with `tarnish_py.main(your_main_function)` and use the executor "
                "inside that function, or move the function to an importable module."
            )
        return pool

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> cf.Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; its Future at once.

        Raises ``TypeError`` when ``fn`` cannot travel by reference or an
        unannotated value is not plain data, ``pydantic.ValidationError`` for
        an argument that does not match its annotation (nothing is sent), and
        ``RuntimeError`` after :meth:`shutdown`.
        """
        if self._shutdown:  # checked again under the lock; first, as the standard library does
            raise _after_shutdown()
        module, qualname, signature = self._call_for(fn)
        call_args, call_kwargs = signature.dump_arguments(args, kwargs)
        record = {"module": module, "qualname": qualname, "args": call_args, "kwargs": call_kwargs}
        with self._lock:
            if self._shutdown:
                raise _after_shutdown()
            inner = self._pool_for(module, qualname).submit(record)
            future = self._outstanding[inner] = _Future(inner, signature.load_result)
        inner.add_done_callback(_Once(self._forget))
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """``map(fn, *iterables)`` in the workers, results in order.

        As in the standard library: the iterables are consumed and the work
        starts now, not when the iterator is first advanced; ``timeout`` is a
        deadline for the whole iteration, from this call (``TimeoutError`` when
        it passes); the first failure (``WorkerCrashed`` for the input whose
        worker crashed, ``TaskError``, ``TaskTimeout``) is raised when its
        result is reached, and the inputs not yet started are then dropped, as
        they are when the iterator is closed, dropped or left by ``break``.
        Every input's arguments are validated here, as ``submit`` does: an
        invalid one raises its ``ValidationError`` or ``TypeError`` from
        ``map()`` itself.

        ``chunksize=1`` (the default) submits one call per input. Above 1 the
        inputs travel in batches of ``chunksize`` through the pool's batched
        map, much faster for many small calls, with the same guarantees: a
        crash fails exactly the input that was running, no input runs twice,
        and no finished result is lost. Every argument is validated before
        anything is sent (an invalid input: nothing of the map runs); one
        thread drives the map and ends with it; waiting callers of ``submit``
        get a worker as soon as a batch ends. ``shutdown(wait=True)`` waits for
        the map; ``shutdown(cancel_futures=True)`` drops its inputs not yet
        started, and the iterator raises ``CancelledError`` where its results
        stop (see ``_executor_map``).
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = time.monotonic() + timeout if timeout is not None else None
        if chunksize > 1:
            return self._map_in_batches(fn, iterables, chunksize, deadline, timeout)
        futures: list[_Future] = []
        try:
            for args in zip(*iterables, strict=False):
                futures.append(self.submit(fn, *args))  # type: ignore[arg-type]
        except BaseException:
            _drop_queued(futures)
            raise
        return _results(futures, deadline)

    def _map_in_batches(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        chunksize: int,
        deadline: float | None,
        timeout: float | None,
    ) -> Iterator[Any]:
        """map(chunksize > 1): validate every input, then start the batched map."""
        calls = list(zip(*iterables, strict=False))
        if not calls:  # as the standard library: nothing submitted, nothing checked
            return iter(())
        if self._shutdown:
            raise _after_shutdown()
        module, qualname, signature = self._call_for(fn)
        dump = signature.dump_arguments
        records = []
        for args in calls:
            call_args, call_kwargs = dump(args, {})
            records.append(
                {"module": module, "qualname": qualname, "args": call_args, "kwargs": call_kwargs}
            )
        del calls
        plain = signature.result is None or signature.result_plain
        feeder = Feeder(len(records), self._map_ended)
        with self._lock:
            if self._shutdown:
                feeder.stopper.close()
                raise _after_shutdown()
            pool = self._pool_for(module, qualname)
            source = pool._ordered_map(records, min(chunksize, INDEX_MASK), feeder.stopper)
            self._maps.add(feeder)
            feeder.start(source, None if plain else signature.load_result)
        return MapIterator(feeder, deadline, timeout)

    def _map_ended(self, feeder: Feeder) -> None:
        with self._lock:
            self._maps.discard(feeder)
            pool = self._idle_pool_to_close()
        if pool is not None:
            pool.close()

    # -- shutting down -----------------------------------------------------

    def _forget(self, inner: cf.Future[Any]) -> None:
        with self._lock:
            self._outstanding.pop(inner, None)
            pool = self._idle_pool_to_close()
        if pool is not None:
            pool.close()

    def _idle_pool_to_close(self) -> ProcessPool[Any, Any] | None:
        """Under the lock: the pool, once, when shutdown(wait=False) waits for idleness."""
        idle = not self._outstanding and not self._maps
        if self._close_when_idle and idle and self._pool is not None:
            self._close_when_idle = False
            return self._pool
        return None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls and stop the workers once the submitted calls are done.

        ``cancel_futures=True`` cancels the calls that have not started.
        ``wait=True`` waits for the others to finish, then for the workers to
        exit; ``wait=False`` returns at once and the workers stop when the
        last call is done. Idempotent.
        """
        with self._lock:
            self._shutdown = True
            outstanding = list(self._outstanding.items())
            maps = list(self._maps)
            pool = self._pool
            if not wait:
                self._close_when_idle = True
        if cancel_futures:
            for _, future in outstanding:
                future._drop_if_queued()  # queued calls only; running ones finish
            for feeder in maps:
                feeder.stop(cancel=True)  # inputs not started; running ones finish
        if pool is None:
            return
        if not wait:
            with self._lock:
                idle_pool = self._idle_pool_to_close()
            if idle_pool is not None:
                idle_pool.close()
            return
        try:
            cf.wait([inner for inner, _ in outstanding if not inner.cancelled()])
            for feeder in maps:
                feeder.ended.wait()
        except BaseException:
            pool.close(0.0)  # Ctrl-C: no running call is waited for
            raise
        pool.close()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool | None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C leaves the block: drop everything, kill what runs, wait for nothing.
            self.shutdown(wait=False, cancel_futures=True)
            pool = self._pool
            if pool is not None:
                pool.close(0.0)
            return None
        self.shutdown(wait=True)
        return None


def _drop_queued(futures: Iterable[_Future]) -> None:
    for future in futures:
        future._drop_if_queued()


def _results(futures: list[_Future], deadline: float | None) -> Iterator[Any]:
    """The results of ``futures`` in order, under one deadline (as ``Executor.map``)."""
    futures.reverse()  # pop() from the end: each result is released once yielded
    try:
        while futures:
            future = futures.pop()
            try:
                if deadline is None:
                    yield future.result()
                else:
                    yield future.result(max(0.0, deadline - time.monotonic()))
            except BaseException:
                future._drop_if_queued()
                raise
            del future
    finally:
        _drop_queued(futures)
