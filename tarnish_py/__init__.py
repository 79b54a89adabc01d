"""tarnish_py: crash isolation for Python.

Run brittle native code (C extensions, ctypes/cffi, vendor SDKs) in worker
processes; a segfault, abort, stack overflow or hang fails one call with a
clear error and the caller keeps a fresh worker.
"""

from . import _boot

# In a worker, move stdout off the channel before anything else can print.
_boot.adopt_channel()

from ._decorator import task  # noqa: E402
from ._errors import (  # noqa: E402
    ClosedError,
    ProtocolError,
    SpawnError,
    TarnishError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
)
from ._pool import ProcessPool  # noqa: E402
from ._process import Process  # noqa: E402
from ._settings import Limits  # noqa: E402
from ._task import Task  # noqa: E402
from ._worker import main  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "Limits",
    "Process",
    "ProcessPool",
    "ProtocolError",
    "SpawnError",
    "TarnishError",
    "Task",
    "TaskError",
    "TaskTimeout",
    "WorkerCrashed",
    "main",
    "task",
]
