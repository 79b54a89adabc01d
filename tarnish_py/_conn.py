"""One live worker process and its pipes, seen from the parent.

::

    Conn.request(frame) --os.write--> worker stdin     (non-blocking; poll for room)
                        <--os.readv-- worker stdout    (into one reused buffer)
    StderrPump thread   <--os.read--- worker stderr -> parent's fd 2, tail kept

Only the thread that holds a Conn (the dispatcher guarantees one at a time)
reads, writes, reaps and closes it. Any thread may :meth:`Conn.kill` it: that
only SIGKILLs the process group while its leader is unreaped (so the group id
cannot have been recycled); the holder then sees EOF and reaps.

A Conn raises only the private errors below; ``_slot`` says what they mean.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Any

from . import _protocol, _wire
from ._boot import write_all
from ._errors import ProtocolError
from ._watchdog import watchdog

__all__ = ["BadMessage", "Conn", "Deadline", "Eof", "Refused"]

_READ_SIZE = 1 << 18
_TAIL_BYTES = 1 << 15
_EXIT_GRACE = 2.0  # after EOF, how long a worker may take to finish dying
_PUMP_JOIN = 1.0  # how long to wait for the last of its stderr
_HAS_WAITID = hasattr(os, "waitid")


class Eof(Exception):
    """The worker closed its end of the channel (it died, as a rule)."""


class Deadline(Exception):
    """A deadline passed while waiting on the worker."""


class BadMessage(Exception):
    """The worker sent bytes that are not a message of the protocol."""


class Refused(Exception):
    """The worker said it cannot serve (Fatal), or speaks another protocol version."""


class StderrPump(threading.Thread):
    """Forwards a worker's stderr to ours as it comes, and keeps its tail."""

    def __init__(self, fd: int, pid: int) -> None:
        super().__init__(name=f"tarnish_py-stderr-{pid}", daemon=True)
        self._fd = fd
        self._tail = bytearray()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            while True:
                try:
                    data = os.read(self._fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                with self._lock:
                    self._tail += data
                    if len(self._tail) > 2 * _TAIL_BYTES:
                        del self._tail[:-_TAIL_BYTES]
                forward(data)
        finally:
            os.close(self._fd)  # the pump owns the fd: no other thread may close it

    def tail(self) -> str:
        with self._lock:
            return bytes(self._tail[-_TAIL_BYTES:]).decode("utf-8", "replace")


def forward(data: bytes) -> None:
    """Write a worker's output to the parent's stderr (fd 2), never failing."""
    try:
        write_all(2, data)
    except OSError:
        pass


class Conn:
    """A started worker: handshake, request/response, kill, reap."""

    def __init__(self, popen: subprocess.Popen[bytes], max_message_bytes: int) -> None:
        assert popen.stdin and popen.stdout and popen.stderr
        self.popen = popen
        self.pid = popen.pid
        self.ready = False
        self.returncode: int | None = None
        #: True when the worker closed its channel yet had to be killed to end.
        self.outlived_eof = False
        self._w = popen.stdin.fileno()
        self._r = popen.stdout.fileno()
        os.set_blocking(self._w, False)
        self._reader = _wire.FrameReader(max_message_bytes, strict=False)
        self._buf = bytearray(_READ_SIZE)
        self._inbox: deque[Any] = deque()
        self._poll_in = select.poll() if hasattr(select, "poll") else None
        if self._poll_in is not None:
            self._poll_in.register(self._r, select.POLLIN)
        # The pump takes its own copy of the fd and closes it when done.
        stderr_fd = os.dup(popen.stderr.fileno())
        popen.stderr.close()
        self._pump = StderrPump(stderr_fd, self.pid)
        self._pump.start()
        self._reap_lock = threading.Lock()

    # -- talking -----------------------------------------------------------

    def handshake(self, deadline: float) -> None:
        """Wait for Hello; anything before it is program noise, sent to stderr.

        Raises Deadline, Eof or Refused; the worker is then dead and reaped.
        """
        try:
            self._await_hello(deadline)
        except (Eof, Refused):
            self.finish()  # it is ending by itself: its own exit status tells why
            raise
        except BaseException:
            self.kill()
            self.finish()
            raise

    def _await_hello(self, deadline: float) -> None:
        while True:
            message = self._next(deadline)
            if isinstance(message, bytes):  # a stray frame: stdout noise
                forward(message)
                continue
            startup = _protocol.parse_startup(message)
            if isinstance(startup, _protocol.Hello):
                if startup.version != _protocol.PROTOCOL_VERSION:
                    self.kill()
                    raise Refused(
                        f"the worker speaks protocol {startup.version!r}, this parent "
                        f"{_protocol.PROTOCOL_VERSION}: is it another tarnish_py version?"
                    )
                self._reader.strict = True
                self.ready = True
                return
            if isinstance(startup, _protocol.Fatal):
                raise Refused(f"the worker could not start: {startup.message}")
            forward(_wire.pack(message))

    def request(self, frame: bytes, deadline: float | None) -> Any:
        """Send one frame, return the next message."""
        self._write(frame, deadline)
        return self._next(deadline)

    def send(self, frame: bytes, deadline: float | None) -> None:
        self._write(frame, deadline)

    def _write(self, frame: bytes, deadline: float | None) -> None:
        try:
            n = os.write(self._w, frame)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ConnectionResetError):
            raise Eof from None
        if n == len(frame):
            return
        view = memoryview(frame)[n:]
        poller = select.poll()
        poller.register(self._w, select.POLLOUT)
        while view:
            # A large frame: wait for room, but never past the call's deadline.
            timeout_ms = _poll_ms(deadline)
            if not poller.poll(timeout_ms):
                raise Deadline
            try:
                view = view[os.write(self._w, view) :]
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise Eof from None

    def _next(self, deadline: float | None) -> Any:
        inbox = self._inbox
        while not inbox:
            if deadline is not None and self._poll_in is not None:
                if not self._poll_in.poll(_poll_ms(deadline)):
                    raise Deadline
            n = os.readv(self._r, [self._buf])
            if n == 0:
                raise Eof
            try:
                messages = self._reader.feed(self._buf[:n])
            except ProtocolError as exc:
                raise BadMessage(str(exc)) from exc
            if len(messages) == 1 and not inbox:
                return messages[0]
            inbox.extend(messages)
        return inbox.popleft()

    # -- ending ------------------------------------------------------------

    def _killpg(self) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(self.pid, signal.SIGKILL)
            else:  # pragma: no cover - Windows
                self.popen.kill()
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL the worker's process group (any thread; no-op once reaped)."""
        with self._reap_lock:
            if self.returncode is None:
                self._killpg()

    def alive(self) -> bool:
        if self.returncode is not None:
            return False
        if _HAS_WAITID:
            try:
                return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
            except ChildProcessError:
                return False
        return self.popen.poll() is None  # pragma: no cover - Windows

    def finish(self, grace: float = _EXIT_GRACE) -> int:
        """Wait for the worker to exit (killing it after ``grace``), kill its group, reap.

        Returns the exit status. Only the holder calls this.
        """
        if self.returncode is not None:
            return self.returncode
        deadline = time.monotonic() + grace
        pause = 0.0005
        while self.alive():
            if time.monotonic() >= deadline:
                self.outlived_eof = True
                self.kill()
                deadline = float("inf")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        with self._reap_lock:
            # The leader is a zombie: its group id is still ours to kill.
            self._killpg()
            self.returncode = self.popen.wait()
        watchdog.unregister(self.pid)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._pump.join(_PUMP_JOIN)
        # An exception raised from this call keeps this Conn alive through its
        # traceback: let go of the buffers now.
        self._buf = bytearray()
        self._inbox.clear()
        self._reader = _wire.FrameReader(1)
        self._poll_in = None
        return self.returncode

    def stderr_tail(self) -> str:
        return self._pump.tail()

    def disown(self) -> None:
        """In a forked child: close this process's copies of the pipes; never signal,
        message or reap the worker (it is the parent's)."""
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.popen.returncode = self.returncode = 0  # nothing here will ever wait for it


def _poll_ms(deadline: float | None) -> int | None:
    if deadline is None:
        return None
    return max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
