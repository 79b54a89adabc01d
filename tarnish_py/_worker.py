"""The loop inside a worker process.

::

    (``_boot`` has adopted the channel when tarnish_py was imported)
    main() / serve_importable()  the task is found, instantiated, set up; a failure
                                 of one of these steps: its traceback on stderr, a
                                 Fatal naming the step, exit
    serve()                      b"\\x00" + Hello, then Call -> run -> Result | Error
                                 (anything run() raises, BaseException included, is
                                 an Error, cut to fit max_message_bytes; a Batch of a
                                 map: ``_batch_worker.run_batch``) until
                                 Shutdown (close(), exit 0) or EOF (parent gone);
                                 the large bytes of a Call or Result travel as raw
                                 segments after their frame (``_segments``)

Imports only the layers below it (``_boot``, ``_protocol``, ``_task``,
``_wire``, ``_segments``): nothing of the parent's side runs in a worker.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import msgpack
from cobs import cobs as _cobs

from . import (
    _batch_worker,
    _boot,
    _forkserver,
    _limits,
    _protocol,
    _segments,
    _snapshot,
    _values,
    _wire,
)
from ._task import Codec, Task, codec, task_for_label

__all__ = ["main", "serve", "serve_importable"]

R = TypeVar("R")

_EARLY = _segments.EARLY  # a global: read on every call
_unpackb = msgpack.unpackb
_MAX_TRACEBACK_FRAMES = 64
_MAX_TEXT = 20_000


def _resolve(module_name: str, name: str) -> type[Task[Any, Any]]:
    if name.startswith("@"):
        if module_name != "__main__":
            importlib.import_module(module_name)
        return task_for_label(name[1:])
    first, *rest = name.split(".")
    if module_name == "__main__":
        # The namespace main() was called from: the script's own, also under cProfile.
        namespace = _boot.program_main() or {}
        if first not in namespace:
            raise LookupError(f"this program's __main__ does not define {first!r}")
        obj: Any = namespace[first]
    else:
        obj = getattr(importlib.import_module(module_name), first)
    for part in rest:
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
    config = _boot.start_serving()  # a fork server stays single-threaded: no guard yet
    if _forkserver.is_server():
        # Returns only in a worker forked from this server, with that worker's config.
        config = _forkserver.serve_forks(lambda: codec(_resolve(config.module, config.name)))
    _boot.guard_worker(config)
    where = f"{config.module}.{config.name.lstrip('@')}"
    try:
        task_cls = _resolve(config.module, config.name)
        task_codec = codec(task_cls)
    except BaseException as exc:
        found = " when main() was called" if config.module == "__main__" else ""
        _cannot_serve(f"cannot find the task {where}{found}", exc)
    try:
        _limits.apply(config.limits)  # limits=: before the task is instantiated
    except BaseException as exc:
        _cannot_serve(f"cannot apply the limits of {where}", exc)
    instance = _instantiate(task_cls, where)
    try:
        instance.setup()
    except BaseException as exc:
        _cannot_serve(f"{where}.setup() raised", exc)
    _boot.write_all(
        _boot.channel_out, b"\x00" + _protocol.hello_frame(os.getpid(), config.token)
    )
    _loop(instance, task_codec, config.max_message_bytes)


def _instantiate(task_cls: type[Task[Any, Any]], where: str) -> Task[Any, Any]:
    try:
        return task_cls()
    except BaseException as exc:
        try:
            inspect.signature(task_cls).bind()
            needs_arguments = False
        except TypeError:
            needs_arguments = True
        except ValueError:  # no signature to inspect
            needs_arguments = False
        if needs_arguments:
            _cannot_serve(
                f"{where} cannot be instantiated without arguments (a worker creates "
                "its task with none: give __init__'s parameters defaults, or load "
                "what it needs in setup())",
                exc,
            )
        _cannot_serve(f"{where}() raised", exc)


def _cannot_serve(what: str, exc: BaseException) -> NoReturn:
    """Tell the parent which step failed; the traceback goes to stderr (``SpawnError.stderr``)."""
    text = _format_exception(exc)
    try:
        _boot.write_all(2, text.encode("utf-8", "replace"))
    except OSError:
        pass
    _boot.fatal(f"{what} {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:
        message = ""
    name = type(exc).__qualname__
    line = f"{name}: {message}" if message else name
    return line if len(line) <= 500 else line[:500] + " ..."


def _loop(instance: Task[Any, Any], task_codec: Codec, limit: int) -> NoReturn:
    reader = _wire.FrameReader(limit)
    buf = bytearray(1 << 16)
    bufs = [buf]
    packer = _protocol.Packer()
    pack = _wire.packer()  # packer.result inlined below: one frame less per call
    large = min(_segments.THRESHOLD, limit + 1)  # a reply this long needs _pack_large
    frame_limit = _wire.frame_limit(limit)
    decode_input = task_codec.decode_input
    encode_output = task_codec.encode_output
    plain_in, plain_out = task_codec.plain_in, task_codec.plain_out
    cobs_decode, cobs_encode = _cobs.decode, _cobs.encode
    unpackb, ext_hook = _unpackb, _values.ext_hook
    call_kind, result_kind = _protocol.CALL, _protocol.RESULT
    call_fields = _protocol.call_fields
    run = instance.run
    channel_in, channel_out = _boot.channel_in, _boot.channel_out
    readv, write = os.readv, os.write
    queued: deque[Any] = deque()  # the messages of a read after the first
    clean = True  # the reader holds no part of a frame or of segments
    while True:
        if queued:
            message = queued.popleft()
            if call_fields(message) is None:
                _other_request(instance, message, task_codec, packer, limit)
                continue
        else:
            try:
                n = readv(channel_in, bufs)
            except InterruptedError:
                continue
            if n == 0:
                _boot.parent_gone()
            # The common case, flat (FrameReader.feed and _protocol.call_fields
            # inlined): one whole Call frame in this read, and nothing before it.
            # Anything else, undecodable bytes included, goes through the reader,
            # which says what it is.
            end = n - 1
            message = None
            if clean and 0 < end <= frame_limit and buf[end] == 0:
                try:
                    # A zero inside makes cobs.decode raise: buf[end] is the only one.
                    message = unpackb(
                        cobs_decode(buf[:end]),
                        ext_hook=ext_hook,
                        strict_map_key=False,
                        raw=False,
                        unicode_errors="surrogatepass",
                    )
                except Exception:
                    message = None
                if (
                    type(message) is not list
                    or len(message) != 3
                    or message[0] != call_kind
                    or type(message[0]) is not int
                ):
                    message = None
            if message is None:
                messages = reader.feed(buf[:n])
                if not messages and reader.raw is not None:
                    messages = _read_segments(reader, channel_in)
                clean = reader.idle
                queued.extend(messages)
                continue
        call_id = message[1]
        value = message[2]
        split = None
        try:
            # A value of exactly a plain In or Out type validates to itself
            # (``Codec.plain_in``): the validators run for anything else.
            if type(value) is not plain_in:
                value = decode_input(value)
            out = run(value)
            if type(out) is not plain_out:
                out = encode_output(out)
            if type(out) in _EARLY:  # bytes, a model's dict: large bytes out of band
                reply, split = _pack_large(packer, call_id, out, None, limit, "result")
            else:
                reply = pack([result_kind, call_id, out])
                if len(reply) >= large:
                    reply, split = _pack_large(packer, call_id, out, reply, limit, "result")
        except BaseException as exc:  # SystemExit, KeyboardInterrupt ... too: the task's
            split = None
            reply = _protocol.error_packed(_error(call_id, exc), limit)
        if split is not None:
            _write_reply(channel_out, reply, split)
            continue
        frame = cobs_encode(reply) + b"\x00"  # _wire.frame_packed inlined
        written = write(channel_out, frame)
        if written != len(frame):  # a large frame: the rest
            _boot.write_all(channel_out, memoryview(frame)[written:])


def _read_segments(reader: _wire.FrameReader, channel_in: int) -> list[Any]:
    """Read the segments a Call announced straight into their buffers; its message."""
    while True:
        views = reader.raw
        if views is None:
            return []
        try:
            n = os.readv(channel_in, views)
        except InterruptedError:
            continue
        if n == 0:
            _boot.parent_gone()
        messages = reader.filled(n)
        if messages:
            return messages


def _other_request(
    instance: Task[Any, Any],
    message: list[Any],
    task_codec: Codec,
    packer: _protocol.Packer,
    limit: int,
) -> None:
    """Anything but a Call: a batch, a state request (SPEC §7), or Shutdown."""
    try:
        request = _protocol.parse_request(message)
    except Exception as exc:
        _boot.fatal(str(exc))
    if type(request) is _protocol.Batch:
        _batch_worker.run_batch(
            request, instance.run, task_codec.decode_input, task_codec.encode_output, limit,
            _error,
        )
        return
    if type(request) is not _protocol.StateRequest:
        _shutdown(instance)
    # Snapshot, restore, or a call that also returns the state (SPEC §7).
    reply, split = _state_reply(instance, request, task_codec, packer, limit)
    _write_reply(_boot.channel_out, reply, split)


def _state_reply(
    instance: Task[Any, Any],
    request: _protocol.StateRequest,
    task_codec: Codec,
    packer: _protocol.Packer,
    limit: int,
) -> tuple[bytes, _segments.Split | None]:
    """The packed reply to a state request (``_snapshot.answer`` does the work), and
    the segments of its large bytes."""
    split = None
    try:
        answer = _snapshot.answer(instance, request, task_codec)
        packed = None if type(answer) in _EARLY else packer.result(request.call_id, answer)
        reply, split = _pack_large(packer, request.call_id, answer, packed, limit, "state")
    except BaseException as exc:  # any exception of a hook is a task error (SPEC §2)
        _snapshot.reply_failed()
        split = None
        reply = _protocol.error_packed(_error(request.call_id, exc))
    return reply, split


def _pack_large(
    packer: _protocol.Packer, call_id: int, output: Any, packed: bytes | None, limit: int,
    what: str,
) -> tuple[bytes, _segments.Split | None]:
    """A Result that may hold large bytes: they travel out of band (``_segments``).
    ValueError past max_message_bytes, segments counted."""
    pack = functools.partial(packer.result, call_id)
    return _segments.pack_large(pack, output, packed, limit, what)


def _write_reply(channel_out: int, reply: bytes, split: _segments.Split | None) -> None:
    """Send a packed reply: one frame, or the envelope and the segments it announces."""
    if split is None:
        _boot.write_all(channel_out, _wire.frame_packed(reply))
    else:
        frame = _wire.envelope_frame(reply, split.lengths)
        _segments.write_all(channel_out, [frame, *split.buffers])


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


def main(parent_fn: Callable[[], R] | None = None) -> R | None:
    """Run ``parent_fn`` in the parent; serve the named task in a worker.

    End a program that defines tasks in ``__main__`` with::

        if __name__ == "__main__":
            tarnish_py.main(parent)

    Spawning a worker re-executes the program with an environment marker; in
    that worker, ``main()`` serves calls and never returns, so ``parent`` runs
    only in the parent. The module that calls ``main()`` is taken as the
    program's ``__main__`` (also under ``python -m cProfile script.py``): a
    ``__main__`` task is re-executed only if that module defines it.
    """
    _boot.record_program_main(sys._getframe(1).f_globals)
    if _boot.config is not None and not _boot.is_serving():
        serve()
    return parent_fn() if parent_fn is not None else None
