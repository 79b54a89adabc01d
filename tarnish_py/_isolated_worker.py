"""The worker side of isolated modules: one Task that holds modules and objects.

::

    parent (_isolated)                        worker (this module)
    ------------------                        --------------------
    proxy operation                           Broker.run(request)
      -> Request{op, args, token,               released ids dropped from the table
                 released, setup}               setup (fresh worker): sys.path, imports
         args encoded: proxies as refs ------>  refs decoded to the real objects
                                                _OPS[op](*args)
      <- [VALUE, token, value]            <---  a value the wire carries, by value
         [REF, token, [id, type name, named]]   anything else: kept in the table
         [SETUP | LOST | STOP | NOATTR |        what the parent must know besides
          NOVALUE, token, detail]

Requests and replies are dicts and lists, never tuples: msgpack packs those
natively, while each tuple level costs the wire an extension type of its own.

``token`` names one worker process: a proxy made by another worker (one that
crashed, or was restarted) is refused with LOST instead of touching the wrong
object. Both sides share the vocabulary below; only the parent imports this
module's names, the worker reaches it by importing the Task.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import decimal
import importlib
import itertools
import operator
import os
import secrets
import sys
import types
import uuid
from collections.abc import Callable
from typing import Any, Final

from typing_extensions import TypedDict

from ._task import Task

__all__ = [
    "LOST",
    "MARK",
    "MAX_DEPTH",
    "NOATTR",
    "NOVALUE",
    "REF",
    "SETUP",
    "STOP",
    "VALUE",
    "Broker",
    "Request",
    "carried",
    "describe_uncarried",
]

# Reply statuses.
VALUE: Final = 0  # payload: the result itself
REF: Final = 1  # payload: (object id, type name); the object stays in the worker
SETUP: Final = 2  # a fresh worker: send the request again with its setup
LOST: Final = 3  # the request names objects of another worker
STOP: Final = 4  # next() raised StopIteration
NOATTR: Final = 5  # getattr raised AttributeError; payload: its message
NOVALUE: Final = 6  # byvalue of something the wire cannot carry; payload: type name

# An encoded argument that is not a plain value is a list headed by MARK:
# [MARK, "ref", id], [MARK, "mod", module], [MARK, "name", module, attribute],
# [MARK, "slice", start, stop, step], [MARK, "ellipsis"], and [MARK, "list", items]
# for a user's own list that happens to start with MARK.
MARK: Final = "\x00tarnish-proxy"

# The wire nests tuples and sets at most 32 deep, and the envelope takes a few.
MAX_DEPTH: Final = 24

_SCALARS: Final = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        _dt.datetime,
        _dt.date,
        _dt.time,
        _dt.timedelta,
        decimal.Decimal,
        uuid.UUID,
    }
)
_SEQUENCES: Final = frozenset({list, tuple, set, frozenset})


def carried(value: Any, depth: int = 0) -> bool:
    """Whether the wire carries ``value`` as it is (exact types only, no subclasses)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth >= MAX_DEPTH:
        return False
    if kind in _SEQUENCES:
        return all(carried(item, depth + 1) for item in value)
    if kind is dict:
        return all(carried(k, depth + 1) and carried(v, depth + 1) for k, v in value.items())
    return False


def describe_uncarried(value: Any, depth: int = 0) -> str:
    """What in ``value`` the wire cannot carry: "a list holding a mylib.Image"."""
    kind = type(value)
    if depth >= MAX_DEPTH and (kind in _SEQUENCES or kind is dict):
        return f"values nested more than {MAX_DEPTH} deep"
    items = [*value, *value.values()] if kind is dict else value if kind in _SEQUENCES else ()
    for item in items:
        if not carried(item, depth + 1):
            return f"a {kind.__qualname__} holding " + describe_uncarried(item, depth + 1)
    return f"a {_type_name(value)}"


class Request(TypedDict):
    """One operation on the worker's objects."""

    op: str
    args: list[Any]  # encoded as the MARK comment above says
    token: str | None  # the worker the parent believes it talks to; None: unknown
    released: list[int]  # ids of proxies the parent dropped (of ``token``'s worker)
    setup: list[list[str]] | None  # [sys.path entries, modules] for a fresh worker


def _import(name: str) -> Any:
    return sys.modules.get(name) or importlib.import_module(name)


def _exit(obj: Any, error: tuple[str, tuple[Any, ...]] | None) -> bool:
    # The parent's exception cannot travel: a builtin of the same name (or an
    # Exception) with its arguments stands in for it.
    if error is None:
        return bool(type(obj).__exit__(obj, None, None, None))
    cls = getattr(builtins, error[0], None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = Exception
    return bool(type(obj).__exit__(obj, cls, cls(*error[1]), None))


def _call(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


_OPS: Final[dict[str, Callable[..., Any]]] = {
    "import": lambda name: _import(name) and None,
    "getattr": getattr,
    "setattr": setattr,
    "delattr": delattr,
    "call": _call,
    "repr": repr,
    "str": str,
    "format": format,
    "dir": lambda obj: sorted(dir(obj)),
    "hash": hash,
    "bool": bool,
    "len": len,
    "iter": iter,
    "contains": operator.contains,
    "enter": lambda obj: type(obj).__enter__(obj),
    "exit": _exit,
    **{
        name: getattr(operator, name)
        for name in (
            "getitem setitem delitem neg pos abs invert lt le eq ne gt ge "
            "add sub mul truediv floordiv mod pow matmul and_ or_ xor lshift rshift "
            "iadd isub imul itruediv ifloordiv imod ipow imatmul iand ior ixor ilshift irshift"
        ).split()
    },
}


class Broker(Task[Request, Any]):
    """Serves the proxies of one ``IsolationContext``; lives in its worker.

    ``objects`` is the table of live objects the parent holds proxies to, one
    entry per proxy handed out (the same object handed out twice has two ids,
    so dropping one proxy never frees the other's object).
    """

    def setup(self) -> None:
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.objects: dict[int, Any] = {}
        self.ids = itertools.count(1)
        self.ready = False

    def run(self, request: Request) -> Any:
        token = request["token"]
        if token == self.token:
            for oid in request["released"]:
                self.objects.pop(oid, None)
        setup = request["setup"]
        if setup is not None:
            self._setup(*setup)
        elif not self.ready:
            return [SETUP, self.token, None]
        if token is not None and token != self.token:
            return [LOST, self.token, None]
        args = [self._decode(arg) for arg in request["args"]]
        op = request["op"]
        if op == "next":
            try:
                return self._reply(next(args[0]))
            except StopIteration:
                return [STOP, self.token, None]
        if op == "getattr":
            try:
                return self._reply(getattr(*args))
            except AttributeError as exc:
                return [NOATTR, self.token, str(exc)]
        if op == "byvalue":
            if carried(args[0]):
                return [VALUE, self.token, args[0]]
            return [NOVALUE, self.token, describe_uncarried(args[0])]
        if op == "count":
            return [VALUE, self.token, len(self.objects)]
        return self._reply(_OPS[op](*args))

    def _setup(self, paths: list[str], modules: list[str]) -> None:
        if self.ready:  # two threads both thought the worker was fresh
            return
        for entry in reversed(paths):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        self.ready = True  # a module that fails below is imported again when used
        for name in modules:
            _import(name)

    def _reply(self, result: Any) -> list[Any]:
        if carried(result):
            return [VALUE, self.token, result]
        oid = next(self.ids)
        self.objects[oid] = result
        return [REF, self.token, [oid, _type_name(result), _found_by_name(result)]]

    def _decode(self, value: Any) -> Any:
        kind = type(value)
        if kind is list:
            if value and type(value[0]) is str and value[0] == MARK:
                return self._special(value)
            return [self._decode(item) for item in value]
        if kind is tuple:
            return tuple(self._decode(item) for item in value)
        if kind is dict:
            return {key: self._decode(item) for key, item in value.items()}
        return value

    def _special(self, value: list[Any]) -> Any:
        what = value[1]
        if what == "ref":
            return self.objects[value[2]]
        if what == "mod":
            return _import(value[2])
        if what == "name":
            return getattr(_import(value[2]), value[3])
        if what == "slice":
            return slice(*(self._decode(part) for part in value[2:5]))
        if what == "ellipsis":
            return ...
        if what == "list":
            return [self._decode(item) for item in value[2]]
        raise ValueError(f"unknown encoded argument {what!r}")


def _found_by_name(obj: Any) -> bool:
    """Whether ``obj``, taken from a module, is found again by name in a fresh worker
    as the same thing: a class, a module or a function (Python or C) -- never an
    instance, whose state dies with its worker, nor a method bound to one."""
    if isinstance(obj, (type, types.ModuleType)):
        return True
    owner = getattr(obj, "__self__", None)
    return (
        callable(obj)
        and (owner is None or isinstance(owner, types.ModuleType))
        and hasattr(obj, "__qualname__")
    )


def _type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
