"""The per-parent watchdog: workers die with their parent, even after SIGKILL.

::

    parent --"+pgid\n" / "-pgid\n"--> watchdog stdin   (a pipe only the parent writes)
    parent dies -> EOF -> watchdog SIGKILLs every registered process group

One small ``python -S`` process per parent. Workers stuck in C die too, and so
do the processes their tasks started (they share the worker's group). It does
not depend on which thread spawned the worker, unlike ``PR_SET_PDEATHSIG``.
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

    def _live_fd(self) -> int | None:
        """The pipe to this process's own watchdog, if it is running."""
        proc = self._proc
        if proc is None or proc.stdin is None or self._owner != os.getpid():
            return None
        return proc.stdin.fileno() if proc.poll() is None else None

    def _ensure(self) -> int | None:
        fd = self._live_fd()
        if fd is not None:
            return fd
        with self._lock:
            fd = self._live_fd()
            if fd is not None:
                return fd
            try:
                self._proc = subprocess.Popen(
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
            self._owner = os.getpid()
            assert self._proc.stdin is not None
            return self._proc.stdin.fileno()

    def _send(self, line: bytes) -> None:
        if not _POSIX:  # pragma: no cover - Windows
            return
        fd = self._ensure()
        if fd is None:
            return
        try:
            os.write(fd, line)  # < PIPE_BUF: atomic, safe from any thread
        except OSError:
            pass

    def register(self, pgid: int) -> None:
        self._send(b"+%d\n" % pgid)

    def unregister(self, pgid: int) -> None:
        if self._proc is not None:
            self._send(b"-%d\n" % pgid)

    def forget_after_fork(self) -> None:
        # A forked child owns none of the parent's workers; the next register()
        # in it starts its own watchdog. Its copy of the pipe must go, or the
        # parent's death would not be seen while this child lives.
        proc, self._proc = self._proc, None
        if proc is not None and proc.stdin is not None:
            stdin, proc.stdin = proc.stdin, None
            stdin.close()


watchdog = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=watchdog.forget_after_fork)
