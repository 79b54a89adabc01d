"""The exception tree of tarnish_py.

::

    Exception
     └── TarnishError                  anything tarnish_py reports (.input, .pid)
          ├── TaskError                 run() raised, or returned an invalid Out; worker alive
          │    └── (+ ValueError, KeyError, OSError ...)  when run() raised that builtin type
          ├── WorkerCrashed             the worker process died during the call; replaced
          ├── TaskTimeout (TimeoutError) the call ran past its timeout; worker killed, replaced
          ├── SpawnError                a worker could not start (import error, no handshake...)
          ├── ProtocolError             the worker broke the wire protocol; killed, replaced
          └── ClosedError (RuntimeError) the handle was closed ("you closed it", not "it broke")

Invalid *input* is not a TarnishError: it raises ``pydantic.ValidationError`` in the
caller and nothing is sent. Failures of the layers below (EOF or a deadline on a
pipe, a frame that does not decode) are translated into these in one place,
``_slot``, with ``raise X(...) from exc``; ``_dispatch`` then attaches the call's
input and the worker's pid with :func:`for_call`.

A remote exception of a *builtin* type is raised as a TaskError that is also an
instance of that type (:func:`task_error`), so ``except ValueError:`` catches it.
The class is made from the ``builtins`` module only — a name is never imported.
"""

from __future__ import annotations

import ast
import builtins
import re
import signal as _signal
import threading
from typing import Any

__all__ = [
    "ClosedError",
    "ProtocolError",
    "SpawnError",
    "TarnishError",
    "TaskError",
    "TaskTimeout",
    "WorkerCrashed",
    "describe_exit",
    "exit_text",
    "for_call",
    "task_error",
]


def describe_exit(returncode: int | None) -> tuple[int | None, str | None]:
    """(exitcode, signal name) of a finished process, as ``Popen.returncode`` gives it."""
    if returncode is not None and returncode < 0:
        try:
            return returncode, _signal.Signals(-returncode).name
        except ValueError:
            return returncode, f"signal {-returncode}"
    return returncode, None


def exit_text(exitcode: int | None, signal: str | None) -> str:
    """How a process ended, in words: ``killed by SIGSEGV``, ``exited with code 3``."""
    return f"killed by {signal}" if signal is not None else f"exited with code {exitcode}"


class TarnishError(Exception):
    """Base class of every error tarnish_py raises.

    An error raised for a call carries ``input`` (the caller's input, after
    validation) and, where a worker was involved, ``pid`` (that worker's process
    id); both are ``None`` otherwise. They survive pickling.
    """

    input: Any = None
    pid: int | None = None


class TaskError(TarnishError):
    """``run()`` raised (or returned a value that is not a valid ``Out``).

    The worker is alive and keeps its state. ``traceback`` is the worker's
    formatted traceback; it is also attached as ``__cause__`` so that an
    uncaught ``TaskError`` prints it. When ``type_name`` names a builtin
    exception (``ValueError``, ``KeyError``, ``FileNotFoundError`` ...), the error
    raised is also an instance of that type.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        # Not KeyError's repr() of the message, nor OSError's "[Errno n]" form.
        return BaseException.__str__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback), self.__dict__)


class WorkerCrashed(TarnishError):
    """The worker process died while serving the call.

    ``exitcode`` is the process's exit status, negative when a signal killed it
    (as in ``multiprocessing``); ``signal`` is the signal's name (``"SIGSEGV"``)
    or ``None``; ``stderr`` is the tail of what the worker wrote to stderr,
    which holds the Python stack at the crash (faulthandler is on in workers).
    ``str()`` is one line; the stderr tail is never repeated in it (an uncaught
    WorkerCrashed prints it as its ``__cause__``). A fresh worker replaces the
    dead one; the call is never retried silently.
    """

    def __init__(
        self, exitcode: int | None, signal: str | None, stderr: str, pid: int | None = None
    ) -> None:
        super().__init__(exit_text(exitcode, signal))
        self.exitcode = exitcode
        self.signal = signal
        self.stderr = stderr
        if pid is not None:
            self.pid = pid

    def __str__(self) -> str:
        how = exit_text(self.exitcode, self.signal)
        was = "was " if self.signal is not None else ""
        who = f"worker {self.pid}" if self.pid is not None else "the worker"
        return f"{who} {was}{how}"

    def __repr__(self) -> str:
        fields = f"exitcode={self.exitcode!r}, signal={self.signal!r}, pid={self.pid!r}"
        return f"WorkerCrashed({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exitcode, self.signal, self.stderr), self.__dict__)


class TaskTimeout(TarnishError, TimeoutError):
    """The call ran past its timeout; the worker's process group was killed and replaced
    (or, when the worker was still starting, it was left to start for a later call:
    ``what_then`` says which)."""

    def __init__(self, timeout: float, what_then: str = "the worker was killed") -> None:
        super().__init__(f"call did not finish within {timeout:g} s; {what_then}")
        self.timeout = timeout
        self.what_then = what_then

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.timeout, self.what_then), self.__dict__)


class SpawnError(TarnishError):
    """A worker could not be started; ``stderr`` holds the tail of its stderr."""

    def __init__(self, message: str, stderr: str = "") -> None:
        full = message
        if stderr.strip():
            full += "\nworker stderr ends with:\n" + stderr.rstrip()
        super().__init__(full)
        self.reason = message
        self.stderr = stderr

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.stderr), self.__dict__)


class ProtocolError(TarnishError):
    """The worker sent something the wire protocol does not allow; it was killed."""


class ClosedError(TarnishError, RuntimeError):
    """The handle is closed (or closing): queued and new calls are refused.

    Also a ``RuntimeError``, as ``concurrent.futures`` raises for work submitted
    after shutdown.
    """


# -- attaching a call's data ---------------------------------------------------


class _WorkerStderr(Exception):
    """The tail of a crashed worker's stderr, attached as ``__cause__`` of a WorkerCrashed
    so that an uncaught one shows the worker's stack once, and ``str()`` stays one line."""

    def __str__(self) -> str:
        return f'\n"""\n{str(self.args[0]).rstrip()}\n"""'


def for_call(error: TarnishError, input: Any, pid: int | None) -> TarnishError:
    """Attach a call's validated ``input`` and its worker's ``pid`` to ``error``."""
    error.input = input
    if pid is not None and error.pid is None:
        error.pid = pid
    if isinstance(error, WorkerCrashed) and error.stderr.strip() and error.__cause__ is None:
        error.__cause__ = _WorkerStderr(error.stderr)
    return error


# -- TaskError that is also the builtin exception it reports --------------------

# Builtin exceptions a TaskError must never also be: generators and asyncio treat
# StopIteration specially; exception groups need other constructor arguments.
_NEVER = frozenset({"StopIteration", "StopAsyncIteration", "BaseExceptionGroup", "ExceptionGroup"})
_made: dict[str, type[TaskError] | None] = {}
_made_lock = threading.Lock()


def task_error(type_name: str, message: str, traceback: str) -> TaskError:
    """The TaskError for a remote exception: also an instance of its builtin type, if any."""
    cls = _made.get(type_name)
    if cls is None and type_name not in _made:
        with _made_lock:
            if type_name not in _made:
                _made[type_name] = _builtin_task_error(type_name)
            cls = _made[type_name]
    error = (cls or TaskError)(type_name, message, traceback)
    if isinstance(error, OSError):
        _restore_os_fields(error, message)
    return error


def _builtin_task_error(type_name: str) -> type[TaskError] | None:
    """``TaskError + <the builtin named type_name>``, or of its nearest builtin base that
    can be combined (UnicodeDecodeError -> UnicodeError); None if there is none."""
    found = builtins.__dict__.get(type_name)
    if not (isinstance(found, type) and issubclass(found, Exception)):
        return None  # not a builtin exception (a module-qualified name never is)
    if found.__name__ != type_name:
        return None  # an alias (IOError): the worker sends the class's own name
    for base in found.__mro__:
        if base in TaskError.__mro__:
            return None  # Exception itself: nothing to add
        if base.__name__ in _NEVER or builtins.__dict__.get(base.__name__) is not base:
            continue
        cls: type[TaskError] = type(
            "TaskError",
            (TaskError, base),
            {"__module__": __name__, "__qualname__": "TaskError", "__reduce__": _reduce_builtin},
        )
        try:
            str(cls(type_name, "probe", ""))  # its constructor takes what TaskError's does
        except Exception:
            continue
        return cls
    return None


def _reduce_builtin(self: TaskError) -> tuple[Any, ...]:
    # A made class is found again by its type name, never pickled by reference.
    return (task_error, (self.type_name, self.message, self.traceback), self.__dict__)


_OS_MESSAGE = re.compile(r"\[Errno (-?\d+)\] (.*?)(?:: ('.*'|\".*\"))?$", re.DOTALL)


def _restore_os_fields(error: OSError, message: str) -> None:
    """errno, strerror and filename from an OSError's message: ``[Errno 2] ...: 'x'``."""
    match = _OS_MESSAGE.match(message)
    if match is None:
        return
    error.errno = int(match[1])
    error.strerror = match[2]
    if match[3] is not None:
        try:
            error.filename = ast.literal_eval(match[3])
        except (ValueError, SyntaxError):
            pass
