"""IsolatedExecutor without a worker: what is refused at construction and at
``submit`` (before anything is sent or any process starts), and the argument and
result conversions of ``_byref`` that both sides apply."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import decimal
import enum
import functools
import inspect
import math
import os.path
import select
import time
import uuid
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

from tarnish_py import IsolatedExecutor, task
from tarnish_py._byref import Signature, check_carried, reference
from tarnish_py._executor_map import Feeder, MapIterator
from tarnish_py._stopper import Stopper


class Point(pydantic.BaseModel):
    x: int
    y: int


class Color(enum.Enum):
    RED = "red"


def add(a, b=1):  # type: ignore[no-untyped-def]  # deliberately unannotated
    return a + b


def move(p: Point, dx: int = 0, *rest: float, **named: Color) -> Point:
    return Point(x=p.x + dx, y=p.y)


def no_result_annotation(p: Point):  # type: ignore[no-untyped-def]
    return p


class Holder:
    @classmethod
    def make(cls, x: int) -> int:
        return x

    @staticmethod
    def plain(x: int) -> int:
        return x

    def method(self) -> int:
        return 1


@task("executor-unit-scaled")
def scaled(x: float) -> float:
    return 2 * x


def _closure() -> Callable[[], int]:
    def inner() -> int:
        return 1

    return inner


@pytest.fixture
def executor() -> Any:
    ex = IsolatedExecutor(max_workers=1)
    yield ex
    ex.shutdown()
    assert ex._pool is None, "a refused call must never start a worker"


# -- construction ----------------------------------------------------------------


def test_is_a_concurrent_futures_executor() -> None:
    assert issubclass(IsolatedExecutor, cf.Executor)


@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_negative(number: int) -> None:
    """CPython test_executor.ExecutorTest.test_max_workers_negative."""
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        IsolatedExecutor(max_workers=number)


@pytest.mark.parametrize("value", ["2", 1.5, True])
def test_max_workers_must_be_an_int(value: Any) -> None:
    with pytest.raises(TypeError, match="max_workers"):
        IsolatedExecutor(max_workers=value)


def test_max_workers_defaults_to_the_cpu_count() -> None:
    assert IsolatedExecutor()._max_workers == (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("timeout", 0),
        ("timeout", -1.0),
        ("shutdown_timeout", 0),
        ("spawn_timeout", "60"),
        ("max_message_bytes", 0),
        ("max_message_bytes", 1.5),
    ],
)
def test_invalid_handle_keywords_fail_at_construction(keyword: str, value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=keyword):
        IsolatedExecutor(**{keyword: value})


# -- refused at submit -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (lambda: 1, "a lambda"),
        (_closure(), "defined inside a function"),
        (Holder().method, "bound to a Holder object"),
        ([].append, "bound to a list object"),
        (functools.partial(add, 1), "functools.partial"),
        (str.upper, "no module and qualified name"),
    ],
    ids=["lambda", "closure", "bound-method", "bound-builtin", "partial", "method-descriptor"],
)
def test_functions_that_cannot_travel_by_reference(executor: Any, fn: Any, why: str) -> None:
    with pytest.raises(TypeError, match=why) as info:
        executor.submit(fn)
    assert "never pickled" in str(info.value)  # says why ...
    assert "top level of a module" in str(info.value)  # ... and what to do


def test_a_name_that_no_longer_names_the_function_is_refused(executor: Any) -> None:
    def replaced() -> None: ...

    replaced.__qualname__ = "add"  # module.add is another function
    with pytest.raises(TypeError, match="does not name"):
        executor.submit(replaced)


def test_unannotated_value_that_the_wire_cannot_carry(executor: Any) -> None:
    with pytest.raises(TypeError, match=r"argument 'b' of add is a builtins.object"):
        executor.submit(add, 1, b=object())
    with pytest.raises(TypeError, match="argument 'a' of add is a .*Point.*annotate it"):
        executor.submit(add, Point(x=1, y=2))


def test_invalid_annotated_argument_raises_validation_error(executor: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        executor.submit(move, {"x": "not a number", "y": 0})
    with pytest.raises(pydantic.ValidationError):
        executor.submit(move, Point(x=1, y=2), 1, 0.5, "not a float")
    with pytest.raises(pydantic.ValidationError):
        executor.submit(move, Point(x=1, y=2), colour="blue")


def test_arguments_that_do_not_bind_raise_type_error(executor: Any) -> None:
    """CPython test_executor.ExecutorTest.test_submit_keyword (the refused forms)."""
    with pytest.raises(TypeError):
        executor.submit(add, 1, 2, 3)
    with pytest.raises(TypeError):
        executor.submit(fn=add, a=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(a=1)  # type: ignore[call-arg]


def test_run_after_shutdown(executor: Any) -> None:
    """CPython test_shutdown.ExecutorShutdownTest.test_run_after_shutdown."""
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(pow, 2, 5)
    executor.shutdown()  # idempotent
    executor.shutdown(wait=False, cancel_futures=True)


def test_map_chunksize_must_be_positive(executor: Any) -> None:
    """CPython test_process_pool.ProcessPoolExecutorTest.test_map_chunksize (bad_map)."""
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(pow, range(40), range(40), chunksize=-1)


def test_map_refuses_a_lambda_before_iterating(executor: Any) -> None:
    with pytest.raises(TypeError, match="lambda"):
        executor.map(lambda x: x, [1, 2])


# -- what may travel ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [add, move, pow, math.sqrt, os.path.join, Holder.make, Holder.plain, scaled],
    ids=lambda fn: getattr(fn, "__qualname__", repr(fn)),
)
def test_functions_found_by_reference(fn: Any) -> None:
    module, qualname = reference(fn)
    obj: Any = __import__(module, fromlist=["_"])
    for part in qualname.split("."):
        obj = getattr(obj, part)
    assert obj == fn


PLAIN_VALUES = [
    0,
    2**100,
    -1.5,
    1j,
    True,
    None,
    "text",
    b"\x00bytes",
    decimal.Decimal("1.10"),
    uuid.UUID(int=7),
    dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.timezone.utc),
    dt.date(2024, 1, 2),
    dt.time(1, 2),
    dt.timedelta(seconds=3),
    [1, (2, 3), {4}, frozenset({5})],
    {"a": {1: [b"x"]}, (1, 2): None},
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=lambda v: type(v).__name__)
def test_plain_values_are_carried(value: Any) -> None:
    check_carried(value, "value")


@pytest.mark.parametrize(
    "value",
    [Point(x=1, y=2), Color.RED, bytearray(b"x"), object(), [1, [2, {"k": object()}]]],
    ids=["model", "enum", "bytearray", "object", "nested-object"],
)
def test_other_values_are_refused(value: Any) -> None:
    with pytest.raises(TypeError, match="does not cross the wire unchanged"):
        check_carried(value, "value")


def test_deep_nesting_is_refused() -> None:
    value: Any = 1
    for _ in range(40):
        value = [value]
    with pytest.raises(TypeError, match="nested more than"):
        check_carried(value, "value")


# -- conversions both sides apply ----------------------------------------------------


def test_annotated_arguments_travel_dumped_and_are_rebuilt() -> None:
    sig = Signature(move)
    args, kwargs = sig.dump_arguments(({"x": 1, "y": 2}, "3", 1, 2.5), {"tone": "red"})
    assert args == [{"x": 1, "y": 2}, 3, 1.0, 2.5]  # validated, then a model dumped to a dict
    assert kwargs == {"tone": Color.RED}  # (the wire sends an enum member as its value)
    args, kwargs = sig.load_arguments(args, kwargs)
    assert args == [Point(x=1, y=2), 3, 1.0, 2.5]
    assert kwargs == {"tone": Color.RED}


def test_annotated_result_is_validated_dumped_and_rebuilt() -> None:
    sig = Signature(move)
    raw = sig.dump_result(Point(x=5, y=6))
    assert raw == {"x": 5, "y": 6}
    assert sig.load_result(raw) == Point(x=5, y=6)
    with pytest.raises(pydantic.ValidationError):
        sig.dump_result("not a point")


def test_unannotated_result_must_be_plain() -> None:
    sig = Signature(no_result_annotation)
    with pytest.raises(TypeError, match="the result of no_result_annotation"):
        sig.dump_result(Point(x=1, y=2))
    assert sig.dump_result([1, 2]) == [1, 2]
    assert sig.load_result([1, 2]) == [1, 2]


def test_task_function_is_checked_by_its_wrapped_signature() -> None:
    sig = Signature(scaled)
    assert sig.dump_arguments(("1.5",), {}) == ([1.5], {})
    with pytest.raises(pydantic.ValidationError):
        sig.dump_arguments(("x",), {})


# -- map(chunksize > 1): what map() itself refuses, before any worker starts ------


def typed_pair(a: int, b: int = 2) -> int:
    return a + b


def test_map_in_batches_validates_every_input_at_the_call(executor: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        executor.map(typed_pair, [1, "two", 3], chunksize=2)
    with pytest.raises(TypeError, match="never pickled"):
        executor.map(lambda x: x, [1, 2], chunksize=2)
    with pytest.raises(TypeError):  # too many arguments, as Python would say
        executor.map(typed_pair, [1], [2], [3], chunksize=2)
    with pytest.raises(ValueError):
        executor.map(typed_pair, [1], chunksize=0)
    # As the standard library: nothing to submit, nothing checked or started.
    assert list(executor.map(lambda x: x, [], chunksize=5)) == []


def test_map_in_batches_after_shutdown() -> None:
    ex = IsolatedExecutor(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(typed_pair, [1, 2], chunksize=2)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, 5), {}), ((1,), {"b": 5}), (("1", True), {})],
)
def test_positional_binding_matches_inspect_bind(args: tuple[Any, ...], kwargs: Any) -> None:
    signature = Signature(typed_pair)
    got = signature.dump_arguments(args, kwargs)
    bound = inspect.signature(typed_pair).bind(*args, **kwargs)
    assert got == ([int(a) for a in bound.args], {k: int(v) for k, v in bound.kwargs.items()})
    assert signature.load_arguments(*got) == got


@pytest.mark.parametrize("args", [(), (1, 2, 3)])
def test_positional_binding_refuses_what_bind_refuses(args: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        Signature(typed_pair).dump_arguments(args, {})


def test_stopper_wakes_a_poll_and_closes_once() -> None:
    stopper = Stopper()
    poller = select.poll()
    poller.register(stopper.fd, select.POLLIN)
    assert poller.poll(0) == [] and not stopper.requested
    stopper.set()
    stopper.set()
    assert stopper.requested and poller.poll(1000) == [(stopper.fd, select.POLLIN)]
    stopper.close()
    stopper.close()
    stopper.set()  # after close: no write into a closed (maybe reused) fd


def test_map_iterator_deadline_stops_the_feeder() -> None:
    ended: list[Feeder] = []
    feeder = Feeder(3, ended.append)
    feeder.results.put(7)
    it = MapIterator(feeder, time.monotonic() + 0.05, 0.05)
    assert next(it) == 7  # a result already there is given even near the deadline
    with pytest.raises(cf.TimeoutError, match="within 0.05 s"):
        next(it)
    assert feeder.stopper.requested
    with pytest.raises(StopIteration):
        next(it)
    feeder.stopper.close()
