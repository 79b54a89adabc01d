"""A handle's fork server, seen from the parent, and the workers it forks.

::

    Server(argv, config)   Popen: the program re-executed with the marker and
                           TARNISH_PY_FORKSERVER; stdin = stdout = a SEQPACKET socket
    .handshake()           <-- Hello (or Fatal / EOF / no reply: SpawnError + stderr tail)
    .fork(config, env)     3 pipes made here; FORK + their child ends --> server
                           <-- FORKED pid: a ForkedProcess holding the parent's ends
    .status(pid)           <-- EXITED pid rc   (read by whichever thread asks; one lock)
    ForkedProcess.wait()   --> REAP pid        (the zombie kept till then is reaped)
    Conn (unchanged) talks to a ForkedProcess as to a Popen; only liveness and
    the exit status come from the server (EXITED), since the worker is not our child.

A worker forked from the server is registered with the watchdog, killed by
process group and reaped (REAP, once its exit status is known) exactly as an
exec'd one. The server itself is registered with the watchdog and ends on
EOF of its socket, so it never outlives its handle or the parent.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from . import _protocol, _spawn, _wire
from ._boot import MARKER, WorkerConfig, refuse_spawn_before_main
from ._errors import SpawnError, describe_exit, exit_text
from ._forkserver import EXITED, FORK, FORKED, REAP, SERVER_MARKER, UNSAFE
from ._stderr import StderrPump, forward
from ._watchdog import watchdog

__all__ = ["Dead", "ForkedProcess", "Server", "Unsafe"]

log = logging.getLogger("tarnish_py")

_READ_SIZE = 1 << 16
_CLOSE_GRACE = 1.0  # how long a closed server may take to exit before SIGKILL
_UNKNOWN_STATUS = 255  # a worker that outlived its (killed) server: its status is lost


class Unsafe(Exception):
    """The server cannot fork (it runs threads): start workers by exec instead."""


class Dead(Exception):
    """The server is gone (or never became ready)."""


class ForkedProcess(subprocess.Popen):  # type: ignore[type-arg]
    """A worker forked by the server, with the parts of ``Popen`` that ``Conn`` uses.

    Not our child: ``poll``/``wait`` learn the exit status from the server, and
    ``wait`` tells the server to reap the zombie once the status is known.
    """

    def __init__(self, server: Server, pid: int, stdin: int, stdout: int, stderr: int) -> None:
        # Popen.__init__ is not called: it would start a process.
        self.args = [f"<forked from fork server {server.pid}>"]
        self.pid = pid
        self.returncode: Any = None
        self.stdin: IO[bytes] | None = open(stdin, "wb", buffering=0)  # noqa: SIM115
        self.stdout: IO[bytes] | None = open(stdout, "rb", buffering=0)  # noqa: SIM115
        self.stderr: IO[bytes] | None = open(stderr, "rb", buffering=0)  # noqa: SIM115
        self._server = server
        self._reaped = False

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.status(self.pid, block=False)
        return self.returncode  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            self.returncode = self._server.status(self.pid, block=True, deadline=deadline)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        if not self._reaped:
            # Also when poll() learnt the status first (Conn polls while it waits for
            # the exit): else the zombie would stay under the server for good. Set
            # after the send: a REAP sent twice (an interrupt in between) is harmless.
            self._server.reap(self.pid)
            self._reaped = True
        return self.returncode  # type: ignore[no-any-return]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except OSError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __del__(self) -> None:  # Popen's would warn about a child still running
        pass


class Server:
    """One running fork server, seen from the parent (any thread; one lock)."""

    def __init__(self, argv: list[str], config: WorkerConfig, env: Mapping[str, str] | None,
                 max_message_bytes: int, stderr: str = "forward",
                 stderr_tail: int = 1 << 15) -> None:
        refuse_spawn_before_main()
        watchdog.ensure()  # running before the server exists: no unguarded moment
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        full_env = dict(os.environ if env is None else env)
        full_env[MARKER] = config.dumps()
        full_env[SERVER_MARKER] = "1"
        try:
            self.popen = subprocess.Popen(
                argv, stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE,
                env=full_env, close_fds=True, bufsize=0,
                cwd=_spawn.START_CWD if config.module == "__main__" else None,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise SpawnError(f"cannot start a fork server ({argv[0]}): {exc}") from exc
        finally:
            theirs.close()
        self.pid = self.popen.pid
        watchdog.register(self.pid)
        try:
            self._take_over(ours, config, max_message_bytes, stderr, stderr_tail)
        except BaseException as exc:
            # No fd or thread left for it: nothing of this server may stay behind.
            ours.close()
            _spawn.abandon(self.popen)
            if isinstance(exc, (OSError, RuntimeError)):
                raise SpawnError(f"cannot take over the started fork server: {exc}") from exc
            raise

    def _take_over(self, ours: socket.socket, config: WorkerConfig, max_message_bytes: int,
                   stderr: str, stderr_tail: int) -> None:
        self._sock = ours
        self._owner = os.getpid()
        self._lock = threading.RLock()  # close() may run inside a locked wait
        self._reader = _wire.FrameReader(max_message_bytes, strict=False)
        self._buf = bytearray(_READ_SIZE)
        self._replies: list[list[Any]] = []
        self._exits: dict[int, int] = {}
        self._orphans: set[int] = set()  # forked by us, alive when the server died
        self._forked: set[int] = set()
        self.ready = False
        self.dead = False
        self._fatal: str | None = None
        self._token = config.token  # echoed in the server's Hello and Fatal
        assert self.popen.stderr is not None
        stderr_fd = os.dup(self.popen.stderr.fileno())
        try:
            self._pump = StderrPump(stderr_fd, self.pid, stderr, stderr_tail)
            self._pump.start()  # RuntimeError when no thread can be started
        except BaseException:
            os.close(stderr_fd)  # the pump never ran: the fd is still ours
            raise
        self.popen.stderr.close()

    # -- reading -----------------------------------------------------------

    def _pump_messages(self, timeout: float | None) -> None:
        """Read what the server sent (waiting up to ``timeout`` s for something)."""
        if self.dead:
            return
        fd = self._sock.fileno()
        if fd < 0:  # closed: nothing more will come
            self._died()
            return
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(ms):
            return
        try:
            peek = socket.MSG_DONTWAIT | socket.MSG_PEEK
            n = self._sock.recv_into(self._buf, _READ_SIZE, peek)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if n == 0:
            self._died()
            return
        # Handled before it is taken off the socket: Ctrl-C (the main thread polls
        # here for a worker's exit) landing between the read and the handling would
        # otherwise lose an EXITED, and the worker would never be seen to end. One
        # record handled twice is harmless: an exit status is stored again, and a
        # reply (FORKED, Hello) only comes while the thread waiting for it holds the
        # lock, and that thread is never the one Ctrl-C interrupts mid-fork.
        for message in self._reader.feed(self._buf[:n]):
            self._handle(message)
        try:
            self._sock.recv(n, socket.MSG_DONTWAIT)  # the record just handled
        except OSError:
            self._died()

    def _handle(self, message: Any) -> None:
        if isinstance(message, bytes):  # noise a program wrote to stdout while starting
            forward(message)
            return
        kind = message[0]
        if kind == EXITED and len(message) == 3:
            self._exits[int(message[1])] = int(message[2])
            return
        if kind in (FORKED, UNSAFE):
            self._replies.append(message)
            return
        startup = _protocol.parse_startup(message, self._token)
        if isinstance(startup, _protocol.Hello) and not self.ready:
            self._replies.append(message)
        elif isinstance(startup, _protocol.Fatal):
            self._fatal = startup.message
            self._died()
        else:
            forward(_wire.pack(message))

    def _died(self) -> None:
        if not self.dead:
            self.dead = True
            self._orphans = self._forked - set(self._exits)

    def _reply(self, deadline: float) -> list[Any]:
        while not self._replies:
            if self.dead:
                raise Dead
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._pump_messages(remaining)
        return self._replies.pop(0)

    # -- starting and forking ------------------------------------------------

    def handshake(self, spawn_timeout: float) -> None:
        """Wait for the server's Hello; SpawnError (with its stderr) if it never comes."""
        with self._lock:
            try:
                hello = self._reply(time.monotonic() + spawn_timeout)
            except (Dead, TimeoutError) as exc:
                timed_out = isinstance(exc, TimeoutError)
                self.close(grace=0.0 if timed_out else _CLOSE_GRACE)
                raise self._spawn_error(timed_out, spawn_timeout) from None
        version = _protocol.parse_startup(hello, self._token)
        if not isinstance(version, _protocol.Hello) or (
            version.version != _protocol.PROTOCOL_VERSION
        ):  # pragma: no cover - mixed versions
            self.close(grace=0.0)
            raise SpawnError(f"the fork server sent {hello!r:.200} instead of its handshake")
        self.ready = True

    def _spawn_error(self, timed_out: bool, spawn_timeout: float) -> SpawnError:
        tail = self._pump.tail()
        if timed_out:
            return SpawnError(f"the fork server did not become ready within {spawn_timeout:g} s "
                              "(spawn_timeout)", tail)
        if self._fatal is not None:
            return SpawnError(f"the worker could not start: {self._fatal}", tail)
        exitcode, sig = describe_exit(self.popen.returncode)
        was = "was " if sig is not None else ""
        return SpawnError(f"the fork server {was}{exit_text(exitcode, sig)} before it was ready",
                          tail)

    def fork(self, config: WorkerConfig, env: Mapping[str, str] | None,
             timeout: float) -> ForkedProcess:
        """A new worker forked from the server. Raises Unsafe or Dead."""
        pipes = [os.pipe() for _ in range(3)]  # the worker's stdin, stdout, stderr
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        ours = [pipes[0][1], pipes[1][0], pipes[2][0]]
        request = _wire.encode_frame([FORK, config.dumps(), None if env is None else dict(env)])
        try:
            with self._lock:
                try:
                    socket.send_fds(self._sock, [request], theirs)
                except OSError:
                    self._died()
                    raise Dead from None
                finally:
                    for fd in theirs:
                        os.close(fd)
                try:
                    reply = self._reply(time.monotonic() + timeout)
                except TimeoutError:
                    self._died()
                    raise Dead from None
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        if reply[0] == UNSAFE:
            for fd in ours:
                os.close(fd)
            raise Unsafe(str(reply[1]))
        pid = int(reply[1])
        self._forked.add(pid)
        watchdog.register(pid)
        for fd in ours[:2]:
            _spawn._enlarge_pipe(fd)  # private hook of _spawn: the same pipe size as exec'd
        return ForkedProcess(self, pid, *ours)

    # -- a worker's end ----------------------------------------------------

    def status(self, pid: int, *, block: bool, deadline: float | None = None) -> int | None:
        """The exit status of forked worker ``pid``, or None while it runs."""
        if os.getpid() != self._owner:
            # A forked copy of the parent (multiprocessing's fork...): the server
            # talks to the parent only. Like waitpid on someone else's child: 0.
            return 0
        while True:
            with self._lock:
                if pid in self._exits:
                    return self._exits[pid]
                if self.dead:
                    return self._orphan_status(pid, block, deadline)
                if not block:
                    self._pump_messages(0)
                    if pid in self._exits:
                        return self._exits[pid]
                    if not self.dead:
                        return None
                    continue
                self._pump_messages(0.05)  # short: other threads share the socket
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _orphan_status(self, pid: int, block: bool, deadline: float | None) -> int | None:
        # The server died: the worker lives on (its channel is ours), but nobody
        # can tell us how it ends. Liveness from /proc; the status if still a zombie.
        while True:
            state, code = _proc_state(pid)
            if state not in (None, "Z", "X"):
                if not block or (deadline is not None and time.monotonic() >= deadline):
                    return None
                time.sleep(0.01)
                continue
            if code is not None:
                status = (code >> 8) if code & 0x7F == 0 else -(code & 0x7F)
            else:
                status = _UNKNOWN_STATUS
                log.warning("worker %d ended after its fork server died: its exit status is "
                            "unknown", pid)
            self._exits[pid] = status
            return status

    def reap(self, pid: int) -> None:
        """The status is known: let the server reap the zombie."""
        if os.getpid() != self._owner:
            return
        watchdog.unregister(pid)
        self._forked.discard(pid)
        with self._lock:
            self._exits.pop(pid, None)
            if self.dead:
                return
            try:
                self._sock.send(_wire.encode_frame([REAP, pid]), socket.MSG_DONTWAIT)
            except OSError:
                self._died()

    # -- closing -----------------------------------------------------------

    def close(self, grace: float = _CLOSE_GRACE) -> None:
        """End the server (its workers' groups go with it) and reap it."""
        if os.getpid() != self._owner:
            return  # a forked copy of the parent: the server is not ours to end
        # Under the lock: another thread may be reading the socket (a worker's exit
        # status); it must never poll a closed (or reused) fd.
        with self._lock:
            self._died()
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # EOF for the server, whatever copies
            except OSError:
                pass
            self._sock.close()
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.popen.wait()
        watchdog.unregister(self.pid)
        self._pump.join(1.0)

    def alive(self) -> bool:
        if os.getpid() != self._owner:
            return False
        if not self.dead:
            with self._lock:
                self._pump_messages(0)
        return not self.dead and self.popen.poll() is None


def _proc_state(pid: int) -> tuple[str | None, int | None]:
    """(state letter, exit code field) of ``pid`` from /proc; (None, None) if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    code = int(fields[49]) if len(fields) > 49 and fields[0] == "Z" else None
    return fields[0], code
