"""A worker's stderr, seen from the parent: forwarded, captured or logged, tail kept.

::

    worker fd 2 --pipe--> StderrPump thread: os.read -> whole lines
      (and Conn's stdout noise before the handshake, through StderrPump.write)
        a marked line (a logging record) -> _worker_logging -> the parent's logger
        any other line, by the handle's ``stderr=`` mode:
          "forward"  parent's fd 2 as "[worker 1234] <line>"; a faulthandler
                     "Fatal Python error" block is collapsed to one line
          "capture"  nowhere
          "log"      logging.getLogger("tarnish_py.worker"): a line at WARNING,
                     a faulthandler block as one ERROR record
        every line -> the tail (``stderr_tail`` bytes), for WorkerCrashed.stderr

The tail keeps the full faulthandler block whatever the mode: a crash reported
on one line loses nothing. Lines without a mark or a crash travel in whole
chunks (one ``replace`` per chunk), so a worker flooding its stderr costs little.
"""

from __future__ import annotations

import logging
import os
import re
import sysconfig
import threading

from . import _worker_logging
from ._boot import write_all

__all__ = ["StderrPump", "forward"]

_READ_SIZE = 65536
_MAX_LINE = 1 << 18  # a longer run without a newline is passed on as a line of its own
_FATAL = b"Fatal Python error: "
# What faulthandler writes after its first line, up to the process's death.
_DUMP_LINE = re.compile(
    rb"(\s*$|  |Current thread|Thread 0x|Stack \(most recent|Extension modules|"
    rb"Python runtime state|Garbage-collecting|<)"
)
_FRAME = re.compile(rb'\s+File "(.*)", line (\d+) in (.*)')
_log = logging.getLogger("tarnish_py.worker")


def forward(data: bytes) -> None:
    """Write to the parent's stderr (fd 2), never failing."""
    try:
        write_all(2, data)
    except OSError:
        pass


class StderrPump(threading.Thread):
    """Reads a worker's stderr as it comes, routes each line, keeps the tail."""

    def __init__(self, fd: int, pid: int, mode: str = "forward", tail_bytes: int = 1 << 15):
        super().__init__(name=f"tarnish_py-stderr-{pid}", daemon=True)
        self._fd = fd
        self._pid = pid
        self._mode = mode
        self._prefix = f"[worker {pid}] ".encode()
        self._tail_bytes = tail_bytes
        self._tail = bytearray()
        self._pending = bytearray()  # a line not finished yet
        self._fatal: list[bytes] | None = None  # the faulthandler block being read
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            while True:
                try:
                    data = os.read(self._fd, _READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                self.write(data)
            self._end()
        finally:
            os.close(self._fd)  # the pump owns the fd: no other thread may close it

    def tail(self) -> str:
        with self._lock:
            return bytes(self._tail[-self._tail_bytes :]).decode("utf-8", "replace")

    def write(self, data: bytes) -> None:
        """Take output of the worker (the pump's own reads, or stdout noise from Conn)."""
        with self._lock:
            self._pending += data
            end = self._pending.rfind(b"\n") + 1
            if end == 0:
                if len(self._pending) < _MAX_LINE:
                    return
                end = len(self._pending)
            block = bytes(self._pending[:end])
            del self._pending[:end]
            self._block(block)

    def _end(self) -> None:
        """EOF: the last unfinished line and an open faulthandler block go out now."""
        with self._lock:
            if self._pending:
                block = bytes(self._pending) + b"\n"
                self._pending.clear()
                self._block(block)
            self._end_fatal()

    # -- routing (under the lock) ----------------------------------------------

    def _keep(self, data: bytes) -> None:
        self._tail += data
        if len(self._tail) > 2 * self._tail_bytes:
            del self._tail[: -self._tail_bytes]

    def _block(self, block: bytes) -> None:
        if self._fatal is None and _worker_logging.MARK not in block and _FATAL not in block:
            self._keep(block)
            self._text(block)  # the common case: plain lines, as one chunk
            return
        for line in block.splitlines(keepends=True):
            self._line(line)

    def _line(self, line: bytes) -> None:
        if self._fatal is not None:
            if _DUMP_LINE.match(line):
                self._keep(line)
                self._fatal.append(line)
                return
            self._end_fatal()
        mark = line.find(_worker_logging.MARK)
        if mark > 0:  # a record written after an unfinished line
            self._line(line[:mark] + b"\n")
            line = line[mark:]
            mark = 0
        if mark == 0 and self._record(line):
            return
        start = line.find(_FATAL)
        if start > 0:  # faulthandler wrote after an unfinished line
            self._line(line[:start] + b"\n")
            line = line[start:]
            start = 0
        self._keep(line)
        if start == 0:
            self._fatal = [line]
        else:
            self._text(line)

    def _record(self, line: bytes) -> bool:
        record = _worker_logging.decode(line, self._pid)
        if record is None:
            return False
        self._keep(_worker_logging.tail_line(record))
        try:
            _worker_logging.deliver(record)
        except Exception:  # a broken handler of the parent's must not stop the pump
            pass
        return True

    def _text(self, block: bytes) -> None:
        """Ordinary lines (each ending in a newline) go where the mode says."""
        if self._mode == "forward":
            prefix = self._prefix
            forward(prefix + block[:-1].replace(b"\n", b"\n" + prefix) + b"\n")
        elif self._mode == "log":
            for line in block.decode("utf-8", "replace").splitlines():
                self._log(logging.WARNING, line)

    def _end_fatal(self) -> None:
        lines, self._fatal = self._fatal, None
        if lines is None:
            return
        if self._mode == "forward":
            forward(self._prefix + _summary(lines) + b"\n")
        elif self._mode == "log":
            self._log(logging.ERROR, b"".join(lines).decode("utf-8", "replace").rstrip())

    def _log(self, level: int, message: str) -> None:
        if not _log.isEnabledFor(level):
            return
        record = _log.makeRecord(_log.name, level, "", 0, message, (), None)
        record.process = self._pid
        record.worker_pid = self._pid
        try:
            _log.handle(record)
        except Exception:
            pass


def _summary(lines: list[bytes]) -> bytes:
    """A faulthandler block in one line: what happened, and where in the program.

    "Where" is the innermost frame of the crashed thread outside the standard
    library, installed packages and tarnish_py (the user's line that called into
    the crashing code), else the innermost frame.
    """
    frames = _crashed_thread_frames(lines[1:])
    text = lines[0].rstrip()
    if frames:
        frame = next((f for f in frames if not f[1].startswith(_LIBRARY_PATHS)), frames[0])
        path = b"/".join(frame[1].split(b"/")[-2:])
        text += b" at " + path + b":" + frame[2] + b" in " + frame[3].rstrip()
    return text + b" (full stack: WorkerCrashed.stderr)"


def _crashed_thread_frames(lines: list[bytes]) -> list[re.Match[bytes]]:
    """The frames of the thread that crashed: the section headed "Current thread"
    (threads are dumped in no fixed order), else the first section."""
    sections: list[tuple[bytes, list[re.Match[bytes]]]] = []
    for line in lines:
        frame = _FRAME.match(line)
        if frame is not None:
            if not sections:
                sections.append((b"", []))
            sections[-1][1].append(frame)
        elif line.startswith((b"Current thread", b"Thread 0x", b"Stack (most recent")):
            sections.append((line, []))
    for header, frames in sections:
        if header.startswith(b"Current thread") and frames:
            return frames
    return next((frames for _, frames in sections if frames), [])


def _library_paths() -> tuple[bytes, ...]:
    paths = {os.path.dirname(os.path.abspath(__file__))}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            paths.add(sysconfig.get_path(name))
        except KeyError:  # pragma: no cover - an unusual install scheme
            pass
    return tuple(os.fsencode(p.rstrip(os.sep) + os.sep) for p in paths if p)


_LIBRARY_PATHS = _library_paths()
