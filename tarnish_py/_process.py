"""``Process``: a handle to one worker."""

from __future__ import annotations

from ._handle import _Handle
from ._settings import DEFAULTS, Settings
from ._task import In, Out, Task

__all__ = ["Process"]


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
        timeout: float | None = DEFAULTS.timeout,
        shutdown_timeout: float = DEFAULTS.shutdown_timeout,
        spawn_timeout: float = DEFAULTS.spawn_timeout,
        max_message_bytes: int = DEFAULTS.max_message_bytes,
    ) -> None:
        settings = Settings(
            timeout=timeout,
            shutdown_timeout=shutdown_timeout,
            spawn_timeout=spawn_timeout,
            max_message_bytes=max_message_bytes,
        )
        self._start(task, 1, settings)

    @property
    def pid(self) -> int | None:
        """The worker's process id (None while none is running)."""
        return self._dispatcher.slots[0].pid

    def is_running(self) -> bool:
        """Whether the worker process is alive right now."""
        return self._dispatcher.slots[0].is_running()

    def restart(self) -> None:
        """Replace the worker by a fresh one, gracefully: waits for a running call,
        asks the worker to exit (the task's ``close()`` runs), kills it after
        ``shutdown_timeout``, then starts the new one."""
        grace = self._dispatcher.settings.shutdown_timeout
        self._dispatcher.hold(lambda slot: slot.restart(grace))
