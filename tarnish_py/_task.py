"""``Task[In, Out]``: the unit of work a worker serves, and how its values cross.

::

    parent   Codec.encode_input: validate In, dump to plain   --> wire
    worker   Codec.decode_input: validate In --> run() --> Codec.encode_output:
             validate Out, dump to plain                       --> wire
    parent   Codec.decode_output: validate Out (skipped for plain types, which the
             worker validated and which arrive as they are)

The parent never instantiates a Task: it only reads the type arguments, which
become pydantic type adapters, and one :class:`Codec` per class used on both
sides. The worker finds the class by :func:`task_location` (module and
qualified name, or an ``@task`` label in the label registry), instantiates it
once, calls ``setup()``, then ``run()`` once per call, and ``close()`` on a
graceful shutdown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

from pydantic import TypeAdapter
from pydantic_core import SchemaValidator

__all__ = [
    "Codec",
    "In",
    "Out",
    "Task",
    "adapters",
    "codec",
    "register_label",
    "task_for_label",
    "task_location",
]

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
    _tarnish_codec: ClassVar[Codec | None] = None

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
            cls._tarnish_codec = None
            return
        cls._tarnish_types = types
        cls._tarnish_adapters = None
        cls._tarnish_codec = None
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


# Values of these types cross the wire unchanged: no dump, no re-validation.
_PLAIN_TYPES = frozenset({int, str, bytes, float, bool})


class Codec:
    """How one task class's values are validated and turned into plain objects.

    Built once per class (:func:`codec`) and used by both sides, so that a
    ``call`` and a ``submit`` treat a value the same way.
    """

    __slots__ = (
        "decode_input", "encode_output", "encode_input", "decode_output",
        "validate_input", "dump_input", "plain_in", "plain_out",
    )

    def __init__(self, in_adapter: TypeAdapter[Any], out_adapter: TypeAdapter[Any],
                 types: tuple[Any, Any]) -> None:
        in_plain, out_plain = (tp in _PLAIN_TYPES for tp in types)
        #: ``In`` when it is a plain type (else None): a value of exactly that type
        #: validates to itself, so the hot paths skip the call (``type(v) is plain_in``).
        self.plain_in: type | None = types[0] if in_plain else None
        #: The same for ``Out``.
        self.plain_out: type | None = types[1] if out_plain else None
        validate_in = _validator(in_adapter)
        validate_out = _validator(out_adapter)
        #: Worker: the raw payload of a call as the task's ``In``.
        self.decode_input: Callable[[Any], Any] = validate_in
        #: Parent: encode_input in two steps, to keep the validated input for errors.
        self.validate_input: Callable[[Any], Any] = validate_in
        self.dump_input: Callable[[Any], Any] = _identity if in_plain else in_adapter.dump_python
        #: Parent: a caller's input, validated and made plain (ValidationError here).
        self.encode_input: Callable[[Any], Any] = (
            validate_in if in_plain else _then(validate_in, in_adapter.dump_python)
        )
        #: Worker: ``run()``'s return value, validated and made plain.
        self.encode_output: Callable[[Any], Any] = (
            validate_out if out_plain else _then(validate_out, out_adapter.dump_python)
        )
        #: Parent: a raw result as the task's ``Out`` (a plain Out arrives as is).
        self.decode_output: Callable[[Any], Any] = _identity if out_plain else validate_out


def _identity(value: Any) -> Any:
    return value


def _validator(adapter: TypeAdapter[Any]) -> Callable[[Any], Any]:
    """``adapter.validate_python``, without its Python wrapper once the schema is built.

    The wrapper only passes its defaults on, and costs four times what the
    validation of a small value does. A validator still waiting for a forward
    reference (or wrapped by a pydantic plugin) keeps the wrapper, which
    rebuilds or raises as pydantic does.
    """
    validator = adapter.validator
    if type(validator) is SchemaValidator:
        return validator.validate_python
    return adapter.validate_python


def _then(first: Callable[[Any], Any], second: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: second(first(value))


def codec(cls: type[Task[Any, Any]]) -> Codec:
    """The :class:`Codec` of a concrete task class (built on first use)."""
    built = cls.__dict__.get("_tarnish_codec")
    if built is None:
        in_adapter, out_adapter = adapters(cls)
        assert cls._tarnish_types is not None  # adapters() refused a generic class
        built = Codec(in_adapter, out_adapter, cls._tarnish_types)
        cls._tarnish_codec = built
    return built


# -- where a worker finds a task ---------------------------------------------

_labels: dict[str, type[Task[Any, Any]]] = {}
_labels_lock = threading.Lock()


def register_label(
    label: str,
    task_cls: type[Task[Any, Any]],
    same: Callable[[type[Task[Any, Any]], type[Task[Any, Any]]], bool],
) -> None:
    """Register the task class of an ``@task`` label; ``same(old, new)`` says whether
    an earlier registration is the same function defined again (then it is replaced)."""
    with _labels_lock:
        previous = _labels.get(label)
        if previous is not None and not same(previous, task_cls):
            origin = getattr(previous, "_tarnish_origin", previous.__qualname__)
            raise ValueError(
                f"@task label {label!r} is already used by {origin}; "
                "labels must be unique per program"
            )
        _labels[label] = task_cls


def task_for_label(label: str) -> type[Task[Any, Any]]:
    """The Task class registered under ``label`` (used in the worker)."""
    try:
        return _labels[label]
    except KeyError:
        raise LookupError(
            f"no @task({label!r}) function was defined by the time the worker looked for it"
        ) from None


def task_location(task: type[Task[Any, Any]]) -> tuple[str, str]:
    """(module, name) by which a worker finds ``task``: its qualified name, or
    ``"@label"`` for a class made by ``@task``."""
    if not (isinstance(task, type) and issubclass(task, Task)):
        if hasattr(task, "task_class"):  # an @task function
            raise TypeError(f"expected a Task subclass, got {task!r}: pass its .task_class")
        if callable(task) and not isinstance(task, type):
            raise TypeError(
                f"expected a Task subclass, got the function {task!r}; to run a plain "
                "function in a worker, decorate it with @tarnish_py.task('label') and "
                "call it (or write a Task subclass)"
            )
        raise TypeError(f"expected a Task subclass, got {task!r}")
    label = task.__dict__.get("_tarnish_name")
    if label is not None:
        return task.__module__, str(label)
    qualname = task.__qualname__
    if "<locals>" in qualname:
        raise TypeError(
            f"{qualname} is defined inside a function; a worker can only find tasks "
            "defined at the top level of a module"
        )
    return task.__module__, qualname


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
