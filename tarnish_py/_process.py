"""``Process``: a handle to one worker, and what it shares with ``ProcessPool``.

Everything that does no I/O lives here once and serves both handles and the
sync, Future and asyncio forms of a call; the I/O is in ``_dispatch``/``_conn``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import weakref
from types import TracebackType
from typing import Any, Generic

from typing_extensions import Self

from ._dispatch import Dispatcher, Options, install_exit_hook
from ._task import In, Out, Task, adapters
from ._wire import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["DEFAULT_SPAWN_TIMEOUT", "Process"]

DEFAULT_SPAWN_TIMEOUT = 60.0

_NOT_PICKLABLE = (
    "a handle to live worker processes cannot be pickled; "
    "pass the Task class or use tarnish_py.dask.IsolatedPool"
)


def task_location(task: type[Task[Any, Any]]) -> tuple[str, str]:
    """(module, qualified name) by which a worker finds ``task``."""
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise TypeError(f"expected a Task subclass, got {task!r}")
    label = task.__dict__.get("_tarnish_name")
    if label is not None:  # made by @task: found by its label
        return task.__module__, str(label)
    qualname = task.__qualname__
    if "<locals>" in qualname:
        raise TypeError(
            f"{qualname} is defined inside a function; a worker can only find tasks "
            "defined at the top level of a module"
        )
    return task.__module__, qualname


class _Handle(Generic[In, Out]):
    """The calls, closing and context management shared by Process and ProcessPool."""

    _dispatcher: Dispatcher

    def _start(self, task: type[Task[In, Out]], size: int, **settings: Any) -> None:
        """Start ``size`` workers for ``task``; ``settings`` are the handle's keywords."""
        module, name = task_location(task)
        options = Options(module, name, **settings)
        task_types = task._tarnish_types or (None, None)
        dispatcher = Dispatcher(options, size, adapters(task), *task_types)
        self._dispatcher = dispatcher
        # The finalizer holds the dispatcher, never the handle (or it would live forever).
        self._finalizer = weakref.finalize(self, dispatcher.close)
        install_exit_hook()
        dispatcher.start()

    def call(self, input: In, *, timeout: float | None = None) -> Out:
        """Run the task on ``input`` in a worker and return its result.

        ``timeout`` (seconds) overrides the handle's default for this call.
        Raises ``pydantic.ValidationError`` for invalid input (nothing is sent),
        ``TaskError``, ``WorkerCrashed``, ``TaskTimeout``, ``SpawnError``,
        ``ProtocolError`` or ``ClosedError``.
        """
        return self._dispatcher.call(input, timeout)  # type: ignore[no-any-return]

    def submit(self, input: In, *, timeout: float | None = None) -> cf.Future[Out]:
        """Start a call and return its Future at once.

        Cancelling the Future of a queued call removes it; cancelling one that
        is running kills (and replaces) the worker running it.
        """
        return self._dispatcher.submit(input, timeout)

    async def acall(self, input: In, *, timeout: float | None = None) -> Out:
        """``call`` for asyncio: awaits the result without blocking the event loop.

        Cancelling the awaiting task kills the worker if the call is running.
        """
        return await asyncio.wrap_future(self._dispatcher.submit(input, timeout))

    def close(self, timeout: float | None = None) -> None:
        """Stop the workers: queued calls fail with ``ClosedError``, running calls get
        ``timeout`` (default ``shutdown_timeout``) to finish, then the workers'
        process groups are SIGKILLed. Idempotent."""
        self._dispatcher.close(timeout)

    @property
    def closed(self) -> bool:
        return self._dispatcher.closed

    def __enter__(self) -> Self:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(_NOT_PICKLABLE)

    def __getstate__(self) -> Any:
        raise TypeError(_NOT_PICKLABLE)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Process(_Handle[In, Out]):
    """A handle to one worker process running ``task``.

    >>> with Process(Double) as p:          # doctest: +SKIP
    ...     p.call(21)
    42

    The worker is started (and its handshake awaited) by the constructor.
    After a crash, timeout or protocol error it is replaced at once, so the
    next call finds a fresh worker. Calls from several threads are served one
    at a time, in order.
    """

    def __init__(
        self,
        task: type[Task[In, Out]],
        *,
        timeout: float | None = None,
        shutdown_timeout: float = 5.0,
        spawn_timeout: float = DEFAULT_SPAWN_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._start(
            task,
            1,
            timeout=timeout,
            shutdown_timeout=shutdown_timeout,
            spawn_timeout=spawn_timeout,
            max_message_bytes=max_message_bytes,
        )

    @property
    def pid(self) -> int | None:
        """The worker's process id (None while none is running)."""
        return self._dispatcher.slots[0].pid

    def is_running(self) -> bool:
        """Whether the worker process is alive right now."""
        return self._dispatcher.slots[0].is_running()

    def restart(self) -> None:
        """Replace the worker by a fresh one (waits for a running call first)."""
        slot = self._dispatcher.acquire()
        try:
            slot.restart()
        finally:
            self._dispatcher.release(slot)
