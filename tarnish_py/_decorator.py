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
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import inspect
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from typing_extensions import ParamSpec, TypedDict

from ._pool import ProcessPool
from ._process import DEFAULT_SPAWN_TIMEOUT, Process
from ._task import Task, adapters
from ._wire import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["IsolatedFunction", "function_for_label", "task", "task_for_label"]

P = ParamSpec("P")
R = TypeVar("R")

_registry: dict[str, IsolatedFunction[Any, Any]] = {}
_registry_lock = threading.Lock()


def task_for_label(label: str) -> type[Task[Any, Any]]:
    """The Task class registered under ``label`` (used in the worker)."""
    try:
        return _registry[label].task_class
    except KeyError:
        raise LookupError(
            f"no @task({label!r}) function was defined by the time the worker looked for it"
        ) from None


def function_for_label(module: str, label: str) -> IsolatedFunction[Any, Any]:
    """The ``@task`` function registered under ``label`` once ``module`` is imported.

    How a decorated function is unpickled in another process (Dask, multiprocessing).
    """
    if module != "__main__":
        importlib.import_module(module)
    try:
        return _registry[label]
    except KeyError:
        raise LookupError(f"no @task({label!r}) function is defined in module {module!r}") from None


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

    namespace = {"run": run, "__module__": fn.__module__, "_tarnish_name": "@" + label}
    cls: type[Task[Any, Any]] = types.new_class(
        f"task_{label}", (Task[arguments, result],), exec_body=lambda ns: ns.update(namespace)
    )
    return cls


class IsolatedFunction(Generic[P, R]):
    """A function that runs in an isolated worker; made by :func:`task`.

    Calling it runs the function in the worker kept for its label (started on
    first use, replaced after a crash) and returns the result. ``submit`` and
    ``acall`` are the Future and asyncio forms; ``map`` runs many calls over a
    temporary :class:`ProcessPool`; ``close`` stops the worker.
    """

    def __init__(
        self,
        label: str,
        fn: Callable[P, R],
        *,
        timeout: float | None,
        shutdown_timeout: float,
        spawn_timeout: float,
        max_message_bytes: int,
    ) -> None:
        self.label = label
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", label)
        self.__qualname__ = getattr(fn, "__qualname__", label)
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        self.task_class = _task_class(label, fn)
        self._signature = inspect.signature(fn)
        self._options: dict[str, Any] = {
            "timeout": timeout,
            "shutdown_timeout": shutdown_timeout,
            "spawn_timeout": spawn_timeout,
            "max_message_bytes": max_message_bytes,
        }
        self._lock = threading.Lock()
        self._process: Process[Any, Any] | None = None

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def _worker(self, arguments: dict[str, Any]) -> Process[Any, Any]:
        process = self._process
        if process is not None and not process.closed:
            return process
        # Bad arguments fail here, before a worker is started for nothing.
        adapters(self.task_class)[0].validate_python(arguments)
        with self._lock:
            if self._process is None or self._process.closed:
                self._process = Process(self.task_class, **self._options)
            return self._process

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        arguments = self._arguments(args, kwargs)
        return self._worker(arguments).call(arguments)  # type: ignore[no-any-return]

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> cf.Future[R]:
        """Start a call; its Future at once."""
        arguments = self._arguments(args, kwargs)
        return self._worker(arguments).submit(arguments)

    async def acall(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call for asyncio: awaits without blocking the event loop."""
        arguments = self._arguments(args, kwargs)
        return await self._worker(arguments).acall(arguments)  # type: ignore[no-any-return]

    def map(
        self,
        *iterables: Iterable[Any],
        size: int | None = None,
        ordered: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[R]:
        """Like the built-in ``map``, over a pool of ``size`` workers (default: CPUs).

        The pool lives as long as the iteration. See :meth:`ProcessPool.map`
        for ``ordered`` and ``return_exceptions``.
        """
        with ProcessPool(self.task_class, size, **self._options) as pool:
            calls = (self._arguments(args, {}) for args in zip(*iterables, strict=False))
            results: Iterator[Any] = pool.map(
                calls, ordered=ordered, return_exceptions=return_exceptions  # type: ignore[call-overload]
            )
            yield from results

    def close(self) -> None:
        """Stop the label's worker (the next call starts a new one)."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            process.close()

    def __repr__(self) -> str:
        return f"<tarnish_py task {self.label!r}: {self.__qualname__}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # By reference: the receiving process imports the module, which registers
        # the label again; the worker and its lock never travel.
        return (function_for_label, (self.__module__, self.label))


def task(
    label: str,
    *,
    timeout: float | None = None,
    shutdown_timeout: float = 5.0,
    spawn_timeout: float = DEFAULT_SPAWN_TIMEOUT,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Callable[[Callable[P, R]], IsolatedFunction[P, R]]:
    """Run the decorated function in an isolated worker kept for ``label``.

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

    def decorate(fn: Callable[P, R]) -> IsolatedFunction[P, R]:
        if not callable(fn):
            raise TypeError(f"@task({label!r}) decorates a function, not {fn!r}")
        if "<locals>" in getattr(fn, "__qualname__", ""):
            raise TypeError(
                f"@task({label!r}): {fn.__qualname__} is defined inside a function; "
                "a worker can only find functions defined at the top level of a module"
            )
        isolated = IsolatedFunction(
            label,
            fn,
            timeout=timeout,
            shutdown_timeout=shutdown_timeout,
            spawn_timeout=spawn_timeout,
            max_message_bytes=max_message_bytes,
        )
        with _registry_lock:
            previous = _registry.get(label)
            if previous is not None and not _same_function(previous.__wrapped__, fn):
                raise ValueError(
                    f"@task label {label!r} is already used by {previous.__module__}."
                    f"{previous.__qualname__}; labels must be unique per program"
                )
            _registry[label] = isolated
        return isolated

    return decorate


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
