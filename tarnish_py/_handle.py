"""What ``Process`` and ``ProcessPool`` share: the calls in their three forms, closing.

::

    call(x)          Dispatcher.call in the caller's thread
    submit(x)        Dispatcher.submit -> Future
    acall(x)         await submit(x), woken through the event loop (``_future.wait_async``)
    close() / with   Dispatcher.close; leaving ``with`` by Ctrl-C kills running calls
                     at once; garbage collection closes on another thread
                     (``_lifecycle.close_later``), interpreter exit closes everything

Everything that does no I/O lives here once and serves both handles and the
sync, Future and asyncio forms of a call.
"""

from __future__ import annotations

import concurrent.futures as cf
import weakref
from types import TracebackType
from typing import Any, Generic

from typing_extensions import Self

from ._dispatch import Dispatcher
from ._future import wait_async
from ._lifecycle import close_later, install_exit_hook
from ._settings import Settings
from ._task import In, Out, Task, codec, task_location
from ._workerspec import WorkerSpec

__all__ = ["_Handle"]


class _Handle(Generic[In, Out]):
    """The calls, closing and context management shared by Process and ProcessPool."""

    _dispatcher: Dispatcher

    def _start(self, task: type[Task[In, Out]], size: int, settings: Settings) -> None:
        """Start ``size`` workers for ``task``."""
        module, name = task_location(task)
        dispatcher = Dispatcher(WorkerSpec(module, name, settings, task), size, codec(task))
        self._dispatcher = dispatcher
        # The finalizer holds the dispatcher, never the handle (or it would live
        # forever); it may run on any thread, so it only schedules the close.
        self._finalizer = weakref.finalize(self, close_later, dispatcher)
        self._finalizer.atexit = False  # the exit hook closes every handle
        install_exit_hook()
        dispatcher.start()

    def call(self, input: In, *, timeout: float | None = None) -> Out:
        """Run the task on ``input`` in a worker and return its result.

        ``timeout`` (seconds, a positive number; None: the handle's default)
        bounds the call from the moment a worker is free for it: the wait for a
        worker that is still starting (a replacement after a crash), sending
        the input, the run and the reply. Past it: ``TaskTimeout``; a running
        call's worker process group is killed and replaced (a process the task
        moved out of that group, e.g. with ``start_new_session=True``, is not),
        while a worker that was still starting is left to start for a later
        call. It does not bound the wait for a free worker.
        Raises ``pydantic.ValidationError`` for invalid input (nothing is sent),
        ``TaskError``, ``WorkerCrashed``, ``TaskTimeout``, ``SpawnError``,
        ``ProtocolError`` or ``ClosedError``.
        """
        return self._dispatcher.call(input, timeout)  # type: ignore[no-any-return]

    def submit(self, input: In, *, timeout: float | None = None) -> cf.Future[Out]:
        """Start a call and return its Future at once (``timeout`` as in :meth:`call`).

        Cancelling the Future of a queued call removes it; cancelling one that
        is running kills (and replaces) the worker running it.
        """
        return self._dispatcher.submit(input, timeout)

    async def acall(self, input: In, *, timeout: float | None = None) -> Out:
        """``call`` for asyncio: awaits the result without blocking the event loop.

        Cancelling the awaiting task kills the worker if the call is running.
        """
        return await wait_async(self._dispatcher.submit(input, timeout))  # type: ignore[no-any-return]

    def close(self, timeout: float | None = None) -> None:
        """Stop the workers: queued calls fail with ``ClosedError``, running calls get
        ``timeout`` (default ``shutdown_timeout``) to finish, then the workers'
        process groups are SIGKILLed. Idempotent."""
        self._dispatcher.close(timeout)

    @property
    def closed(self) -> bool:
        return self._dispatcher.closed

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a handle to live worker processes cannot be pickled ({type(self).__name__}); "
            "pass the Task class (or an @task function) and open a handle where it is used "
            "(on Dask: tarnish_py.dask.IsolatedPool)"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C is ending the program: running calls are not waited for.
            try:
                self._dispatcher.close_hurried()
            except BaseException:
                self._dispatcher.close_hurried()
        else:
            self.close()
