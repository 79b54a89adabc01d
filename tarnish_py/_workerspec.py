"""How a handle's workers start: the command line, the config, the launcher.

::

    WorkerSpec(module, name, settings)   argv (_spawn), config (marker), Launcher
    WorkerSpec.start()                   Launcher.start -> a process (forked from
                                         the fork server, or exec'd) -> its Conn

``_slot`` calls :meth:`WorkerSpec.start` from its starter thread; a process
whose Conn cannot be built (no fd, no thread left) is killed and reaped here,
so nothing started is ever left behind.
"""

from __future__ import annotations

import dataclasses
import os

from . import _environ, _limits, _spawn
from ._boot import WorkerConfig, new_token
from ._conn import Conn
from ._errors import SpawnError
from ._launcher import Launcher
from ._settings import Settings
from ._worker_logging import parent_log_level

__all__ = ["WorkerSpec"]


class WorkerSpec:
    """How to start a worker of one handle: its command line and its config."""

    __slots__ = ("argv", "config", "launcher", "settings")

    def __init__(
        self, module: str, name: str, settings: Settings, task: type | None = None
    ) -> None:
        self.settings = settings
        if task is not None:
            _spawn.require_own_main(task, module, name)
        self.argv = _spawn.command_for(module, f"{module}.{name.lstrip('@')}")
        # Forks workers from a per-handle fork server where safe, else execs them.
        self.launcher = Launcher(
            self.argv,
            settings.start,
            settings.spawn_timeout,
            settings.max_message_bytes,
            settings.stderr,
            settings.stderr_tail,
        )
        self.config = WorkerConfig(
            module=module,
            name=name,
            max_message_bytes=settings.max_message_bytes,
            parent_pid=os.getpid(),
            sys_path=None if module == "__main__" else _spawn.absolute_sys_path(),
            limits=_limits.rlimits(settings.limits),
            drop_env=_environ.carried(settings.env),
        )

    def config_now(self) -> WorkerConfig:
        """The config for a worker started now: it works in the parent's current
        folder, and has a token of its own."""
        try:
            cwd = os.getcwd()
        except OSError:  # pragma: no cover - the current folder was deleted
            cwd = None
        level = parent_log_level()  # workers log what the parent's logging lets through
        return dataclasses.replace(self.config, cwd=cwd, token=new_token(), log_level=level)

    def start(self) -> Conn:
        """Start a worker process and take it over; SpawnError (nothing left behind) if not."""
        config = self.config_now()
        settings = self.settings
        popen = self.launcher.start(config, settings.env)
        try:
            return Conn(
                popen,
                settings.max_message_bytes,
                token=config.token,
                spawn_timeout=settings.spawn_timeout,
                stderr=settings.stderr,
                stderr_tail=settings.stderr_tail,
            )
        except BaseException as exc:
            _spawn.abandon(popen)
            if isinstance(exc, (OSError, RuntimeError)):  # EMFILE, no thread left ...
                raise SpawnError(f"cannot take over the started worker process: {exc}") from exc
            raise
