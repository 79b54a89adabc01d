"""Adversarial: the batched map (``ProcessPool.map(chunksize=k)``) and
``IsolatedExecutor.map(chunksize=k)`` while workers die in awkward ways.

A worker that dies holding its channel through a process it forked, and that
wrote something just before dying, makes its pipe and its pidfd readable in the
same wake-up of the map; a worker that SIGKILLs itself while the other keeps
running; a map abandoned while a crash happens. The map must blame the one input
that was running, run every other input once, never hang, and leave nothing.
"""

from __future__ import annotations

import pytest
from integration._programs import no_leftovers  # noqa: F401
from reliability._prelude import program, records

pytestmark = pytest.mark.usefixtures("no_leftovers")

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

DYING = """
def fork_sleeper():
    # A child that keeps the worker's channel open for 20 s, as a helper a native
    # library forked would (fork(2) from C: no at-fork handler closes the channel).
    pid = ctypes.CDLL(None, use_errno=True).fork()
    if pid == 0:
        time.sleep(20)
        open(f"slept.{os.getpid()}", "w").close()  # never, if it died with the worker
        os._exit(0)


def stop_program_until_dead():
    # The program stops, and a process outside the worker's group resumes it once
    # the worker is dead: it wakes to a pipe with bytes in it and an exited worker,
    # both at once (as a program descheduled on a loaded machine would).
    program = int(os.environ["PROGRAM_PID"])
    os.kill(program, signal.SIGSTOP)
    code = f"import os, time; time.sleep(0.3); os.kill({program}, {int(signal.SIGCONT)})"
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


class Job(Task[str, int]):
    def run(self, how: str) -> int:
        exec(how)
        return os.getpid()


def outcome(v):
    if isinstance(v, Exception):
        return {"error": type(v).__name__, "signal": getattr(v, "signal", None)}
    return "ok"


def parent():
    seen = {}
    os.environ["PROGRAM_PID"] = str(os.getpid())
    # Something on the pipe (an empty frame) and the death seen in the same wake-up.
    dying = ("stop_program_until_dead(); to_parent(b'\\\\x00'); fork_sleeper(); "
             "os.kill(os.getpid(), 9)")
    for start in ("exec", "auto"):
        with ProcessPool(Job, size=1, start=start) as pool:
            out = pool.map(["pass", dying, "pass", "pass"], chunksize=4, timeout=20,
                           return_exceptions=True)
            seen[start] = {"results": [outcome(v) for v in out],
                           "slept": [f for f in os.listdir() if f.startswith("slept.")],
                           "after": pool.call("pass", timeout=20) > 0}
    emit(**seen)
"""


def test_a_worker_that_writes_then_dies_holding_its_pipe_is_a_crash(run_script) -> None:
    """Its pipe and its pidfd readable at once: the input is a WorkerCrashed(SIGKILL),
    the others run, and the map does not wait for the forked child to let go: the
    child dies with the worker's process group (it would leave a mark had it slept
    its 20 s out)."""
    (seen,) = records(run_script(program(DYING + MAIN), timeout=60))
    for start in ("exec", "auto"):
        case = seen[start]
        assert case["results"] == [
            "ok", {"error": "WorkerCrashed", "signal": "SIGKILL"}, "ok", "ok"
        ], case
        assert case["slept"] == [] and case["after"], case


EXECUTOR = """
def gate_then_crash(x, prefix):
    # Input 7 waits for its gate, then crashes its worker; the others mark and return.
    mark(prefix, x)
    if x == 7:
        block(prefix + ".crash")
        segfault()
    return x


def parent():
    seen = {}
    with IsolatedExecutor(max_workers=2) as ex:
        warm(ex)
        # Every worker busy with another caller's submit: the map waits its turn for
        # one. Abandoned then, none of its inputs may ever run.
        busy = [ex.submit(block, "busy.gate") for _ in range(2)]
        it = ex.map(typed_mark, range(20), ["wait"] * 20, chunksize=3)
        time.sleep(0.2)  # the map waits for a worker (nothing to observe: it must not run)
        it.close()
        open_gate("busy.gate")
        seen["busy"] = dict(submits=len({f.result(20) for f in busy}),
                            after_close=outcome(next, it)["error"],
                            threads_gone=until(lambda: not map_threads()),
                            runs=runs("wait"), next=ex.submit(mul, 6, 7).result(20))

        # Abandoned while one of its running inputs crashes its worker (the crash
        # comes during the drain of that batch): every input ran at most once,
        # the executor goes on.
        for how in ("close", "del", "break", "error"):
            prefix = "crash_" + how
            def started():
                return ex.map(gate_then_crash, range(12), [prefix] * 12, chunksize=5)

            def second_batch_runs():
                return until(lambda: 7 in runs(prefix))  # the first batch is done

            if how == "close":
                it = started()
                second_batch_runs()
                next(it)
                it.close()
            elif how == "del":
                it = started()
                second_batch_runs()
                del it
                gc.collect()
            elif how == "break":
                for _ in started():
                    second_batch_runs()
                    break
            else:
                try:
                    for _ in started():
                        second_batch_runs()
                        raise RuntimeError("the consumer fails")
                except RuntimeError:
                    pass
            until(lambda: "tarnish_py-executor-map" not in map_threads())
            open_gate(prefix + ".crash")
            seen[how] = dict(runs=runs(prefix), threads_gone=until(lambda: not map_threads()),
                             submit=ex.submit(mul, 2, 3).result(20),
                             map=list(ex.map(mul, range(7), range(7), chunksize=2)))
    emit(**seen)
"""


def test_executor_map_abandoned_while_waiting_for_workers_or_while_one_crashes(
    run_script,
) -> None:
    """IsolatedExecutor.map(chunksize=3) waiting for workers that other callers'
    submits hold, then closed: none of its inputs runs, its thread ends once a
    worker is free. A map abandoned (close, del, break, a failing consumer) while
    its running input is about to crash: no input runs twice, the inputs after the
    crashed one never run, nothing stays behind, the executor goes on."""
    from integration.test_executor import run_main
    from integration.test_executor_map import MAP_FUNCTIONS

    rec = run_main(run_script, MAP_FUNCTIONS + EXECUTOR)
    assert rec["busy"] == {
        "submits": 2, "after_close": "StopIteration", "threads_gone": True, "runs": {},
        "next": 42,
    }, rec["busy"]
    for how in ("close", "del", "break", "error"):
        case = rec[how]
        assert all(n == 1 for n in case["runs"].values()), (how, case)
        assert {str(x) for x in range(8)} <= set(case["runs"]), (how, case)
        # After the crash, the rest of its batch is not sent again: the map has ended.
        assert not {"8", "9"} & set(case["runs"]), (how, case)
        assert case["threads_gone"] and case["submit"] == 6, (how, case)
        assert case["map"] == [x * x for x in range(7)], (how, case)
