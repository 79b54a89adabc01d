"""Resource limits inside a worker: the ``limits=`` keyword.

::

    parent   Limits(memory=..., ...) --rlimits()--> (("memory", n), ...)
             travels in the worker's marker (WorkerConfig.limits)
    worker   serve(): task class found -> apply() -> task instantiated, setup()

Each limit sets the soft limit and lowers the hard one, so the task cannot
raise it again; a limit is never raised above the hard limit the worker
inherited. What a task sees when it breaks one:

    memory       RLIMIT_AS      allocation fails: MemoryError (a TaskError)
    cpu_seconds  RLIMIT_CPU     SIGXCPU kills the worker (WorkerCrashed, with the
                                Python stack in .stderr); the hard limit, one
                                second later, is a SIGKILL
    open_files   RLIMIT_NOFILE  OSError EMFILE (a TaskError)
    processes    RLIMIT_NPROC   fork/spawn fails: BlockingIOError (a TaskError);
                                counts every process and thread of the user, and
                                root (CAP_SYS_RESOURCE) is exempt
    file_size    RLIMIT_FSIZE   OSError EFBIG (a TaskError): SIGXFSZ is ignored
                                in the worker, so the write fails instead of the
                                signal killing it

Nothing here runs in the parent: a limit never harms it.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import signal
from typing import Any

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

__all__ = ["apply", "rlimits"]

Pairs = tuple[tuple[str, int], ...]

# Limits field -> resource name; looked up at apply time (not every platform has all).
_RESOURCES = {
    "memory": "RLIMIT_AS",
    "cpu_seconds": "RLIMIT_CPU",
    "open_files": "RLIMIT_NOFILE",
    "processes": "RLIMIT_NPROC",
    "file_size": "RLIMIT_FSIZE",
}
_CPU_KILL_AFTER = 1  # seconds between SIGXCPU (soft) and SIGKILL (hard)


def rlimits(limits: Any) -> Pairs:
    """The set fields of a ``tarnish_py.Limits`` (or None), as marker data."""
    if limits is None:
        return ()
    pairs = ((f.name, getattr(limits, f.name)) for f in dataclasses.fields(limits))
    return tuple((name, int(value)) for name, value in pairs if value is not None)


def _lowered(current: int, value: int) -> int:
    infinity: int = resource.RLIM_INFINITY
    return value if current == infinity else min(value, current)


def apply(pairs: Pairs) -> None:
    """Set each limit in this process (a worker, before its task is made).

    Raises ValueError for a limit this platform does not have, or OSError when
    the kernel refuses one: the worker then cannot serve as asked.
    """
    if not pairs:
        return
    if resource is None:  # pragma: no cover - not POSIX
        raise ValueError("limits need the resource module (a POSIX system)")
    for name, value in pairs:
        which = getattr(resource, _RESOURCES[name], None)
        if which is None:
            raise ValueError(f"Limits.{name} ({_RESOURCES[name]}) is not available here")
        hard = resource.getrlimit(which)[1]
        if name == "cpu_seconds":
            # soft < hard: the soft limit sends SIGXCPU, which names the cause
            # (at soft == hard Linux sends SIGKILL straight away).
            new_hard = _lowered(hard, value + _CPU_KILL_AFTER)
        else:
            new_hard = _lowered(hard, value)
        resource.setrlimit(which, (min(value, new_hard), new_hard))
        if name == "file_size" and hasattr(signal, "SIGXFSZ"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if name == "cpu_seconds" and hasattr(signal, "SIGXCPU") and faulthandler.is_enabled():
            # The Python stack where the CPU ran out, in WorkerCrashed.stderr; then
            # the signal's default action ends the worker as before.
            faulthandler.register(signal.SIGXCPU, all_threads=True, chain=True)
