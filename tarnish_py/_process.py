"""``Process``: a handle to one worker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from typing_extensions import Unpack

from . import _protocol, _snapshot
from ._handle import _Handle
from ._settings import HandleKeywords, Settings
from ._task import In, Out, Task

__all__ = ["Process"]

StrPath = str | os.PathLike[str]


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
        restore_on_crash: bool = False,
        **keywords: Unpack[HandleKeywords],
    ) -> None:
        """Start the worker for ``task`` and wait until it is ready.

        Keywords (SPEC §2; all optional): ``timeout=None``, ``shutdown_timeout=5.0``,
        ``spawn_timeout=60.0``, ``max_message_bytes=256 MiB``, ``env=None``,
        ``limits=None``, ``max_calls=None``, ``max_memory=None``, ``start="auto"``,
        ``stderr="forward"``, ``stderr_tail=32 KiB``. ``restore_on_crash=True``
        (SPEC §7): a worker that replaces a crashed one restores the state the last
        successful call left.
        """
        settings = Settings.of(keywords, "Process()")
        _snapshot.check_restore_on_crash(task, restore_on_crash, "Process()")
        self._task = task
        self._start(task, 1, settings)
        if restore_on_crash:
            self._dispatcher.slots[0].keeper = _snapshot.StateKeeper()

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

    # -- state (SPEC §7) ---------------------------------------------------------

    def snapshot(self, *, timeout: float | None = None) -> Any:
        """The task's state, as its ``snapshot()`` returns it, validated as annotated.

        Runs between calls, like a call (a crash in ``snapshot()`` is a
        ``WorkerCrashed``). A task without the state hooks: ``TypeError``.
        """
        states = _snapshot.require_state_codec(self._task, "Process.snapshot()")
        return states.decode(self._state_request(_protocol.SNAPSHOT, None, timeout))

    def restore(self, state: Any, *, timeout: float | None = None) -> None:
        """Give the task ``state`` (validated here first: ``ValidationError``, nothing sent)."""
        states = _snapshot.require_state_codec(self._task, "Process.restore()")
        self._state_request(_protocol.RESTORE, states.encode(state), timeout)

    def snapshot_to_file(self, path: StrPath, *, timeout: float | None = None) -> Path:
        """Write the task's state to ``path`` (atomically; the file names the task)."""
        _snapshot.require_state_codec(self._task, "Process.snapshot_to_file()")
        state = self._state_request(_protocol.SNAPSHOT, None, timeout)
        return _snapshot.write_file(path, self._task, state)

    def restore_from_file(self, path: StrPath, *, timeout: float | None = None) -> None:
        """Restore a state written by :meth:`snapshot_to_file` for this same task.

        A file made by another task is a ``ValueError`` naming both.
        """
        states = _snapshot.require_state_codec(self._task, "Process.restore_from_file()")
        state = states.encode(states.decode(_snapshot.read_file(path, self._task)))
        self._state_request(_protocol.RESTORE, state, timeout)

    def _state_request(self, kind: int, payload: Any, timeout: float | None) -> Any:
        # Through the slot like a call: serialised with calls, same errors.
        dispatcher = self._dispatcher
        if timeout is None:
            timeout = dispatcher.settings.timeout
        return dispatcher.hold(lambda slot: slot.call(payload, timeout, kind))
