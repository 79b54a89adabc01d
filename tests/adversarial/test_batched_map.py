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
