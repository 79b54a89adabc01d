"""IsolatedExecutor end to end: CPython's own executor tests
(Lib/test/test_concurrent_futures/: test_executor, test_process_pool,
test_shutdown, test_wait, test_as_completed) ported to it, each case naming the
test it came from, plus what only an isolating executor does: a crash fails one
Future, functions travel by reference, arguments are validated.

The CPython tests wait with sleeps (``time.sleep(1.5)`` must finish after an
instant call); here a call that must still be running blocks on a *gate* file
that the program opens when it is done asserting, so no case depends on timing.
"""

from __future__ import annotations

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

# Functions at the top level of the program (module __main__, served through
# main()) and the fixtures of CPython's test_concurrent_futures/util.py.
FUNCTIONS = """
import asyncio, concurrent.futures as cf, gc, itertools, logging, threading
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from concurrent.futures._base import (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED,
                                      PENDING, RUNNING)
from concurrent.futures.process import BrokenProcessPool
from tarnish_py import IsolatedExecutor


def create_future(state=PENDING, exception=None, result=None):
    f = cf.Future()
    f._state = state
    f._exception = exception
    f._result = result
    return f


PENDING_FUTURE = create_future(state=PENDING)
RUNNING_FUTURE = create_future(state=RUNNING)
CANCELLED_FUTURE = create_future(state=CANCELLED)
CANCELLED_AND_NOTIFIED_FUTURE = create_future(state=CANCELLED_AND_NOTIFIED)
EXCEPTION_FUTURE = create_future(state=FINISHED, exception=OSError())
SUCCESSFUL_FUTURE = create_future(state=FINISHED, result=42)


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def raise_runtime_error():
    raise RuntimeError(123)  # some comment


def block(gate):
    # Blocks until the file <gate> exists (bounded), then returns the worker's pid.
    deadline = time.monotonic() + 30
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.005)
    return os.getpid()


def block_and_announce(gate):
    with open(gate + ".pid.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(gate + ".pid.tmp", gate + ".pid")
    return block(gate)


def block_then_raise(gate):
    block(gate)
    raise ValueError("after the gate")


def sleep_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def value_or_crash(x):
    if x == 3:
        segfault()
    return x * 10


def open_gate(gate):
    open(gate, "w").close()


def announced_pid(gate, within=10.0):
    deadline = time.monotonic() + within
    while not os.path.exists(gate + ".pid"):
        assert time.monotonic() < deadline, f"{gate} never started"
        time.sleep(0.01)
    with open(gate + ".pid") as f:
        return int(f.read())


def describe(value):
    if isinstance(value, BaseException):
        return type(value).__name__
    return value


def outcome(call, /, *args, **kwargs):
    try:
        return dict(value=call(*args, **kwargs))
    except BaseException as e:
        return dict(error=type(e).__name__, text=str(e)[:400])


def names(done, named):
    # The names (in `named`) of the futures in the set `done`.
    return sorted(name for name, f in named.items() if f in done)
"""


def run_main(run_script, body: str, files: dict[str, str] | None = None) -> dict:
    ending = "\n\nif __name__ == '__main__':\n    tarnish_py.main(parent)\n"
    source = program(FUNCTIONS + body + ending)
    records_ = records(run_script(source, timeout=90, files=files))
    merged: dict = {}
    for rec in records_:
        merged.update(rec)
    return merged


def test_cpython_executor_submit_map_wait_as_completed(run_script) -> None:
    rec = run_main(
        run_script,
        """
def parent():
    ex = IsolatedExecutor(max_workers=2)

    # test_executor.ExecutorTest.test_submit
    emit(submit=ex.submit(pow, 2, 8).result(10))
    # test_executor.ExecutorTest.test_submit_keyword
    emit(keyword=ex.submit(mul, 2, y=8).result(10),
         capture=ex.submit(capture, 1, self=2, fn=3).result(10),
         bad_keywords=[outcome(ex.submit, fn=capture, arg=1)["error"],
                       outcome(ex.submit, arg=1)["error"]])
    # test_executor.ExecutorTest.test_map, and test_process_pool's test_map_chunksize
    emit(map=list(ex.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10))),
         map_chunks=[list(ex.map(pow, range(40), range(40), chunksize=n))
                     == list(map(pow, range(40), range(40))) for n in (3, 6, 40, 50)],
         map_bad_chunksize=outcome(ex.map, pow, range(40), range(40), chunksize=-1)["error"])
    # test_executor.ExecutorTest.test_map_exception
    i = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    first = [next(i), next(i)]
    third = outcome(next, i)
    emit(map_exception=dict(first=first, third=third["error"], text=third["text"]))
    # test_executor.ExecutorTest.test_map_timeout: the deadline is for the whole
    # iteration. Four 0.6 s calls on two workers end at ~0.6 s and ~1.2 s: each
    # within 1 s of its own wait, but not all within 1 s of the start.
    results = []
    try:
        for r in ex.map(time.sleep, [0.6] * 4, timeout=1.0):
            results.append(r)
        timed_out = False
    except TimeoutError:
        timed_out = True
    emit(map_timeout=dict(timed_out=timed_out, got=len(results)))
    # test_process_pool.ProcessPoolExecutorTest.test_traceback
    error = ex.submit(raise_runtime_error).exception(10)
    emit(traceback=dict(type=type(error).__name__, type_name=error.type_name,
                        message=error.message,
                        line="raise RuntimeError(123)  # some comment" in error.traceback))
    # test_process_pool.ProcessPoolExecutorTest.test_idle_process_reuse_one
    with IsolatedExecutor(max_workers=1) as one:
        emit(reuse=len({one.submit(os.getpid).result(10) for _ in range(3)}))

    # test_wait.WaitTests.test_20369
    future = ex.submit(sleep_pid, 0.2)
    done, not_done = cf.wait([future, future], return_when=ALL_COMPLETED, timeout=20)
    emit(wait_20369=[done == {future}, not_done == set()])

    # test_wait.WaitTests.test_first_completed
    f1 = ex.submit(mul, 21, 2)
    f2 = ex.submit(block, "g1")
    named = dict(cancelled=CANCELLED_FUTURE, f1=f1, f2=f2)
    done, not_done = cf.wait(list(named.values()), return_when=FIRST_COMPLETED, timeout=20)
    emit(first_completed=[names(done, named), names(not_done, named)])
    # test_wait.WaitTests.test_first_completed_some_already_completed
    named = dict(cancelled_notified=CANCELLED_AND_NOTIFIED_FUTURE,
                 successful=SUCCESSFUL_FUTURE, f2=f2)
    done, not_done = cf.wait(list(named.values()), return_when=FIRST_COMPLETED, timeout=20)
    emit(first_completed_some=[names(done, named), names(not_done, named)])
    # test_wait.WaitTests.test_timeout
    named = dict(cancelled_notified=CANCELLED_AND_NOTIFIED_FUTURE, exception=EXCEPTION_FUTURE,
                 successful=SUCCESSFUL_FUTURE, f2=f2)
    done, not_done = cf.wait(list(named.values()), timeout=0.05, return_when=ALL_COMPLETED)
    emit(wait_timeout=[names(done, named), names(not_done, named)])
    # test_wait.WaitTests.test_first_exception_one_already_failed
    named = dict(exception=EXCEPTION_FUTURE, f2=f2)
    done, not_done = cf.wait(list(named.values()), return_when=FIRST_EXCEPTION, timeout=20)
    emit(first_exception_one_failed=[names(done, named), names(not_done, named)])

    # test_as_completed.AsCompletedTests.test_zero_timeout
    completed, timed_out = set(), False
    named = dict(cancelled_notified=CANCELLED_AND_NOTIFIED_FUTURE, exception=EXCEPTION_FUTURE,
                 successful=SUCCESSFUL_FUTURE, f2=f2)
    try:
        for f in cf.as_completed(list(named.values()), timeout=0):
            completed.add(f)
    except TimeoutError:
        timed_out = True
    emit(as_completed_zero_timeout=[timed_out, names(completed, named)])
    # test_as_completed.AsCompletedTests.test_correct_timeout_exception_msg
    try:
        list(cf.as_completed([CANCELLED_AND_NOTIFIED_FUTURE, PENDING_FUTURE, f2,
                              SUCCESSFUL_FUTURE], timeout=0))
        message = None
    except TimeoutError as e:
        message = str(e)
    emit(as_completed_message=message)
    open_gate("g1")
    emit(gated_result=isinstance(f2.result(20), int))

    # test_wait.WaitTests.test_first_exception (the raising call waits for a gate
    # that opens once the quick one is done, instead of sleeping 1.5 s)
    f1 = ex.submit(mul, 2, 21)
    f2 = ex.submit(block_then_raise, "g2")
    f3 = ex.submit(block, "g3")
    f1.result(20)
    open_gate("g2")
    named = dict(f1=f1, f2=f2, f3=f3)
    done, not_done = cf.wait([f1, f2, f3], return_when=FIRST_EXCEPTION, timeout=20)
    emit(first_exception=[names(done, named), names(not_done, named)])
    # test_wait.WaitTests.test_first_exception_some_already_complete
    f1 = ex.submit(divmod, 21, 0)
    named = dict(successful=SUCCESSFUL_FUTURE, cancelled=CANCELLED_FUTURE,
                 cancelled_notified=CANCELLED_AND_NOTIFIED_FUTURE, f1=f1, f3=f3)
    done, not_done = cf.wait(list(named.values()), return_when=FIRST_EXCEPTION, timeout=20)
    emit(first_exception_some=[names(done, named), names(not_done, named)])
    open_gate("g3")
    # test_wait.WaitTests.test_all_completed
    f1 = ex.submit(divmod, 2, 0)
    f2 = ex.submit(mul, 2, 21)
    named = dict(successful=SUCCESSFUL_FUTURE, cancelled_notified=CANCELLED_AND_NOTIFIED_FUTURE,
                 exception=EXCEPTION_FUTURE, f1=f1, f2=f2)
    done, not_done = cf.wait(list(named.values()), return_when=ALL_COMPLETED, timeout=20)
    emit(all_completed=[names(done, named), names(not_done, named)])

    # test_as_completed.AsCompletedTests.test_no_timeout
    f1 = ex.submit(mul, 2, 21)
    f2 = ex.submit(mul, 7, 6)
    named = dict(cancelled_notified=CANCELLED_AND_NOTIFIED_FUTURE, exception=EXCEPTION_FUTURE,
                 successful=SUCCESSFUL_FUTURE, f1=f1, f2=f2)
    emit(as_completed=names(set(cf.as_completed(list(named.values()), timeout=20)), named),
         as_completed_values=[f1.result(), f2.result()])
    # test_as_completed.AsCompletedTests.test_duplicate_futures
    f1 = ex.submit(sleep_pid, 0.2)
    emit(as_completed_duplicates=len(list(cf.as_completed(itertools.repeat(f1, 3), timeout=20))))

    # Done callbacks (test_future.FutureTests.test_done_callback_with_result,
    # _with_exception, _with_cancel, _raises, _already_successful), on this
    # executor's futures.
    seen = []
    lock = threading.Lock()
    def note(tag):
        def callback(f):
            with lock:
                seen.append((tag, "cancelled" if f.cancelled() else
                             describe(f.exception()) if f.exception() else f.result()))
        return callback
    def raises(f):
        raise ValueError("from a callback")
    def exits(f):
        raise SystemExit("from a callback")
    logging.getLogger("concurrent.futures").disabled = True  # the two raisers are logged
    ok = ex.submit(mul, 6, 7)
    ok.add_done_callback(note("result"))
    ok.add_done_callback(raises)  # logged, the next callbacks still run
    ok.add_done_callback(exits)  # ends this future's callbacks, harms nothing else
    failed = ex.submit(divmod, 1, 0)
    failed.add_done_callback(note("exception"))
    g4 = [ex.submit(block, "g4") for _ in range(2)]  # both workers busy:
    queued = ex.submit(mul, 1, 1)                    # this one waits in the queue
    queued.add_done_callback(note("cancel"))
    cancel_result = queued.cancel()
    ok.result(20), failed.exception(20)
    open_gate("g4")
    cf.wait(g4, timeout=20)
    done_already = []
    ok.add_done_callback(lambda f: done_already.append(f.result()))
    emit(callbacks=sorted(seen), cancel_result=cancel_result, queued_cancelled=queued.cancelled(),
         done_already=done_already, usable_after=ex.submit(mul, 3, 3).result(10))
    ex.shutdown()
""",
    )
    assert rec["submit"] == 256
    assert rec["keyword"] == 16
    assert rec["capture"] == [[1], {"self": 2, "fn": 3}]
    assert rec["bad_keywords"] == ["TypeError", "TypeError"]
    assert rec["map"] is True and rec["map_chunks"] == [True] * 4
    assert rec["map_bad_chunksize"] == "ValueError"
    assert rec["map_exception"]["first"] == [[0, 1], [0, 1]]
    assert rec["map_exception"]["third"] == "TaskError"
    assert "ZeroDivisionError" in rec["map_exception"]["text"]
    assert rec["map_timeout"]["timed_out"] is True and rec["map_timeout"]["got"] < 4
    assert rec["traceback"] == {
        "type": "TaskError",
        "type_name": "RuntimeError",
        "message": "123",
        "line": True,
    }
    assert rec["reuse"] == 1
    assert rec["wait_20369"] == [True, True]
    assert rec["first_completed"] == [["f1"], ["cancelled", "f2"]]
    assert rec["first_completed_some"] == [["cancelled_notified", "successful"], ["f2"]]
    assert rec["wait_timeout"] == [["cancelled_notified", "exception", "successful"], ["f2"]]
    assert rec["first_exception_one_failed"] == [["exception"], ["f2"]]
    assert rec["as_completed_zero_timeout"] == [
        True,
        ["cancelled_notified", "exception", "successful"],
    ]
    assert rec["as_completed_message"] == "2 (of 4) futures unfinished"
    assert rec["gated_result"] is True
    assert rec["first_exception"] == [["f1", "f2"], ["f3"]]
    assert rec["first_exception_some"] == [["cancelled_notified", "f1", "successful"],
                                           ["cancelled", "f3"]]
    assert rec["all_completed"] == [
        ["cancelled_notified", "exception", "f1", "f2", "successful"],
        [],
    ]
    assert rec["as_completed"] == ["cancelled_notified", "exception", "f1", "f2", "successful"]
    assert rec["as_completed_values"] == [42, 42]
    assert rec["as_completed_duplicates"] == 1
    assert rec["callbacks"] == [["cancel", "cancelled"], ["exception", "TaskError"],
                                ["result", 42]]
    assert rec["cancel_result"] is True and rec["queued_cancelled"] is True
    assert rec["done_already"] == [42]
    assert rec["usable_after"] == 9


def test_cpython_shutdown(run_script) -> None:
    rec = run_main(
        run_script,
        """
def two_pids(ex):
    # Two calls that overlap land on the two free workers (never queued behind each other).
    return sorted({f.result(20) for f in [ex.submit(sleep_pid, 0.3) for _ in range(2)]})


def parent():
    # test_shutdown.ExecutorShutdownTest.test_hang_issue12364
    ex = IsolatedExecutor(max_workers=2)
    fs = [ex.submit(sleep_pid, 0.01) for _ in range(50)]
    ex.shutdown()
    emit(hang_12364=[f.done() and not f.cancelled() and f.exception() is None for f in fs]
         == [True] * 50)
    # test_shutdown.ExecutorShutdownTest.test_run_after_shutdown
    try:
        ex.submit(pow, 2, 5)
        after = dict(value="submitted")
    except RuntimeError as e:  # as the standard library raises it
        after = dict(error=type(e).__name__, text=str(e)[:400])
    emit(after_shutdown=after, twice=outcome(ex.shutdown))

    # test_shutdown.ExecutorShutdownTest.test_cancel_futures (wait=True: the
    # calls not cancelled are finished when shutdown returns)
    ex = IsolatedExecutor(max_workers=2)
    pids = two_pids(ex)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(30)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [f for f in fs if not f.cancelled()]
    emit(cancel_futures=dict(cancelled=len(cancelled),
                             others_done=[f.done() and f.exception() is None for f in others],
                             notified=len(cf.wait(cancelled, timeout=0).done),
                             workers_gone=[wait_dead(p) for p in pids]))

    # The same with wait=False: the two running calls finish after shutdown
    # returned (their gate opens later), the 28 queued ones are cancelled, and
    # the workers stop once the last call is done.
    ex = IsolatedExecutor(max_workers=2)
    pids = two_pids(ex)
    fs = [ex.submit(block, "g5") for _ in range(30)]
    ex.shutdown(wait=False, cancel_futures=True)
    states = [f.cancelled() for f in fs]
    alive_before = [not is_dead(p) for p in pids]
    open_gate("g5")
    emit(cancel_no_wait=dict(cancelled=sum(states), first_two=states[:2],
                             running_results=sorted(f.result(20) for f in fs[:2]) == pids,
                             alive_before=alive_before, workers_gone=[wait_dead(p) for p in pids]))

    # test_shutdown.ProcessPoolShutdownTest.test_shutdown_no_wait
    ex = IsolatedExecutor(max_workers=2)
    pids = two_pids(ex)
    res = ex.map(abs, range(-5, 5))
    ex.shutdown(wait=False)
    emit(no_wait=dict(results=list(res), workers_gone=[wait_dead(p) for p in pids],
                      submit=outcome(ex.submit, abs, 1)["error"]))

    # test_shutdown.ProcessPoolShutdownTest.test_context_manager_shutdown and
    # test_processes_terminate
    with IsolatedExecutor(max_workers=2) as ex:
        pids = two_pids(ex)
        results = list(ex.map(abs, range(-5, 5)))
    emit(context_manager=dict(results=results, workers_gone=[wait_dead(p) for p in pids]))

    # test_shutdown.ProcessPoolShutdownTest.test_del_shutdown
    ex = IsolatedExecutor(max_workers=2)
    pids = two_pids(ex)
    results = list(ex.map(abs, range(-5, 5)))
    del ex
    gc.collect()
    emit(del_shutdown=dict(results=results, workers_gone=[wait_dead(p) for p in pids]))

    # Ctrl-C leaving the with block waits for nothing (SPEC §4): queued calls are
    # cancelled and the running one's worker is killed.
    try:
        with IsolatedExecutor(max_workers=1) as ex:
            running = ex.submit(block_and_announce, "never")
            queued = ex.submit(block, "never")
            pid = announced_pid("never")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    emit(ctrl_c=dict(running=describe(running.exception(20)), queued=queued.cancelled(),
                     worker_gone=wait_dead(pid)))
""",
    )
    expected = [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert rec["hang_12364"] is True
    # ClosedError, which is a RuntimeError (caught as one in the program).
    assert rec["after_shutdown"]["error"] == "ClosedError"
    assert "after shutdown" in rec["after_shutdown"]["text"]
    assert rec["twice"] == {"value": None}
    cancel = rec["cancel_futures"]
    assert cancel["cancelled"] > 10  # CPython asks > 20 of 50 on 3 workers
    assert cancel["others_done"] == [True] * (30 - cancel["cancelled"])
    assert cancel["notified"] == cancel["cancelled"]
    assert cancel["workers_gone"] == [True, True]
    no_wait = rec["cancel_no_wait"]
    assert no_wait["cancelled"] == 28 and no_wait["first_two"] == [False, False]
    assert no_wait["running_results"] is True
    assert no_wait["alive_before"] == [True, True]
    assert no_wait["workers_gone"] == [True, True]
    assert rec["no_wait"] == {
        "results": expected,
        "workers_gone": [True, True],
        "submit": "ClosedError",
    }
    assert rec["context_manager"] == {"results": expected, "workers_gone": [True, True]}
    assert rec["del_shutdown"] == {"results": expected, "workers_gone": [True, True]}
    assert rec["ctrl_c"] == {"running": "ClosedError", "queued": True, "worker_gone": True}


def test_a_crash_fails_only_its_future(run_script) -> None:
    rec = run_main(
        run_script,
        """
async def in_loop(ex):
    loop = asyncio.get_running_loop()
    gathered = await asyncio.gather(*(loop.run_in_executor(ex, mul, i, 2) for i in range(6)))
    crashed = await asyncio.gather(loop.run_in_executor(ex, segfault), return_exceptions=True)
    # Cancelling the awaiting task cancels the executor's Future: its running call
    # is killed (and its worker replaced), unlike a thread's.
    try:
        await asyncio.wait_for(loop.run_in_executor(ex, block_and_announce, "g6"), 0.5)
        timed_out = False
    except asyncio.TimeoutError:
        timed_out = True
    return dict(gathered=gathered, crashed=[describe(e) for e in crashed], timed_out=timed_out)


def parent():
    ex = IsolatedExecutor(max_workers=2)
    # A segfault among many: that Future fails, the others are right.
    fs = [ex.submit(value_or_crash, i) for i in range(8)]
    done, _ = cf.wait(fs, timeout=30)
    outcomes = [describe(f.exception()) or f.result() for f in fs]
    crash = fs[3].exception()
    # test_process_pool.ProcessPoolExecutorTest.test_killed_child: a worker killed
    # from outside fails its call; later calls still run (no BrokenProcessPool).
    victim = ex.submit(block_and_announce, "g7")
    pid = announced_pid("g7")
    os.kill(pid, signal.SIGKILL)
    killed = victim.exception(20)
    others = [ex.submit(f, *a) for f, a in [(abort, ()), (exit_, (3,)), (sigkill, ()),
                                              (stack_overflow, ())]]
    # map raises the crash when its result is reached (test_executor's
    # test_map_exception, with a segfault for the exception)
    m = ex.map(value_or_crash, range(6))
    mapped = [next(m), next(m), next(m), describe(outcome(next, m).get("error"))]
    errors = [f.exception(60) for f in others]
    emit(outcomes=outcomes, all_done=len(done),
         crash=dict(type=type(crash).__name__, signal=crash.signal,
                    broken=isinstance(crash, BrokenProcessPool),
                    faulthandler="value_or_crash" in crash.stderr),
         killed=[type(killed).__name__, killed.signal],
         others=[(type(e).__name__, e.signal, e.exitcode) for e in errors],
         mapped=mapped,
         loop=asyncio.run(in_loop(ex)), cancelled_worker_dead=wait_dead(announced_pid("g6")))
    open_gate("g6")
    emit(later=ex.submit(pow, 2, 5).result(20), later_map=list(ex.map(mul, [1, 2], [3, 4])))
    ex.shutdown()

    # Timeouts kill the worker: TaskTimeout (a TimeoutError) for that Future only.
    with IsolatedExecutor(max_workers=1, timeout=0.5) as slow:
        first = slow.submit(os.getpid).result(20)
        stuck = slow.submit(block, "never").exception(20)
        emit(timeout=dict(type=type(stuck).__name__, is_timeout=isinstance(stuck, TimeoutError),
                          killed=wait_dead(first), next=slow.submit(mul, 2, 3).result(20)))
""",
    )
    assert rec["all_done"] == 8
    assert rec["outcomes"] == [0, 10, 20, "WorkerCrashed", 40, 50, 60, 70]
    assert rec["crash"] == {
        "type": "WorkerCrashed",
        "signal": "SIGSEGV",
        "broken": False,
        "faulthandler": True,
    }
    assert rec["killed"] == ["WorkerCrashed", "SIGKILL"]
    assert rec["others"] == [
        ["WorkerCrashed", "SIGABRT", -6],
        ["WorkerCrashed", None, 3],
        ["WorkerCrashed", "SIGKILL", -9],
        ["WorkerCrashed", "SIGSEGV", -11],
    ]
    assert rec["mapped"] == [0, 10, 20, "WorkerCrashed"]
    assert rec["loop"] == {
        "gathered": [0, 2, 4, 6, 8, 10],
        "crashed": ["WorkerCrashed"],
        "timed_out": True,
    }
    assert rec["cancelled_worker_dead"] is True
    assert rec["later"] == 32 and rec["later_map"] == [3, 8]
    assert rec["timeout"] == {"type": "TaskTimeout", "is_timeout": True, "killed": True, "next": 6}


# An importable module next to the program, written by run_script's files=.
HELPERS = """
import os, sys, time

import pydantic


class Point(pydantic.BaseModel):
    x: int
    y: int


def double(p: Point, times: int = 2) -> Point:
    with open("double.calls", "a") as f:
        f.write("call\\n")
    return Point(x=p.x * times, y=p.y * times)


def invalid_result() -> Point:
    return "not a point"


def model_unannotated():
    return Point(x=1, y=2)


def where():
    # How this worker was started: a re-executed program or "python -c".
    return [sys.argv[0], os.getpid()]


def sleep_and_print(seconds, text):
    time.sleep(seconds)
    print(text, flush=True)  # a worker's stdout goes to the parent's stderr
    return text
"""


def test_arguments_and_results_are_validated_by_annotations(run_script) -> None:
    rec = run_main(
        run_script,
        """
import helpers
from tarnish_py import task


@task("executor-scaled")
def scaled(x: float, factor: float = 2.0) -> float:
    return x * factor


def tagged(values: list[int], *more: int, **named: str) -> tuple[int, ...]:
    return (sum(values), *more, *map(len, named.values()))


def make_local():
    def local():
        return 1
    return local


class Holder:
    def method(self):
        return 1


def parent():
    with IsolatedExecutor(max_workers=1) as ex:
        point = ex.submit(helpers.double, {"x": 1, "y": "2"}).result(20)
        bad_arg = outcome(ex.submit, helpers.double, {"x": "one", "y": 2})
        bad_times = outcome(ex.submit, helpers.double, helpers.Point(x=1, y=2), times="x")
        with open("double.calls") as f:
            calls = len(f.read().splitlines())
        emit(point=dict(type=type(point).__name__, is_model=isinstance(point, helpers.Point),
                        value=point.model_dump()),
             bad_arg=bad_arg["error"], bad_times=bad_times["error"], calls=calls,
             invalid_result=describe(ex.submit(helpers.invalid_result).exception(20)),
             invalid_result_text="valid dictionary or instance of Point"
                 in str(ex.submit(helpers.invalid_result).exception(20)),
             unannotated_model=str(ex.submit(helpers.model_unannotated).exception(20)),
             unannotated_arg=outcome(ex.submit, mul, helpers.Point(x=1, y=2), 2),
             plain_values=ex.submit(capture, (1, 2), {3}, b"x", None, k=2**70).result(20)
                 == (((1, 2), {3}, b"x", None), {"k": 2**70}),
             tagged=ex.submit(tagged, ["1", 2], "3", 4, a="xy").result(20),
             scaled=ex.submit(scaled, "1.5").result(20),
             lambda_=outcome(ex.submit, lambda: 1),
             closure=outcome(ex.submit, make_local()),
             bound=outcome(ex.submit, Holder().method),
             where=ex.submit(helpers.where).result(20)[0])
""",
        files={"helpers.py": HELPERS},
    )
    assert rec["point"] == {"type": "Point", "is_model": True, "value": {"x": 2, "y": 4}}
    # Invalid arguments fail in the caller: nothing is sent, the function never runs.
    assert rec["bad_arg"] == "ValidationError" and rec["bad_times"] == "ValidationError"
    assert rec["calls"] == 1
    assert rec["invalid_result"] == "TaskError" and rec["invalid_result_text"] is True
    assert "the result of model_unannotated is a helpers.Point" in rec["unannotated_model"]
    assert rec["unannotated_arg"]["error"] == "TypeError"
    assert "annotate it" in rec["unannotated_arg"]["text"]
    assert rec["plain_values"] is True
    assert rec["tagged"] == [3, 3, 4, 2]
    assert rec["scaled"] == 3.0
    for case in ("lambda_", "closure", "bound"):
        assert rec[case]["error"] == "TypeError", case
        assert "never pickled" in rec[case]["text"], case
    assert rec["where"].endswith("prog.py")  # served by the re-executed program


NO_MAIN = """
import concurrent.futures as cf, json, os, sys

import helpers
from tarnish_py import IsolatedExecutor


def local_function():
    return 1


def emit(**fields):
    print(json.dumps(fields), flush=True)


if __name__ == "__main__":
    ex = IsolatedExecutor(max_workers=1)
    argv0, pid = ex.submit(helpers.where).result(20)
    try:
        ex.submit(local_function)
        refused = None
    except TypeError as e:
        refused = str(e)
    point = ex.submit(helpers.double, {"x": 2, "y": 3}).result(20)
    emit(argv0=argv0, pid_differs=pid != os.getpid(), refused=refused, point=point.model_dump())
    # test_shutdown.ExecutorShutdownTest.test_interpreter_shutdown: a call still
    # running when the program ends finishes (within shutdown_timeout).
    ex.submit(helpers.sleep_and_print, 0.3, "apple")
"""


def test_importable_module_without_main(run_script) -> None:
    result = run_script(NO_MAIN, timeout=60, files={"helpers.py": HELPERS})
    (rec,) = records(result)
    assert rec["argv0"] == "-c"  # a python -c worker that imports helpers
    assert rec["pid_differs"] is True
    assert rec["point"] == {"x": 4, "y": 6}
    assert rec["refused"] is not None
    assert "local_function is defined in the program's __main__" in rec["refused"]
    assert "tarnish_py.main(" in rec["refused"]
    assert "apple" in result.stderr


def test_main_function_without_main_is_a_spawn_error(run_script) -> None:
    source = program(
        """
from tarnish_py import IsolatedExecutor


def square(x):
    return x * x


if __name__ == "__main__":
    ex = IsolatedExecutor(max_workers=1, spawn_timeout=20)
    try:
        ex.submit(square, 3)
        emit(error=None)
    except SpawnError as e:
        emit(error=type(e).__name__, mentions_main="tarnish_py.main(" in str(e))
    ex.shutdown()
"""
    )
    (rec,) = records(run_script(source, timeout=60))
    assert rec == {"error": "SpawnError", "mentions_main": True}
