"""The fork server: the program re-executed once per handle, forking its workers.

::

    parent (``_forkclient``)                  server (this module, in the re-executed program)
    ------                                    ------
    Popen: marker + TARNISH_PY_FORKSERVER,    import tarnish_py: channel adopted (``_boot``)
    stdin = stdout = a SEQPACKET socket       main()/serve_importable() -> serve() ->
                                              serve_forks(): the task's module is imported
                               <-- b"\\0" Hello(pid)   (or Fatal: it cannot serve)
    FORK [config, env] + 3 fds -->            one thread? fork: the child takes its own
                                              session, the fds as stdin/stdout/stderr, the
                               <-- FORKED [pid]         config, and returns into serve()
                               <-- UNSAFE [why]       more than one thread: no fork
                               <-- EXITED [pid, rc]   a worker ended: its group is killed,
                                                      the zombie kept until REAP
    REAP [pid]                 -->            the zombie is reaped (its pgid is free again)
    EOF                        -->            every worker's group is killed; exit

Frames both ways are those of ``_wire`` (msgpack + COBS); a FORK request is one
SEQPACKET message that carries the worker's pipe ends as SCM_RIGHTS.

The server keeps every worker a zombie until the parent has its exit status,
so that the parent may ``killpg`` a worker's group at any time before that
without hitting a recycled group id.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import select
import signal
import socket
import traceback
from collections.abc import Callable
from typing import Any, Final

from . import _boot, _protocol, _wire

__all__ = ["EXITED", "FORK", "FORKED", "REAP", "SERVER_MARKER", "UNSAFE", "is_server",
           "serve_forks", "thread_count"]

SERVER_MARKER: Final = "TARNISH_PY_FORKSERVER"

# Message kinds of the server's channel (apart from the worker protocol's Hello/Fatal).
FORK: Final = 100
FORKED: Final = 101
UNSAFE: Final = 102
EXITED: Final = 103
REAP: Final = 104

_REQUEST_BYTES = 1 << 20  # a FORK request holds a config and maybe an environment
_TICK_MS = 50  # without pidfds, how often exits are looked for

# "Our children are not servers": read and removed at import, right after _boot
# has read the worker marker (tarnish_py/__init__ imports this module then).
_server = os.environ.pop(SERVER_MARKER, None) is not None and _boot.config is not None


def is_server() -> bool:
    """True in a program re-executed as a fork server (not in its forked workers)."""
    return _server


def thread_count() -> int:
    """This process's threads, native ones included (Linux: /proc/self/task)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no /proc: count what Python knows
        import threading

        return threading.active_count()


class _Server:
    """The server's loop state: its socket and the workers it forked."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        self.pidfds: dict[int, int] = {}  # pidfd -> pid, for workers not yet ended
        self.running: set[int] = set()  # forked, not yet seen to end
        self.zombies: set[int] = set()  # ended and reported, awaiting REAP

    def send(self, message: list[Any]) -> None:
        try:
            _boot.write_all(self.sock.fileno(), _wire.encode_frame(message))
        except OSError:  # the parent closed its end (it is closing, or gone): as EOF
            self._quit()

    def run(self) -> bool:
        """Serve requests; True in a forked child (which must go on to serve)."""
        while True:
            events = self.poller.poll(None if self._all_watched() else _TICK_MS)
            for fd, _ in events:
                if fd == self.sock.fileno():
                    if self._request():
                        return True
            self._collect()

    def _all_watched(self) -> bool:
        return len(self.pidfds) == len(self.running)

    def _request(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, _REQUEST_BYTES, 3)
        except InterruptedError:
            return False
        except OSError:
            data, fds = b"", []
        if not data:
            self._quit()
        try:
            (request,) = _wire.FrameReader(_REQUEST_BYTES).feed(data)
            kind = request[0]
        except Exception as exc:
            _close_all(fds)
            _boot.fatal(f"fork server: malformed request: {exc}")
        if kind == FORK and len(fds) == 3:
            return self._fork(request[1], request[2], fds)
        _close_all(fds)
        if kind == REAP and request[1] in self.zombies:
            self.zombies.discard(request[1])
            try:
                os.waitpid(request[1], 0)
            except ChildProcessError:
                pass
        return False

    def _fork(self, config: str, env: dict[str, str] | None, fds: list[int]) -> bool:
        threads = thread_count()
        if threads != 1:
            _close_all(fds)
            self.send([UNSAFE, f"the program runs {threads} threads once its task's module "
                       "is imported (forking a threaded process is unsafe)"])
            return False
        _boot.flush_std()
        pid = os.fork()
        if pid == 0:
            self._become_worker(config, env, fds)
            return True
        _close_all(fds)
        self.running.add(pid)
        pidfd = _pidfd(pid)
        if pidfd is not None:
            self.pidfds[pidfd] = pid
            self.poller.register(pidfd, select.POLLIN)
        self.send([FORKED, pid])
        return False

    def _become_worker(self, raw_config: str, env: dict[str, str] | None,
                       fds: list[int]) -> None:
        """In the forked child: leave the server behind, take the worker's channel."""
        global _server
        _server = False
        os.setsid()  # own session and group: killpg and Ctrl-C stay apart
        for fd in [self.sock.fileno(), _boot.channel_out, *self.pidfds]:
            _close_quietly(fd)  # (an at-fork hook may have closed some already)
        self.sock.detach()
        stdin, stdout, stderr = fds
        os.dup2(stderr, 2)
        os.dup2(2, 1)  # print, C printf and os.write(1, ...) land on stderr
        _close_quietly(stderr)
        for fd in (stdin, stdout):
            os.set_inheritable(fd, False)  # what the task starts must not hold the channel
        _boot.channel_in, _boot.channel_out = stdin, stdout
        config = _boot.WorkerConfig.loads(raw_config)
        # The worker's parent is this server: it is what waits for the worker.
        _boot.config = dataclasses.replace(config, parent_pid=os.getppid())
        if config.cwd is not None:
            try:
                os.chdir(config.cwd)
            except OSError:
                pass
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        for name in config.drop_env:  # env= scrubbed: what only the interpreter needed
            os.environ.pop(name, None)
        faulthandler.enable(all_threads=True)  # onto the new fd 2
        after_fork_in_worker()

    def _collect(self) -> None:
        """Report each worker that ended, after killing what its task left in its group."""
        for pid in list(self.running):
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
                self.running.discard(pid)
            if info is None:
                continue
            self.running.discard(pid)
            self._unwatch(pid)
            _killpg(pid)  # the leader is a zombie: its group id is still this worker's
            rc = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            self.zombies.add(pid)
            self.send([EXITED, pid, rc])

    def _unwatch(self, pid: int) -> None:
        for pidfd, owner in list(self.pidfds.items()):
            if owner == pid:
                self.poller.unregister(pidfd)
                os.close(pidfd)
                del self.pidfds[pidfd]

    def _quit(self) -> None:
        # The handle was closed, or the parent died: no worker outlives the server.
        for pid in self.running | self.zombies:
            _killpg(pid)
        _boot.flush_std()
        os._exit(0)


def after_fork_in_worker() -> None:
    """Hook: what a forked worker applies to itself before its task is made.

    Resource limits (``limits=``) belong here: they are set in each worker, never
    in the server. The environment (``env=``) is already in place.
    """


def serve_forks(prepare: Callable[[], object]) -> _boot.WorkerConfig:
    """Run the fork server; returns only in a forked worker, with that worker's config.

    ``prepare`` imports the task's module (and builds what every worker shares);
    if it fails, the parent is told why and the server exits.
    """
    assert _boot.config is not None
    try:
        prepare()
    except BaseException as exc:
        _boot.fatal(f"cannot serve {_boot.config.module}.{_boot.config.name.lstrip('@')}\n"
                    + _format(exc))
    sock = socket.socket(fileno=_boot.channel_in)
    _boot.write_all(sock.fileno(), b"\x00" + _protocol.hello_frame(os.getpid(), _boot.config.token))
    _Server(sock).run()
    assert _boot.config is not None
    return _boot.config


def _format(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc, limit=-64))[-20_000:]
    except Exception:  # pragma: no cover
        return type(exc).__name__


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    except OSError:  # pragma: no cover - kernel before 5.3
        return None


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        _close_quietly(fd)
