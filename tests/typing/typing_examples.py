"""What a user's type checker infers from tarnish_py: checked by ``mypy --strict``
in tests/test_typing.py, never run. Each ``assert_type`` is an example a user
relies on; a wrong inference fails the check."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator

from typing_extensions import assert_type

from tarnish_py import IsolatedExecutor, Process, ProcessPool, Task, TaskError, WorkerCrashed, task


class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x


class Digits(Task[str, list[int]]):
    def run(self, text: str) -> list[int]:
        return [int(c) for c in text]


@task("typing-scale")
def scale(x: float, factor: float = 2.0) -> float:
    return x * factor


def process_calls() -> None:
    p = Process(Double)
    assert_type(p, Process[int, int])
    assert_type(p.call(1), int)
    assert_type(p.call(1, timeout=0.5), int)
    assert_type(p.submit(1), cf.Future[int])
    assert_type(p.pid, int | None)
    assert_type(p.is_running(), bool)
    assert_type(Process(Digits).call("123"), list[int])


def context_manager_keeps_the_type() -> None:
    with Process(Double) as p:
        assert_type(p, Process[int, int])
    with ProcessPool(Digits, size=2) as pool:
        assert_type(pool, ProcessPool[str, list[int]])


async def async_calls() -> None:
    p = Process(Double)
    assert_type(await p.acall(1), int)
    assert_type(await ProcessPool(Digits).acall("1"), list[int])


def pool_calls() -> None:
    pool = ProcessPool(Double, size=2)
    assert_type(pool.call(1), int)
    assert_type(pool.submit(1), cf.Future[int])
    assert_type(pool.map(range(3)), Iterator[int])
    assert_type(pool.map(range(3), ordered=False), Iterator[int])
    assert_type(pool.map(range(3), return_exceptions=True), Iterator[int | BaseException])
    assert_type(pool.size, int)


async def decorated_function() -> None:
    assert_type(scale(1.5), float)
    assert_type(scale(1.5, factor=3.0), float)
    assert_type(scale.submit(1.5), cf.Future[float])
    assert_type(await scale.acall(1.5), float)


def parse(blob: bytes, *, strict: bool = False) -> list[str]:
    return blob.decode().split()


async def executor_calls() -> None:
    import asyncio

    with IsolatedExecutor(max_workers=2, timeout=60) as ex:
        assert_type(ex, IsolatedExecutor)
        assert_type(ex.submit(parse, b"a b"), cf.Future[list[str]])
        assert_type(ex.submit(parse, b"a b", strict=True), cf.Future[list[str]])
        assert_type(ex.map(parse, [b"a"], timeout=5.0), Iterator[list[str]])
        assert_type(ex.submit(scale, 1.5), cf.Future[float])
        loop = asyncio.get_running_loop()
        assert_type(await loop.run_in_executor(ex, parse, b"a"), list[str])


def return_exceptions_from_a_variable(flag: bool) -> None:
    # A plain bool (not a literal) is accepted: the items may then be exceptions.
    pool = ProcessPool(Double, size=2)
    assert_type(pool.map(range(3), return_exceptions=flag), Iterator[int | BaseException])
    assert_type(
        pool.map(range(3), ordered=False, return_exceptions=flag, timeout=1.0),
        Iterator[int | BaseException],
    )
    assert_type(pool.map(range(3), return_exceptions=False), Iterator[int])
    assert_type(scale.map([1.0, 2.0]), Iterator[float])
    assert_type(scale.map([1.0], return_exceptions=True), Iterator[float | BaseException])
    assert_type(scale.map([1.0], return_exceptions=flag), Iterator[float | BaseException])


def errors_carry_their_call(error: WorkerCrashed, failed: TaskError) -> None:
    assert_type(error.pid, int | None)
    assert_type(error.signal, str | None)
    assert_type(error.stderr, str)
    assert_type(failed.pid, int | None)
    assert_type(failed.type_name, str)
    print(error.input, failed.input)  # Any: the task's In, after validation
