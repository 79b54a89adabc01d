"""How a worker is started: its command line, its environment, its process.

::

    parent                                   worker (own process group / session)
    ------                                   ------
    require_own_main(task)                   (a __main__ task: the program defines it)
    command_for(task)
    watchdog.ensure()
    Popen ------------------------------->   python <the same program> | -c <import hook>
    env TARNISH_PY_WORKER = {task, token ..} tarnish_py import: marker read, checked
                                             and removed, stdout moved off the channel
    watchdog.register(pgid)                  main() / serve(): HELLO(token), then calls

A task defined in ``__main__`` is found by re-executing the program the way it
was started (script, ``-m``, ``-c``, frozen executable; interpreter flags kept),
and that program must call :func:`tarnish_py.main` — only when the program's
own ``__main__`` defines that very class at that name. A task from an
importable module is found by importing it in ``python -c``, with the parent's
``sys.path``.

The watchdog runs before the first worker exists, and each started worker is
registered with it at once; a worker whose parent dies in between exits by
itself (``_boot``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from ._boot import MARKER, WorkerConfig, program_main, refuse_spawn_before_main
from ._environ import EnvSetting, worker_env
from ._errors import SpawnError
from ._watchdog import watchdog

__all__ = [
    "START_CWD",
    "abandon",
    "absolute_sys_path",
    "command_for",
    "require_own_main",
    "start",
]

_POSIX = os.name == "posix"

# Where the program started (as near as we can tell: when tarnish_py was first
# imported). Relative paths of the command line and of sys.path mean this
# folder, even after the program has changed directory.
try:
    START_CWD = os.getcwd()
except OSError:  # pragma: no cover - started in a deleted folder
    START_CWD = os.path.abspath(os.sep)
_F_SETPIPE_SZ = 1031  # Linux
_PIPE_SIZE = 1 << 20


# ---------------------------------------------------------------------------
# The command line


_BOOT = "import tarnish_py._worker as w; w.serve_importable()"

# Interpreter options that take a value, as separate argument or glued on.
_OPTS_WITH_VALUE = frozenset("WX")
_LONG_OPTS_WITH_VALUE = frozenset({"--check-hash-based-pycs"})


def _split_orig_argv(argv: list[str]) -> tuple[list[str], str, str | None, list[str]]:
    """Split ``sys.orig_argv`` into (interpreter options, mode, target, program args).

    mode is "script", "-m", "-c", "-" (stdin) or "" (interactive).
    """
    opts: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-":
            return opts, "-", None, argv[i + 1 :]
        if arg == "--":
            i += 1
            break
        if arg.startswith("--"):
            opts.append(arg)
            if arg in _LONG_OPTS_WITH_VALUE and i + 1 < len(argv):
                opts.append(argv[i + 1])
                i += 1
            i += 1
            continue
        if not arg.startswith("-") or len(arg) < 2:
            break
        # A cluster of short options: "-OO", "-Wignore", "-uc", "-X dev".
        j = 1
        while j < len(arg):
            ch = arg[j]
            if ch in "cm":
                value = arg[j + 1 :] or (argv[i + 1] if i + 1 < len(argv) else "")
                consumed = 1 if arg[j + 1 :] else 2
                if arg[1:j]:
                    opts.append("-" + arg[1:j])
                return opts, "-" + ch, value, argv[i + consumed :]
            if ch in _OPTS_WITH_VALUE:
                if arg[1:j]:
                    opts.append("-" + arg[1:j])
                if arg[j + 1 :]:
                    opts.append("-" + ch + arg[j + 1 :])
                else:
                    opts.extend(["-" + ch, argv[i + 1] if i + 1 < len(argv) else ""])
                    i += 1
                break
            j += 1
        else:
            opts.append(arg)
        i += 1
    if i < len(argv):
        return opts, "script", argv[i], argv[i + 1 :]
    return opts, "", None, []


def _cannot_reexec(task_name: str, why: str) -> SpawnError:
    return SpawnError(
        f"cannot start a worker for {task_name}: it is defined in __main__ of {why}, "
        "which cannot be re-executed. Define the task in an importable module "
        "(a .py file next to your notebook or script) and import it from there."
    )


def _reexec_argv(task_name: str) -> list[str]:
    """The command that starts this program again, for a task defined in ``__main__``."""
    main_mod = sys.modules.get("__main__")
    if getattr(sys, "frozen", False):
        return [sys.executable, *sys.argv[1:]]
    orig = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    opts, mode, target, args = _split_orig_argv(orig)
    spec = getattr(main_mod, "__spec__", None)
    if mode == "script" and target is not None:
        main_file = getattr(main_mod, "__file__", None)
        if main_file is None:
            raise _cannot_reexec(task_name, "an interactive session")
        # argv is relative to where the program started, which may no longer be
        # the current folder. A directory or zip app is run as itself.
        path = os.path.join(START_CWD, target)
        if not os.path.exists(path):
            path = os.path.abspath(main_file)
        return [sys.executable, *opts, path, *args]
    if mode == "-m" and target is not None:
        if spec is None or spec.name not in (target, target + ".__main__"):
            # e.g. Jupyter: started as "-m ipykernel_launcher", __main__ is the notebook.
            raise _cannot_reexec(task_name, "an interactive session")
        return [sys.executable, *opts, "-m", target, *args]
    if mode == "-c" and target is not None:
        if spec is not None or getattr(main_mod, "__file__", None) is not None:
            raise _cannot_reexec(task_name, "an interactive session")
        return [sys.executable, *opts, "-c", target, *args]
    if mode == "-":
        raise _cannot_reexec(task_name, "a program read from standard input")
    raise _cannot_reexec(task_name, "an interactive session")


def require_own_main(task: type, module: str, name: str) -> None:
    """Refuse a task that says it lives in ``__main__`` but is not the program's own.

    A class rebuilt by cloudpickle in a Dask or Ray worker, or received by a
    multiprocessing child, says ``__module__ == "__main__"``; re-executing
    "the program" there would start the Dask worker (or whatever runs) again.
    """
    if module == "__mp_main__":
        raise SpawnError(
            f"cannot start a worker for {name}: it is defined in the main script of a "
            "multiprocessing child (module __mp_main__), which cannot be re-executed. "
            "Define the task in an importable module and import it from there."
        )
    if module != "__main__" or name.startswith("@"):
        return
    first, *rest = name.split(".")
    namespace = program_main()
    found: Any = namespace.get(first) if namespace is not None else None
    for part in rest:
        found = getattr(found, part, None)
    if found is not task:
        raise SpawnError(
            f"cannot start a worker for __main__.{name}: this program's __main__ does not "
            f"define that class at that name. The class only says __module__ == "
            "'__main__' (rebuilt by cloudpickle in a Dask or Ray worker, seen in a "
            "multiprocessing child, or renamed); tarnish_py re-executes only the program "
            "that defines a task. Define the task in an importable module."
        )


def _interpreter_flags() -> list[str]:
    # The same -O, -W, -X ... as the parent, for the "python -c" worker.
    return list(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]


def command_for(module: str, task_name: str) -> list[str]:
    """The argv that starts a worker for a task defined in ``module``."""
    if module == "__main__":
        return _reexec_argv(task_name)
    return [sys.executable, *_interpreter_flags(), "-c", _BOOT]


def absolute_sys_path() -> tuple[str, ...]:
    """The parent's ``sys.path`` as the worker needs it (notebooks change it at run time)."""
    return tuple(os.path.normpath(os.path.join(START_CWD, p)) for p in sys.path)


# ---------------------------------------------------------------------------
# Starting a process


def _enlarge_pipe(fd: int) -> None:
    # Fewer wake-ups for large messages; an unprivileged process may go to 1 MiB.
    if sys.platform.startswith("linux"):
        try:
            import fcntl

            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass


def start(
    config: WorkerConfig, argv: list[str], env_setting: EnvSetting = None
) -> subprocess.Popen[bytes]:
    """Start a worker process (does not wait for its handshake).

    Raises SpawnError (nothing started). The caller owns the process from the
    moment this returns: it must build its Conn, or :func:`abandon` it.
    """
    refuse_spawn_before_main()
    if not _POSIX:  # pragma: no cover - Windows
        raise SpawnError("tarnish_py workers need a POSIX system (Linux, macOS) for now")
    watchdog.ensure()  # running before the worker exists: no unguarded moment
    env = worker_env(env_setting)  # the env= keyword (_environ)
    env[MARKER] = config.dumps()
    # A re-executed program starts where the parent started, so that "-m pkg" and
    # relative paths resolve as they did; the worker then moves to config.cwd.
    start_in = START_CWD if config.module == "__main__" else None
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
            bufsize=0,
            cwd=start_in,
            start_new_session=True,  # own group: Ctrl-C and killpg stay apart
        )
    except OSError as exc:
        raise SpawnError(f"cannot start a worker process ({argv[0]}): {exc}") from exc
    try:
        watchdog.register(popen.pid)
        assert popen.stdin is not None and popen.stdout is not None
        _enlarge_pipe(popen.stdin.fileno())
        _enlarge_pipe(popen.stdout.fileno())
    except BaseException:
        abandon(popen)
        raise
    return popen


def abandon(popen: subprocess.Popen[bytes]) -> None:
    """Kill and reap a started worker that will never serve, and close its pipes."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)  # unreaped: the group id is still its own
    except OSError:
        pass
    popen.wait()
    watchdog.unregister(popen.pid)
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
