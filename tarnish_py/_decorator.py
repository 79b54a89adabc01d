"""``@task("label")``: a plain function that runs in its own isolated worker.

::

    @task("scale")                 the signature's annotations become a Task:
    def scale(x: float) -> float   In = a TypedDict of the parameters, Out = the
                                   return annotation; registered under "scale"
    scale(1.5)                     args bound and validated here, then sent to the
                                   worker kept for "scale" (started on first use)

The worker finds the function by its label: it re-runs the program (for a
function in ``__main__``, which must call ``tarnish_py.main()``) or imports the
function's module, and either way the decorator registers the label again there.
Pickling works the same way: a decorated function pickles as (module, label) and
unpickles as the function registered under that label once its module is imported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import importlib
import inspect
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Literal, TypeVar, overload

from typing_extensions import ParamSpec, TypedDict, Unpack

from ._pool import ProcessPool
from ._settings import HandleKeywords, Settings
from ._task import Task, codec, register_label

__all__ = ["IsolatedFunction", "task"]

P = ParamSpec("P")
R = TypeVar("R")


def _task_class(label: str, fn: Callable[..., Any]) -> type[Task[Any, Any]]:
    """A Task whose input is the function's bound arguments and output its result."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    positional: list[str] = []
    for name, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(
                f"@task({label!r}): *args and **kwargs cannot be validated; "
                "name every parameter of the function"
            )
        if param.kind is param.POSITIONAL_ONLY:
            positional.append(name)
        fields[name] = hints.get(name, Any)
    arguments: Any = TypedDict(f"{fn.__name__}_arguments", fields)  # type: ignore[misc]
    result: Any = hints.get("return", Any)

    def run(self: Task[Any, Any], args: dict[str, Any]) -> Any:
        posargs = [args.pop(name) for name in positional]
        return fn(*posargs, **args)

    namespace = {
        "run": run,
        "__module__": fn.__module__,
        "_tarnish_name": "@" + label,
        "_tarnish_function": fn,
        "_tarnish_origin": f"{fn.__module__}.{fn.__qualname__}",
    }
    cls: type[Task[Any, Any]] = types.new_class(
        f"task_{label}", (Task[arguments, result],), exec_body=lambda ns: ns.update(namespace)
    )
    return cls


class IsolatedFunction(Generic[P, R]):
    """A function that runs in an isolated worker; made by :func:`task`.

    Calling it runs the function in the workers kept for its label (``size`` of
    them, default 1; started on first use, replaced after a crash) and returns
    the result. ``submit`` and ``acall`` are the Future and asyncio forms;
    ``map`` runs many calls over a temporary :class:`ProcessPool`; ``close``
    stops the workers. It pickles by reference (module and label).
    """

    def __init__(
        self,
        label: str,
        fn: Callable[P, R],
        settings: Settings,
        size: int = 1,
    ) -> None:
        self.label = label
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", label)
        self.__qualname__ = getattr(fn, "__qualname__", label)
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        self.task_class = _task_class(label, fn)
        self._signature = inspect.signature(fn)
        self._options = settings.keywords()
        self._size = size
        self._lock = threading.Lock()
        self._pool: ProcessPool[Any, Any] | None = None

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def _worker(self, arguments: dict[str, Any]) -> ProcessPool[Any, Any]:
        pool = self._pool
        if pool is not None and not pool.closed:
            return pool
        # Bad arguments fail here, before a worker is started for nothing.
        codec(self.task_class).encode_input(arguments)
        with self._lock:
            if self._pool is None or self._pool.closed:
                self._pool = ProcessPool(self.task_class, self._size, **self._options)
            return self._pool

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        arguments = self._arguments(args, kwargs)
        return self._worker(arguments).call(arguments)  # type: ignore[no-any-return]

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> cf.Future[R]:
        """Start a call; its Future at once."""
        arguments = self._arguments(args, kwargs)
        return self._worker(arguments).submit(arguments)

    async def acall(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call for asyncio: awaits without blocking the event loop (a worker that
        must start first starts on another thread)."""
        arguments = self._arguments(args, kwargs)
        pool = self._pool
        if pool is None or pool.closed:
            pool = await asyncio.to_thread(self._worker, arguments)
        return await pool.acall(arguments)  # type: ignore[no-any-return]

    @overload
    def map(
        self,
        *iterables: Iterable[Any],
        size: int | None = ...,
        ordered: bool = ...,
        return_exceptions: Literal[False] = ...,
    ) -> Iterator[R]: ...

    @overload
    def map(
        self,
        *iterables: Iterable[Any],
        size: int | None = ...,
        ordered: bool = ...,
        return_exceptions: bool,
    ) -> Iterator[R | BaseException]: ...

    def map(
        self,
        *iterables: Iterable[Any],
        size: int | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Like the built-in ``map``, over a pool of ``size`` workers (default: CPUs).

        The pool lives as long as the iteration. See :meth:`ProcessPool.map`
        for ``ordered`` and ``return_exceptions``.
        """
        with ProcessPool(self.task_class, size, **self._options) as pool:
            calls = (self._arguments(args, {}) for args in zip(*iterables, strict=False))
            yield from pool.map(calls, ordered=ordered, return_exceptions=return_exceptions)

    def close(self) -> None:
        """Stop the label's workers (the next call starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __repr__(self) -> str:
        return f"<tarnish_py task {self.label!r}: {self.__qualname__}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # By reference, like a plain function: the workers and their lock stay here.
        return (_by_label, (self.__module__, self.label))


_functions: dict[str, IsolatedFunction[Any, Any]] = {}


def _by_label(module: str, label: str) -> IsolatedFunction[Any, Any]:
    """Unpickle an @task function: import its module, which registers the label."""
    if module not in sys.modules:
        importlib.import_module(module)
    try:
        return _functions[label]
    except KeyError:
        raise LookupError(
            f"cannot unpickle @task({label!r}): importing {module} did not define it"
        ) from None


def task(
    label: str, *, size: int = 1, **keywords: Unpack[HandleKeywords]
) -> Callable[[Callable[P, R]], IsolatedFunction[P, R]]:
    """Run the decorated function in isolated workers kept for ``label``.

    ``size`` workers (default 1) serve the label, so that many calls (threads,
    ``acall``) run at once; the other keywords are those of :class:`Process`.

    ::

        @task("scale", timeout=10)
        def scale(x: float, factor: float = 2.0) -> float:
            return x * factor

        scale(1.5)   # 3.0, computed in a worker process

    Arguments and the result are validated from the annotations with pydantic
    (invalid arguments raise ``pydantic.ValidationError`` here); errors are
    those of :meth:`Process.call`. Labels are unique per program.
    """
    if not isinstance(label, str) or not label:
        raise TypeError("@task needs a non-empty label string: @task('my-label')")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"@task({label!r}): size must be a positive int, not {size!r}")
    settings = Settings.of(keywords, f"@task({label!r})")

    def decorate(fn: Callable[P, R]) -> IsolatedFunction[P, R]:
        if not callable(fn):
            raise TypeError(f"@task({label!r}) decorates a function, not {fn!r}")
        if "<locals>" in getattr(fn, "__qualname__", ""):
            raise TypeError(
                f"@task({label!r}): {fn.__qualname__} is defined inside a function; "
                "a worker can only find functions defined at the top level of a module"
            )
        isolated = IsolatedFunction(label, fn, settings, size)
        register_label(label, isolated.task_class, _same_task)
        _functions[label] = isolated
        return isolated

    return decorate


def _same_task(a: type[Task[Any, Any]], b: type[Task[Any, Any]]) -> bool:
    return _same_function(a._tarnish_function, b._tarnish_function)  # type: ignore[attr-defined]


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # The same source defined twice: a module run as __main__ and also imported,
    # or reloaded. Anything else reusing a label is a mistake.
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and code_a.co_filename == code_b.co_filename
        and a.__qualname__ == b.__qualname__
    )
