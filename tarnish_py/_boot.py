"""Who this process is: a parent, or a worker adopting its channel.

::

    import tarnish_py   adopt_channel(): the environment marker is read and
                        removed, and checked: a marker set by accident (garbage,
                        another parent, fds 0/1 not pipes, no token) leaves a
                        normal program with a warning; a worker whose parent died
                        while it started exits. Then the channel moves to private
                        fds; fd 0 becomes /dev/null and fd 1 a copy of fd 2, so
                        print, C printf and os.write(1, ...) land on stderr;
                        SIGINT ignored, faulthandler on
    main()/serve()      (``_worker``) guard_worker(), in the worker itself (never in
                        a fork server): the channel fds are closed in every
                        process the task forks; a daemon thread ends the
                        worker's process group when the parent's end of the
                        channel closes (the parent died), even while run() is busy

Everything here runs before the task's module is imported, so that nothing a
program prints can reach the channel.
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import secrets
import select
import signal
import stat
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, NoReturn

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
    "guard_worker",
    "is_serving",
    "new_token",
    "parent_gone",
    "program_main",
    "record_program_main",
    "refuse_spawn_before_main",
    "start_serving",
    "write_all",
]

MARKER = "TARNISH_PY_WORKER"
_TOKEN_BYTES = 16


def new_token() -> str:
    """A random token for one spawn: echoed in the worker's Hello, never guessed by noise."""
    return secrets.token_hex(_TOKEN_BYTES)


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
    token: str = field(default_factory=new_token)  # echoed in Hello and Fatal

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
                "token": self.token,
            }
        )

    @classmethod
    def loads(cls, raw: str) -> WorkerConfig:
        """The config a marker holds; ValueError for anything else."""
        try:
            d = json.loads(raw)
            path, cwd, token = d.get("path"), d.get("cwd"), d["token"]
            loaded = cls(
                module=_str(d["module"]),
                name=_str(d["name"]),
                max_message_bytes=int(d["max"]),
                parent_pid=int(d["parent"]),
                sys_path=tuple(_str(p) for p in path) if path is not None else None,
                cwd=_str(cwd) if cwd is not None else None,
                token=_str(token),
                limits=tuple((str(n), int(v)) for n, v in d.get("limits", ())),
                drop_env=tuple(_str(n) for n in d.get("drop", ())),
                log_level=int(d.get("log", 30)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a worker marker ({type(exc).__name__}: {exc})") from None
        if len(loaded.token) < 2 * _TOKEN_BYTES or loaded.max_message_bytes <= 0:
            raise ValueError("not a worker marker (no valid token or size)")
        return loaded


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


config: WorkerConfig | None = None
channel_in = -1
channel_out = -1
_serving = False
_watch_fd = -1  # the parent-death watcher's own copy of channel_in


def adopt_channel() -> None:
    """Called once when ``tarnish_py`` is imported: prepare a worker, if this is one."""
    global config, channel_in, channel_out
    raw = os.environ.pop(MARKER, None)  # our children are not workers
    if raw is None or config is not None:
        return
    claimed = _verified(raw)
    if claimed is None:
        return
    config = claimed
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


def _verified(raw: str) -> WorkerConfig | None:
    """The marker's config if a parent really waits for this worker, else None.

    A marker set by accident leaves a normal program (with a warning). A worker
    whose parent died while it started exits here: run as a normal program, it
    would run the parent's program, and start workers of its own.
    """
    try:
        claimed = WorkerConfig.loads(raw)
    except ValueError as exc:
        _not_a_worker(str(exc))
        return None
    pipes = _is_pipe(0) and _is_pipe(1)
    if _parent_of(os.getpid()) == claimed.parent_pid or (
        getattr(sys, "frozen", False) and _parent_of(os.getppid()) == claimed.parent_pid
    ):
        if pipes:
            return claimed
        _not_a_worker("its standard input and output are not the pipes of a parent")
        return None
    if pipes and not _alive(claimed.parent_pid):
        try:
            os.write(2, b"tarnish_py: this worker's parent process %d is gone; exiting\n"
                     % claimed.parent_pid)
        except OSError:
            pass
        os._exit(1)
    _not_a_worker(f"it names parent process {claimed.parent_pid}, not this process's parent")
    return None


def _not_a_worker(why: str) -> None:
    warnings.warn(
        f"{MARKER} is set in the environment, but this process was not started by "
        f"tarnish_py as a worker: {why}. It runs as a normal program.",
        RuntimeWarning,
        stacklevel=3,
    )


def _is_pipe(fd: int) -> bool:
    """A pipe, or a socket (a fork server's channel to its parent)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _parent_of(pid: int) -> int | None:
    """The parent of ``pid`` (this process: getppid; others: /proc on Linux)."""
    if pid == os.getpid():
        return os.getppid()
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def start_serving() -> WorkerConfig:
    """Mark this process as serving (``main()`` was reached); its config."""
    global _serving
    assert config is not None
    _serving = True
    return config


def guard_worker(serving: WorkerConfig) -> None:
    """In the worker that will run the task (exec'd, or forked from a fork server,
    which must itself stay single-threaded): from here on the task's code runs, so
    the channel must not leak into what it forks, and the worker must end by
    itself when its parent dies."""
    global config
    config = serving
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_channel)
    _watch_parent()


def _forget_channel() -> None:
    # In a process the task forked (os.fork, multiprocessing): the channel is not
    # its to hold. Held open, it would hide the worker's death from the parent.
    global channel_in, channel_out, _watch_fd
    for fd in (channel_in, channel_out, _watch_fd):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    channel_in = channel_out = _watch_fd = -1


def _watch_parent() -> None:
    """Start a daemon thread that ends this worker when the parent's end of the channel closes."""
    global _watch_fd
    if _watch_fd >= 0 or channel_in < 0 or not hasattr(select, "poll"):
        return
    # Its own copy: a task that closes channel_in (or a reused fd number) cannot fool it.
    _watch_fd = os.dup(channel_in)
    threading.Thread(
        target=_await_hangup, args=(_watch_fd,), name="tarnish_py-parent-watch", daemon=True
    ).start()


def _await_hangup(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: only POLLHUP/POLLERR come, never data
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        if events:
            break
    parent_gone()


def parent_gone() -> NoReturn:
    """The parent died (or closed the channel): take whatever the task started along."""
    flush_std()
    if hasattr(os, "killpg"):
        try:
            os.killpg(0, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


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
    assert config is not None
    try:
        write_all(channel_out, b"\x00" + _protocol.fatal_frame(message, config.token))
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


# -- the program's own __main__ ------------------------------------------------

#: The namespace of the module that called ``tarnish_py.main()``, when that is the
#: program's __main__. Usually ``vars(sys.modules["__main__"])``; under
#: ``python -m cProfile script.py`` (or trace, or any runner that executes the
#: script in a namespace of its own) it is the script's, which sys.modules lacks.
_program_main: dict[str, Any] | None = None


def record_program_main(namespace: dict[str, Any]) -> None:
    """Called by ``main()`` with its caller's globals."""
    global _program_main
    if namespace.get("__name__") == "__main__":
        _program_main = namespace


def program_main() -> dict[str, Any] | None:
    """The namespace of the program's __main__ (None if there is none)."""
    if _program_main is not None:
        return _program_main
    module = sys.modules.get("__main__")
    return vars(module) if module is not None else None
