"""Nothing outlives its parent: a parent SIGKILLed takes its workers (even one
stuck in C) and what their tasks started along; Ctrl-C interrupts the parent
only; a parent that loses many workers keeps no fds, threads or zombies."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ScriptRunner
from proc_checks import descendants, still_alive

from ._procs import Parent
from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""


def write(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "prog.py"
    script.write_text(program(body + MAIN))
    return script


BUSY = """
import re, threading

class Busy(Task[str, int]):
    def run(self, how: str) -> int:
        if how == "spawn":
            self.child = subprocess.Popen(["sleep", "60"])
            return self.child.pid
        print("BUSY", how, flush=True)  # reaches the parent's stderr
        if how == "regex":  # catastrophic backtracking: holds the GIL
            re.match(r"(a+)+$", "a" * 40 + "b")
        elif how == "pbkdf2":  # C, GIL released
            hashlib.pbkdf2_hmac("sha256", b"x", b"y", 2**31 - 1)  # minutes of C
        else:
            time.sleep(600)
        return 0

def parent():
    p = Process(Busy)
    grandchild = p.call("spawn")
    how = sys.argv[1]
    if how != "idle":
        threading.Thread(target=p.call, args=(how,), daemon=True).start()
    print("READY", p.pid, grandchild, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("doing", ["idle", "regex", "pbkdf2", "sleep"])
def test_parent_sigkilled_leaves_no_worker(tmp_path: Path, doing: str) -> None:
    with Parent(write(tmp_path, BUSY), doing) as parent:
        worker, grandchild = map(int, parent.expect("READY"))
        if doing != "idle":
            parent.expect_stderr(f"BUSY {doing}")
            time.sleep(0.2)  # well inside the loop
        tree = descendants(parent.pid)
        parent.tree |= tree
        assert {worker, grandchild} <= tree, (tree, str(parent))
        os.kill(parent.pid, signal.SIGKILL)
        killed = time.monotonic()
        parent.wait(5.0)
        left = still_alive(tree, 2.0 - (time.monotonic() - killed))
        assert left == [], f"alive 2 s after the parent died: {left} ({worker=}, {grandchild=})"


CTRL_C = """
import asyncio, threading

class Slow(Task[float, str]):
    def run(self, seconds: float) -> str:
        print("RUNNING", flush=True)  # reaches the parent's stderr
        time.sleep(seconds)
        return "slept"

def call_until_closed(p):
    try:
        p.call(60)
    except tarnish_py.ClosedError:
        print("CALL CLOSED", flush=True)  # the running call's fate when close() is cut short

def interrupted_in_close(p):
    threading.Thread(target=call_until_closed, args=(p,), daemon=True).start()
    sys.stdin.readline()  # the test saw the call running
    print("CLOSING", flush=True)
    p.close()  # waits up to shutdown_timeout for the running call

def parent():
    how = sys.argv[1]
    p = Process(Slow, shutdown_timeout=2.0)
    print("WORKER", p.pid, flush=True)
    if how == "during-close":
        return interrupted_in_close(p)
    with p:
        try:
            if how == "asyncio-call-again":
                asyncio.run(p.acall(60))
            else:
                p.call(60)
        except KeyboardInterrupt:
            if how == "propagate":
                raise
            print("INTERRUPTED", flush=True)
        print("AGAIN", p.call(0.1), p.pid, flush=True)
"""


@pytest.mark.parametrize(
    "after",
    [
        "propagate",
        "call-again",
        "asyncio-call-again",
        "during-close",
    ],
)
def test_ctrl_c_interrupts_the_parent_only(tmp_path: Path, after: str) -> None:
    with Parent(write(tmp_path, CTRL_C), after) as parent:
        (worker,) = map(int, parent.expect("WORKER"))
        parent.expect_stderr("RUNNING")
        if after == "during-close":
            assert parent.proc.stdin is not None
            parent.proc.stdin.write("go\n")
            parent.proc.stdin.flush()
            parent.expect("CLOSING")
            time.sleep(0.3)  # inside close(), waiting for the running call
        parent.tree |= descendants(parent.pid)
        os.killpg(parent.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        sent = time.monotonic()
        again = after.endswith("call-again")
        if again:
            parent.expect("INTERRUPTED", within=5.0)
            result, new_worker = parent.expect("AGAIN", within=10.0)
            assert result == "slept"
            assert int(new_worker) != worker  # the interrupted worker was not reused
        code = parent.wait(8.0)
        took = time.monotonic() - sent
        assert code == (0 if again else -signal.SIGINT), str(parent)
        assert took < 5.0, "the parent did not exit promptly"
        # No worker traceback; only the parent's own when KeyboardInterrupt escapes.
        tracebacks = parent.stderr.count("Traceback (most recent call last)")
        assert tracebacks == (0 if again else 1), str(parent)
        if again:
            assert "KeyboardInterrupt" not in parent.stderr, str(parent)
        assert still_alive(parent.tree | {worker}, 2.0) == []


def test_no_fd_thread_or_zombie_growth_over_restarts(run_script: ScriptRunner) -> None:
    body = textwrap.dedent(
        """
        import threading

        class Fragile(Task[str, str]):
            def run(self, how: str) -> str:
                if how == "crash":
                    segfault()
                if how == "hang":
                    hang()
                return how

        def zombies():
            me, found = os.getpid(), []
            for entry in os.listdir("/proc"):
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if fields[0] == "Z" and int(fields[1]) == me:
                    found.append(int(entry))
            return found

        def restarts(p, n):
            for i in range(n):
                try:
                    p.call("crash" if i % 2 == 0 else "hang", timeout=0.2)
                except (WorkerCrashed, TaskTimeout):
                    pass
            assert p.call("ok") == "ok"
            return dict(fds=len(os.listdir("/proc/self/fd")),
                        threads=threading.active_count(), zombies=zombies())

        def parent():
            with Process(Fragile) as p:
                emit(**restarts(p, 2))
                emit(**restarts(p, 40))
        """
    )
    result = run_script(program(body + MAIN), timeout=90)
    warm, after = records(result)
    assert after["fds"] == warm["fds"], (warm, after)
    assert after["threads"] <= warm["threads"], (warm, after)
    assert warm["zombies"] == after["zombies"] == []
