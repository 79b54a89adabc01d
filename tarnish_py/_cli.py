"""``python -m tarnish_py serve MODULE:NAME``: relay a task over JSON lines (SPEC §7).

::

    stdin   one line --> reader (main thread):
              "!!snapshot [PATH]" / "!!restore PATH"   run at once, in turn with the calls
              anything else: In.validate_json           --> handle.submit --> Future
            every line becomes one pending answer, queued in input order (bounded)
    stdout  writer thread: each answer in turn --> {"ok": ...} | {"error": {...}} |
            {"snapshot": PATH} | {"restored": PATH}, one line, flushed
    EOF     the writer drains, the workers are closed, exit 0

With ``--size 1`` (the default) the handle is a :class:`Process`; with more, a
:class:`ProcessPool` whose calls run side by side (answers stay in input order).
The snapshot commands need ``--size 1``: each worker of a pool has its own state.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime
import importlib
import inspect
import json
import os
import queue
import sys
import threading
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pydantic
from pydantic import ConfigDict, TypeAdapter
from typing_extensions import NotRequired, TypedDict

from ._decorator import IsolatedFunction
from ._errors import TaskError, WorkerCrashed, exit_text
from ._pool import ProcessPool
from ._process import Process
from ._settings import HandleKeywords
from ._task import Task, adapters

__all__ = ["main"]

_DESCRIPTION = """\
Relay a task over standard input and output, one JSON value per line.

Each input line is one input of the task: a JSON value of its input type for
a Task class, a JSON object of the arguments for an @task function. Each line
gets exactly one answer line, in input order:
  {"ok": RESULT}
  {"error": {"type": NAME, "message": TEXT}}   (a crash adds "signal", "exitcode")
Commands (need --size 1):
  !!snapshot [PATH]   write a snapshot file (into --snapshot-dir, or PATH there)
                      and answer {"snapshot": ABSOLUTE_PATH}
  !!restore PATH      restore a snapshot file; answer {"restored": PATH}
A bad line (invalid JSON, invalid input, unknown command) gets an error line and
the relay goes on; blank lines are ignored. EOF closes the workers and exits 0.
"""

_EXAMPLE = """\
example:
  $ printf '"up"\\n"up"\\n!!snapshot\\n' | python -m tarnish_py serve counter:Counter
  {"ok": 1}
  {"ok": 2}
  {"snapshot": "/home/me/Counter-20250101T120000.000001.snap"}
"""

Answer = Callable[[], bytes]  # blocks until the answer line is known


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tarnish_py",
        description="tarnish_py: crash isolation for Python, from the command line.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="relay a task over stdin/stdout, JSON lines",
        description=_DESCRIPTION,
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "target",
        metavar="MODULE:NAME",
        help="a Task class or an @task function; MODULE is imported with the current "
        "folder on sys.path",
    )
    serve.add_argument("--size", type=_positive_int, default=1, help="workers (default 1)")
    serve.add_argument(
        "--timeout", type=_seconds, default=None, help="seconds each call may run (default: none)"
    )
    serve.add_argument(
        "--snapshot-dir",
        type=Path,
        default=Path("."),
        help="where !!snapshot writes its files (default: the current folder)",
    )
    serve.add_argument(
        "--restore-on-crash",
        action="store_true",
        help="a worker replacing a crashed one restores the state of the last successful call",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        target = _Target.load(args.target)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        print(f"python -m tarnish_py serve: {exc}", file=sys.stderr)
        return 2
    keywords: HandleKeywords = {**target.keywords}
    if args.timeout is not None:
        keywords["timeout"] = args.timeout
    handle: Process[Any, Any] | ProcessPool[Any, Any]
    try:
        if args.size == 1:
            handle = Process(target.task, restore_on_crash=args.restore_on_crash, **keywords)
        else:
            handle = ProcessPool(
                target.task, args.size, restore_on_crash=args.restore_on_crash, **keywords
            )
    except Exception as exc:
        print(f"python -m tarnish_py serve: cannot start {args.target}: {exc}", file=sys.stderr)
        return 1
    with handle:
        relay = _Relay(target, handle, args.snapshot_dir)
        try:
            relay.run(sys.stdin.buffer, sys.stdout.buffer)
        except KeyboardInterrupt:
            return 130
    return 0


class _Target:
    """The task named on the command line, and how its values go from and to JSON."""

    def __init__(
        self,
        name: str,
        task: type[Task[Any, Any]],
        parse: Callable[[bytes], Any],
        out: TypeAdapter[Any],
        keywords: HandleKeywords,
    ) -> None:
        self.name = name
        self.task = task
        self.parse = parse  # an input line -> the task's input (ValidationError)
        self.out = out
        self.keywords = keywords

    @classmethod
    def load(cls, spec: str) -> _Target:
        module_name, sep, name = spec.partition(":")
        if not sep or not module_name or not name:
            raise ValueError(f"expected MODULE:NAME, such as counter:Counter; not {spec!r}")
        if module_name == "__main__":
            raise ValueError("MODULE must be an importable module, not __main__")
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        # What the module prints when imported must not reach the answers.
        with contextlib.redirect_stdout(sys.stderr):
            obj: Any = importlib.import_module(module_name)
        for part in name.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, IsolatedFunction):
            return cls._of_function(name, obj)
        if isinstance(obj, type) and issubclass(obj, Task):
            in_adapter, out_adapter = adapters(obj)
            return cls(name, obj, in_adapter.validate_json, out_adapter, {})
        raise TypeError(f"{spec} is neither a Task class nor an @task function")

    @classmethod
    def _of_function(cls, name: str, fn: IsolatedFunction[..., Any]) -> _Target:
        task = fn.task_class
        arguments, defaults = _arguments_adapter(fn.__wrapped__)

        def parse(line: bytes) -> Any:
            return {**defaults, **arguments.validate_json(line)}

        # The function's own keywords (timeout, env, limits ...) apply, as when it is called.
        keywords: HandleKeywords = fn._options  # private: IsolatedFunction's settings
        return cls(name, task, parse, adapters(task)[1], keywords)


def _arguments_adapter(fn: Callable[..., Any]) -> tuple[TypeAdapter[Any], dict[str, Any]]:
    """A JSON object of ``fn``'s arguments: parameters with defaults may be left out,
    unknown names are refused. Returns the adapter and the defaults to fill in."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for pname, param in inspect.signature(fn).parameters.items():
        tp = hints.get(pname, Any)
        if param.default is not param.empty:
            defaults[pname] = param.default
            tp = NotRequired[tp]
        fields[pname] = tp
    arguments: Any = TypedDict(f"{fn.__name__}_arguments", fields)  # type: ignore[misc]
    # An unknown argument name is an error, as it would be in a call.
    arguments.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return TypeAdapter(arguments, module=fn.__module__), defaults


class _Relay:
    """Reads input lines, starts their calls, and writes their answers in order."""

    def __init__(
        self,
        target: _Target,
        handle: Process[Any, Any] | ProcessPool[Any, Any],
        snapshot_dir: Path,
    ) -> None:
        self._target = target
        self._handle = handle
        self._snapshot_dir = snapshot_dir
        size = handle.size if isinstance(handle, ProcessPool) else 1
        # Bounded: a slow consumer holds the reader back (two calls per worker in flight).
        self._answers: queue.Queue[Answer | None] = queue.Queue(maxsize=2 * size)

    def run(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        writer = threading.Thread(
            target=_write_answers, args=(self._answers, stdout), name="tarnish_py-relay-writer"
        )
        writer.daemon = True  # a Ctrl-C must not wait for it
        writer.start()
        try:
            for line in stdin:
                if line.strip():
                    self._answers.put(self._answer(line))
        finally:
            self._answers.put(None)
        writer.join()

    def _answer(self, line: bytes) -> Answer:
        try:
            if line.startswith(b"!!"):
                # Run now: a command waits its turn behind the calls already started.
                text = _json_line(self._command(line.decode("utf-8", "replace").split()))
                return lambda: text
            future = self._handle.submit(self._target.parse(line))
        except Exception as exc:  # a failed command; invalid JSON or input: nothing sent
            text = _error_line(exc)
            return lambda: text
        return lambda: self._outcome(future)

    def _outcome(self, future: cf.Future[Any]) -> bytes:
        try:
            result = future.result()
        except BaseException as exc:
            return _error_line(exc)
        try:
            return b"{\"ok\": " + self._target.out.dump_json(result) + b"}\n"
        except Exception as exc:  # pragma: no cover - the worker validated the output
            return _error_line(exc)

    def _command(self, words: list[str]) -> dict[str, Any]:
        name, args = words[0], words[1:]
        if name not in ("!!snapshot", "!!restore"):
            raise ValueError(f"unknown command {name}; the commands are !!snapshot and !!restore")
        handle = self._handle
        if not isinstance(handle, Process):
            raise ValueError(
                f"{name} needs --size 1: each worker of a pool has its own state"
            )
        if name == "!!snapshot":
            if len(args) > 1:
                raise ValueError("usage: !!snapshot [PATH]")
            path = self._snapshot_dir / (args[0] if args else self._snapshot_name())
            written = handle.snapshot_to_file(path)
            return {"snapshot": str(written.resolve())}
        if len(args) != 1:
            raise ValueError("usage: !!restore PATH")
        handle.restore_from_file(args[0])
        return {"restored": args[0]}

    def _snapshot_name(self) -> str:
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")
        base = f"{self._target.name}-{stamp}"
        name, n = f"{base}.snap", 1
        while (self._snapshot_dir / name).exists():
            n += 1
            name = f"{base}-{n}.snap"
        return name


def _json_line(answer: dict[str, Any]) -> bytes:
    return (json.dumps(answer) + "\n").encode()


def _write_answers(answers: queue.Queue[Answer | None], stdout: BinaryIO) -> None:
    broken = False
    while True:
        answer = answers.get()
        if answer is None:
            return
        line = answer()
        if broken:
            continue  # the reader is gone: keep draining so that no call is left waiting
        try:
            stdout.write(line)
            stdout.flush()
        except OSError:
            broken = True


def _error_line(exc: BaseException) -> bytes:
    error: dict[str, Any]
    if isinstance(exc, TaskError):
        error = {"type": exc.type_name, "message": exc.message}
    elif isinstance(exc, WorkerCrashed):
        error = {
            "type": "WorkerCrashed",
            "message": f"worker process {exit_text(exc.exitcode, exc.signal)}",
            "signal": exc.signal,
            "exitcode": exc.exitcode,
        }
    elif isinstance(exc, pydantic.ValidationError):
        error = {"type": "ValidationError", "message": str(exc)}
    else:
        error = {"type": type(exc).__name__, "message": str(exc)}
    return _json_line({"error": error})
