"""Who this process is: a parent, or a worker adopting its channel.

::

    import tarnish_py   adopt_channel(): the environment marker is read and
                        removed; the channel moves to private fds; fd 0 becomes
                        /dev/null and fd 1 a copy of fd 2, so print, C printf and
                        os.write(1, ...) land on stderr; SIGINT ignored,
                        faulthandler on
    main()/serve()      (``_worker``) use ``config`` and the channel fds

Everything here runs before the task's module is imported, so that nothing a
program prints can reach the channel.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import NoReturn

from . import _protocol, _worker_logging

__all__ = [
    "MARKER",
    "WorkerConfig",
    "adopt_channel",
    "channel_in",
    "channel_out",
    "config",
    "fatal",
    "flush_std",
    "is_serving",
    "refuse_spawn_before_main",
    "start_serving",
    "write_all",
]

MARKER = "TARNISH_PY_WORKER"


@dataclass(frozen=True)
class WorkerConfig:
    """What the parent tells a worker through the environment marker."""

    module: str  # "__main__" or an importable module
    name: str  # the Task's qualified name, or "@label" for a @task function
    max_message_bytes: int
    parent_pid: int
    sys_path: tuple[str, ...] | None = None  # set for importable tasks only
    cwd: str | None = None  # the folder the worker works in (the parent's, at spawn)
    limits: tuple[tuple[str, int], ...] = ()  # set in the worker before the task (_limits)
    drop_env: tuple[str, ...] = ()  # start-up variables tarnish_py added (_environ.carried)
    log_level: int = 30  # the lowest level the parent's logging lets through (WARNING)

    def dumps(self) -> str:
        return json.dumps(
            {
                "module": self.module,
                "name": self.name,
                "max": self.max_message_bytes,
                "parent": self.parent_pid,
                "path": list(self.sys_path) if self.sys_path is not None else None,
                "cwd": self.cwd,
                "limits": [list(pair) for pair in self.limits],
                "drop": list(self.drop_env),
                "log": self.log_level,
            }
        )

    @classmethod
    def loads(cls, raw: str) -> WorkerConfig:
        d = json.loads(raw)
        path = d.get("path")
        return cls(
            module=d["module"],
            name=d["name"],
            max_message_bytes=int(d["max"]),
            parent_pid=int(d["parent"]),
            sys_path=tuple(path) if path is not None else None,
            cwd=d.get("cwd"),
            limits=tuple((str(name), int(value)) for name, value in d.get("limits", ())),
            drop_env=tuple(d.get("drop", ())),
            log_level=int(d.get("log", 30)),
        )


config: WorkerConfig | None = None
channel_in = -1
channel_out = -1
_serving = False


def adopt_channel() -> None:
    """Called once when ``tarnish_py`` is imported: prepare a worker, if this is one."""
    global config, channel_in, channel_out
    raw = os.environ.pop(MARKER, None)  # our children are not workers
    if raw is None or config is not None:
        return
    config = WorkerConfig.loads(raw)
    for name in config.drop_env:  # env= scrubbed: what only the interpreter needed
        os.environ.pop(name, None)
    if config.cwd is not None:
        try:
            os.chdir(config.cwd)
        except OSError:
            pass
    channel_in = os.dup(0)  # os.dup makes non-inheritable fds
    channel_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    if sys.stdout is not None:
        try:
            sys.stdout.flush()
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            pass
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable(all_threads=True)
    _worker_logging.install(config.log_level)  # records go to the parent's logging
    atexit.register(_exit_without_main)


def start_serving() -> WorkerConfig:
    """Mark this worker as serving (``main()`` was reached); its config."""
    global _serving
    assert config is not None
    _serving = True
    return config


def is_serving() -> bool:
    return _serving


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to a blocking ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def fatal(message: str, code: int = 3) -> NoReturn:
    """Tell the parent why this worker cannot serve, then exit at once."""
    try:
        write_all(channel_out, b"\x00" + _protocol.fatal_frame(message))
    except OSError:
        pass
    flush_std()
    os._exit(code)


_END_WITH_MAIN = (
    "End the program with:\n"
    "    if __name__ == '__main__':\n"
    "        tarnish_py.main(your_main_function)"
)


def _exit_without_main() -> None:
    if config is not None and not _serving:
        fatal(
            "the program was re-executed to serve a worker but finished without calling "
            "tarnish_py.main(). " + _END_WITH_MAIN
        )


def refuse_spawn_before_main() -> None:
    """Stop a re-executed program from starting workers of its own (a chain)."""
    if config is not None and not _serving:
        fatal(
            "the program was re-executed to serve a worker, and it started a worker "
            "itself before calling tarnish_py.main(): the code that starts workers must "
            "run only in the parent. Put it in a function and " + _END_WITH_MAIN[0].lower()
            + _END_WITH_MAIN[1:]
        )
