"""The parent's side of one isolation context: the link to its worker.

::

    proxy operation --> Link.request(op, *args)           (one lock: one request at a time)
                          args encoded: proxies -> refs, checked against the worker token
                          + ids of dropped proxies (queued by __del__, no I/O there)
                          + setup (sys.path, modules) when the worker is new to us
                        Process(Broker).call(Request) ------------------> worker
                        reply: VALUE -> the value, REF -> a new RemoteObject, ...
                        WorkerCrashed / TaskTimeout / ...: the worker's token is
                        forgotten, so every proxy it made raises ProxyLost

The worker token (pid + random) names the worker process that made a proxy; the
link knows the token of the worker it talks to, or None right after a crash or
restart, when the next request carries the setup that makes a fresh worker
ready (the modules imported again, at once).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ._errors import (
    ClosedError,
    ProtocolError,
    SpawnError,
    TarnishError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
)
from ._isolated_worker import (
    LOST,
    MARK,
    MAX_DEPTH,
    NOATTR,
    NOVALUE,
    REF,
    SETUP,
    STOP,
    VALUE,
    Broker,
    Request,
    carried,
)
from ._process import Process
from ._settings import Settings

__all__ = [
    "Link",
    "ProxyLost",
    "Ref",
    "Unsendable",
    "absolute_paths",
    "make_process",
    "not_sendable",
]


class ProxyLost(TarnishError):
    """A proxy was used after the worker that held its object went away.

    ``type_name`` is the remote object's type, ``reason`` what happened to the
    worker (crashed, timed out, restarted). The context itself works on: it has a
    fresh worker with its modules imported again, so make the object anew.
    """

    def __init__(self, type_name: str, reason: str) -> None:
        super().__init__(
            f"the remote {type_name} object was lost with the worker that held it, which "
            f"{reason}; the context has a fresh worker: make the object again"
        )
        self.type_name = type_name
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.reason), self.__dict__)


class Unsendable(TypeError):
    """An argument that can travel to the worker neither by value nor as a proxy."""


class Ref:
    """What a proxy knows of its object: the worker that holds it, and its id there."""

    __slots__ = ("link", "oid", "path", "token", "type_name")

    def __init__(
        self, link: Link, token: str, oid: int, type_name: str, path: tuple[str, str] | None
    ) -> None:
        self.link = link
        self.token = token
        self.oid = oid
        self.type_name = type_name
        # (module, attribute) when the object is a module's attribute: found again
        # by name in a fresh worker, so `load = mod.load` survives a crash.
        self.path = path

    def lost(self) -> str | None:
        """Why this object is gone (None while its worker serves the context)."""
        if self.token == self.link.token or self.path is not None:
            return None
        return self.link.dead.get(self.token, "was replaced")

    def release(self) -> None:
        """Queue the id for the worker to drop with the next request; never does I/O."""
        self.link.released.append((self.token, self.oid))


class Link:
    """One context's worker: a Process serving a Broker, and what the parent knows of it."""

    def __init__(
        self,
        process: Process[Request, Any],
        paths: list[str],
        make_proxy: Callable[[Ref], Any],
        encode_proxy: Callable[[Link, Any, str | None], Any],
    ) -> None:
        self.process = process
        self.paths = paths
        self.modules: list[str] = []  # imported so far: imported again by a fresh worker
        self.lock = threading.Lock()
        self.token: str | None = None  # the worker we talk to; None: a fresh one, unknown
        self.dead: dict[str, str] = {}  # token of a gone worker -> what happened to it
        # Appended to by __del__ in any thread (deque.append is atomic: no lock there).
        self.released: deque[tuple[str, int]] = deque()
        self.closed = False
        # The proxy layer above: how a REF reply becomes a proxy, and a proxy a ref.
        self._make_proxy = make_proxy
        self._encode_proxy = encode_proxy

    def request(self, op: str, *args: Any, path: tuple[str, str] | None = None) -> Any:
        """Run ``op`` on ``args`` in the worker; the result by value or as a proxy."""
        with self.lock:
            if self.closed:
                raise ClosedError("the IsolationContext is closed")
            for _ in range(2):
                token = self.token
                request: Request = {
                    "op": op,
                    "args": [self.encode(arg, token) for arg in args],
                    "token": token,
                    "released": self._drain(token),
                    "setup": None if token is not None else [self.paths, list(self.modules)],
                }
                try:
                    status, token, payload = self.process.call(request)
                except TaskError:
                    raise  # raised by the code the worker ran: the worker lives on
                except (WorkerCrashed, TaskTimeout, ProtocolError, SpawnError) as exc:
                    self.forget(_what_happened(exc))
                    raise
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # Ctrl-C: the worker was killed
                        self.forget("was killed (pid {pid}) when a call was interrupted")
                    raise
                if status in (SETUP, LOST):  # replaced behind our back
                    self.forget("was replaced (pid {pid})")
                    continue
                self.token = token
                return self._result(status, token, payload, path)
            raise ProtocolError("the isolated worker lost its state twice in a row")

    def forget(self, reason: str) -> None:
        """The worker we knew is gone: its proxies are lost; the next request sets up anew."""
        if self.token is not None:
            pid = self.token.split("-", 1)[0]
            self.dead[self.token] = reason.replace("{pid}", pid)
        self.token = None

    def _drain(self, token: str | None) -> list[int]:
        released = self.released
        ids = []
        while released:
            try:
                owner, oid = released.popleft()
            except IndexError:  # pragma: no cover - only this thread pops, under the lock
                break
            if owner == token:  # ids of a gone worker are gone with it
                ids.append(oid)
        return ids

    def _result(
        self, status: int, token: str, payload: Any, path: tuple[str, str] | None
    ) -> Any:
        if status == VALUE:
            return payload
        if status == REF:
            oid, type_name, named = payload
            return self._make_proxy(Ref(self, token, oid, type_name, path if named else None))
        if status == STOP:
            raise StopIteration
        if status == NOATTR:
            raise AttributeError(payload)
        if status == NOVALUE:
            raise TypeError(
                f"the wire cannot carry {payload}, so it stays in the worker; byvalue "
                "copies only values of plain types (None, bool, int, float, str, bytes, "
                "date/time, Decimal, UUID, complex, and lists, tuples, dicts, sets of those)"
            )
        raise ProtocolError(f"unexpected reply status {status!r} from the isolated worker")

    def encode(self, value: Any, token: str | None, depth: int = 0) -> Any:
        """``value`` for the wire: plain values as they are, proxies as refs."""
        kind = type(value)
        if kind in (list, tuple, dict) and depth >= MAX_DEPTH:
            raise Unsendable(f"cannot send values nested more than {MAX_DEPTH} deep")
        if kind is list:
            items = [self.encode(item, token, depth + 1) for item in value]
            if items and type(items[0]) is str and items[0] == MARK:
                return [MARK, "list", items]
            return items
        if kind is tuple:
            return tuple(self.encode(item, token, depth + 1) for item in value)
        if kind is dict:
            for key in value:
                if not carried(key):
                    raise Unsendable(
                        f"cannot send a dict keyed by {type(key).__qualname__} to the "
                        "isolated worker: keys must be plain values"
                    )
            return {key: self.encode(item, token, depth + 1) for key, item in value.items()}
        if carried(value, depth):
            return value
        if kind is slice:
            parts = (value.start, value.stop, value.step)
            return [MARK, "slice", *(self.encode(p, token, depth + 1) for p in parts)]
        if value is Ellipsis:
            return [MARK, "ellipsis"]
        return self._encode_proxy(self, value, token)


def not_sendable(value: Any) -> Unsendable:
    """The error for an argument that is neither a plain value nor a proxy."""
    return Unsendable(
        f"cannot send a {type(value).__qualname__} to the isolated worker: arguments "
        "must be plain values (None, bool, int, float, str, bytes, date/time, Decimal, "
        "UUID, complex, and lists, tuples, dicts, sets of those) or its own proxies"
    )


def _what_happened(exc: BaseException) -> str:
    if isinstance(exc, WorkerCrashed):
        how = f"killed by {exc.signal}" if exc.signal else f"exit code {exc.exitcode}"
        return f"crashed (pid {{pid}}, {how})"
    if isinstance(exc, TaskTimeout):
        return f"was killed (pid {{pid}}) after its timeout of {exc.timeout:g} s"
    if isinstance(exc, ProtocolError):
        return "was killed (pid {pid}) for breaking the protocol"
    return "was replaced (pid {pid})"


def make_process(settings: Settings) -> Process[Request, Any]:
    """The Process serving a context (here so that only this module names the Broker)."""
    return Process(Broker, **settings.keywords())


def absolute_paths(path: Any) -> list[str]:
    """``path=`` of a context as absolute strings, in order."""
    if path is None:
        return []
    entries = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)):
            raise TypeError(f"path entries must be str or os.PathLike, not {entry!r}")
    return [os.path.abspath(os.fspath(entry)) for entry in entries]
