"""A call past its timeout: TaskTimeout within a bound, whatever the worker is
doing (sleeping, spinning in Python, spinning in C); the worker and what it
started are killed, and a fresh worker serves the next call."""

from __future__ import annotations

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

TIMEOUT = 0.5
BOUND = 5.0  # the caller gets TaskTimeout within this many seconds

HANGER = """
class Hanger(Task[str, int]):
    def run(self, how: str) -> int:
        if how == "spawn and hang":
            child = subprocess.Popen(["sleep", "60"])
            with open("grandchild.pid", "w") as f:
                f.write(str(child.pid))
            hang()
        if how != "ok":
            eval(how)
        return os.getpid()
"""

HANGS = [
    pytest.param("hang()", id="sleep"),
    pytest.param("spin()", id="python-loop"),
    pytest.param("spin_in_c()", id="c-loop"),
]

# (how the Process is made, how the call is made): per-call and default timeouts.
TIMEOUT_SOURCES = [
    pytest.param("Process(Hanger, timeout={t})", "p.call(how)", id="default"),
    pytest.param("Process(Hanger)", "p.call(how, timeout={t})", id="per-call"),
    pytest.param(
        "Process(Hanger, timeout=120)", "p.call(how, timeout={t})", id="per-call-overrides"
    ),
]


def run_hanger(run_script, make: str, call: str, how: str):
    make = make.format(t=TIMEOUT)
    call = call.format(t=TIMEOUT)
    return records(
        run_script(
            program(
                HANGER
                + f"""
def parent():
    with {make} as p:
        before = p.call("ok", timeout=30)
        how = {how!r}
        started = time.monotonic()
        try:
            {call}
        except TaskTimeout as e:
            emit(timed_out=True, elapsed=time.monotonic() - started,
                 is_timeout_error=isinstance(e, TimeoutError), text=str(e),
                 before=before, old_worker_dead=wait_dead(before, 5.0))
        after = p.call("ok", timeout=30)
        emit(after=after, handle_pid=p.pid)

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
            ),
            timeout=60,
        )
    )


@pytest.mark.parametrize(("make", "call"), TIMEOUT_SOURCES)
@pytest.mark.parametrize("how", HANGS)
def test_timeout_kills_and_replaces_the_worker(run_script, make: str, call: str, how: str) -> None:
    timed_out, after = run_hanger(run_script, make, call, how)
    assert timed_out["timed_out"] and timed_out["is_timeout_error"]
    assert TIMEOUT * 0.9 <= timed_out["elapsed"] < BOUND, timed_out
    assert timed_out["old_worker_dead"]
    assert after["after"] == after["handle_pid"] != timed_out["before"]


def test_a_call_within_its_timeout_returns(run_script) -> None:
    """A per-call timeout longer than the default lets a slow call finish."""
    (result,) = records(
        run_script(
            program(
                HANGER
                + """
def parent():
    with Process(Hanger, timeout=0.2) as p:
        pid = p.call("ok")
        emit(value=p.call("time.sleep(0.6) or 0", timeout=10), pid=pid, after=p.pid)

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
            ),
            timeout=60,
        )
    )
    assert result["value"] == result["pid"] == result["after"]


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param("timeout", id="timeout"),
        pytest.param("segfault", id="segfault"),
        pytest.param("exit", id="os-exit"),
    ],
)
def test_processes_the_task_started_die_with_its_worker(run_script, ending: str) -> None:
    """The grandchild (`sleep 60`) started by the task is killed with the worker's group."""
    (ended,) = records(
        run_script(
            program(
                HANGER.replace(
                    "            hang()",
                    "            {'timeout': hang, 'segfault': segfault,"
                    " 'exit': lambda: exit_(5)}[" + repr(ending) + "]()",
                )
                + """
def parent():
    with Process(Hanger, timeout=1.0) as p:
        try:
            p.call("spawn and hang")
        except (TaskTimeout, WorkerCrashed) as e:
            error = type(e).__name__
        with open("grandchild.pid") as f:
            grandchild = int(f.read())
        emit(error=error, grandchild_dead=wait_dead(grandchild, 5.0), next=p.call("ok"))

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
            ),
            timeout=60,
        )
    )
    assert ended["error"] == ("TaskTimeout" if ending == "timeout" else "WorkerCrashed")
    assert ended["grandchild_dead"], "the task's child process outlived its worker"
    assert isinstance(ended["next"], int)
