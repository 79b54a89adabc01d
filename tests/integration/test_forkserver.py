"""start="auto": workers forked from one fork server per handle.

Module-level code runs in the parent and once in each handle's server (not per
worker, not per crash); forked workers crash, time out and die with their
parent exactly like exec'd ones; a server that dies is replaced; a program that
runs threads at import falls back to exec; start="exec" re-executes per worker.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import ScriptRunner
from proc_checks import still_alive

from ._procs import Parent
from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

# The first lines of each program: one line in starts.log per run of its module code.
COUNTED = 'import os\nwith open("starts.log", "a") as f:\n    f.write(f"{os.getpid()}\\n")\n'

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

TASKS = """
def starts():
    with open("starts.log") as f:
        return len(f.read().split())


class Probe(Task[str, list]):
    def setup(self):
        self.setup_pid = os.getpid()

    def run(self, how: str) -> list:
        if how == "segfault":
            import faulthandler
            faulthandler.disable()
            segfault()
        if how == "exit":
            exit_(7)
        if how == "hang-with-child":
            child = subprocess.Popen(["sleep", "60"])
            with open("grandchild.pid", "w") as f:
                f.write(str(child.pid))
            hang()
        return [os.getpid(), self.setup_pid, os.getppid(), os.getpgid(0)]


def crash(p, how):
    try:
        p.call(how)
    except WorkerCrashed as e:
        return [e.signal, e.exitcode]
    return None
"""


def test_module_code_runs_once_per_handle_and_forked_workers_behave(
    run_script: ScriptRunner,
) -> None:
    source = COUNTED + program(TASKS + """
from tarnish_py import ProcessPool

def parent():
    me = os.getpid()
    with ProcessPool(Probe, size=3) as pool:
        infos = [pool.call("info") for _ in range(6)]
        emit(pool_workers=len({i[0] for i in infos}), servers=sorted({i[2] for i in infos}),
             me=me, own_groups=all(i[0] == i[3] for i in infos),
             setup_in_worker=all(i[0] == i[1] for i in infos))
        emit(crashes=[crash(pool, "segfault"), crash(pool, "exit")])
        emit(after_crashes=pool.call("info")[2] in {i[2] for i in infos}, starts=starts())
    with Process(Probe, timeout=2.0) as p:
        server = p.call("info")[2]
        try:
            p.call("hang-with-child")
        except TaskTimeout:
            pass
        with open("grandchild.pid") as f:
            emit(grandchild_dead=wait_dead(int(f.read()), 5.0))
        emit(starts=starts())
        worker, _, server, _ = p.call("info")
        os.kill(server, signal.SIGKILL)
        wait_dead(server, 5.0)
        emit(same_worker_serves=p.call("info")[0] == worker)
        crashed = crash(p, "segfault")
        info = p.call("info")
        emit(crashed=crashed is not None, new_server=info[2] not in (server, me),
             starts=starts())
    before = starts()
    with Process(Probe, start="exec") as p:
        first = p.call("info")
        crash(p, "segfault")
        second = p.call("info")
        emit(exec_parent=[first[2] == me, second[2] == me], exec_starts=starts() - before)
""" + MAIN)
    out = records(run_script(source, timeout=90))
    pool, crashes, after, timeout, starts, same, replaced, execd = out
    assert pool["pool_workers"] == 3 and pool["own_groups"] and pool["setup_in_worker"], pool
    (server,) = pool["servers"]
    assert server != pool["me"], pool
    assert crashes["crashes"] == [["SIGSEGV", -11], [None, 7]], crashes
    # Parent and server, whatever the pool size and the crashes.
    assert after == {"after_crashes": True, "starts": 2}, after
    assert timeout == {"grandchild_dead": True}, timeout
    assert starts == {"starts": 3}, starts  # the Process's own server
    assert same == {"same_worker_serves": True}, same
    assert replaced == {"crashed": True, "new_server": True, "starts": 4}, replaced
    assert execd == {"exec_parent": [True, True], "exec_starts": 2}, execd


THREADED = """
import logging, threading
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()

class Ping(Task[int, list]):
    def run(self, x: int) -> list:
        return [x, os.getppid()]

class Remember(logging.Handler):
    messages = []
    def emit(self, record):
        self.messages.append(record.getMessage())

def parent():
    logging.getLogger("tarnish_py").addHandler(Remember())
    with Process(Ping) as p:
        first = p.call(1)
        emit(result=first[0], parent_is_me=first[1] == os.getpid(),
             logged=[m for m in Remember.messages if "exec" in m])
"""


def test_a_program_with_threads_falls_back_to_exec(run_script: ScriptRunner) -> None:
    (found,) = records(run_script(program(THREADED + MAIN), timeout=60))
    assert found["result"] == 1 and found["parent_is_me"], found
    (message,) = found["logged"]
    assert "threads" in message, message


IMPORTABLE = {
    "probe_tasks.py": COUNTED + """
import ctypes
from tarnish_py import Task

class Where(Task[int, int]):
    def run(self, x: int) -> int:
        if x < 0:
            import faulthandler
            faulthandler.disable()
            ctypes.string_at(0)
        return os.getppid()
"""
}


def test_importable_task_uses_the_server(run_script: ScriptRunner) -> None:
    source = program("""
from probe_tasks import Where

with Process(Where) as p:
    server = p.call(1)
    try:
        p.call(-1)
    except WorkerCrashed as e:
        signal_name = e.signal
    emit(forked=server != os.getpid(), same_server=p.call(1) == server, signal=signal_name,
         starts=len(open("starts.log").read().split()))
""")
    (found,) = records(run_script(source, files=IMPORTABLE, timeout=60))
    assert found == {"forked": True, "same_server": True, "signal": "SIGSEGV", "starts": 2}


SIGKILLED = """
from tarnish_py import ProcessPool

class Ppid(Task[int, int]):
    def run(self, x: int) -> int:
        return os.getppid()

def parent():
    pool = ProcessPool(Ppid, size=2)
    (server,) = set(pool.map(range(4)))
    print("READY", server, *pool.pids, flush=True)
    time.sleep(600)
"""


def test_parent_sigkilled_takes_server_and_workers(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(program(SIGKILLED + MAIN))
    with Parent(script) as parent:
        pids = list(map(int, parent.expect("READY")))
        parent.tree |= set(pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5.0)
        assert still_alive(pids, 5.0) == [], (pids, str(parent))


def test_server_that_cannot_start_is_a_spawn_error(run_script: ScriptRunner) -> None:
    source = COUNTED + program("""
if len(open("starts.log").read().split()) > 1:  # the parent passes, its servers fail
    raise ImportError("cannot load libfrobnicate.so")

class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x

def parent():
    for _ in range(2):
        started = time.monotonic()
        try:
            Process(Double)
        except SpawnError as e:
            emit(error=str(e), stderr=e.stderr, elapsed=time.monotonic() - started)
""" + MAIN)
    failures = records(run_script(source, timeout=60))
    assert len(failures) == 2
    for failure in failures:
        assert "libfrobnicate" in failure["error"] + failure["stderr"], failure
        assert failure["elapsed"] < 30
