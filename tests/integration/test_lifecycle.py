"""The life of one worker behind a ``Process``: its pid, restart, the ways a
handle closes (explicitly, ``with``, garbage collection, interpreter exit),
graceful shutdown against ``shutdown_timeout``, and the call forms (``call``
from many threads, ``submit``, ``acall``) including cancelling a running call."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ScriptRunner
from proc_checks import still_alive

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

TASKS = """
import asyncio, concurrent.futures as cf, gc, threading

class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x

class Tidy(Task[int, int]):
    def run(self, x: int) -> int:
        return x

    def close(self) -> None:
        with open("closed-by-task.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")

class Sleepy(Task[float, str]):
    \"\"\"Sleeps; a positive input marks its start and leaves a side effect after.\"\"\"
    def run(self, seconds: float) -> str:
        if seconds > 0:
            os.rename(touch("started.tmp"), "started")
        time.sleep(seconds)
        if seconds > 0:
            touch("side-effect")
        return "slept"

def touch(name):
    with open(name, "w") as f:
        f.write(str(os.getpid()))
    return name

def wait_for_file(name, within=10.0):
    deadline = time.monotonic() + within
    while not os.path.exists(name):
        assert time.monotonic() < deadline, f"{name} never appeared"
        time.sleep(0.01)
    with open(name) as f:
        return int(f.read())
"""


def run(
    run_script: ScriptRunner, body: str, *args: str, timeout: float = 60
) -> list[dict[str, Any]]:
    return records(run_script(program(TASKS + body + MAIN), *args, timeout=timeout))


def test_pid_is_running_and_restart(run_script: ScriptRunner) -> None:
    (before, after_restart, after_kill) = run(
        run_script,
        """
def parent():
    with Process(Double) as p:
        first = p.pid
        emit(pid=first, running=p.is_running(), result=p.call(1))
        p.restart()
        emit(pid=p.pid, running=p.is_running(), result=p.call(2), old_dead=wait_dead(first, 2))
        second = p.pid
        os.kill(second, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while p.is_running() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen_dead = not p.is_running()
        p.restart()
        emit(pid=p.pid, running=p.is_running(), result=p.call(3), seen_dead=seen_dead)
""",
    )
    assert before == {"pid": before["pid"], "running": True, "result": 2}
    assert isinstance(before["pid"], int)
    assert after_restart["pid"] not in (None, before["pid"])
    assert after_restart["running"] and after_restart["old_dead"]
    assert after_restart["result"] == 4
    # A worker killed from outside is seen as not running; restart() replaces it.
    assert after_kill["seen_dead"]
    assert after_kill["pid"] not in (None, before["pid"], after_restart["pid"])
    assert after_kill["running"] and after_kill["result"] == 6


@pytest.mark.parametrize("attempt", ["call", "submit", "acall", "restart"])
def test_closed_handle_refuses_work(run_script: ScriptRunner, attempt: str) -> None:
    (facts,) = run(
        run_script,
        """
def parent():
    p = Process(Double)
    pid = p.pid
    p.close()
    p.close()  # idempotent
    attempt = sys.argv[1]
    try:
        if attempt == "call":
            p.call(1)
        elif attempt == "submit":
            p.submit(1).result(timeout=10)
        elif attempt == "acall":
            asyncio.run(asyncio.wait_for(p.acall(1), 10))
        else:
            p.restart()
    except Exception as exc:
        error = type(exc).__name__
    else:
        error = None
    p.close()
    with p:
        pass
    emit(error=error, worker_dead=wait_dead(pid, 0.5), running=p.is_running())
""",
        attempt,
    )
    assert facts == {"error": "ClosedError", "worker_dead": True, "running": False}


def test_close_fails_queued_calls(run_script: ScriptRunner) -> None:
    """Calls waiting behind a running one get ClosedError; so does the running
    one once shutdown_timeout has passed."""
    (facts,) = run(
        run_script,
        """
def parent():
    p = Process(Sleepy, shutdown_timeout=0.5)
    running = p.submit(60)
    wait_for_file("started")
    queued = p.submit(0)
    blocked = {}

    def caller():
        try:
            blocked["result"] = p.call(0)
        except Exception as exc:
            blocked["error"] = type(exc).__name__

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(0.2)  # the caller is waiting for the worker
    p.close()
    thread.join(10)
    emit(
        running=type(running.exception(10)).__name__,
        queued=type(queued.exception(10)).__name__,
        blocked=blocked,
    )
""",
    )
    assert facts == {
        "running": "ClosedError",
        "queued": "ClosedError",
        "blocked": {"error": "ClosedError"},
    }


def test_close_from_a_done_callback(run_script: ScriptRunner, tmp_path: Path) -> None:
    """The call has finished when its callback runs: nothing is left to wait for."""
    (facts,) = run(
        run_script,
        """
def parent():
    p = Process(Tidy, shutdown_timeout=1.0)
    closed = threading.Event()
    future = p.submit(1)
    start = time.monotonic()
    future.add_done_callback(lambda f: (p.close(), closed.set()))
    emit(closed=closed.wait(30), took=time.monotonic() - start, result=future.result())
""",
    )
    assert facts["closed"] and facts["result"] == 1
    assert facts["took"] < 1.0, "close() waited for the call that had already finished"
    assert (tmp_path / "closed-by-task.txt").exists(), "Task.close() did not run"


def test_restart_waits_for_the_running_call(run_script: ScriptRunner) -> None:
    (facts,) = run(
        run_script,
        """
def parent():
    with Process(Sleepy) as p:
        old = p.pid
        running = p.submit(0.5)
        wait_for_file("started")
        p.restart()
        emit(result=running.result(10), changed=p.pid != old, after=p.call(0))
""",
    )
    assert facts == {"result": "slept", "changed": True, "after": "slept"}


@pytest.mark.parametrize("how", ["with", "close", "gc", "exit"])
def test_closing_stops_the_worker_gracefully(
    run_script: ScriptRunner, tmp_path: Path, how: str
) -> None:
    """Every way a handle closes ends the worker and runs Task.close() in it."""
    (facts,) = run(
        run_script,
        """
def parent():
    global kept
    how = sys.argv[1]
    if how == "with":
        with Process(Tidy) as p:
            pid = p.pid
            p.call(1)
    elif how == "close":
        p = Process(Tidy)
        pid = p.pid
        p.call(1)
        p.close()
    elif how == "gc":
        p = Process(Tidy)
        pid = p.pid
        p.call(1)
        del p
        gc.collect()
    else:  # the program ends with the handle open
        kept = Process(Tidy)
        kept.call(1)
        emit(pid=kept.pid)
        return
    emit(pid=pid, dead=wait_dead(pid, 2.0))
""",
        how,
    )
    pid = facts["pid"]
    if how != "exit":
        assert facts["dead"], "the worker outlived its closed handle"
    assert still_alive([pid], 2.0) == []
    hook = tmp_path / "closed-by-task.txt"
    assert hook.exists(), "Task.close() did not run"
    assert hook.read_text() == f"{pid}\n"


def test_interpreter_exit_releases_a_thread_stuck_in_a_call(run_script: ScriptRunner) -> None:
    """A non-daemon thread blocked in a call does not hang the program's exit."""
    start = time.monotonic()
    result = run_script(
        program(
            TASKS
            + """
def parent():
    p = Process(Sleepy, shutdown_timeout=1.0)

    def stuck():
        try:
            p.call(60)
        except Exception as exc:
            emit(thread_got=type(exc).__name__)

    threading.Thread(target=stuck).start()
    wait_for_file("started")
    emit(pid=p.pid)
"""
            + MAIN
        ),
        timeout=30,
    )
    took = time.monotonic() - start
    first, second = records(result)
    assert second == {"thread_got": "ClosedError"}
    assert took < 10, "exit waited for the stuck call far past shutdown_timeout"
    assert still_alive([first["pid"]], 2.0) == []


@pytest.mark.parametrize(
    ("seconds", "shutdown_timeout", "close_timeout", "graceful"),
    [
        pytest.param(0.5, 5.0, None, True, id="call-finishes-within-shutdown_timeout"),
        pytest.param(60, 1.0, None, False, id="shutdown_timeout-expires"),
        pytest.param(60, 60.0, 1.0, False, id="close-timeout-expires"),
    ],
)
def test_close_waits_for_a_running_call_then_kills(
    run_script: ScriptRunner,
    tmp_path: Path,
    seconds: float,
    shutdown_timeout: float,
    close_timeout: float | None,
    graceful: bool,
) -> None:
    (facts,) = run(
        run_script,
        """
class Stubborn(Task[float, str]):
    \"\"\"Starts a grandchild, then sleeps through any request to shut down.\"\"\"
    def run(self, seconds: float) -> str:
        child = subprocess.Popen(["sleep", "60"])
        with open("grandchild.tmp", "w") as f:
            f.write(str(child.pid))
        os.rename("grandchild.tmp", "grandchild")
        time.sleep(seconds)
        return "finished"

    def close(self) -> None:
        touch("closed-by-task.txt")

def parent():
    seconds, shutdown_timeout, close_timeout = map(json.loads, sys.argv[1:])
    p = Process(Stubborn, shutdown_timeout=shutdown_timeout)
    pid = p.pid
    outcome = {}

    def caller():
        try:
            outcome["result"] = p.call(seconds)
        except Exception as exc:
            outcome["error"] = type(exc).__name__
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=caller)
    thread.start()
    grandchild = wait_for_file("grandchild")
    start = time.monotonic()
    p.close(close_timeout)
    closed_after = time.monotonic() - start
    thread.join(10)
    emit(
        close_took=closed_after,
        call_took=outcome.pop("ended") - start,
        outcome=outcome,
        worker_dead=wait_dead(pid, 0.5),
        grandchild_dead=wait_dead(grandchild, 2.0),
    )
""",
        *(str(v) if v is not None else "null" for v in (seconds, shutdown_timeout, close_timeout)),
    )
    grace = close_timeout if close_timeout is not None else shutdown_timeout
    if graceful:
        assert facts["outcome"] == {"result": "finished"}
        assert facts["close_took"] < 0.5 + 2.0
    else:
        assert facts["outcome"] == {"error": "ClosedError"}
        assert grace - 0.1 <= facts["close_took"] <= grace + 2.0
        assert grace - 0.1 <= facts["call_took"] <= grace + 2.0
    assert facts["worker_dead"] and facts["grandchild_dead"]
    # Task.close() runs only when the worker got to shut down by itself.
    assert (tmp_path / "closed-by-task.txt").exists() is graceful


def test_submit_returns_futures(run_script: ScriptRunner) -> None:
    (facts,) = run(
        run_script,
        """
def parent():
    with Process(Double) as p:
        future = p.submit(21)
        first = future.result(timeout=10)
        # Submitted from several threads at once: every future completes.
        with cf.ThreadPoolExecutor(4) as pool:
            futures = list(pool.map(p.submit, range(40)))
        done, pending = cf.wait(futures, timeout=30)
        emit(
            is_future=isinstance(future, cf.Future),
            first=first,
            pending=len(pending),
            results=[f.result() for f in futures],
        )
""",
    )
    assert facts["is_future"] is True
    assert facts["first"] == 42
    assert facts["pending"] == 0
    assert facts["results"] == [2 * i for i in range(40)]


def test_acall_does_not_block_the_event_loop(run_script: ScriptRunner) -> None:
    (facts,) = run(
        run_script,
        """
async def amain():
    with Process(Sleepy) as p:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = time.monotonic()
        result = await asyncio.wait_for(p.acall(0.5), 20)
        took = time.monotonic() - start
        during = ticks
        ticking.cancel()
        emit(result=result, took=took, ticks=during)

def parent():
    asyncio.run(amain())
""",
    )
    assert facts["result"] == "slept"
    assert facts["took"] >= 0.5
    # About 10 ticks fit in the call; a blocked loop would get none.
    assert facts["ticks"] >= 5, facts


@pytest.mark.parametrize("form", ["acall", "submit"])
def test_cancelling_a_running_call_kills_its_worker(run_script: ScriptRunner, form: str) -> None:
    (facts,) = run(
        run_script,
        """
async def cancel_acall(p):
    call = asyncio.create_task(p.acall(1.0))
    while not os.path.exists("started"):
        await asyncio.sleep(0.01)
    call.cancel()
    try:
        await asyncio.wait_for(call, 10)
    except asyncio.CancelledError:
        return True
    return False

def cancel_submitted(p):
    future = p.submit(1.0)
    wait_for_file("started")
    return future.cancel() and future.cancelled()

def parent():
    with Process(Sleepy) as p:
        old = p.pid
        start = time.monotonic()
        if sys.argv[1] == "acall":
            cancelled = asyncio.run(cancel_acall(p))
        else:
            cancelled = cancel_submitted(p)
        took = time.monotonic() - start
        old_dead = wait_dead(old, 2.0)
        time.sleep(1.2)  # past the moment the cancelled call would have finished
        after = p.call(0)
        emit(cancelled=cancelled, took=took, old=old, old_dead=old_dead,
             new=p.pid, after=after, side_effect=os.path.exists("side-effect"))
""",
        form,
    )
    assert facts["cancelled"] is True
    assert facts["took"] < 1.0, "cancelling waited for the call to finish"
    assert facts["old_dead"], "the worker running the cancelled call lives on"
    assert facts["side_effect"] is False
    assert facts["after"] == "slept"
    assert facts["new"] not in (None, facts["old"])


def test_calls_from_many_threads_are_all_answered_correctly(run_script: ScriptRunner) -> None:
    (facts,) = run(
        run_script,
        """
def parent():
    with Process(Double) as p:
        pid = p.pid

        def caller(k):
            return [(x, p.call(x)) for x in range(k * 1000, k * 1000 + 50)]

        with cf.ThreadPoolExecutor(8) as pool:
            pairs = [pair for chunk in pool.map(caller, range(8)) for pair in chunk]
        emit(calls=len(pairs), wrong=[(x, y) for x, y in pairs if y != 2 * x],
             same_worker=p.pid == pid)
""",
    )
    assert facts == {"calls": 400, "wrong": [], "same_worker": True}
