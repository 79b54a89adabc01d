"""Isolated modules: ``import_isolated("brittle_lib")`` and the proxies it hands out.

::

    cv = import_isolated("brittle_cv")    a _ModuleProxy: the module is imported in the
                                          worker of an IsolationContext, never here
    img = cv.load("a.png")                getattr, then call, each one request through the
                                          context's Link (_isolated_link) to its Broker
                                          (_isolated_worker); img stays in the worker and
                                          is a RemoteObject here (a Ref: worker token + id)
    cv.canny(img, 0.3)                    proxies travel as refs and resolve in the worker
    del img                               its id is queued; the next request frees it

A proxy's every operation (attributes, calls, [], len, iteration, operators,
repr/str, with) is one request; the result comes back by value when the wire
carries it, otherwise as a new proxy.
"""

from __future__ import annotations

import atexit
import os
import threading
import types
from collections.abc import Sequence
from typing import Any, TypeAlias, TypeVar

from typing_extensions import Self, Unpack

from ._errors import ClosedError
from ._isolated_link import (
    Link,
    ProxyLost,
    Ref,
    absolute_paths,
    make_process,
    not_sendable,
)
from ._isolated_worker import MARK
from ._remote import RemoteObject
from ._settings import HandleKeywords, Settings

__all__ = ["IsolationContext", "ProxyLost", "RemoteObject", "byvalue", "import_isolated"]

M = TypeVar("M", bound=types.ModuleType)
PathEntry: TypeAlias = "str | os.PathLike[str]"


class _ModuleProxy(types.ModuleType):
    """A module imported in a worker: attribute access and assignment run there.

    It is found by name, so it keeps working after its worker crashed (the fresh
    worker imports it again); so do the functions and classes taken from it.
    """

    _tarnish_link: Link

    def __init__(self, link: Link, name: str) -> None:
        super().__init__(name)
        object.__setattr__(self, "_tarnish_link", link)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_tarnish"):
            raise AttributeError(name)
        return self._tarnish_link.request("getattr", self, name, path=(self.__name__, name))

    def __setattr__(self, name: str, value: Any) -> None:
        self._tarnish_link.request("setattr", self, name, value)

    def __delattr__(self, name: str) -> None:
        self._tarnish_link.request("delattr", self, name)

    def __dir__(self) -> list[str]:
        return self._tarnish_link.request("dir", self)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<isolated module {self.__name__!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("an isolated module cannot be pickled")


def _encode_proxy(link: Link, value: Any, token: str | None) -> Any:
    """A proxy argument on the wire (the proxy layer's half of Link.encode)."""
    if isinstance(value, RemoteObject):
        ref: Ref = object.__getattribute__(value, "_tarnish_ref")
        if ref.link is not link:
            raise TypeError("a proxy can only be passed to the IsolationContext that made it")
        if token is not None and ref.token == token:
            return [MARK, "ref", ref.oid]
        if ref.path is not None:  # a module's function or class: found again by name
            return [MARK, "name", *ref.path]
        raise ProxyLost(ref.type_name, link.dead.get(ref.token, "was replaced"))
    if isinstance(value, _ModuleProxy):
        if value._tarnish_link is not link:
            raise TypeError("an isolated module can only be passed to its own IsolationContext")
        return [MARK, "mod", value.__name__]
    raise not_sendable(value)


class IsolationContext:
    """One worker process holding isolated modules and the objects they made.

    ::

        with IsolationContext(path="vendor/", timeout=30) as ctx:
            cv = ctx.import_module("brittle_cv")
            img = cv.load("frame.png")

    Modules imported in one context share its worker, so their objects mix.
    ``path`` (a folder or a list of them) goes in front of the worker's
    ``sys.path``. The other keywords are those of :class:`Process`; the timeout
    bounds every operation. After a crash the context has a fresh worker that
    imports its modules again; proxies made by the dead worker raise
    :class:`ProxyLost`.
    """

    def __init__(
        self,
        *,
        path: PathEntry | Sequence[PathEntry] | None = None,
        **keywords: Unpack[HandleKeywords],
    ) -> None:
        paths = absolute_paths(path)
        settings = Settings.of(keywords, "IsolationContext()")
        self._link = Link(
            make_process(settings), paths, RemoteObject._tarnish_new, _encode_proxy
        )
        self._modules: dict[str, _ModuleProxy] = {}

    def import_module(self, name: str) -> Any:
        """Import module ``name`` in the worker; a proxy of it (the parent never imports it)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a module name is a non-empty str, not {name!r}")
        link = self._link
        link.request("import", name)
        with link.lock:
            if name not in link.modules:
                link.modules.append(name)
            proxy = self._modules.get(name)
            if proxy is None:
                proxy = self._modules[name] = _ModuleProxy(link, name)
        return proxy

    def isolate(self, module: M) -> M:
        """The proxy of ``module``, typed as ``module`` for type checkers.

        ``module`` is imported in the parent only for its types::

            import brittle_cv
            cv = ctx.isolate(brittle_cv)    # calls run in the worker
        """
        if not isinstance(module, types.ModuleType):
            raise TypeError(f"isolate() takes a module, not {module!r}")
        proxy: M = self.import_module(module.__name__)
        return proxy

    @property
    def pid(self) -> int | None:
        """The worker's process id (None while none is running)."""
        return self._link.process.pid

    @property
    def closed(self) -> bool:
        return self._link.closed

    def restart(self) -> None:
        """Replace the worker by a fresh one; proxies of the old one raise ProxyLost."""
        link = self._link
        with link.lock:
            if link.closed:
                raise ClosedError("the IsolationContext is closed")
            link.process.restart()
            link.forget("was restarted (pid {pid})")

    def close(self) -> None:
        """Stop the worker (see :meth:`Process.close`); proxies then raise ClosedError."""
        # Not under the link's lock: a call stuck in the worker holds it, and
        # Process.close is what ends that call.
        self._link.closed = True
        self._link.process.close()

    def _object_count(self) -> int:
        """How many objects the worker holds for proxies (a debugging aid for tests)."""
        return self._link.request("count")  # type: ignore[no-any-return]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"worker {self.pid}"
        return f"<IsolationContext {state}, modules {self._link.modules}>"


_default: IsolationContext | None = None
_default_lock = threading.Lock()


def _default_context() -> IsolationContext:
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            if _default is None:
                atexit.register(_close_default)
            _default = IsolationContext()
        return _default


def _close_default() -> None:
    if _default is not None:
        _default.close()


def import_isolated(name: str, *, context: IsolationContext | None = None) -> Any:
    """Import module ``name`` in a worker process and return a proxy of it.

    ::

        cv = import_isolated("brittle_cv")   # not imported in this process
        img = cv.load("frame.png")           # runs in the worker; img is a RemoteObject
        edges = cv.canny(img, 0.3)           # proxies resolve to the real objects there
        print(byvalue(cv.stats(edges)))

    Without ``context``, one default :class:`IsolationContext` (started on
    first use, closed at exit) holds every module imported this way. A crash
    raises ``WorkerCrashed`` for the call that crashed; the module keeps
    working on a fresh worker.
    """
    return (context if context is not None else _default_context()).import_module(name)


def byvalue(obj: Any) -> Any:
    """A copy, in this process, of what the proxy ``obj`` points to.

    ``TypeError`` when the wire cannot carry it (it can only stay in the
    worker). Proxies inside a list, tuple or dict are copied too; a plain value
    is returned as it is.
    """
    if isinstance(obj, RemoteObject):
        ref: Ref = object.__getattribute__(obj, "_tarnish_ref")
        return ref.link.request("byvalue", obj)
    if isinstance(obj, _ModuleProxy):
        raise TypeError(f"the wire cannot carry a module ({obj.__name__}); it stays in the worker")
    kind = type(obj)
    if kind is list or kind is tuple:
        items = [byvalue(item) for item in obj]
        changed = any(new is not old for new, old in zip(items, obj, strict=True))
        return kind(items) if changed else obj
    if kind is dict:
        values = {key: byvalue(value) for key, value in obj.items()}
        changed = any(values[key] is not value for key, value in obj.items())
        return values if changed else obj
    return obj
