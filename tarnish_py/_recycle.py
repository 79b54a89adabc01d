"""Recycling a worker by call count and memory: ``max_calls``, ``max_memory``.

::

    Slot.call  reply received -> Recycler.due(conn)   this worker's calls += 1; its
                                                      RSS read by the parent (Linux:
                                                      /proc/<pid>/statm; else ps)
               due -> Slot lets go of the Conn -> Recycler.retire(conn): Shutdown
                      sent, a reaper thread gives the task's close() up to
                      shutdown_timeout, then kills the group and reaps
                   -> Slot.spawn(): the replacement starts at once, as after a crash
               the call's own result (or TaskError) goes to the caller as usual
    Slot.end_shutdown -> Recycler.join(deadline): close() waits for retirees too

Nothing crosses the wire for this: the count and the RSS are the parent's view.
Each recycle is logged (INFO) on ``logging.getLogger("tarnish_py")``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from . import _protocol
from ._conn import Conn, Deadline, Eof
from ._settings import Settings

__all__ = ["Recycler", "rss_of"]

log = logging.getLogger("tarnish_py")

_HAS_PROC = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PS_TIMEOUT = 2.0
_REAP_JOIN = 5.0  # after a SIGKILL the reap is quick; bounded all the same
_SEND_GRACE = 1.0  # the Shutdown frame is tiny: room in the pipe, or the worker is wedged


class _Statm:
    """A worker's /proc/<pid>/statm, kept open: one pread per call (about 1 µs).

    Its second field is resident pages: the VmRSS of /proc/<pid>/status, at a
    fraction of the parsing. Once the process is gone a read fails (ESRCH), so
    a recycled pid can never be misread as ours.
    """

    def __init__(self, pid: int) -> None:
        try:
            self.fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)  # not inheritable
        except OSError:
            self.fd = -1

    def rss(self) -> int | None:
        if self.fd < 0:
            return None
        try:
            return int(os.pread(self.fd, 256, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _rss_ps(pid: int) -> int | None:
    try:
        out = subprocess.run(
            ["ps", "-o", "rss=", "-p", str(pid)],
            capture_output=True,
            timeout=_PS_TIMEOUT,
            check=False,
        ).stdout
        return int(out.strip()) * 1024
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def rss_of(pid: int) -> int | None:
    """A process's resident set size in bytes (None when it cannot be read)."""
    if not _HAS_PROC:
        return _rss_ps(pid)
    statm = _Statm(pid)
    try:
        return statm.rss()
    finally:
        statm.close()


def _calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class Recycler:
    """One slot's recycling rule: counts its worker's calls, retires it when due."""

    def __init__(self, max_calls: int | None, max_memory: int | None, grace: float) -> None:
        self.max_calls = max_calls
        self.max_memory = max_memory
        self.grace = grace
        self._conn: Conn | None = None  # the worker being counted
        self._calls = 0
        self._statm: _Statm | None = None  # its RSS (max_memory on Linux)
        self._reapers: list[tuple[threading.Thread, Conn]] = []

    @classmethod
    def of(cls, settings: Settings) -> Recycler | None:
        """A Recycler for a handle's settings; None when neither rule is set."""
        if settings.max_calls is None and settings.max_memory is None:
            return None
        return cls(settings.max_calls, settings.max_memory, settings.shutdown_timeout)

    def due(self, conn: Conn) -> str | None:
        """Count a call ``conn`` answered; why it must be retired now, or None."""
        if conn is not self._conn:
            self._forget()
            self._conn, self._calls = conn, 0
            if self.max_memory is not None and _HAS_PROC:
                self._statm = _Statm(conn.pid)
        self._calls += 1
        calls = self._calls
        if self.max_calls is not None and calls >= self.max_calls:
            return f"max_calls={self.max_calls} reached ({_calls(calls)} served)"
        if self.max_memory is not None:
            rss = self._statm.rss() if self._statm is not None else rss_of(conn.pid)
            if rss is not None and rss > self.max_memory:
                return (
                    f"RSS {_mib(rss)} over max_memory={self.max_memory} "
                    f"({_mib(self.max_memory)}) after {_calls(calls)}"
                )
        return None

    def _forget(self) -> None:
        self._conn = None
        if self._statm is not None:
            self._statm.close()
            self._statm = None

    def retire(self, conn: Conn, reason: str) -> None:
        """Ask the (idle) worker to exit; a reaper thread sees it gone. Returns at once."""
        self._forget()
        log.info(
            "tarnish_py: recycling worker pid %d: %s; a fresh worker takes the next call",
            conn.pid,
            reason,
        )
        try:
            conn.send(_protocol.shutdown_frame(), time.monotonic() + _SEND_GRACE)
        except (Eof, Deadline, OSError):
            conn.kill()
        self._reapers = [(t, c) for t, c in self._reapers if t.is_alive()]
        reaper = threading.Thread(
            target=self._reap, args=(conn,), name=f"tarnish_py-retire-{conn.pid}", daemon=True
        )
        self._reapers.append((reaper, conn))
        reaper.start()

    def _reap(self, conn: Conn) -> None:
        # This thread is the Conn's only holder now: the slot has let go of it.
        returncode = conn.finish(self.grace)
        if conn.outlived_eof:
            log.warning(
                "tarnish_py: recycled worker pid %d did not exit within shutdown_timeout "
                "(%g s) and was killed",
                conn.pid,
                self.grace,
            )
        elif returncode != 0:
            log.warning(
                "tarnish_py: recycled worker pid %d exited with status %d while closing",
                conn.pid,
                returncode,
            )

    def join(self, deadline: float) -> None:
        """Wait until ``deadline`` for the retired workers to exit; kill those left.

        Called when the handle closes: the counted worker is forgotten too.
        """
        self._forget()
        for reaper, conn in self._reapers:
            reaper.join(max(0.0, deadline - time.monotonic()))
            if reaper.is_alive():
                conn.kill()  # any thread may kill; the reaper then only has to reap
                reaper.join(_REAP_JOIN)
        self._reapers.clear()
