"""The per-parent watchdog: workers die with their parent, even after SIGKILL.

::

    parent --"+pgid\n" / "-pgid\n"--> watchdog stdin   (a pipe only the parent writes)
    parent dies -> EOF -> watchdog SIGKILLs every registered process group

One small ``python -S`` process per parent, started before the first worker
(``_spawn`` calls :meth:`_Watchdog.ensure` before each Popen). Workers stuck in
C die too, and so do the processes their tasks started while they stay in the
worker's group (one that leaves it — ``setsid``, ``start_new_session=True`` —
is out of reach). It does not depend on which thread spawned the worker,
unlike ``PR_SET_PDEATHSIG``. The parent keeps the set of live groups: a
watchdog found dead (killed) at the next start or stop of a worker is replaced
by a new one that is told every live group again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

__all__ = ["watchdog"]

_POSIX = os.name == "posix"

_WATCHDOG_SOURCE = """\
import os, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups, pending = set(), b""
while True:
    try:
        data = os.read(0, 4096)
    except InterruptedError:
        continue
    if not data:
        break
    pending += data
    *lines, pending = pending.split(b"\\n")
    for line in lines:
        (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class _Watchdog:
    """Kills the parent's worker process groups when the parent dies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0
        self._groups: set[int] = set()  # what a replacement watchdog must be told

    def _live_fd(self) -> int | None:
        """The pipe to this process's own watchdog, if it is running."""
        proc = self._proc
        if proc is None or proc.stdin is None or self._owner != os.getpid():
            return None
        return proc.stdin.fileno() if proc.poll() is None else None

    def _ensure_locked(self) -> int | None:
        # Under self._lock: nobody writes to an old pipe while it is replaced.
        fd = self._live_fd()
        if fd is not None:
            return fd
        self._drop_dead()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-E", "-c", _WATCHDOG_SOURCE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
                bufsize=0,
            )
        except OSError:
            return None
        self._proc, self._owner = proc, os.getpid()
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        if self._groups:  # the last one was killed: this one guards every live group
            try:
                _write_all(fd, b"".join(b"+%d\n" % g for g in sorted(self._groups)))
            except OSError:
                pass
        return fd

    def _drop_dead(self) -> None:
        # This process's previous watchdog died: let go of its pipe.
        proc = self._proc
        if proc is not None and self._owner == os.getpid() and proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def ensure(self) -> None:
        """Have a watchdog running now (best effort: failing to start one is not fatal)."""
        if _POSIX:
            with self._lock:
                self._ensure_locked()

    def _send(self, line: bytes) -> None:
        # Under self._lock.
        fd = self._ensure_locked()
        if fd is None:
            return
        try:
            os.write(fd, line)
        except OSError:
            pass

    def register(self, pgid: int) -> None:
        if not _POSIX:  # pragma: no cover - Windows
            return
        with self._lock:
            self._groups.add(pgid)
            self._send(b"+%d\n" % pgid)

    def unregister(self, pgid: int) -> None:
        if not _POSIX:  # pragma: no cover - Windows
            return
        with self._lock:
            self._groups.discard(pgid)
            if self._proc is not None:
                self._send(b"-%d\n" % pgid)

    def forget_after_fork(self) -> None:
        # A forked child owns none of the parent's workers; the next register()
        # in it starts its own watchdog. Its copy of the pipe must go, or the
        # parent's death would not be seen while this child lives.
        proc, self._proc = self._proc, None
        self._groups = set()
        self._lock = threading.Lock()  # another thread may have held it at the fork
        if proc is not None and proc.stdin is not None:
            stdin, proc.stdin = proc.stdin, None
            stdin.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


watchdog = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=watchdog.forget_after_fork)
