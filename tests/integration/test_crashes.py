"""A worker that dies mid-call: the caller gets WorkerCrashed, survives, and the
same Process serves the next call on a fresh worker."""

from __future__ import annotations

import re

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

CRASHER = """
class Crasher(Task[str, int]):
    def run(self, how: str) -> int:
        if how != "ok":
            eval(how)
        return os.getpid()
"""

# (crash expression, signal name, exitcode, whether faulthandler leaves a Python stack)
CRASHES = [
    pytest.param("segfault()", "SIGSEGV", -11, True, id="segfault"),
    pytest.param("abort()", "SIGABRT", -6, True, id="abort"),
    pytest.param("stack_overflow()", "SIGSEGV", -11, True, id="stack_overflow"),
    pytest.param("exit_(3)", None, 3, False, id="exit_3"),
    pytest.param("exit_(0)", None, 0, False, id="exit_0"),
    pytest.param("sigkill()", "SIGKILL", -9, False, id="sigkill"),
]


@pytest.mark.parametrize(("crash", "signal", "exitcode", "has_stack"), CRASHES)
def test_crash_is_reported_and_worker_replaced(
    run_script, crash: str, signal: str | None, exitcode: int, has_stack: bool
) -> None:
    result = run_script(
        program(
            CRASHER
            + f"""
def parent():
    with Process(Crasher) as p:
        first = p.call("ok")
        emit(before=first, handle_pid=p.pid)
        try:
            p.call({crash!r})
        except WorkerCrashed as e:
            emit(crashed=True, exitcode=e.exitcode, signal=e.signal, stderr=e.stderr,
                 is_tarnish=isinstance(e, TarnishError), text=str(e))
        after = p.call("ok")
        emit(after=after, handle_pid=p.pid, running=p.is_running())

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
        ),
        timeout=60,
    )
    before, crashed, after = records(result)
    assert before["before"] == before["handle_pid"]
    assert crashed["crashed"] and crashed["is_tarnish"]
    assert crashed["exitcode"] == exitcode
    assert crashed["signal"] == signal
    if signal is not None:
        assert signal in crashed["text"]
    if has_stack:
        stack = crashed["stderr"]
        helper = crash.split("(")[0]
        assert "Fatal Python error" in stack
        assert f"in {helper}" in stack, stack
        assert "in run" in stack, stack
        assert "prog.py" in stack, stack
    # The caller survived and the next call ran on a new worker.
    assert after["after"] == after["handle_pid"]
    assert after["after"] != before["before"]
    assert after["running"] is True


def test_every_crash_gets_its_own_fresh_worker(run_script) -> None:
    kinds = ["segfault()", "abort()", "exit_(7)", "sigkill()", "segfault()"]
    result = run_script(
        program(
            CRASHER
            + f"""
def parent():
    pids = []
    with Process(Crasher) as p:
        pids.append(p.call("ok"))
        for how in {kinds!r}:
            try:
                p.call(how)
            except WorkerCrashed as e:
                emit(how=how, exitcode=e.exitcode)
            pids.append(p.call("ok"))
    emit(pids=pids)

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
        ),
        timeout=60,
    )
    *crashes, last = records(result)
    assert [c["how"] for c in crashes] == kinds
    assert [c["exitcode"] for c in crashes] == [-11, -6, 7, -9, -11]
    pids = last["pids"]
    assert len(pids) == len(kinds) + 1
    assert len(set(pids)) == len(pids), pids


def test_crash_in_a_worker_thread_is_a_crash(run_script) -> None:
    """A segfault in a thread the task started kills the worker like any other."""
    result = run_script(
        program(
            """
import threading

def crash_in_thread():
    t = threading.Thread(target=segfault)
    t.start()
    t.join()

class ThreadCrasher(Task[int, int]):
    def run(self, x: int) -> int:
        if x < 0:
            crash_in_thread()
        return x + 1

def parent():
    with Process(ThreadCrasher) as p:
        try:
            p.call(-1)
        except WorkerCrashed as e:
            emit(signal=e.signal, stderr=e.stderr)
        emit(value=p.call(41))

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
        ),
        timeout=60,
    )
    crashed, after = records(result)
    assert crashed["signal"] == "SIGSEGV"
    assert "in segfault" in crashed["stderr"]
    assert after["value"] == 42


def test_uncaught_crash_ends_the_parent_with_a_readable_error(run_script) -> None:
    result = run_script(
        program(
            CRASHER
            + """
def parent():
    with Process(Crasher) as p:
        emit(ok=p.call("ok"))
        p.call("abort()")

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
        ),
        timeout=60,
    )
    assert result.returncode == 1, str(result)
    assert len(records(result, check=False)) == 1
    assert re.search(r"WorkerCrashed: worker \d+ was killed by SIGABRT\n", result.stderr), result
    # The worker's stack is printed once, as the error's cause; the stream has one line.
    assert result.stderr.count('in abort\n') == 1, str(result)
