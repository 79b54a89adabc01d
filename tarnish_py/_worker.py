"""The loop inside a worker process.

::

    (``_boot`` has adopted the channel when tarnish_py was imported)
    main() / serve_importable()  the task is found, instantiated, set up
    serve()                      b"\\x00" + Hello, then Call -> run -> Result | Error
                                 (a Batch of a map: ``_batch_worker.run_batch``)
                                 until Shutdown (close(), exit 0) or EOF (parent gone)

Imports only the layers below it (``_boot``, ``_protocol``, ``_task``,
``_wire``): nothing of the parent's side runs in a worker.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from . import _batch_worker, _boot, _protocol, _wire
from ._task import Codec, Task, codec, task_for_label

__all__ = ["main", "serve", "serve_importable"]

R = TypeVar("R")

_MAX_TRACEBACK_FRAMES = 64
_MAX_TEXT = 20_000


def _resolve(module_name: str, name: str) -> type[Task[Any, Any]]:
    if name.startswith("@"):
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
    config = _boot.config
    if config is None:
        raise SystemExit("tarnish_py worker started without its environment marker")
    if config.sys_path is not None:
        sys.path[:] = list(config.sys_path)
    serve()


def serve() -> NoReturn:
    """Serve the task the marker names until Shutdown or EOF; never returns."""
    config = _boot.start_serving()
    try:
        task_cls = _resolve(config.module, config.name)
        task_codec = codec(task_cls)
        instance = task_cls()
        instance.setup()
    except BaseException as exc:
        where = "in __main__ when main() was called" if config.module == "__main__" else ""
        _boot.fatal(
            f"cannot serve {config.module}.{config.name.lstrip('@')} {where}\n"
            + _format_exception(exc)
        )
    _boot.write_all(_boot.channel_out, b"\x00" + _protocol.hello_frame(os.getpid()))
    _loop(instance, task_codec, config.max_message_bytes)


def _loop(instance: Task[Any, Any], task_codec: Codec, limit: int) -> NoReturn:
    reader = _wire.FrameReader(limit)
    buf = bytearray(1 << 16)
    packer = _protocol.Packer()
    decode_input = task_codec.decode_input
    encode_output = task_codec.encode_output
    run = instance.run
    channel_in, channel_out = _boot.channel_in, _boot.channel_out
    while True:
        try:
            n = os.readv(channel_in, [buf])
        except InterruptedError:
            continue
        if n == 0:
            _parent_gone()
        for message in reader.feed(buf[:n]):
            try:
                request = _protocol.parse_request(message)
            except Exception as exc:
                _boot.fatal(str(exc))
            if type(request) is not _protocol.Call:
                if type(request) is _protocol.Batch:
                    _batch_worker.run_batch(
                        request, run, decode_input, encode_output, limit, _error
                    )
                    continue
                _shutdown(instance)
            call_id, value = request
            try:
                reply = packer.result(call_id, encode_output(run(decode_input(value))))
                if len(reply) > limit:
                    raise ValueError(
                        f"the result takes {len(reply)} bytes, more than "
                        f"max_message_bytes ({limit})"
                    )
            except Exception as exc:
                reply = _protocol.error_packed(_error(call_id, exc))
            _boot.write_all(channel_out, _wire.frame_packed(reply))


def _error(call_id: int, exc: BaseException) -> _protocol.Error:
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable exception>"
    return _protocol.Error(call_id, name, message[:_MAX_TEXT], _format_exception(exc))


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
    _boot.flush_std()
    os._exit(code)


def _parent_gone() -> NoReturn:
    # The parent died or closed the channel: take whatever the task started along.
    _boot.flush_std()
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
    if _boot.config is not None and not _boot.is_serving():
        serve()
    return parent_fn() if parent_fn is not None else None
