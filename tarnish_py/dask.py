"""``IsolatedPool``: crash isolation for Dask distributed (``pip install tarnish_py[dask]``).

::

    client (your program)              Dask worker process                isolated workers
    ---------------------              -------------------                ----------------
    plugin = IsolatedPool(Decode)
    client.register_plugin(plugin) --> setup(): ProcessPool(Decode, nthreads) --> N x Decode
    client.map(plugin.call, blobs) --> call(blob): pool.submit(blob) -----------> run(blob)
                                       waits in short slices; if Dask cancels
                                       the task, cancels the call (kills its
                                       isolated worker, a fresh one replaces it)
    gather() <- result, or WorkerCrashed / TaskError / TaskTimeout, pickled with its data

A segfault ends an isolated worker, never the Dask worker: the Dask task fails
with ``WorkerCrashed``, the data the Dask worker holds stays, and the scheduler
sees no worker loss. Pools live in a module-level registry of the Dask worker's
process, one per (plugin name, Dask worker); ``teardown`` closes a pool in a
thread so the worker's event loop never waits on it. Where the plugin was not
registered, the first ``call`` starts the pool. When a Dask worker process dies
(SIGKILL, ``client.restart()``), tarnish_py's watchdog kills its isolated workers.
The isolated workers' resident memory travels with each heartbeat as the Dask
worker metric ``plugin.metric``.

This is the only module of tarnish_py that imports ``distributed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
from typing import Any, Generic, TypeVar

from distributed import WorkerPlugin, get_worker
from distributed.worker import Worker
from typing_extensions import Unpack

from ._decorator import IsolatedFunction
from ._errors import TarnishError
from ._pool import ProcessPool
from ._settings import HandleKeywords, Settings
from ._task import Task

__all__ = ["DaskTaskCancelled", "IsolatedPool"]

R = TypeVar("R")

# How often a waiting call looks whether Dask still wants its task.
_POLL_SECONDS = 0.1
# Worker states in which its running tasks are abandoned.
_WORKER_GONE = frozenset({"closing", "closed", "failed"})
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# (plugin name, Dask worker id or None outside a worker) -> that worker's pool.
_pools: dict[tuple[str, str | None], ProcessPool[Any, Any]] = {}
_starting: dict[tuple[str, str | None], threading.Lock] = {}  # one lazy start per key
_pools_lock = threading.Lock()  # held briefly only (also on the event loop)


class DaskTaskCancelled(TarnishError):
    """Dask cancelled (or released) the task while its isolated call ran; the call
    was cancelled, which killed the isolated worker running it. ``key`` is the task's."""

    def __init__(self, key: str) -> None:
        super().__init__(f"Dask no longer wants task {key}; its isolated call was cancelled")
        self.key = key

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.key,))


class IsolatedPool(WorkerPlugin, Generic[R]):
    """A ``ProcessPool`` of ``task`` on every Dask worker, as a worker plugin.

    ::

        decode = IsolatedPool(Decode, timeout=30)     # a Task class or an @task function
        client.register_plugin(decode)                # a pool on every worker, now and later
        results = client.gather(client.map(decode.call, blobs))

    ``size`` is the number of isolated workers per Dask worker (default: the
    Dask worker's thread count); the other keywords are those of
    :class:`tarnish_py.ProcessPool`. ``task`` must live in an importable module
    (Dask workers cannot re-execute your ``__main__``). ``call`` takes what the
    task takes: one input for a Task class, the function's arguments for an
    ``@task`` function.
    """

    idempotent = False  # registering again (other settings) replaces the pools

    def __init__(
        self,
        task: type[Task[Any, R]] | IsolatedFunction[..., R],
        size: int | None = None,
        **keywords: Unpack[HandleKeywords],
    ) -> None:
        self.task = task
        self.name = _plugin_name(task)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"size must be a positive int or None, not {size!r}")
        self.size = size
        # Checked here: the pools are only made on the Dask workers, where a bad
        # value would surface late.
        self.options = Settings.of(keywords, "IsolatedPool()").keywords()

    # -- the plugin side (runs on the Dask worker's event loop) ---------------

    async def setup(self, worker: Worker) -> None:
        """Start this worker's pool (in a thread: spawning waits for handshakes)."""
        key = (self.name, _worker_id(worker))
        pool = await asyncio.to_thread(self._new_pool, _nthreads(worker))
        with _pools_lock:
            old, _pools[key] = _pools.get(key), pool
        # Sent with every heartbeat: scheduler_info()["workers"][addr]["metrics"].
        worker.metrics[self.metric] = lambda _worker: _rss_bytes(_pools.get(key))
        if old is not None:
            await asyncio.to_thread(old.close)

    async def teardown(self, worker: Worker) -> None:
        """Close this worker's pool in a thread (running calls get ``shutdown_timeout``)."""
        with _pools_lock:
            pool = _pools.pop((self.name, _worker_id(worker)), None)
        worker.metrics.pop(self.metric, None)
        if pool is not None:
            await asyncio.to_thread(pool.close)

    @property
    def metric(self) -> str:
        """The Dask worker metric that reports the isolated workers' resident memory
        (bytes); Dask's own memory limits count only the Dask worker process."""
        return self.name + ":rss"

    # -- the task side (runs in a Dask worker's task thread) ------------------

    @property
    def call(self) -> _PoolCall[R]:
        """A picklable callable for ``client.submit``/``client.map``: runs the task
        on the Dask worker's local pool and returns its result."""
        return _PoolCall(self)

    def local_pool(self) -> ProcessPool[Any, R]:
        """The pool of this process's Dask worker (started here if none runs yet)."""
        worker = _current_worker()
        key = (self.name, _worker_id(worker) if worker is not None else None)
        pool = _pools.get(key)
        if pool is not None and not pool.closed:
            return pool
        # One start per key, outside _pools_lock: setup and teardown take that lock
        # on the event loop, which must never wait for a spawn.
        with _pools_lock:
            starting = _starting.setdefault(key, threading.Lock())
        with starting:
            pool = _pools.get(key)
            if pool is None or pool.closed:
                pool = self._new_pool(_nthreads(worker) if worker is not None else None)
                with _pools_lock:
                    _pools[key] = pool
            return pool

    def _new_pool(self, size: int | None) -> ProcessPool[Any, R]:
        return ProcessPool(self.task_class, self.size or size, **self.options)

    @property
    def task_class(self) -> type[Task[Any, R]]:
        """The Task the pool runs (for an ``@task`` function, the one it made)."""
        task = self.task
        return task.task_class if isinstance(task, IsolatedFunction) else task

    def input_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The pool's input for ``call(*args, **kwargs)``."""
        task = self.task
        if isinstance(task, IsolatedFunction):
            return task._arguments(args, kwargs)  # the function's own binding
        if len(args) != 1 or kwargs:
            raise TypeError(f"{self.name}.call takes exactly one input (the task's In)")
        return args[0]

    def __repr__(self) -> str:
        return f"IsolatedPool({self.name!r}, size={self.size!r})"


class _PoolCall(Generic[R]):
    """``IsolatedPool.call``: pickles as its plugin's settings, runs on the worker's pool."""

    def __init__(self, plugin: IsolatedPool[R]) -> None:
        self.plugin = plugin
        # Dask names task keys after __name__: "decode-<token>".
        self.__name__ = plugin.task.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        plugin = self.plugin
        item = plugin.input_for(args, kwargs)
        future = plugin.local_pool().submit(item)
        return _wait_while_wanted(future)

    def __dask_tokenize__(self) -> object:
        options = tuple(sorted(self.plugin.options.items()))
        return ("tarnish_py.dask.call", self.plugin.name, self.plugin.size, options)

    def __repr__(self) -> str:
        return f"{self.plugin!r}.call"


def _wait_while_wanted(future: cf.Future[R]) -> R:
    """The call's result; cancels the call as soon as Dask gives up on its task.

    Dask never interrupts a running task's thread, so the thread waits in short
    slices and looks at the worker's record of the task in between.
    """
    worker = _current_worker()
    key = _current_key(worker)
    if worker is None or key is None:
        return future.result()
    record = worker.state.tasks.get(key)
    while not cf.wait([future], timeout=_POLL_SECONDS).done:
        if not _still_wanted(worker, key, record):
            future.cancel()  # a running call: its isolated worker is killed and replaced
            raise DaskTaskCancelled(str(key))
    return future.result()


def _still_wanted(worker: Worker, key: Any, record: Any) -> bool:
    # Reading the worker's state from a task thread races with the event loop,
    # but only ever towards "wanted" for one more slice.
    if getattr(worker.status, "name", "") in _WORKER_GONE:
        return False
    current = worker.state.tasks.get(key)
    return current is record and getattr(current, "state", None) != "cancelled"


# -- Dask lookups, kept in one place (they differ across distributed versions) --


def _current_worker() -> Worker | None:
    try:
        return get_worker()
    except ValueError:  # not in a Dask task (a local call, a thread of the task's own)
        return None


def _current_key(worker: Worker | None) -> Any:
    if worker is None:
        return None
    try:
        return worker.get_current_task()
    except KeyError:  # a thread the task started
        return None


def _worker_id(worker: Worker) -> str:
    return str(getattr(worker, "id", None) or worker.address)


def _nthreads(worker: Worker) -> int:
    return int(worker.state.nthreads)


def _rss_bytes(pool: ProcessPool[Any, Any] | None) -> int:
    """Resident memory of the pool's live workers (Linux /proc; 0 where unreadable)."""
    total = 0
    for pid in pool.pids if pool is not None else ():
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            pass
    return total


# -- construction checks --------------------------------------------------------


def _plugin_name(task: Any) -> str:
    """A stable name, unique per task: "tarnish_py:<module>.<qualname>" or "tarnish_py:@label"."""
    if isinstance(task, IsolatedFunction):
        module, what = task.__module__, f"@task({task.label!r}) function {task.__qualname__}"
        name = "@" + task.label
    elif isinstance(task, type) and issubclass(task, Task):
        module, what = task.__module__, f"Task {task.__qualname__}"
        name = f"{task.__module__}.{task.__qualname__}"
        if "<locals>" in task.__qualname__:
            raise TypeError(
                f"{what} is defined inside a function; Dask workers can only import "
                "tasks defined at the top level of a module"
            )
    else:
        raise TypeError(f"IsolatedPool takes a Task subclass or an @task function, not {task!r}")
    if module == "__main__":
        raise TypeError(
            f"{what} is defined in __main__, which a Dask worker cannot re-execute; "
            "move the task to an importable module (a .py file next to your script, "
            "on the workers' path) and import it from there"
        )
    return "tarnish_py:" + name
