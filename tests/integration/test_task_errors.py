"""Errors that leave the worker alive: run() raising, an invalid output, an invalid
input (caught in the caller before anything is sent), and setup()."""

from __future__ import annotations

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

# A task that counts its calls; a negative input raises (after counting) the
# error named by its absolute value, a zero returns a value that is not an int.
COUNTER = """
class FrobnicateError(Exception):
    pass


def raise_value_error():
    raise ValueError("bad input 42")


def raise_custom_error():
    raise FrobnicateError("gears jammed")


def lookup_missing_key():
    return {}["missing"]


def divide_by_zero():
    return 1 / 0


def recurse_forever(n=0):
    return recurse_forever(n + 1)


FAILURES = [raise_value_error, raise_custom_error, lookup_missing_key, divide_by_zero,
            recurse_forever]


class Counter(Task[int, int]):
    def setup(self) -> None:
        self.setups = getattr(self, "setups", 0) + 1
        self.calls = 0

    def run(self, x: int) -> int:
        self.calls += 1
        if x < 0:
            FAILURES[-x - 1]()
        if x == 0:
            return "not an int"
        return self.calls * 1000 + self.setups
"""

ERRORS = [
    pytest.param(1, "ValueError", "bad input 42", "raise_value_error", id="ValueError"),
    pytest.param(2, "FrobnicateError", "gears jammed", "raise_custom_error", id="custom"),
    pytest.param(3, "KeyError", "'missing'", "lookup_missing_key", id="KeyError"),
    pytest.param(4, "ZeroDivisionError", "division by zero", "divide_by_zero", id="ZeroDivision"),
    pytest.param(5, "RecursionError", "maximum recursion depth", "recurse_forever", id="Recursion"),
]


def run_counter(run_script, body: str):
    return records(
        run_script(
            program(
                COUNTER
                + body
                + """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""
            ),
            timeout=60,
        )
    )


@pytest.mark.parametrize(("which", "type_name", "message", "function"), ERRORS)
def test_run_raising_is_a_task_error_and_the_worker_keeps_its_state(
    run_script, which: int, type_name: str, message: str, function: str
) -> None:
    first, error, after = run_counter(
        run_script,
        f"""
def parent():
    with Process(Counter) as p:
        emit(value=p.call(1), pid=p.pid)
        try:
            p.call(-{which})
        except TaskError as e:
            emit(type_name=e.type_name, message=e.message, traceback=e.traceback,
                 is_tarnish=isinstance(e, TarnishError), pid=p.pid)
        emit(value=p.call(1), pid=p.pid)
""",
    )
    assert error["is_tarnish"]
    assert error["type_name"].rsplit(".", 1)[-1] == type_name
    assert message in error["message"]
    tb = error["traceback"]
    assert function in tb, tb
    assert type_name in tb and "Traceback" in tb
    assert len(tb) < 100_000  # a deep recursion's traceback is cut, not megabytes long
    # Same worker, same instance: the failed call was counted.
    assert first["pid"] == error["pid"] == after["pid"]
    assert first["value"] == 1 * 1000 + 1
    assert after["value"] == 3 * 1000 + 1


def test_uncaught_task_error_shows_the_worker_traceback(run_script) -> None:
    result = run_script(
        program(
            COUNTER
            + """
def parent():
    with Process(Counter) as p:
        p.call(-2)

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
        ),
        timeout=60,
    )
    assert result.returncode == 1, str(result)
    assert "raise_custom_error" in result.stderr, str(result)
    assert "gears jammed" in result.stderr
    assert "TaskError" in result.stderr


@pytest.mark.parametrize(
    "bad_input",
    [
        pytest.param("'forty-two'", id="str"),
        pytest.param("[1, 2]", id="list"),
        pytest.param("None", id="None"),
        pytest.param("1.5", id="fraction"),
    ],
)
def test_invalid_input_is_refused_in_the_caller(run_script, bad_input: str) -> None:
    first, refused, after = run_counter(
        run_script,
        f"""
def parent():
    with Process(Counter) as p:
        emit(value=p.call(1), pid=p.pid)
        try:
            p.call({bad_input})
        except pydantic.ValidationError as e:
            emit(refused=True, errors=e.error_count(), pid=p.pid)
        emit(value=p.call(1), pid=p.pid)
""",
    )
    assert refused["refused"] and refused["errors"] >= 1
    assert first["pid"] == refused["pid"] == after["pid"]
    # Nothing reached the worker: its call counter went from 1 to 2.
    assert after["value"] == 2 * 1000 + 1


def test_invalid_output_is_a_task_error_and_the_worker_lives(run_script) -> None:
    first, error, after = run_counter(
        run_script,
        """
def parent():
    with Process(Counter) as p:
        emit(value=p.call(1), pid=p.pid)
        try:
            p.call(0)
        except TaskError as e:
            emit(type_name=e.type_name, message=e.message, text=str(e), pid=p.pid)
        emit(value=p.call(1), pid=p.pid, running=p.is_running())
""",
    )
    assert "ValidationError" in error["type_name"], error
    assert "int" in error["message"] and "not an int" in error["message"], error
    assert first["pid"] == error["pid"] == after["pid"]
    assert after["running"] is True
    assert after["value"] == 3 * 1000 + 1


def test_setup_runs_once_before_the_first_call(run_script) -> None:
    result = run_script(
        program(
            """
class Prepared(Task[int, list]):
    def setup(self) -> None:
        self.log = getattr(self, "log", []) + ["setup"]

    def run(self, x: int) -> list:
        self.log.append(f"run {x}")
        return self.log

def parent():
    with Process(Prepared) as p:
        for x in range(3):
            emit(log=p.call(x))

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
        ),
        timeout=60,
    )
    logs = [r["log"] for r in records(result)]
    assert logs[-1] == ["setup", "run 0", "run 1", "run 2"]
    assert logs[0] == ["setup", "run 0"]


def test_custom_exception_from_an_importable_module_is_named(run_script) -> None:
    result = run_script(
        program(
            """
from failing_tasks import Grumpy

def parent():
    with Process(Grumpy) as p:
        try:
            p.call("please")
        except TaskError as e:
            emit(type_name=e.type_name, message=e.message, traceback=e.traceback)

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
        ),
        files={
            "failing_tasks.py": """
                from tarnish_py import Task

                class GrumpyError(RuntimeError):
                    pass

                def complain(word):
                    raise GrumpyError(f"will not {word}")

                class Grumpy(Task[str, str]):
                    def run(self, word: str) -> str:
                        complain(word)
                        return word
            """
        },
        timeout=60,
    )
    (error,) = records(result)
    assert error["type_name"].rsplit(".", 1)[-1] == "GrumpyError"
    assert error["message"] == "will not please"
    assert "complain" in error["traceback"] and "failing_tasks.py" in error["traceback"]
