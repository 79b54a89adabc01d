"""@task end to end: a decorated function runs in its own worker, with validated
arguments and result, the usual errors, and the Future, asyncio and map forms;
both from ``__main__`` through ``main()`` and from an importable module without it."""

from __future__ import annotations

import pytest

from ._programs import PRELUDE, no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

MAIN_PROGRAM = """
import asyncio, concurrent.futures as cf
from tarnish_py import task


@task("scale")
def scale(x: float, factor: float = 2.0) -> float:
    return x * factor


@task("join")
def join(first: str, /, second: str = "b", *, sep: str = "-") -> str:
    return first + sep + second


@task("pid")
def worker_pid() -> int:
    return os.getpid()


@task("bad-return")
def bad_return() -> int:
    return "abc"  # type: ignore[return-value]


@task("crash")
def crash(how: str) -> int:
    if how == "segfault":
        segfault()
    if how == "raise":
        raise KeyError(how)
    return os.getpid()


@task("slow", timeout=0.5)
def slow(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


# A second function under a label already taken: refused when it is decorated.
try:
    @task("scale")
    def scale_again(x: float) -> float:
        return x
except ValueError as e:
    DUPLICATE = str(e)
else:
    DUPLICATE = None


def outcome(fn, *args, **kwargs):
    try:
        return dict(value=fn(*args, **kwargs))
    except BaseException as e:
        return dict(error=type(e).__name__, text=str(e)[:300])


def describe(value):
    return type(value).__name__ if isinstance(value, BaseException) else value
"""


def run_main(run_script, body: str) -> dict:
    ending = "\n\nif __name__ == '__main__':\n    tarnish_py.main(parent)\n"
    source = program(MAIN_PROGRAM + body + ending)
    (record,) = records(run_script(source, timeout=60))
    return record


def test_calls_run_in_a_worker_with_validated_arguments(run_script) -> None:
    rec = run_main(
        run_script,
        """
def parent():
    first_pid = worker_pid()
    emit(
        parent_pid=os.getpid(), first_pid=first_pid, second_pid=worker_pid(),
        positional=scale(1.5), both=scale(1.5, 3.0), keywords=scale(x=1.5, factor=4),
        mixed=scale(2, factor=0.5), join_default=join("a"), join_all=join("a", "c", sep="+"),
        scale_pid_differs=crash("ok") not in (os.getpid(), first_pid),
        invalid=outcome(scale, "not a number"),
        invalid_keyword=outcome(scale, 1.0, factor=[1]),
        bad_return=outcome(bad_return),
        pid_after_invalid=worker_pid(),
        still_scales=scale(1.5),
        duplicate=DUPLICATE,
    )
""",
    )
    assert rec["first_pid"] != rec["parent_pid"]
    assert rec["second_pid"] == rec["first_pid"]  # the label keeps its worker
    assert rec["scale_pid_differs"]  # each label has a worker of its own
    assert (rec["positional"], rec["both"], rec["keywords"], rec["mixed"]) == (3.0, 4.5, 6.0, 1.0)
    assert (rec["join_default"], rec["join_all"]) == ("a-b", "a+c")
    assert rec["invalid"]["error"] == "ValidationError"
    assert rec["invalid_keyword"]["error"] == "ValidationError"
    assert rec["bad_return"]["error"] == "TaskError"
    assert "valid integer" in rec["bad_return"]["text"]
    assert rec["pid_after_invalid"] == rec["first_pid"]
    assert rec["still_scales"] == 3.0
    assert rec["duplicate"] is not None and "'scale'" in rec["duplicate"]


def test_invalid_arguments_are_refused_before_sending(run_script) -> None:
    rec = run_main(
        run_script,
        """
@task("count")
def count(x: int) -> int:
    # How many calls this worker has run, this one included.
    global CALLS
    CALLS = globals().get("CALLS", 0) + 1
    return CALLS


def parent():
    first = count(1)
    invalid = outcome(count, "abc")
    emit(first=first, invalid=invalid["error"], second=count(2))
""",
    )
    assert rec == {"first": 1, "invalid": "ValidationError", "second": 2}


def test_errors_crash_and_timeout(run_script) -> None:
    rec = run_main(
        run_script,
        """
def parent():
    before = crash("ok")
    raised = outcome(crash, "raise")
    after_raise = crash("ok")
    crashed = outcome(crash, "segfault")
    after_crash = crash("ok")
    slow_pid = slow(0.0)
    t0 = time.monotonic()
    try:
        slow(10.0)
        timed_out = None
    except TaskTimeout as e:
        timed_out = dict(is_timeout_error=isinstance(e, TimeoutError))
    timeout_time = time.monotonic() - t0
    emit(before=before, raised=raised["error"], after_raise=after_raise,
         crashed=crashed, after_crash=after_crash, slow_pid=slow_pid,
         timed_out=timed_out, timeout_time=timeout_time, slow_dead=wait_dead(slow_pid),
         after_timeout=slow(0.0))
""",
    )
    assert rec["raised"] == "TaskError"
    assert rec["after_raise"] == rec["before"]
    assert rec["crashed"]["error"] == "WorkerCrashed"
    assert "SIGSEGV" in rec["crashed"]["text"]
    assert rec["after_crash"] not in (rec["before"], None)
    assert rec["timed_out"] == {"is_timeout_error": True}
    assert 0.4 <= rec["timeout_time"] < 3.0
    assert rec["slow_dead"]
    assert rec["after_timeout"] != rec["slow_pid"]


def test_submit_acall_and_map(run_script) -> None:
    rec = run_main(
        run_script,
        """
async def gather_scaled():
    return await asyncio.gather(*[scale.acall(float(i)) for i in range(5)])


def parent():
    future = scale.submit(1.5, factor=3.0)
    is_future = isinstance(future, cf.Future)
    submitted = future.result(timeout=30)
    awaited = asyncio.run(scale.acall(2.0, factor=3.0))
    gathered = asyncio.run(gather_scaled())
    mapped = list(scale.map([1, 2, 3, 4, 5], size=2))
    mapped_pairs = list(scale.map([1, 2, 3], [10, 20, 30], size=2))
    map_pids = set(crash.map(["ok"] * 6, size=2))
    with_exceptions = [describe(v) for v in crash.map(
        ["ok", "segfault", "raise", 7, "ok"], size=2, return_exceptions=True)]
    try:
        list(crash.map(["ok", "raise", "ok"], size=2))
        first_failure = None
    except TaskError as e:
        first_failure = e.type_name
    emit(is_future=is_future, submitted=submitted, awaited=awaited, gathered=gathered,
         mapped=mapped, mapped_pairs=mapped_pairs, map_pids=len(map_pids),
         with_exceptions=with_exceptions, first_failure=first_failure)
""",
    )
    assert rec["is_future"] and rec["submitted"] == 4.5
    assert rec["awaited"] == 6.0
    assert rec["gathered"] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert rec["mapped"] == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert rec["mapped_pairs"] == [10.0, 40.0, 90.0]
    assert rec["map_pids"] == 2
    kinds = rec["with_exceptions"]
    assert kinds[1:4] == ["WorkerCrashed", "TaskError", "ValidationError"]
    assert isinstance(kinds[0], int) and isinstance(kinds[4], int)
    assert rec["first_failure"] == "KeyError"


MODULE = PRELUDE + """

from tarnish_py import task


@task("triple")
def triple(x: int, plus: int = 0) -> int:
    return 3 * x + plus


@task("where")
def where() -> int:
    return os.getpid()


@task("mod-crash")
def mod_crash(how: str) -> int:
    if how == "segfault":
        segfault()
    return os.getpid()
"""

# No tarnish_py.main(): the functions live in an importable module.
USER = """
import asyncio, json, os
import mytasks

first = mytasks.where()
crash = mytasks.mod_crash.map(["ok", "segfault", "ok"], size=2, return_exceptions=True)
crash = [type(v).__name__ if isinstance(v, BaseException) else "ok" for v in crash]
try:
    mytasks.mod_crash("segfault")
    crashed = None
except mytasks.WorkerCrashed as e:
    crashed = e.signal
print(json.dumps(dict(
    parent=os.getpid(), first=first, second=mytasks.where(),
    triple=mytasks.triple(2), triple_kw=mytasks.triple(x=2, plus=1),
    submitted=mytasks.triple.submit(4).result(timeout=30),
    awaited=asyncio.run(mytasks.triple.acall(5, plus=2)),
    mapped=list(mytasks.triple.map([1, 2, 3], size=2)),
    crash=crash, crashed=crashed, after_crash=mytasks.mod_crash("ok"),
)), flush=True)
"""


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_importable_module_without_main(run_script, how: str) -> None:
    kwargs: dict = {"files": {"mytasks.py": MODULE}, "timeout": 60}
    if how == "stdin":
        kwargs.update(python_args=["-"], stdin=USER)
    (rec,) = records(run_script(USER, **kwargs))
    assert rec["first"] != rec["parent"]
    assert rec["second"] == rec["first"]
    assert (rec["triple"], rec["triple_kw"], rec["submitted"], rec["awaited"]) == (6, 7, 12, 17)
    assert rec["mapped"] == [3, 6, 9]
    assert rec["crash"] == ["ok", "WorkerCrashed", "ok"]
    assert rec["crashed"] == "SIGSEGV"
    assert rec["after_crash"] not in (rec["parent"], rec["first"])
