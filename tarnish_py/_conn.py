"""One live worker process and its pipes, seen from the parent.

::

    Conn.request(frame) --os.write--> worker stdin     (non-blocking; poll for room)
                        <--os.readv-- worker stdout    (into one reused buffer)
    Conn.request_segments(frame, segments)             (large bytes, ``_segments``)
                        --os.writev-> frame + segments from the caller's buffers
                        <--os.readv-- announced segments, straight into their bytes
    StderrPump thread   <--os.read--- worker stderr -> forwarded/captured/logged (_stderr)

Before each read the holder polls the worker's stdout together with a pidfd
of the worker (Linux; elsewhere a periodic check of its exit): the worker's
death is seen even when a process it forked still holds its end of the pipe,
so that no EOF ever comes. A call without a deadline waits in an epoll set
registered once with both fds (``poll()`` would register them again on every
call); one with a deadline uses ``poll()`` and its timeout.

Only the thread that holds a Conn (the dispatcher guarantees one at a time)
reads, writes, reaps and closes it. Any thread may :meth:`Conn.kill` it: that
only SIGKILLs the process group while its leader is unreaped (so the group id
cannot have been recycled); the holder then sees EOF and reaps.

A Conn raises only the private errors below; ``_slot`` says what they mean.
``idle`` is True only between whole exchanges: a holder interrupted half-way
(Ctrl-C) leaves it False, and such a Conn is never used again.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from typing import Any

import msgpack
from cobs import cobs

from . import _protocol, _segments, _values, _wire
from ._errors import ProtocolError
from ._stderr import StderrPump
from ._watchdog import watchdog

__all__ = ["BadMessage", "Conn", "Deadline", "Eof", "NotReady", "Refused"]

_READ_SIZE = 1 << 18
_IOV_MAX = 1024  # Linux: the most buffers one writev takes
_MAX_POLL_MS = 2**31 - 1
_EXIT_CHECK = 0.1  # without a pidfd: how often a blocked read checks that the worker lives
_EXIT_GRACE = 2.0  # after EOF, how long a worker may take to finish dying
_PUMP_JOIN = 1.0  # how long to wait for the last of its stderr
_HAS_WAITID = hasattr(os, "waitid")
_cobs_decode = cobs.decode
_unpackb = msgpack.unpackb
_ext_hook = _values.ext_hook


class Eof(Exception):
    """The worker closed its end of the channel (it died, as a rule)."""


class Deadline(Exception):
    """A call's deadline passed while waiting on the worker (which is left as it is)."""


class NotReady(Exception):
    """The worker did not send its handshake within spawn_timeout; it was killed."""


class BadMessage(Exception):
    """The worker sent bytes that are not a message of the protocol."""


class Refused(Exception):
    """The worker said it cannot serve (Fatal), or speaks another protocol version."""


class Conn:
    """A started worker: handshake, request/response, kill, reap."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        max_message_bytes: int,
        *,
        token: str,
        spawn_timeout: float,
        stderr: str = "forward",
        stderr_tail: int = 1 << 15,
    ) -> None:
        """Take over a started worker. On failure (no fd, no thread) everything this
        took is released and the exception raised; the caller still owns ``popen``."""
        assert popen.stdin and popen.stdout and popen.stderr
        self.popen = popen
        self.pid = popen.pid
        self.ready = False
        #: True between whole exchanges only (see the module docstring).
        self.idle = False
        #: Set by kill(): this worker is not to be used again.
        self.killed = False
        self.returncode: int | None = None
        #: True when the worker closed its channel yet had to be killed to end.
        self.outlived_eof = False
        #: The worker must have sent its handshake by then.
        self.spawn_deadline = time.monotonic() + spawn_timeout
        self._token = token
        self._handshaking = False
        self._finished = False
        self._w = popen.stdin.fileno()
        self._r = popen.stdout.fileno()
        os.set_blocking(self._w, False)
        self._reader = _wire.FrameReader(max_message_bytes, strict=False)
        self._frame_limit = _wire.frame_limit(max_message_bytes)
        self._buf = bytearray(_READ_SIZE)
        self._bufs = [self._buf]
        #: True while the reader and the inbox hold nothing (and the handshake is
        #: done): a read may then be decoded in place by :meth:`request`.
        self.clean = False
        self._inbox: deque[Any] = deque()
        self._reap_lock = threading.RLock()
        self._pidfd = -1
        self._wait_in: select.epoll | None = None
        stderr_fd = -1
        try:
            self._pidfd = _open_pidfd(self.pid)
            self._poll_in: select.poll | None = _reader_poll(self._r, self._pidfd)
            self._wait_in = _reader_epoll(self._r, self._pidfd)
            # The pump takes its own copy of the fd and closes it when done.
            stderr_fd = os.dup(popen.stderr.fileno())
            pump = StderrPump(stderr_fd, self.pid, stderr, stderr_tail)
            pump.start()  # RuntimeError when no thread can be started
        except BaseException:
            if stderr_fd >= 0:
                os.close(stderr_fd)  # the pump never ran: the fd is still ours
            if self._wait_in is not None:
                self._wait_in.close()
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
            raise
        self._pump = pump
        popen.stderr.close()

    # -- talking -----------------------------------------------------------

    def fresh(self) -> bool:
        """Whether a handshake may still be attempted (none was cut short or failed)."""
        return not (self.ready or self._handshaking or self.killed or self._finished)

    def handshake(self, deadline: float | None) -> None:
        """Wait for Hello; anything before it is program noise, sent to stderr.

        Waits until ``deadline`` (a call's) or the spawn deadline, whichever comes
        first. Raises Deadline when the call's comes first: the worker is left to
        start, and a later handshake may pick it up. Raises NotReady, Eof or
        Refused; the worker is then dead and reaped.
        """
        call_first = deadline is not None and deadline < self.spawn_deadline
        self._handshaking = True
        try:
            self._await_hello(deadline if call_first else self.spawn_deadline)
        except Deadline:
            if call_first:
                self._handshaking = False  # nothing half-read: polls come before reads
                raise
            self.kill()
            self.finish()
            raise NotReady from None
        except (Eof, Refused):
            self.finish()  # it is ending by itself: its own exit status tells why
            raise
        except BaseException:
            self.kill()
            self.finish()
            raise
        self._handshaking = False
        self.idle = True

    def _await_hello(self, deadline: float | None) -> None:
        while True:
            message = self._next(deadline)
            if isinstance(message, bytes):  # a stray frame: stdout noise
                self._pump.write(message)
                continue
            startup = _protocol.parse_startup(message, self._token)
            if isinstance(startup, _protocol.Hello):
                if startup.version != _protocol.PROTOCOL_VERSION:
                    self.kill()
                    raise Refused(
                        f"the worker speaks protocol {startup.version!r}, this parent "
                        f"{_protocol.PROTOCOL_VERSION}: is it another tarnish_py version?"
                    )
                self._reader.strict = True
                self.ready = True
                self.clean = not self._inbox and self._reader.idle
                return
            if isinstance(startup, _protocol.Fatal):
                raise Refused(f"the worker could not start: {startup.message}")
            self._pump.write(_wire.pack(message))

    def request(self, frame: bytes, deadline: float | None) -> Any:
        """Send one frame, return the next message."""
        try:  # _write inlined: this is every call's path
            n = os.write(self._w, frame)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ConnectionResetError):
            raise Eof from None
        if n != len(frame):  # a large frame: the rest as room comes
            self._write_all([memoryview(frame)[n:]], deadline)
        wait_in = self._wait_in
        if deadline is not None or not self.clean or wait_in is None:
            return self._next(deadline)
        # The hot path, flat (_next and FrameReader.feed inlined): one epoll_wait on
        # stdout and the pidfd, one read, and a reply that is one whole frame is
        # decoded in place. Anything else goes through the reader, which says what
        # it is.
        events = wait_in.poll(-1, 2)
        if len(events) == 1 and events[0][0] == self._pidfd:
            raise Eof  # dead, and nothing left to read
        buf = self._buf
        n = os.readv(self._r, self._bufs)
        end = n - 1
        if 0 < end <= self._frame_limit and buf[end] == 0:
            try:
                # A zero inside makes cobs.decode raise: buf[end] is the only one.
                message = _unpackb(
                    _cobs_decode(buf[:end]),
                    ext_hook=_ext_hook,
                    strict_map_key=False,
                    raw=False,
                    unicode_errors="surrogatepass",
                )
            except Exception:
                message = None
            if type(message) is list and message and type(message[0]) is int:
                return message
        if n == 0:
            raise Eof
        self._feed(n, None)
        return self._next(None)

    def send(self, frame: bytes, deadline: float | None) -> None:
        self._write(frame, deadline)

    def _write(self, frame: bytes, deadline: float | None) -> None:
        try:
            n = os.write(self._w, frame)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ConnectionResetError):
            raise Eof from None
        if n != len(frame):  # a large frame: the rest as room comes
            self._write_all([memoryview(frame)[n:]], deadline)

    def _next(self, deadline: float | None) -> Any:
        inbox = self._inbox
        while not inbox:
            wait_in = self._wait_in
            if deadline is None and wait_in is not None:
                events = wait_in.poll(-1, 2)
                if len(events) == 1 and events[0][0] == self._pidfd:
                    raise Eof  # dead, and nothing left to read
            else:
                self._await_readable(deadline)
            n = os.readv(self._r, self._bufs)
            if n == 0:
                raise Eof
            self._feed(n, deadline)
        message = inbox.popleft()
        self.clean = self.ready and not inbox and self._reader.idle
        return message

    def _feed(self, n: int, deadline: float | None) -> None:
        """The messages of the ``n`` bytes just read into the buffer go to the inbox."""
        try:
            messages = self._reader.feed(self._buf[:n])
            if not messages and self._reader.raw is not None:
                messages = self._read_segments(deadline)
        except ProtocolError as exc:
            raise BadMessage(str(exc)) from exc
        self._inbox.extend(messages)

    # -- large values out of band (``_segments``) ---------------------------

    def request_segments(
        self, frame: bytes, segments: list[_segments.Buffer], deadline: float | None
    ) -> Any:
        """Send a frame and the raw segments it announces, return the next message."""
        self._write_all([memoryview(frame), *(memoryview(s) for s in segments)], deadline)
        return self._next(deadline)

    def _write_all(self, views: list[memoryview], deadline: float | None) -> None:
        """Write ``views`` in order (writev, from the caller's buffers): wait for room,
        but never past the call's deadline, nor after the worker died (a process it
        forked may hold the pipe)."""
        poller: select.poll | None = None
        while True:
            try:
                n = os.writev(self._w, views[:_IOV_MAX])
            except BlockingIOError:
                n = 0
            except (BrokenPipeError, ConnectionResetError):
                raise Eof from None
            views = _segments.consumed(views, n)
            if not views:
                return
            if poller is None:
                poller = select.poll()
                poller.register(self._w, select.POLLOUT)
                if self._pidfd >= 0:
                    poller.register(self._pidfd, select.POLLIN)
            self._await_room(poller, deadline)

    def _await_room(self, poller: select.poll, deadline: float | None) -> None:
        """Return when the worker's stdin has room; Deadline, or Eof if it died."""
        while True:
            events = poller.poll(_poll_ms(deadline, self._pidfd < 0))
            if events:
                if all(fd == self._pidfd for fd, _ in events):
                    raise Eof
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise Deadline
            if not self.alive():
                raise Eof

    def _read_segments(self, deadline: float | None) -> list[Any]:
        """Read the announced segments straight into their buffers; the message."""
        reader = self._reader
        while True:
            views = reader.raw
            if views is None:
                return []
            self._await_readable(deadline)
            n = os.readv(self._r, views)
            if n == 0:
                raise Eof
            messages = reader.filled(n)
            if messages:
                return messages

    def _await_readable(self, deadline: float | None) -> None:
        """Return when the worker's stdout has bytes or EOF; raise Deadline, or Eof
        when the worker died while something it forked keeps its stdout open."""
        if self._poll_in is None:  # finished
            raise Eof
        pidfd = self._pidfd
        while True:
            events = self._poll_in.poll(_poll_ms(deadline, pidfd < 0))
            if events:
                if len(events) == 1 and events[0][0] == pidfd:
                    raise Eof  # dead, and nothing left to read
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise Deadline
            if pidfd < 0 and not self.alive():
                raise Eof

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
        self.killed = True
        self.idle = False
        # A reentrant lock: a signal handler (close() on Ctrl-C) that interrupted
        # finish() on this very thread must not deadlock on it. Taken with ``with``
        # (C-level, so an interrupt never leaves it held). The group is killed only
        # while the leader is unreaped, also if that handler interrupted finish()
        # between Popen.wait() and the store of the status (a forked worker's
        # returncode says it exited, not that it was reaped: its server reaps).
        with self._reap_lock:
            popen = self.popen
            reaped = type(popen) is subprocess.Popen and popen.returncode is not None
            if self.returncode is None and not reaped:
                self._killpg()

    def alive(self) -> bool:
        if self.returncode is not None:
            return False
        if type(self.popen) is not subprocess.Popen:
            # A worker forked by a fork server (_forkclient) is not our child.
            return self.popen.poll() is None
        if _HAS_WAITID:
            try:
                return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
            except ChildProcessError:
                return False
        return self.popen.poll() is None  # pragma: no cover - Windows

    def finish(self, grace: float = _EXIT_GRACE) -> int:
        """Wait for the worker to exit (killing it after ``grace``), kill its group, reap,
        release everything. Returns the exit status. Only the holder calls this;
        cut short (Ctrl-C), it may be called again and goes on where it stopped."""
        self.idle = False
        if self._finished:
            assert self.returncode is not None
            return self.returncode
        if self.returncode is None:
            self._await_exit(grace)
            with self._reap_lock:
                # The leader is a zombie: its group id is still ours to kill.
                self._killpg()
                self.returncode = self.popen.wait()
        watchdog.unregister(self.pid)
        self._close_fds()
        self._pump.join(_PUMP_JOIN)
        # An exception raised from this call keeps this Conn alive through its
        # traceback: let go of the buffers now.
        self.clean = False
        self._buf = bytearray()
        self._bufs = [self._buf]
        self._inbox.clear()
        self._reader = _wire.FrameReader(1)
        self._poll_in = None
        self._finished = True
        return self.returncode

    def _await_exit(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        pause = 0.0005
        while self.alive():
            if time.monotonic() >= deadline:
                self.outlived_eof = True
                self.kill()
                deadline = float("inf")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def stderr_tail(self) -> str:
        return self._pump.tail()

    def disown(self) -> None:
        """In a forked child: close this process's copies of the pipes; never signal,
        message or reap the worker (it is the parent's)."""
        self._close_fds()
        self.popen.returncode = self.returncode = 0  # nothing here will ever wait for it

    def _close_fds(self) -> None:
        """Close this process's ends of the channel and the pidfd (the holder only)."""
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self._wait_in is not None:
            wait_in, self._wait_in = self._wait_in, None
            wait_in.close()
        if self._pidfd >= 0:
            pidfd, self._pidfd = self._pidfd, -1
            os.close(pidfd)


def _poll_ms(deadline: float | None, check_exit: bool = False) -> int | None:
    """poll()'s timeout until ``deadline``; at most _EXIT_CHECK with ``check_exit``."""
    if deadline is None:
        return int(_EXIT_CHECK * 1000) if check_exit else None
    # Capped: poll() takes a C int (and timeout=float("inf") is a valid deadline).
    ms = max(0, int(min((deadline - time.monotonic()) * 1000 + 0.999, _MAX_POLL_MS)))
    return min(ms, int(_EXIT_CHECK * 1000)) if check_exit else ms


def _open_pidfd(pid: int) -> int:
    """A pidfd of ``pid`` (readable once it exits), or -1 where there is none."""
    if not hasattr(os, "pidfd_open"):
        return -1
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return -1  # an old kernel, a sandbox: fall back to checking its exit
        raise  # EMFILE and the like: the caller gives up this worker


def _reader_epoll(r: int, pidfd: int) -> select.epoll | None:
    """The blocking wait of a call without a deadline: the worker's stdout and its pidfd,
    registered once (poll() registers both again on every call). None without epoll or
    pidfd; the poll object then serves."""
    if pidfd < 0 or not hasattr(select, "epoll"):
        return None
    wait_in = select.epoll(2)
    try:
        wait_in.register(r, select.EPOLLIN)
        wait_in.register(pidfd, select.EPOLLIN)
    except BaseException:
        wait_in.close()
        raise
    return wait_in


def _reader_poll(r: int, pidfd: int) -> select.poll:
    poller = select.poll()
    poller.register(r, select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    return poller
