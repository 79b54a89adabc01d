"""The keywords every handle takes are checked when given: Process and ProcessPool
at construction, @task at decoration — before any worker starts. A wrong type is a
TypeError, a wrong value a ValueError. (No process is started by these tests.)"""

from __future__ import annotations

from typing import Any

import pytest

from tarnish_py import Process, ProcessPool, Task, task
from tarnish_py._settings import check_call_timeout


class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x


BAD = [
    # (keyword, value, error)
    ("timeout", "Foo", TypeError),
    ("timeout", True, TypeError),
    ("timeout", [1], TypeError),
    ("timeout", 0, ValueError),
    ("timeout", -1.5, ValueError),
    ("timeout", float("nan"), ValueError),
    ("shutdown_timeout", None, TypeError),
    ("shutdown_timeout", "5", TypeError),
    ("shutdown_timeout", 0.0, ValueError),
    ("spawn_timeout", None, TypeError),
    ("spawn_timeout", -60, ValueError),
    ("max_message_bytes", 1.5, TypeError),
    ("max_message_bytes", "1MiB", TypeError),
    ("max_message_bytes", False, TypeError),
    ("max_message_bytes", 0, ValueError),
    ("max_message_bytes", -1, ValueError),
]
IDS = [f"{keyword}={value!r}" for keyword, value, _ in BAD]


@pytest.mark.parametrize(("keyword", "value", "error"), BAD, ids=IDS)
def test_process_refuses_a_bad_keyword(keyword: str, value: Any, error: type) -> None:
    with pytest.raises(error, match=keyword):
        Process(Double, **{keyword: value})


@pytest.mark.parametrize(("keyword", "value", "error"), BAD, ids=IDS)
def test_process_pool_refuses_a_bad_keyword(keyword: str, value: Any, error: type) -> None:
    with pytest.raises(error, match=keyword):
        ProcessPool(Double, size=2, **{keyword: value})


@pytest.mark.parametrize(("keyword", "value", "error"), BAD, ids=IDS)
def test_task_refuses_a_bad_keyword_at_decoration(keyword: str, value: Any, error: type) -> None:
    with pytest.raises(error, match=keyword):
        task(f"bad-{keyword}", **{keyword: value})


@pytest.mark.parametrize(
    ("value", "error"),
    [("soon", TypeError), (True, TypeError), (0, ValueError), (-1, ValueError),
     (float("nan"), ValueError)],
)
def test_a_per_call_timeout_is_checked(value: Any, error: type) -> None:
    with pytest.raises(error, match="timeout"):
        check_call_timeout(value)


@pytest.mark.parametrize("value", [None, 0.001, 1, 2.5, float("inf")])
def test_a_valid_per_call_timeout_passes(value: Any) -> None:
    check_call_timeout(value)
