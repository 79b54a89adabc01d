"""The public surface: one sorted ``__all__``, and an error tree that carries data."""

from __future__ import annotations

import pickle
import types
from typing import Any

import pytest

import tarnish_py
from tarnish_py import (
    ClosedError,
    ProtocolError,
    ProxyLost,
    SpawnError,
    TarnishError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
)
from tarnish_py._errors import task_error

ERRORS: list[type[TarnishError]] = [
    TaskError,
    WorkerCrashed,
    TaskTimeout,
    SpawnError,
    ProtocolError,
    ClosedError,
    ProxyLost,
]


def test_all_is_sorted_and_unique() -> None:
    assert list(tarnish_py.__all__) == sorted(set(tarnish_py.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in tarnish_py.__all__ if not hasattr(tarnish_py, name)]
    assert missing == []


def test_every_public_name_is_in_all() -> None:
    public = {
        name
        for name, value in vars(tarnish_py).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(tarnish_py.__all__) == set()


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from tarnish_py import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(tarnish_py.__all__)


@pytest.mark.parametrize(
    "name",
    [
        "Task",
        "Process",
        "main",
        *(e.__name__ for e in ERRORS),
        "TarnishError",
        "import_isolated",
        "IsolationContext",
        "RemoteObject",
        "byvalue",
    ],
)
def test_spec_names_are_exported(name: str) -> None:
    assert name in tarnish_py.__all__


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_is_a_tarnish_error(error: type[TarnishError]) -> None:
    assert issubclass(error, TarnishError)
    assert issubclass(TarnishError, Exception)
    assert not issubclass(TarnishError, TimeoutError)


def test_task_timeout_is_a_timeout_error() -> None:
    error = TaskTimeout(1.5)
    assert isinstance(error, TimeoutError) and isinstance(error, OSError)
    assert error.timeout == 1.5
    assert "1.5" in str(error)
    with pytest.raises(TimeoutError):
        raise error


def test_only_task_timeout_is_a_timeout_error() -> None:
    timeouts: list[type[Exception]] = [e for e in ERRORS if issubclass(e, TimeoutError)]
    assert timeouts == [TaskTimeout]


def test_task_error_carries_the_remote_error() -> None:
    tb = 'Traceback (most recent call last):\n  File "w.py", line 3\nValueError: bad\n'
    error = TaskError("ValueError", "bad input", tb)
    assert (error.type_name, error.message, error.traceback) == ("ValueError", "bad input", tb)
    assert str(error) == "ValueError: bad input"
    assert str(TaskError("KeyboardInterrupt", "", "")) == "KeyboardInterrupt"


@pytest.mark.parametrize(
    ("exitcode", "signal", "stderr", "expected"),
    [
        (-11, "SIGSEGV", "Fatal Python error: Segmentation fault\n", "SIGSEGV"),
        (-6, "SIGABRT", "", "SIGABRT"),
        (3, None, "bye\n", "code 3"),
        (None, None, "", "code None"),
    ],
)
def test_worker_crashed_carries_exit_status_and_stderr(
    exitcode: int | None, signal: str | None, stderr: str, expected: str
) -> None:
    error = WorkerCrashed(exitcode, signal, stderr)
    assert (error.exitcode, error.signal, error.stderr) == (exitcode, signal, stderr)
    assert expected in str(error)
    # One short line: the stderr tail lives in .stderr only.
    assert "\n" not in str(error) and len(str(error)) < 80
    if stderr.strip():
        assert stderr.strip() not in str(error)
    error.pid = 4321
    assert "4321" in str(error) and "4321" in repr(error)


def test_spawn_error_carries_stderr() -> None:
    error = SpawnError("no handshake", "ModuleNotFoundError: No module named 'x'\n")
    assert error.stderr.startswith("ModuleNotFoundError")
    assert "no handshake" in str(error) and "ModuleNotFoundError" in str(error)
    assert SpawnError("plain").stderr == ""


SAMPLES: list[TarnishError] = [
    TaskError("ZeroDivisionError", "division by zero", "Traceback...\nZeroDivisionError\n"),
    TaskError("X", "", ""),
    WorkerCrashed(-9, "SIGKILL", "killed\n"),
    WorkerCrashed(1, None, ""),
    TaskTimeout(0.25),
    SpawnError("no stderr"),
    ProtocolError("garbage on the channel"),
    ClosedError("closed"),
    ProxyLost("mylib.Image", "crashed (pid 7, killed by SIGSEGV)"),
    TarnishError("base"),
]
FIELDS = [
    "type_name",
    "message",
    "traceback",
    "exitcode",
    "signal",
    "stderr",
    "timeout",
    "reason",
    "input",
    "pid",
]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling_with_their_fields(error: TarnishError, protocol: int) -> None:
    back = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.args == error.args
    for field in FIELDS:
        assert getattr(back, field, None) == getattr(error, field, None), field


def test_spawn_error_with_stderr_survives_pickling() -> None:
    error = SpawnError("bad program", "SyntaxError: invalid syntax\n")
    back = pickle.loads(pickle.dumps(error))
    assert back.stderr == error.stderr
    assert str(back) == str(error)


def test_proxy_lost_says_the_object_went_with_its_worker() -> None:
    error = ProxyLost("mylib.Image", "crashed (pid 7, killed by SIGSEGV)")
    assert (error.type_name, error.reason) == ("mylib.Image", "crashed (pid 7, killed by SIGSEGV)")
    assert "mylib.Image" in str(error) and "lost with the worker" in str(error)
    assert "crashed (pid 7, killed by SIGSEGV)" in str(error)


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_the_input_and_pid_of_their_call(
    error: TarnishError, protocol: int
) -> None:
    error = pickle.loads(pickle.dumps(error))  # a copy: SAMPLES are shared
    error.input, error.pid = {"image": 7, "size": (64, 64)}, 4321
    back = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert (back.input, back.pid) == ({"image": 7, "size": (64, 64)}, 4321)
    assert str(back) == str(error)


def test_input_and_pid_default_to_none() -> None:
    assert (TarnishError("x").input, TarnishError("x").pid) == (None, None)
    assert (WorkerCrashed(-11, "SIGSEGV", "").pid, TaskTimeout(1).input) == (None, None)


# Builtin types a remote error is also an instance of, with a message as the worker
# sends it; each row is caught by its own type and by the ones after it.
BUILTIN_REMOTE = [
    ("ValueError", "bad", (ValueError,)),
    ("KeyError", "'a'", (KeyError, LookupError)),
    ("ZeroDivisionError", "division by zero", (ZeroDivisionError, ArithmeticError)),
    ("FileNotFoundError", "[Errno 2] No such file or directory: 'x.png'", (FileNotFoundError,)),
    ("PermissionError", "[Errno 13] Permission denied", (PermissionError, OSError)),
    ("OSError", "disk on fire", (OSError,)),
    ("TimeoutError", "slow", (TimeoutError,)),
    ("MemoryError", "", (MemoryError,)),
    ("RecursionError", "too deep", (RecursionError, RuntimeError)),
    ("AttributeError", "no x", (AttributeError,)),
    ("ModuleNotFoundError", "No module named 'x'", (ModuleNotFoundError, ImportError)),
    ("SyntaxError", "invalid syntax", (SyntaxError,)),
    ("UnicodeError", "bad", (UnicodeError, ValueError)),
    # These need other constructor arguments: the nearest base that takes ours.
    ("UnicodeDecodeError", "'utf-8' codec can't decode", (UnicodeError, ValueError)),
    ("UserWarning", "careful", (UserWarning,)),
]


@pytest.mark.parametrize(("name", "message", "kinds"), BUILTIN_REMOTE, ids=lambda v: str(v))
def test_a_remote_builtin_error_is_also_that_builtin(
    name: str, message: str, kinds: tuple[type[Exception], ...]
) -> None:
    error = task_error(name, message, "Traceback ...\n")
    assert isinstance(error, TaskError) and isinstance(error, TarnishError)
    for kind in kinds:
        assert isinstance(error, kind), kind
    assert str(error) == f"{name}: {message}" if message else name
    assert (error.type_name, error.message) == (name, message)
    error.input, error.pid = [1, 2], 99
    for protocol in (0, pickle.HIGHEST_PROTOCOL):
        back = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(back) is type(error)
        assert (back.type_name, back.message, back.input, back.pid) == (name, message, [1, 2], 99)
        assert str(back) == str(error)
    with pytest.raises(kinds[0]):
        raise error


def test_a_remote_os_error_keeps_errno_and_filename() -> None:
    error = task_error("FileNotFoundError", "[Errno 2] No such file or directory: 'x.png'", "")
    assert isinstance(error, FileNotFoundError)
    assert (error.errno, error.filename) == (2, "x.png")
    assert error.strerror == "No such file or directory"
    assert pickle.loads(pickle.dumps(error)).filename == "x.png"


@pytest.mark.parametrize(
    "name",
    [
        "mymodule.ValueError",  # a user's class: the worker sends it module-qualified
        "numpy.linalg.LinAlgError",
        "StopIteration",  # would break generators and asyncio
        "StopAsyncIteration",
        "ExceptionGroup",
        "KeyboardInterrupt",  # not Exception subclasses: never raised as such in the parent
        "SystemExit",
        "GeneratorExit",
        "Exception",
        "BaseException",
        "print",  # a builtin, not an exception
        "IOError",  # an alias: the worker says OSError
        "__import__",
    ],
)
def test_other_remote_errors_stay_plain_task_errors(name: str) -> None:
    error = task_error(name, "m", "")
    assert type(error) is TaskError
    assert type(pickle.loads(pickle.dumps(error))) is TaskError


def test_made_classes_are_cached_and_print_as_task_error() -> None:
    a, b = task_error("KeyError", "'a'", ""), task_error("KeyError", "'b'", "")
    assert type(a) is type(b)
    assert type(a).__name__ == "TaskError" and str(a) == "KeyError: 'a'"
    assert repr(a) == "TaskError(\"KeyError: 'a'\")"
