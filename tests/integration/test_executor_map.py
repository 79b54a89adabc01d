"""IsolatedExecutor.map with chunksize > 1 (the pool's batched map, run by a feeder
thread): the standard ``Executor.map`` contract, through real workers.

Inputs that must still be running when the program acts block on a *gate* file
and leave a mark file when they start, so that which inputs ran is read from the
folder, never inferred from timing.
"""

from __future__ import annotations

import pytest

from ._programs import no_leftovers  # noqa: F401
from .test_executor import run_main

pytestmark = pytest.mark.usefixtures("no_leftovers")

MAP_FUNCTIONS = """
import glob, sys, pydantic


class Pt(pydantic.BaseModel):
    x: int


def make_pt(x: int) -> Pt:
    return Pt(x=x)


def typed_mark(x: int, prefix: str) -> int:
    mark(prefix, x)
    return x


def mark(prefix, x):
    with open(f"{prefix}.{x}", "a") as f:  # one line per run of input x
        f.write("ran\\n")


def crash_at_13(x, prefix):
    mark(prefix, x)
    if x == 13:
        segfault()
    return x * 2


def mark_then_block(x, prefix):
    mark(prefix, x)
    return block(prefix + ".gate")


def runs(prefix):
    # {input: how many times it ran}
    found = {}
    for path in glob.glob(prefix + ".*"):
        tail = path[len(prefix) + 1:]
        if tail.isdigit():
            with open(path) as f:
                found[int(tail)] = len(f.read().splitlines())
    return dict(sorted(found.items()))


MAP_THREADS = ("tarnish_py-executor-map", "tarnish_py-map-drain")


def map_threads():
    return [t.name for t in threading.enumerate() if t.name in MAP_THREADS]


def until(check, within=20.0):
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"never: {check}"
        time.sleep(0.01)
    return True


def warm(ex):
    # A batched map on both workers: each maps its arena, which later batches use
    # (the stop of a running batch is read from there).
    list(ex.map(mul, range(40), range(40), chunksize=4))
    ex.submit(mul, 1, 1).result(20)
"""


def test_map_in_batches_results_failures_and_abandoning(run_script) -> None:
    rec = run_main(
        run_script,
        MAP_FUNCTIONS
        + """
def parent():
    ex = IsolatedExecutor(max_workers=2)
    # Equal to the builtin map: uneven last chunk, several iterables of different
    # lengths, empty input, a result rebuilt by its annotation.
    same = {}
    for n in (1, 7, 100):
        squares = list(ex.map(pow, range(250), [2] * 250, chunksize=n))
        same[n] = [squares == [x * x for x in range(250)],
                   list(ex.map(mul, range(20), range(5, 40), chunksize=n))
                   == list(map(mul, range(20), range(5, 40))),
                   list(ex.map(mul, [], [], chunksize=n)) == [],
                   list(ex.map(mul, range(10), range(3), chunksize=n)) == [0, 1, 4]]
    pts = list(ex.map(make_pt, range(5), chunksize=2))
    # The iterables are consumed and the work starts at the call, not at next().
    consumed = []
    def numbers():
        for i in range(6):
            consumed.append(i)
            yield i
    started = ex.map(typed_mark, numbers(), ["early"] * 6, chunksize=2)
    consumed_at_call = list(consumed)
    ran_before_next = until(lambda: len(runs("early")) == 6)
    emit(same=same, pts=[type(p).__name__ for p in pts] + [p.x for p in pts],
         consumed_at_call=consumed_at_call, ran_before_next=ran_before_next,
         early=list(started))

    # Arguments are validated by map() itself: an invalid one raises there and
    # nothing of the map runs.
    bad = outcome(ex.map, typed_mark, [1, "two", 3], ["bad"] * 3, chunksize=2)
    emit(bad=bad["error"], bad_ran=runs("bad"))

    # A segfault in the middle: the inputs before it return their results, it
    # raises WorkerCrashed when reached, and no input ran twice.
    got, error = [], None
    try:
        for r in ex.map(crash_at_13, range(40), ["seg"] * 40, chunksize=4):
            got.append(r)
    except Exception as e:
        error = e
    until(lambda: not map_threads())
    emit(seg=dict(got=got, error=type(error).__name__, signal=error.signal,
                  input_args=error.input["args"], runs=runs("seg")))

    # A TaskError, raised in its turn.
    i = ex.map(divmod, [1, 1, 1, 1, 1], [2, 3, 0, 5, 1], chunksize=2)
    first = [next(i), next(i)]
    third = outcome(next, i)
    emit(task_error=dict(first=first, third=third["error"], text=third["text"],
                         after=outcome(next, i)["error"]))

    # The timeout is a deadline for the whole iteration: 8 inputs of 0.3 s on two
    # workers take 1.2 s at least.
    results = []
    try:
        for r in ex.map(sleep_pid, [0.3] * 8, chunksize=2, timeout=0.5):
            results.append(r)
        timed_out = False
    except TimeoutError:
        timed_out = True
    emit(timeout=dict(timed_out=timed_out, got=len(results) < 8))

    # Abandoning the iterator: inputs not started never run, the running ones
    # finish, no thread stays behind and submit works at once.
    until(lambda: not map_threads())
    warm(ex)
    threads_before = threading.active_count()
    it = ex.map(mark_then_block, range(12), ["ab"] * 12, chunksize=3)
    until(lambda: len(runs("ab")) == 2)  # the first input of each batch is running
    it.close()
    until(lambda: "tarnish_py-executor-map" not in map_threads())
    open_gate("ab.gate")
    emit(abandon=dict(submit=ex.submit(mul, 6, 7).result(20), runs=runs("ab"),
                      threads_gone=until(lambda: not map_threads()),
                      same_count=until(lambda: threading.active_count() == threads_before),
                      after_close=outcome(next, it)["error"]))

    # The same when the iterator is dropped, never advanced, and by break.
    it = ex.map(mark_then_block, range(12), ["gc"] * 12, chunksize=3)
    until(lambda: len(runs("gc")) == 2)
    del it
    gc.collect()
    until(lambda: "tarnish_py-executor-map" not in map_threads())
    open_gate("gc.gate")
    for r in ex.map(mul, range(1000), range(1000), chunksize=10):
        break
    emit(dropped=dict(runs=runs("gc"), threads_gone=until(lambda: not map_threads()),
                      submit=ex.submit(mul, 2, 3).result(20)))

    # Ctrl-C in the consuming thread stops the map the same way.
    it = ex.map(mark_then_block, range(12), ["kb"] * 12, chunksize=3)
    main_id = threading.get_ident()
    def interrupt():
        until(lambda: len(runs("kb")) == 2)
        # Only once the main thread waits in the iterator (not on Thread.start()).
        until(lambda: sys._current_frames()[main_id].f_code.co_name == "__next__")
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: a real signal ends the wait
    threading.Thread(target=interrupt).start()
    try:
        next(it)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    until(lambda: "tarnish_py-executor-map" not in map_threads())
    open_gate("kb.gate")
    emit(ctrl_c=dict(interrupted=interrupted, runs=runs("kb"),
                     submit=ex.submit(mul, 3, 3).result(20),
                     threads_gone=until(lambda: not map_threads())))
    ex.shutdown()
""",
    )
    assert rec["same"] == {"1": [True] * 4, "7": [True] * 4, "100": [True] * 4}
    assert rec["pts"] == ["Pt"] * 5 + [0, 1, 2, 3, 4]
    assert rec["consumed_at_call"] == [0, 1, 2, 3, 4, 5]
    assert rec["ran_before_next"] is True and rec["early"] == [0, 1, 2, 3, 4, 5]
    assert rec["bad"] == "ValidationError" and rec["bad_ran"] == {}
    seg = rec["seg"]
    assert seg["got"] == [2 * x for x in range(13)]
    assert seg["error"] == "WorkerCrashed" and seg["signal"] == "SIGSEGV"
    assert seg["input_args"] == [13, "seg"]  # the error names the input that crashed
    assert all(n == 1 for n in seg["runs"].values()), seg["runs"]  # at most once each
    assert all(str(x) in seg["runs"] for x in range(14))  # all up to the crash ran
    assert rec["task_error"] == {
        "first": [[0, 1], [0, 1]],
        "third": "TaskError",
        "text": rec["task_error"]["text"],
        "after": "StopIteration",
    }
    assert "ZeroDivisionError" in rec["task_error"]["text"]
    assert rec["timeout"] == {"timed_out": True, "got": True}
    # Only the first input of each batch started: the others were dropped.
    assert rec["abandon"] == {"submit": 42, "runs": {"0": 1, "3": 1}, "threads_gone": True,
                              "same_count": True, "after_close": "StopIteration"}
    assert rec["dropped"] == {"runs": {"0": 1, "3": 1}, "threads_gone": True, "submit": 6}
    assert rec["ctrl_c"] == {"interrupted": True, "runs": {"0": 1, "3": 1}, "submit": 9,
                             "threads_gone": True}


def test_map_in_batches_with_shutdown_and_other_callers(run_script) -> None:
    rec = run_main(
        run_script,
        MAP_FUNCTIONS
        + """
def parent():
    # shutdown(cancel_futures=True) during a map: the inputs not started are
    # dropped, the iterator raises CancelledError where its results stop, and
    # shutdown waits for the running ones and the workers.
    ex = IsolatedExecutor(max_workers=2)
    warm(ex)
    pids = sorted({ex.submit(sleep_pid, 0.3).result(20), ex.submit(sleep_pid, 0.3).result(20)})
    it = ex.map(mark_then_block, range(12), ["cf"] * 12, chunksize=3)
    until(lambda: len(runs("cf")) == 2)
    def open_when_stopped():
        until(lambda: "tarnish_py-executor-map" not in map_threads())
        open_gate("cf.gate")
    threading.Thread(target=open_when_stopped).start()
    ex.shutdown(wait=True, cancel_futures=True)
    emit(cancel=dict(next=outcome(next, it)["error"], runs=runs("cf"),
                     workers_gone=[wait_dead(p) for p in pids],
                     threads_gone=until(lambda: not map_threads()),
                     submit=outcome(ex.submit, mul, 1, 2)["error"],
                     map=outcome(ex.map, mul, [1], [2], chunksize=2)["error"]))

    # shutdown(wait=True) waits for a map in progress, as for submitted calls:
    # every result is there afterwards.
    ex = IsolatedExecutor(max_workers=2)
    it = ex.map(sleep_pid, [0.05] * 12, chunksize=3)
    ex.shutdown()
    emit(waited=len([r for r in it if isinstance(r, int)]))

    # shutdown(wait=False): the workers stop once the map is done.
    ex = IsolatedExecutor(max_workers=2)
    it = ex.map(mul, range(100), range(100), chunksize=7)
    ex.shutdown(wait=False)
    results = list(it)
    emit(no_wait=dict(results=results == [x * x for x in range(100)],
                      closed=until(lambda: ex._pool.closed)))

    # A map does not starve other threads' submit: a caller gets a worker when a
    # batch ends, long before the map is done (80 x 50 ms on two workers).
    with IsolatedExecutor(max_workers=2) as ex:
        warm(ex)
        it = ex.map(sleep_pid, [0.05] * 80, chunksize=4)
        seen = {}
        def other():
            seen["value"] = ex.submit(mul, 6, 7).result(20)
            seen["map_running"] = "tarnish_py-executor-map" in map_threads()
        t = threading.Thread(target=other)
        t.start()
        t.join(30)
        emit(mixing=dict(seen, results=len(list(it))))
""",
    )
    assert rec["cancel"] == {
        "next": "CancelledError",
        "runs": {"0": 1, "3": 1},
        "workers_gone": [True, True],
        "threads_gone": True,
        "submit": "ClosedError",
        "map": "ClosedError",
    }
    assert rec["waited"] == 12
    assert rec["no_wait"] == {"results": True, "closed": True}
    assert rec["mixing"] == {"value": 42, "map_running": True, "results": 80}
