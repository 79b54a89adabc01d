"""Starting a handle's workers: forked from its fork server where safe, else exec'd.

::

    Slot.spawn -> Launcher.start(config)
                    start="exec", not Linux, or
                    the server said UNSAFE (threads)  -> _spawn.start: re-execute (Popen)
                    else  Server (``_forkclient``; started on first use, replaced when
                          found dead; SpawnError when it cannot start) .fork(config)
                          -> ForkedProcess, which Conn treats as a Popen

The fallback to exec is per handle and logged once on ``tarnish_py``'s logger.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping

from . import _spawn
from ._boot import WorkerConfig
from ._environ import EnvSetting, worker_env
from ._errors import SpawnError
from ._forkclient import Dead, Server, Unsafe

__all__ = ["Launcher"]

log = logging.getLogger("tarnish_py")

_LINUX = sys.platform.startswith("linux")


class Launcher:
    """Starts a handle's workers: from its fork server where safe, else by exec."""

    def __init__(self, argv: list[str], start: str, spawn_timeout: float,
                 max_message_bytes: int, stderr: str = "forward",
                 stderr_tail: int = 1 << 15) -> None:
        self._argv = argv
        self._stderr = (stderr, stderr_tail)  # for the server's own stderr
        self._fork = start == "auto" and _LINUX and hasattr(socket, "send_fds")
        self._spawn_timeout = spawn_timeout
        self._limit = max_message_bytes
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._closed = False
        self._owner = os.getpid()

    @property
    def forking(self) -> bool:
        """True while this handle's workers are forked from a server."""
        return self._fork

    @property
    def server_pid(self) -> int | None:
        server = self._server
        return server.pid if server is not None and not server.dead else None

    def start(
        self, config: WorkerConfig, env_setting: EnvSetting = None
    ) -> subprocess.Popen[bytes]:
        """A started worker (its handshake not awaited). Raises SpawnError.

        ``env_setting`` is the handle's ``env=``: an exec'd worker is started with
        the environment it makes (``_environ``), a forked one puts it in place
        after the fork — the parent's environment as it is now, as an exec'd
        worker would get, not as it was when the server started.
        """
        if self._fork and os.getpid() == self._owner:
            env = fork_env = worker_env(env_setting)
            with self._lock:
                for _ in range(2):  # a server found dead is replaced once
                    try:
                        return self._live_server(config, env).fork(
                            config, fork_env, self._spawn_timeout)
                    except Dead:
                        continue
                    except Unsafe as exc:
                        self._fall_back(str(exc))
                        break
        return _spawn.start(config, self._argv, env_setting)

    def _live_server(self, config: WorkerConfig, env: Mapping[str, str] | None) -> Server:
        server = self._server
        if server is not None and server.alive():
            return server
        if server is not None:
            log.warning("the fork server %d of %s.%s died; starting a new one", server.pid,
                        config.module, config.name.lstrip("@"))
            self._server = None
            server.close(grace=0.0)
        if self._closed:
            raise SpawnError("the handle is closed")
        server = Server(self._argv, config, env, self._limit, *self._stderr)
        server.handshake(self._spawn_timeout)
        self._server = server
        return server

    def _fall_back(self, why: str) -> None:
        self._fork = False
        log.warning("tarnish_py: workers of this handle are started by exec, not forked: %s",
                    why)
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def close(self) -> None:
        """End the fork server, if any (after the workers were shut down)."""
        if os.getpid() != self._owner:
            return  # a forked copy of the parent: neither the server nor the lock is ours
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
        if server is not None:
            server.close()
