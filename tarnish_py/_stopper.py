"""``Stopper``: ask a thread blocked in ``poll()`` to stop, from another thread.

::

    owner's thread                       the thread that polls (a map's driver)
    stop.set()  requested = True  --->   reads ``requested`` between its steps
                one byte in a pipe --->  ``stop.fd`` polled beside the workers' fds:
                                         a wait on a long input ends at once
    stop.close()                         once nothing polls ``fd`` any more

A flag alone would be seen only when the poll ends by itself (the next result,
which may be minutes away); a pipe is the one wake-up a ``poll()`` over pipes
and pidfds can take. The write end is non-blocking: one byte is enough, and a
full pipe already wakes the poller. ``set`` and ``close`` share a lock, so a
late ``set`` never writes into a closed fd (whose number may belong to a new
file by then).
"""

from __future__ import annotations

import os
import threading

__all__ = ["Stopper"]


class Stopper:
    """A stop request that also wakes a ``poll()`` on :attr:`fd`."""

    __slots__ = ("_closed", "_lock", "_write", "fd", "requested")

    def __init__(self) -> None:
        self.requested = False
        self.fd, self._write = os.pipe()  # not inherited by what the program execs
        os.set_blocking(self._write, False)  # (os.pipe2 is Linux-only)
        self._lock = threading.Lock()
        self._closed = False

    def set(self) -> None:
        """Request the stop and wake the poller (idempotent, from any thread)."""
        with self._lock:
            if self.requested:
                return
            self.requested = True
            if not self._closed:
                try:
                    os.write(self._write, b"\0")
                except BlockingIOError:  # pragma: no cover - one byte in an empty pipe
                    pass

    def close(self) -> None:
        """Close both ends; only once no thread polls :attr:`fd` (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)
                os.close(self._write)
