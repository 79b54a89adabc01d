"""The loop inside a worker process.

::

    import tarnish_py            adopt_channel(): the marker is read and removed from
                                 the environment; the channel moves to private fds;
                                 fd 0 becomes /dev/null and fd 1 a copy of fd 2, so
                                 print, C printf and os.write(1, ...) land on stderr
    main() / serve_importable()  the task is found, instantiated, set up
    serve()                      b"\\x00" + HELLO, then CALL -> run -> RESULT | ERROR
                                 until SHUTDOWN (close(), exit 0) or EOF (parent gone)

A worker ignores SIGINT (Ctrl-C belongs to the parent) and has faulthandler on,
so a crash leaves the Python stack on stderr for ``WorkerCrashed.stderr``.
"""

from __future__ import annotations

import atexit
import faulthandler
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from . import _wire
from ._spawn import MARKER, WorkerConfig
from ._task import Task, adapters

__all__ = [
    "adopt_channel",
    "config",
    "main",
    "refuse_spawn_before_main",
    "serve",
    "serve_importable",
]

R = TypeVar("R")

config: WorkerConfig | None = None
_channel_in = -1
_channel_out = -1
_serving = False

_MAX_TRACEBACK_FRAMES = 64
_MAX_TEXT = 20_000


def adopt_channel() -> None:
    """Called once when ``tarnish_py`` is imported: prepare a worker, if this is one."""
    global config, _channel_in, _channel_out
    raw = os.environ.pop(MARKER, None)  # our children are not workers
    if raw is None or config is not None:
        return
    config = WorkerConfig.loads(raw)
    if config.cwd is not None:
        try:
            os.chdir(config.cwd)
        except OSError:
            pass
    _channel_in = os.dup(0)  # os.dup makes non-inheritable fds
    _channel_out = os.dup(1)
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
    atexit.register(_exit_without_main)


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(_channel_out, view)
        view = view[n:]


def _fatal(message: str, code: int = 3) -> NoReturn:
    """Tell the parent why this worker cannot serve, then exit at once."""
    try:
        _write(b"\x00" + _wire.encode_frame([_wire.FATAL, message]))
    except OSError:
        pass
    _flush_std()
    os._exit(code)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _exit_without_main() -> None:
    if config is not None and not _serving:
        _fatal(
            "the program was re-executed to serve a worker but finished without calling "
            "tarnish_py.main(). End the program with:\n"
            "    if __name__ == '__main__':\n"
            "        tarnish_py.main(your_main_function)"
        )


def refuse_spawn_before_main() -> None:
    """Stop a re-executed program from starting workers of its own (a chain)."""
    if config is not None and not _serving:
        _fatal(
            "the program was re-executed to serve a worker, and it started a worker "
            "itself before calling tarnish_py.main(): the code that starts workers must "
            "run only in the parent. Put it in a function and end the program with:\n"
            "    if __name__ == '__main__':\n"
            "        tarnish_py.main(your_main_function)"
        )


def _resolve(module_name: str, name: str) -> type[Task[Any, Any]]:
    if name.startswith("@"):
        from ._decorator import task_for_label

        if module_name != "__main__":
            importlib.import_module(module_name)
        return task_for_label(name[1:])
    obj: Any = importlib.import_module(module_name)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise TypeError(f"{module_name}.{name} is not a Task subclass")
    task_cls: type[Task[Any, Any]] = obj
    return task_cls


def serve_importable() -> NoReturn:
    """Entry point of a ``python -c`` worker for a task from an importable module."""
    if config is None:
        raise SystemExit("tarnish_py worker started without its environment marker")
    if config.sys_path is not None:
        sys.path[:] = list(config.sys_path)
    serve()


def serve() -> NoReturn:
    """Serve the task the marker names until SHUTDOWN or EOF; never returns."""
    global _serving
    assert config is not None
    _serving = True
    try:
        task_cls = _resolve(config.module, config.name)
        in_adapter, out_adapter = adapters(task_cls)
        instance = task_cls()
        instance.setup()
    except BaseException as exc:
        where = "in __main__ when main() was called" if config.module == "__main__" else ""
        _fatal(
            f"cannot serve {config.module}.{config.name.lstrip('@')} {where}\n"
            + _format_exception(exc)
        )
    _write(b"\x00" + _wire.encode_frame([_wire.HELLO, _wire.PROTOCOL_VERSION, os.getpid()]))
    _loop(instance, in_adapter, out_adapter, task_cls._tarnish_types, config.max_message_bytes)


def _loop(
    instance: Task[Any, Any], in_adapter: Any, out_adapter: Any, types: Any, limit: int
) -> NoReturn:
    reader = _wire.FrameReader(limit)
    buf = bytearray(1 << 16)
    pack = _wire.packer()
    validate_in = in_adapter.validate_python
    validate_out = out_adapter.validate_python
    dump_out = _wire.dumper(out_adapter, types[1] if types else None)
    run = instance.run
    while True:
        try:
            n = os.readv(_channel_in, [buf])
        except InterruptedError:
            continue
        if n == 0:
            _parent_gone()
        for message in reader.feed(buf[:n]):
            kind = message[0]
            if kind == _wire.CALL:
                call_id = message[1]
                try:
                    result = validate_out(run(validate_in(message[2])))
                    if dump_out is not None:
                        result = dump_out(result)
                    reply = pack([_wire.RESULT, call_id, result])
                    if len(reply) > limit:
                        raise ValueError(
                            f"the result takes {len(reply)} bytes, more than "
                            f"max_message_bytes ({limit})"
                        )
                except Exception as exc:
                    reply = _wire.pack(_error_message(call_id, exc))
                _write(_wire.frame_packed(reply))
            elif kind == _wire.SHUTDOWN:
                _shutdown(instance)
            else:
                _fatal(f"unexpected message kind {kind!r} from the parent")


def _error_message(call_id: int, exc: BaseException) -> list[Any]:
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable exception>"
    return [_wire.ERROR, call_id, name, message[:_MAX_TEXT], _format_exception(exc)]


def _format_exception(exc: BaseException) -> str:
    # A RecursionError can be a million frames deep: keep only the innermost.
    try:
        text = "".join(traceback.format_exception(exc, limit=-_MAX_TRACEBACK_FRAMES))
    except Exception:
        text = f"{type(exc).__name__} (its traceback could not be formatted)"
    if len(text) > _MAX_TEXT:
        text = text[: _MAX_TEXT // 2] + "\n[... traceback cut ...]\n" + text[-_MAX_TEXT // 2 :]
    return text


def _shutdown(instance: Task[Any, Any]) -> NoReturn:
    code = 0
    try:
        instance.close()
    except BaseException:
        traceback.print_exc()
        code = 1
    _flush_std()
    os._exit(code)


def _parent_gone() -> NoReturn:
    # The parent died or closed the channel: take whatever the task started along.
    _flush_std()
    if hasattr(os, "killpg"):
        try:
            os.killpg(0, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


def main(parent_fn: Callable[[], R] | None = None) -> R | None:
    """Run ``parent_fn`` in the parent; serve the named task in a worker.

    End a program that defines tasks in ``__main__`` with::

        if __name__ == "__main__":
            tarnish_py.main(parent)

    Spawning a worker re-executes the program with an environment marker; in
    that worker, ``main()`` serves calls and never returns, so ``parent`` runs
    only in the parent.
    """
    if config is not None and not _serving:
        serve()
    return parent_fn() if parent_fn is not None else None
