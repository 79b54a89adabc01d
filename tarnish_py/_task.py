"""``Task[In, Out]``: the unit of work a worker serves.

The parent never instantiates a Task: it only reads the type arguments, which
become pydantic type adapters at class creation. The worker imports the class
(by module and qualified name), instantiates it once, calls ``setup()``, then
``run()`` once per call, and ``close()`` on a graceful shutdown.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import TypeAdapter

__all__ = ["In", "Out", "Task", "adapters"]

In = TypeVar("In")
Out = TypeVar("Out")


class Task(Generic[In, Out]):
    """Base class of work run in a worker process.

    Subclass it with concrete types; ``In`` and ``Out`` may be anything
    pydantic validates::

        class Double(Task[int, int]):
            def run(self, x: int) -> int:
                return 2 * x

    One instance lives in each worker for the worker's whole life, so it may
    keep state (a loaded model, a handle to a C library) between calls.
    """

    # (input adapter, output adapter), or None on a generic intermediate class.
    _tarnish_types: ClassVar[tuple[Any, Any] | None] = None
    _tarnish_adapters: ClassVar[tuple[TypeAdapter[Any], TypeAdapter[Any]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        types = _resolve_type_args(cls)
        if types is None:
            raise TypeError(
                f"{cls.__qualname__} must give Task its input and output types, "
                f"for example: class {cls.__name__}(Task[int, str]): ..."
            )
        if any(_free_type_vars(t) for t in types):
            if "__orig_bases__" not in cls.__dict__:
                # class U(GenericBase): the type arguments were forgotten.
                raise TypeError(
                    f"{cls.__qualname__} must fill in the type arguments of its generic "
                    f"base, for example: class {cls.__name__}"
                    f"({cls.__bases__[0].__name__}[int, str]): ... (as with Task[int, str])"
                )
            cls._tarnish_types = None  # a generic base for other tasks
            cls._tarnish_adapters = None
            return
        cls._tarnish_types = types
        cls._tarnish_adapters = None
        try:
            adapters(cls)
        except Exception:
            # Forward references to names defined later: resolved on first use.
            cls._tarnish_adapters = None

    def setup(self) -> None:
        """Called once in the worker before the first call. Optional."""

    def run(self, input: In, /) -> Out:
        """Called in the worker once per call. Raising makes a ``TaskError``."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement run()")

    def close(self) -> None:
        """Called in the worker on a graceful shutdown. Optional."""


def adapters(cls: type[Task[Any, Any]]) -> tuple[TypeAdapter[Any], TypeAdapter[Any]]:
    """The (input, output) type adapters of a concrete task class."""
    built = cls.__dict__.get("_tarnish_adapters")
    if built is not None:
        return built  # type: ignore[no-any-return]
    types = cls._tarnish_types
    if types is None:
        raise TypeError(
            f"{cls.__qualname__} is generic (its type arguments are type variables); "
            "run a subclass with concrete types, such as Task[int, str]"
        )
    built = (
        TypeAdapter(types[0], module=cls.__module__),
        TypeAdapter(types[1], module=cls.__module__),
    )
    cls._tarnish_adapters = built
    return built


def _resolve_type_args(cls: type) -> tuple[Any, Any] | None:
    """Task's (In, Out) as ``cls`` fills them in, following generic subclasses."""
    for base in cls.__dict__.get("__orig_bases__", cls.__bases__):
        origin = get_origin(base) or base
        if origin is Task:
            args = get_args(base)
            return (args[0], args[1]) if len(args) == 2 else None
        if isinstance(origin, type) and issubclass(origin, Task) and origin is not Task:
            inner = _resolve_type_args(origin)
            if inner is None:
                continue
            mapping = dict(zip(getattr(origin, "__parameters__", ()), get_args(base), strict=False))
            return (_substitute(inner[0], mapping), _substitute(inner[1], mapping))
    return None


def _free_type_vars(tp: Any) -> tuple[Any, ...]:
    if isinstance(tp, TypeVar):
        return (tp,)
    if isinstance(tp, type):  # a class used bare (even a Generic one) is a concrete type
        return ()
    return tuple(getattr(tp, "__parameters__", ()))


def _substitute(tp: Any, mapping: dict[Any, Any]) -> Any:
    """``tp`` with its type variables replaced: A -> int, list[A] -> list[int]."""
    if isinstance(tp, TypeVar):
        return mapping.get(tp, tp)
    params = _free_type_vars(tp)
    if params:
        return tp[tuple(mapping.get(p, p) for p in params)]
    return tp
