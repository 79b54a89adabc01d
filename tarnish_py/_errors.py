"""The exception tree of tarnish_py.

::

    Exception
     └── TarnishError                  anything tarnish_py reports
          ├── TaskError                 run() raised, or returned an invalid Out; worker alive
          ├── WorkerCrashed             the worker process died during the call; replaced
          ├── TaskTimeout (TimeoutError) the call ran past its timeout; worker killed, replaced
          ├── SpawnError                a worker could not start (import error, no handshake...)
          ├── ProtocolError             the worker broke the wire protocol; killed, replaced
          └── ClosedError (RuntimeError) the handle was closed ("you closed it", not "it broke")

Invalid *input* is not a TarnishError: it raises ``pydantic.ValidationError`` in the
caller and nothing is sent. Failures of the layers below (EOF or a deadline on a
pipe, a frame that does not decode) are translated into these in one place,
``_slot``, with ``raise X(...) from exc``.
"""

from __future__ import annotations

import signal as _signal

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
    """Base class of every error tarnish_py raises."""


class TaskError(TarnishError):
    """``run()`` raised (or returned a value that is not a valid ``Out``).

    The worker is alive and keeps its state. ``traceback`` is the worker's
    formatted traceback; it is also attached as ``__cause__`` so that an
    uncaught ``TaskError`` prints it.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.traceback))


class WorkerCrashed(TarnishError):
    """The worker process died while serving the call.

    ``exitcode`` is the process's exit status, negative when a signal killed it
    (as in ``multiprocessing``); ``signal`` is the signal's name (``"SIGSEGV"``)
    or ``None``; ``stderr`` is the tail of what the worker wrote to stderr,
    which holds the Python stack at the crash (faulthandler is on in workers).
    A fresh worker replaces the dead one; the call is never retried silently.
    """

    def __init__(self, exitcode: int | None, signal: str | None, stderr: str) -> None:
        message = f"worker process {exit_text(exitcode, signal)}"
        if stderr.strip():
            message += "; its stderr ends with:\n" + stderr.rstrip()
        super().__init__(message)
        self.exitcode = exitcode
        self.signal = signal
        self.stderr = stderr

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.exitcode, self.signal, self.stderr))


class TaskTimeout(TarnishError, TimeoutError):
    """The call ran past its timeout; the worker's process group was killed and replaced."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"call did not finish within {timeout:g} s; the worker was killed")
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.timeout,))


class SpawnError(TarnishError):
    """A worker could not be started; ``stderr`` holds the tail of its stderr."""

    def __init__(self, message: str, stderr: str = "") -> None:
        full = message
        if stderr.strip():
            full += "\nworker stderr ends with:\n" + stderr.rstrip()
        super().__init__(full)
        self.reason = message
        self.stderr = stderr

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason, self.stderr))


class ProtocolError(TarnishError):
    """The worker sent something the wire protocol does not allow; it was killed."""


class ClosedError(TarnishError, RuntimeError):
    """The handle is closed (or closing): queued and new calls are refused.

    Also a ``RuntimeError``, as ``concurrent.futures`` raises for work submitted
    after shutdown.
    """
