"""``Process``: a handle to one worker."""

from __future__ import annotations

from typing_extensions import Unpack

from ._handle import _Handle
from ._settings import HandleKeywords, Settings
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

    def __init__(self, task: type[Task[In, Out]], **keywords: Unpack[HandleKeywords]) -> None:
        """Start the worker for ``task`` and wait until it is ready.

        Keywords (SPEC §2; all optional): ``timeout=None``, ``shutdown_timeout=5.0``,
        ``spawn_timeout=60.0``, ``max_message_bytes=256 MiB``, ``env=None``,
        ``limits=None``, ``max_calls=None``, ``max_memory=None``, ``start="auto"``,
        ``stderr="forward"``, ``stderr_tail=32 KiB``.
        """
        self._start(task, 1, Settings.of(keywords, "Process()"))

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
