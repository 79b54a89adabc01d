"""``RemoteObject``: a proxy of an object that lives in an isolated worker.

Every operation is one request to the worker through the proxy's Link
(``_isolated_link``): the proxy is sent as a ref, the operation runs on the real
object there, and the result comes back by value or as another proxy. Dropping
the proxy queues its id; the worker frees the object with the next request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._isolated_link import Link, Ref, Unsendable
from ._isolated_worker import carried

__all__ = ["RemoteObject"]


class RemoteObject:
    """A proxy of an object kept in an isolated worker (see ``import_isolated``).

    Attribute get/set/del, calls, ``[]``, ``len``, iteration, ``in``, arithmetic
    and comparison operators, ``repr``/``str``, ``bool``, ``hash`` and ``with``
    run on the real object in the worker. A result the wire carries comes back
    by value, anything else as another ``RemoteObject``; :func:`byvalue` copies
    what a proxy points to. A proxy whose worker crashed raises ``ProxyLost``.
    """

    __slots__ = ("__weakref__", "_tarnish_ref")

    _tarnish_ref: Ref

    @classmethod
    def _tarnish_new(cls, ref: Ref) -> RemoteObject:
        proxy = object.__new__(cls)
        object.__setattr__(proxy, "_tarnish_ref", ref)
        return proxy

    def __init__(self) -> None:
        raise TypeError("RemoteObject proxies are made by isolated modules, not directly")

    def __del__(self) -> None:
        try:
            object.__getattribute__(self, "_tarnish_ref").release()
        except Exception:  # a half-built proxy, or the interpreter is shutting down
            pass

    def _tarnish(self, op: str, *args: Any) -> Any:
        ref: Ref = object.__getattribute__(self, "_tarnish_ref")
        link: Link = ref.link
        return link.request(op, *args)

    def _tarnish_binary(self, op: str, left: Any, right: Any) -> Any:
        try:
            return self._tarnish(op, left, right)
        except Unsendable:  # the other operand cannot travel: let Python try
            return NotImplemented  # its reflected method, then raise TypeError

    # Attributes and calls.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_tarnish"):
            raise AttributeError(name)
        return self._tarnish("getattr", self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._tarnish("setattr", self, name, value)

    def __delattr__(self, name: str) -> None:
        self._tarnish("delattr", self, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tarnish("call", self, list(args), kwargs)  # a list packs faster

    def __dir__(self) -> list[str]:
        return self._tarnish("dir", self)  # type: ignore[no-any-return]

    # Containers and iteration.
    def __getitem__(self, key: Any) -> Any:
        return self._tarnish("getitem", self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._tarnish("setitem", self, key, value)

    def __delitem__(self, key: Any) -> None:
        self._tarnish("delitem", self, key)

    def __len__(self) -> int:
        return self._tarnish("len", self)  # type: ignore[no-any-return]

    def __contains__(self, item: Any) -> bool:
        return self._tarnish("contains", self, item)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        return self._tarnish("iter", self)  # type: ignore[no-any-return]

    def __next__(self) -> Any:
        return self._tarnish("next", self)

    # Text, truth, hashing.
    def __repr__(self) -> str:
        ref: Ref = object.__getattribute__(self, "_tarnish_ref")
        why = ref.lost()
        if why is not None or ref.link.closed:  # repr must not raise (debuggers, tracebacks)
            state = "closed" if why is None else f"lost: its worker {why}"
            return f"<RemoteObject {ref.type_name} ({state})>"
        return self._tarnish("repr", self)  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return self._tarnish("str", self)  # type: ignore[no-any-return]

    def __format__(self, spec: str) -> str:
        return self._tarnish("format", self, spec)  # type: ignore[no-any-return]

    def __bool__(self) -> bool:
        return self._tarnish("bool", self)  # type: ignore[no-any-return]

    def __hash__(self) -> int:
        return self._tarnish("hash", self)  # type: ignore[no-any-return]

    def __reduce__(self) -> Any:
        raise TypeError("a RemoteObject cannot be pickled; byvalue(proxy) copies plain values")

    # Context managers: __enter__ and __exit__ run in the worker.
    def __enter__(self) -> Any:
        return self._tarnish("enter", self)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        error = None
        if exc_type is not None:  # the exception cannot travel: its type name and args can
            args = getattr(exc, "args", ())
            error = (exc_type.__name__, args if carried(args) else (str(exc),))
        return self._tarnish("exit", self, error)  # type: ignore[no-any-return]

    # Comparisons.
    def __eq__(self, other: object) -> Any:
        return self._tarnish_binary("eq", self, other)

    def __ne__(self, other: object) -> Any:
        return self._tarnish_binary("ne", self, other)

    def __lt__(self, other: Any) -> Any:
        return self._tarnish_binary("lt", self, other)

    def __le__(self, other: Any) -> Any:
        return self._tarnish_binary("le", self, other)

    def __gt__(self, other: Any) -> Any:
        return self._tarnish_binary("gt", self, other)

    def __ge__(self, other: Any) -> Any:
        return self._tarnish_binary("ge", self, other)

    # Unary operators.
    def __neg__(self) -> Any:
        return self._tarnish("neg", self)

    def __pos__(self) -> Any:
        return self._tarnish("pos", self)

    def __abs__(self) -> Any:
        return self._tarnish("abs", self)

    def __invert__(self) -> Any:
        return self._tarnish("invert", self)

    # Arithmetic and bitwise operators, reflected and in-place forms: each runs in the
    # worker (in place there too, so `remote_list += [x]` extends the remote list).
    def __add__(self, o: Any) -> Any: return self._tarnish_binary("add", self, o)
    def __radd__(self, o: Any) -> Any: return self._tarnish_binary("add", o, self)
    def __iadd__(self, o: Any) -> Any: return self._tarnish_binary("iadd", self, o)
    def __sub__(self, o: Any) -> Any: return self._tarnish_binary("sub", self, o)
    def __rsub__(self, o: Any) -> Any: return self._tarnish_binary("sub", o, self)
    def __isub__(self, o: Any) -> Any: return self._tarnish_binary("isub", self, o)
    def __mul__(self, o: Any) -> Any: return self._tarnish_binary("mul", self, o)
    def __rmul__(self, o: Any) -> Any: return self._tarnish_binary("mul", o, self)
    def __imul__(self, o: Any) -> Any: return self._tarnish_binary("imul", self, o)
    def __truediv__(self, o: Any) -> Any: return self._tarnish_binary("truediv", self, o)
    def __rtruediv__(self, o: Any) -> Any: return self._tarnish_binary("truediv", o, self)
    def __itruediv__(self, o: Any) -> Any: return self._tarnish_binary("itruediv", self, o)
    def __floordiv__(self, o: Any) -> Any: return self._tarnish_binary("floordiv", self, o)
    def __rfloordiv__(self, o: Any) -> Any: return self._tarnish_binary("floordiv", o, self)
    def __ifloordiv__(self, o: Any) -> Any: return self._tarnish_binary("ifloordiv", self, o)
    def __mod__(self, o: Any) -> Any: return self._tarnish_binary("mod", self, o)
    def __rmod__(self, o: Any) -> Any: return self._tarnish_binary("mod", o, self)
    def __imod__(self, o: Any) -> Any: return self._tarnish_binary("imod", self, o)
    def __pow__(self, o: Any) -> Any: return self._tarnish_binary("pow", self, o)
    def __rpow__(self, o: Any) -> Any: return self._tarnish_binary("pow", o, self)
    def __ipow__(self, o: Any) -> Any: return self._tarnish_binary("ipow", self, o)
    def __matmul__(self, o: Any) -> Any: return self._tarnish_binary("matmul", self, o)
    def __rmatmul__(self, o: Any) -> Any: return self._tarnish_binary("matmul", o, self)
    def __imatmul__(self, o: Any) -> Any: return self._tarnish_binary("imatmul", self, o)
    def __and__(self, o: Any) -> Any: return self._tarnish_binary("and_", self, o)
    def __rand__(self, o: Any) -> Any: return self._tarnish_binary("and_", o, self)
    def __iand__(self, o: Any) -> Any: return self._tarnish_binary("iand", self, o)
    def __or__(self, o: Any) -> Any: return self._tarnish_binary("or_", self, o)
    def __ror__(self, o: Any) -> Any: return self._tarnish_binary("or_", o, self)
    def __ior__(self, o: Any) -> Any: return self._tarnish_binary("ior", self, o)
    def __xor__(self, o: Any) -> Any: return self._tarnish_binary("xor", self, o)
    def __rxor__(self, o: Any) -> Any: return self._tarnish_binary("xor", o, self)
    def __ixor__(self, o: Any) -> Any: return self._tarnish_binary("ixor", self, o)
    def __lshift__(self, o: Any) -> Any: return self._tarnish_binary("lshift", self, o)
    def __rlshift__(self, o: Any) -> Any: return self._tarnish_binary("lshift", o, self)
    def __ilshift__(self, o: Any) -> Any: return self._tarnish_binary("ilshift", self, o)
    def __rshift__(self, o: Any) -> Any: return self._tarnish_binary("rshift", self, o)
    def __rrshift__(self, o: Any) -> Any: return self._tarnish_binary("rshift", o, self)
    def __irshift__(self, o: Any) -> Any: return self._tarnish_binary("irshift", self, o)
