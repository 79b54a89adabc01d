"""Functions by reference: how ``IsolatedExecutor`` names a function, checks a
call's arguments, and how its worker finds and runs the function.

::

    parent                                          worker (ProcessPool of internal_task)
    ------                                          ------
    reference(fn) -> (module, qualname)  TypeError  _call_by_reference(record):
    Signature(fn).dump_arguments(args, kwargs)        import module, walk qualname
      annotated:   validate, dump   ValidationError   (an @task function: its __wrapped__)
      unannotated: must cross the wire  TypeError     Signature(fn).load_arguments: validate back
    record {module, qualname, args, kwargs} ------>   fn(*args, **kwargs)
                                                      Signature.dump_result: validate + dump,
    Signature.load_result(raw): validate back <-----  or check the wire carries it unchanged

Nothing is pickled: a function is found again in the worker by its module and
qualified name, so only a function defined at the top level of a module (or a
class's static/class method, or a builtin) qualifies.

The worker serves one internal task, ``_call_by_reference``, registered with
the public ``@task`` under a reserved label in every process that imports
tarnish_py. A pool of it is started in one of two ways (:func:`internal_task`):

* imported (``python -c``): the worker imports ``tarnish_py`` and, per call,
  the function's module. Light, works from a REPL, notebook or pytest, but a
  function of the program's own ``__main__`` is not there.
* re-executed: the worker re-runs the program, which calls
  ``tarnish_py.main()``; ``main()`` serves the label, so ``__main__``
  functions are found, and importable modules too.

Why a label and not a plain Task class here: the core finds a class through
its module, and a re-executed program's ``__main__`` does not define ours; the
``@task`` label registry is the one lookup both kinds of worker share, and it
is filled by importing tarnish_py, before ``main()`` serves. One pool then runs
any number of different functions, one record per call.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import functools
import importlib
import inspect
import sys
import threading
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from ._decorator import IsolatedFunction, task
from ._task import Task

__all__ = ["LABEL", "Signature", "check_carried", "internal_task", "reference"]

LABEL = "tarnish_py.IsolatedExecutor"

# Values that cross the wire and come back equal and of the same type. Anything
# else unannotated would arrive changed (a model as a dict, an enum as its
# value) or not at all: refused before it is sent.
_SCALARS: frozenset[type] = frozenset(
    {
        int,
        float,
        complex,
        bool,
        str,
        bytes,
        type(None),
        decimal.Decimal,
        uuid.UUID,
        _dt.datetime,
        _dt.date,
        _dt.time,
        _dt.timedelta,
    }
)
_SEQUENCES: frozenset[type] = frozenset({list, tuple, set, frozenset})
# Values validated into these types are sent as they are (no dump, no re-validation).
_PLAIN: frozenset[Any] = frozenset({int, float, str, bytes, bool, type(None)})
_MAX_DEPTH = 32  # the wire's limit for nested tuples and sets; lists share it here


# ---------------------------------------------------------------------------
# Naming a function


def _walk(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


_MISSING: Any = object()
_TOP_LEVEL = "use a function defined with def at the top level of a module (or an @task one)"


def _is_same(found: Any, fn: Any) -> bool:
    if found is _MISSING:
        return False
    if found is fn or found == fn:  # == : a classmethod is a new bound method per access
        return True
    return isinstance(found, IsolatedFunction) and found.__wrapped__ is fn


def _bound_to_object(fn: Any) -> bool:
    if not (inspect.ismethod(fn) or inspect.isbuiltin(fn)):
        return False
    owner = fn.__self__
    return not (owner is None or inspect.ismodule(owner) or isinstance(owner, type))


def reference(fn: Any) -> tuple[str, str]:
    """(module, qualified name) by which a worker finds ``fn``, or a TypeError that
    says why there is none and what to do."""
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    if isinstance(fn, functools.partial):
        raise TypeError(
            "a functools.partial cannot travel to a worker (functions travel by reference, "
            f"never pickled): pass its arguments to submit() instead and {_TOP_LEVEL}"
        )
    if _bound_to_object(fn):
        owner = type(fn.__self__).__qualname__
        raise TypeError(
            f"{fn!r} is bound to a {owner} object, which does not travel to the worker "
            f"(functions travel by reference, never pickled); {_TOP_LEVEL} and pass it "
            "the object's data as arguments"
        )
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"{fn!r} has no module and qualified name by which a worker could find it "
            f"(functions travel by reference, never pickled); {_TOP_LEVEL}"
        )
    if "<lambda>" in qualname:
        raise TypeError(
            "a lambda cannot run in an IsolatedExecutor: functions travel by reference "
            f"(module and name), never pickled, and a lambda has no name; {_TOP_LEVEL}"
        )
    if "<locals>" in qualname:
        raise TypeError(
            f"{module}.{qualname} is defined inside a function, where a worker cannot "
            f"find it (functions travel by reference, never pickled); {_TOP_LEVEL}"
        )
    if not _is_same(_walk(sys.modules.get(module), qualname), fn):
        raise TypeError(
            f"{module}.{qualname} does not name {fn!r}, so a worker would not find it "
            f"(functions travel by reference, never pickled); {_TOP_LEVEL}"
        )
    return module, qualname


def _resolve_in_worker(module: str, qualname: str) -> Callable[..., Any]:
    mod = sys.modules["__main__"] if module == "__main__" else importlib.import_module(module)
    found = _walk(mod, qualname)
    if found is _MISSING:
        hint = " (is it defined below the tarnish_py.main() call?)" if module == "__main__" else ""
        raise LookupError(f"the worker found no {qualname} in module {module}{hint}")
    if isinstance(found, IsolatedFunction):
        found = found.__wrapped__  # run here, not in the label's own worker
    function: Callable[..., Any] = found
    return function


# ---------------------------------------------------------------------------
# Checking and converting values


def check_carried(value: Any, what: str) -> None:
    """TypeError unless ``value`` crosses the wire unchanged (types checked exactly)."""
    _check(value, what, 0)


def _check(value: Any, what: str, depth: int) -> None:
    kind = type(value)
    if kind in _SCALARS:
        return
    if depth >= _MAX_DEPTH:
        raise TypeError(f"{what} is nested more than {_MAX_DEPTH} levels deep")
    if kind in _SEQUENCES:
        for item in value:
            if type(item) not in _SCALARS:
                _check(item, what, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            _check(key, what, depth + 1)
            _check(item, what, depth + 1)
        return
    raise TypeError(
        f"{what} is a {kind.__module__}.{kind.__qualname__}, which does not cross the "
        "wire unchanged; annotate it with its type (pydantic then validates and rebuilds "
        "it on the other side) or pass plain data (numbers, str, bytes, lists, dicts ...)"
    )


def _adapter(hint: Any) -> TypeAdapter[Any] | None:
    return None if hint is Any else TypeAdapter(hint)


class Signature:
    """What the executor knows of one function: how to bind, validate and convert."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        target = fn.__wrapped__ if isinstance(fn, IsolatedFunction) else fn
        self.name = getattr(target, "__qualname__", repr(target))
        try:
            self.signature: inspect.Signature | None = inspect.signature(target)
        except (TypeError, ValueError):  # some builtins have none
            self.signature = None
        try:
            hints = typing.get_type_hints(target, include_extras=True)
        except Exception:
            # Unresolvable annotations (names imported only under TYPE_CHECKING ...):
            # the values are checked as unannotated ones instead.
            hints = {}
        self.params = {name: _adapter(hint) for name, hint in hints.items() if name != "return"}
        self.result = _adapter(hints.get("return", Any))
        self.result_plain = hints.get("return", Any) in _PLAIN
        self._plain = {name for name, hint in hints.items() if hint in _PLAIN}
        # A value of exactly its plain annotation (an int for `x: int`) is its own
        # validation, as for a Task's In and Out (``_task.Codec``).
        self._exact = {name: hint for name, hint in hints.items() if hint in _PLAIN}
        self._positional, self._required = _positional_only(self.signature)

    def _bind(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], convert: Callable[[str, Any], Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        if self.signature is None:
            return [convert("", a) for a in args], {k: convert("", v) for k, v in kwargs.items()}
        names = self._positional
        if not kwargs and names is not None and self._required <= len(args) <= len(names):
            # What bind() returns for these, at a tenth of its cost (a map binds per input).
            return [convert(name, value) for name, value in zip(names, args, strict=False)], {}
        bound = self.signature.bind(*args, **kwargs)  # the TypeError Python would raise
        arguments = bound.arguments
        for name, value in arguments.items():
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = tuple(convert(name, item) for item in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                arguments[name] = {key: convert(name, item) for key, item in value.items()}
            else:
                arguments[name] = convert(name, value)
        return list(bound.args), dict(bound.kwargs)

    def dump_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """In the caller: validated, wire-ready arguments (ValidationError, TypeError)."""

        def dump(name: str, value: Any) -> Any:
            if type(value) is self._exact.get(name):
                return value
            adapter = self.params.get(name)
            if adapter is None:
                check_carried(value, f"argument {name or '?'!r} of {self.name}")
                return value
            value = adapter.validate_python(value)
            return value if name in self._plain else adapter.dump_python(value)

        return self._bind(args, kwargs, dump)

    def load_arguments(
        self, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """In the worker: the annotated arguments rebuilt (models, enums ...)."""

        def load(name: str, value: Any) -> Any:
            if type(value) is self._exact.get(name):
                return value
            adapter = self.params.get(name)
            return value if adapter is None else adapter.validate_python(value)

        return self._bind(tuple(args), kwargs, load)

    def dump_result(self, value: Any) -> Any:
        """In the worker: the result validated by the return annotation, wire-ready."""
        if self.result is None:
            check_carried(value, f"the result of {self.name}")
            return value
        if type(value) is self._exact.get("return"):
            return value
        value = self.result.validate_python(value)
        return value if self.result_plain else self.result.dump_python(value)

    def load_result(self, raw: Any) -> Any:
        """In the caller: the result rebuilt by the return annotation."""
        if self.result is None or self.result_plain:
            return raw
        return self.result.validate_python(raw)


def _positional_only(signature: inspect.Signature | None) -> tuple[tuple[str, ...] | None, int]:
    """(names, how many are required) when every parameter may be given by position
    and none is ``*args``/``**kwargs``; (None, 0) otherwise."""
    if signature is None:
        return None, 0
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(signature.parameters.values())
    if any(param.kind not in positional for param in params):
        return None, 0
    required = sum(param.default is inspect.Parameter.empty for param in params)
    return tuple(param.name for param in params), required


# ---------------------------------------------------------------------------
# The worker's side


_resolved: dict[tuple[str, str], tuple[Callable[..., Any], Signature]] = {}
_resolved_lock = threading.Lock()


@task(LABEL)
def _call_by_reference(module: str, qualname: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """The executor's internal task: find the function, validate, call, validate."""
    key = (module, qualname)
    found = _resolved.get(key)
    if found is None:
        fn = _resolve_in_worker(module, qualname)
        found = (fn, Signature(fn))
        with _resolved_lock:
            _resolved[key] = found
    fn, signature = found
    args, kwargs = signature.load_arguments(args, kwargs)
    return signature.dump_result(fn(*args, **kwargs))


def internal_task(re_executed: bool) -> type[Task[Any, Any]]:
    """The Task class a pool of ``_call_by_reference`` workers is started with.

    PRIVATE HOOK of the core (re-point it after the refactor). A Task made by
    ``@task`` carries ``_tarnish_name = "@label"``; the core finds such a task
    by label and starts it by its ``__module__``: an importable module means a
    ``python -c`` worker that imports it, ``"__main__"`` a re-executed program
    whose ``main()`` serves the label. The subclass below only changes the
    module to ``"__main__"``, so the same label is served by the program.
    """
    return _in_main() if re_executed else _call_by_reference.task_class


@functools.cache
def _in_main() -> type[Task[Any, Any]]:
    base = _call_by_reference.task_class
    namespace = {"__module__": "__main__", "_tarnish_name": "@" + LABEL}
    cls: type[Task[Any, Any]] = types.new_class(
        "call_by_reference", (base,), exec_body=lambda ns: ns.update(namespace)
    )
    return cls
