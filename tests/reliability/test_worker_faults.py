"""Worker-side faults (Reliability II): a worker whose task forks, raises what
``except Exception`` misses or an endless message; a parent interrupted twice
in a row, killed at the worst moment, short of fds or threads; a program run
under a profiler, a class that only claims ``__main__``, a stray environment
marker, stdout noise that looks like a handshake. Each test runs real
programs and names what the caller sees; every wait in them is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, python_env, started
from proc_checks import descendants, wait_dead

from tarnish_py import _protocol, _wire

from ._prelude import program, records

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

OUTCOME = """
import concurrent.futures


def outcome(fn):
    try:
        return {"value": fn()}
    except Exception as e:
        if type(e) is concurrent.futures.TimeoutError:  # a Future's wait ran out
            return {"error": "hung"}
        return {"error": type(e).__name__, "signal": getattr(e, "signal", None),
                "text": str(e)[:400], "reason": getattr(e, "reason", None),
                "stderr": getattr(e, "stderr", None)}
"""


# -- 1. a crash while a forked descendant of the worker is alive ----------------

FORKER = OUTCOME + """
import multiprocessing


def note_sleeper(pid):
    open(os.path.join(os.environ["SLEEPERS"], str(pid)), "w").close()


def fork_sleeper():
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    note_sleeper(pid)


def cfork_sleeper():
    # fork(2) straight from C: no os.register_at_fork handler runs, so the child
    # keeps the worker's channel fds (as a native library's helper would).
    import ctypes

    pid = ctypes.CDLL(None, use_errno=True).fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    note_sleeper(pid)


def mp_sleeper():
    helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    helper.start()
    note_sleeper(helper.pid)


def channel_fds_in_a_forked_child():
    # How many fds of a forked child are the worker's channel pipes.
    inodes = {os.fstat(fd).st_ino for fd in (_boot.channel_in, _boot.channel_out)}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        found = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                found += os.fstat(int(name)).st_ino in inodes
            except OSError:
                pass
        os.write(w, str(found).encode())
        os._exit(0)
    os.close(w)
    found = int(os.read(r, 100))
    os.close(r)
    os.waitpid(pid, 0)
    return found


class Forker(Task[str, int]):
    def setup(self) -> None:
        exec(os.environ.get("SETUP", "pass"))

    def run(self, how: str) -> int:
        scope = {}
        exec(how, globals(), scope)
        return scope.get("result", os.getpid())


def parent():
    os.environ["SLEEPERS"] = sleepers = os.path.abspath("sleepers")
    os.mkdir(sleepers)
    seen = {}
    with Process(Forker) as p:
        seen["fds"] = outcome(lambda: p.call("result = channel_fds_in_a_forked_child()"))
        seen["fork"] = outcome(lambda: p.submit("fork_sleeper(); segfault()").result(timeout=10))
    with Process(Forker) as p:
        seen["mp"] = outcome(lambda: p.call("mp_sleeper(); segfault()", timeout=4))
        seen["after"] = outcome(lambda: p.call("pass", timeout=30))
    # The batched map waits on the pipe too; with start="exec" no fork server ends
    # the group of a worker that died, so only the pidfd can tell.
    with ProcessPool(Forker, size=1, start="exec") as pool:
        seen["map"] = [outcome(lambda: v) if not isinstance(v, Exception)
                       else {"error": type(v).__name__, "signal": getattr(v, "signal", None)}
                       for v in pool.map(["pass", "cfork_sleeper(); segfault()", "pass"],
                                         chunksize=3, timeout=20, return_exceptions=True)]
    os.environ["SETUP"] = "fork_sleeper(); segfault()"
    seen["setup"] = outcome(lambda: Process(Forker, spawn_timeout=4) and 0)
    pids = [int(name) for name in os.listdir(sleepers)]
    seen["sleepers"] = len(pids)
    seen["sleepers_dead"] = all(wait_dead(pid, 5.0) for pid in pids)
    emit(**seen)
"""


def test_crash_with_a_forked_descendant_alive_is_a_crash(run_script) -> None:
    """A task that forks without exec (os.fork, a multiprocessing helper) and then
    segfaults: the caller gets WorkerCrashed(SIGSEGV) at once — not a hang, not a
    TaskTimeout, not a spawn_timeout during setup() — the forked processes die
    with the worker, and none of them holds the worker's channel."""
    (seen,) = records(run_script(program(FORKER + MAIN), timeout=90))
    assert seen["fds"] == {"value": 0}, seen
    for case in ("fork", "mp"):
        assert seen[case]["error"] == "WorkerCrashed" and seen[case]["signal"] == "SIGSEGV", seen
    first, crashed, last = seen["map"]
    assert "value" in first and "value" in last, seen
    assert crashed == {"error": "WorkerCrashed", "signal": "SIGSEGV"}, seen
    assert "value" in seen["after"], seen
    assert seen["setup"]["error"] == "SpawnError", seen
    assert "killed by SIGSEGV" in seen["setup"]["text"], seen
    assert seen["sleepers"] == 4 and seen["sleepers_dead"], seen


# -- 8, 17, 22. what run() raises, however large; bad per-call timeouts ---------

RAISER = """
class Raiser(Task[str, int]):
    def run(self, how: str) -> int:
        exec(how)
        return os.getpid()


def deep(n):
    return deep(n - 1) if n else 1 / 0


RAISES = {
    "BaseException": "raise BaseException('plain base')",
    "SystemExit": "raise SystemExit(3)",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
    "GeneratorExit": "raise GeneratorExit",
    "ValueError": "raise ValueError('x' * 200_000)",
    "ZeroDivisionError": "deep(300)",
}
BAD_TIMEOUTS = {"'soon'": "soon", "True": True, "-1": -1, "0": 0, "nan": float("nan")}


def parent():
    with Process(Raiser, max_message_bytes=4096) as p:
        pid = p.call("pass")
        errors = {}
        for name, how in RAISES.items():
            try:
                p.call(how, timeout=30)
                errors[name] = None
            except Exception as e:
                size = len(getattr(e, "message", "")) + len(getattr(e, "traceback", ""))
                errors[name] = {"type": type(e).__name__, "size": size,
                                "type_name": getattr(e, "type_name", None)}
        timeouts = {}
        for name, value in BAD_TIMEOUTS.items():
            for form in ("call", "submit"):
                try:
                    if form == "call":
                        p.call("pass", timeout=value)
                    else:
                        p.submit("pass", timeout=value).result(timeout=30)
                    timeouts[form + " " + name] = None
                except Exception as e:
                    timeouts[form + " " + name] = type(e).__name__
        emit(errors=errors, timeouts=timeouts, pid=pid, last=p.call("pass"), now=p.pid)
"""


def test_anything_run_raises_is_a_task_error_and_the_worker_stays(run_script) -> None:
    """BaseException, SystemExit, KeyboardInterrupt, GeneratorExit raised by run(), and an
    error whose text is far longer than max_message_bytes: each a TaskError (text
    cut to fit), on the same worker. A per-call timeout that is not a positive number
    of seconds is refused with TypeError/ValueError, and nothing is sent."""
    (seen,) = records(run_script(program(RAISER + MAIN), timeout=60))
    for name, error in seen["errors"].items():
        assert error is not None and error["type"] == "TaskError", (name, seen)
        assert error["type_name"] == name, (name, seen)
        assert error["size"] < 4096, (name, seen)
    timeouts = seen["timeouts"]
    for form in ("call", "submit"):
        assert timeouts[f"{form} 'soon'"] == timeouts[f"{form} True"] == "TypeError", timeouts
        assert timeouts[f"{form} -1"] == timeouts[f"{form} 0"] == "ValueError", timeouts
        assert timeouts[f"{form} nan"] == "ValueError", timeouts
    assert seen["pid"] == seen["last"] == seen["now"], seen


# -- 10. Ctrl-C twice, a few ms apart, at any instant of a call -----------------

INTERRUPTS = OUTCOME + """
import random


class Echo(Task[tuple[int, float], int]):
    def run(self, call: tuple[int, float]) -> int:
        time.sleep(call[1])
        return 7 * call[0]


class SlowStart(Task[int, int]):
    def setup(self) -> None:
        if os.path.exists("slow"):
            time.sleep(1.5)

    def run(self, x: int) -> int:
        if x < 0:
            os._exit(1)
        return 7 * x


def twice_interrupted(call, rng):
    # Two SIGINTs a few ms apart land somewhere in call(); whatever comes out of
    # it, later interrupts (in the handler, the join ...) are swallowed here.
    delays = [rng.uniform(0.0, 0.03), rng.uniform(0.001, 0.008)]
    go = threading.Event()

    def send():
        go.wait()
        for delay in delays:
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGINT)

    # A daemon, started inside the loop: a late SIGINT of the round before may land
    # in start() (and a sender left waiting must never hold up the exit).
    sender = threading.Thread(target=send, daemon=True)
    out = ["interrupted"]
    started = False
    while True:
        try:
            if sender.ident is None:
                sender.start()
            if not started:
                started = True
                go.set()
                try:
                    out[0] = call()
                except Exception as e:
                    out[0] = f"{type(e).__name__}: {e}"[:300]
            go.set()
            sender.join()
            time.sleep(0.01)
            return out[0]
        except KeyboardInterrupt:
            continue


def fds():
    return len(os.listdir("/proc/self/fd"))


def zombies():
    me = str(os.getpid())
    found = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found += fields[0] == "Z" and fields[1] == me
    return found


def settled(before, within=10.0):
    deadline = time.monotonic() + within
    while (fds(), len(children())) != before and time.monotonic() < deadline:
        time.sleep(0.02)
    return fds(), len(children())


def parent():
    seen = {}
    with Process(SlowStart) as p:
        open("slow", "w").close()
        seen["crash"] = outcome(lambda: p.call(-1))
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            p.call(1)
            seen["mid_handshake"] = "not interrupted"
        except KeyboardInterrupt:
            seen["mid_handshake"] = "interrupted"
        os.remove("slow")
        seen["next"] = outcome(lambda: p.call(2, timeout=30))
    rng = random.Random(20240611)
    bad = []
    with Process(Echo) as p:
        p.call((0, 0.0))
        before = (fds(), len(children()))
        for i in range(ROUNDS):
            got = twice_interrupted(lambda: p.call((i, rng.uniform(0.0, 0.02)), timeout=30), rng)
            if got != "interrupted" and got != 7 * i:
                bad.append(got)
        seen["last"] = outcome(lambda: p.call((6, 0.0), timeout=30))
        seen["before"], seen["after"] = before, settled(before)
        seen["zombies"] = zombies()
    seen["bad"] = bad
    emit(**seen)
"""


def test_interrupts_at_any_instant_leave_no_half_state(run_script) -> None:
    """Ctrl-C while the replacement worker starts, then pairs of Ctrl-Cs a few ms apart
    at random instants of calls: the caller sees its value or KeyboardInterrupt —
    never an interrupted worker reused (ProtocolError), a spurious WorkerCrashed or
    a bare OSError — and no process, fd or zombie is left over."""
    (seen,) = records(run_script(program("ROUNDS = 40\n" + INTERRUPTS + MAIN), timeout=110))
    assert seen["crash"]["error"] == "WorkerCrashed", seen
    assert seen["mid_handshake"] == "interrupted", seen
    assert seen["next"] == {"value": 14}, seen
    assert seen["bad"] == [], seen
    assert seen["last"] == {"value": 42}, seen
    assert seen["after"] == seen["before"], seen  # fds; one worker and the watchdog
    assert seen["zombies"] == 0, seen


# -- 12. which program a __main__ task re-executes ------------------------------

GHOSTS = OUTCOME + """
import multiprocessing, types

if _boot.config is not None:  # a re-executed worker: count it
    open(os.path.join(os.environ["RUNS"], str(os.getpid())), "w").close()


class Real(Task[int, int]):
    def run(self, x: int) -> int:
        return x + 1


class Renamed(Task[int, int]):
    def run(self, x: int) -> int:
        return x


Alias = Renamed
del Renamed


def ghost():
    # What cloudpickle rebuilds in a Dask or Ray worker: says __main__, is not there.
    return types.new_class("Ghost", (Task[int, int],), exec_body=lambda ns: ns.update(
        {"run": lambda self, x: x, "__module__": "__main__", "__qualname__": "Ghost"}))


def in_a_spawned_child(queue):
    queue.put(outcome(lambda: Process(ghost(), spawn_timeout=10) and 0))


def runs():
    return len(os.listdir(os.environ["RUNS"]))


def parent():
    os.environ["RUNS"] = os.path.abspath("runs")
    os.mkdir("runs")
    with Process(Real) as p:
        seen = {"real": p.call(1), "runs_real": runs()}
    seen["ghost"] = outcome(lambda: Process(ghost(), spawn_timeout=10) and 0)
    seen["alias"] = outcome(lambda: Process(Alias, spawn_timeout=10) and 0)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=in_a_spawned_child, args=(queue,))
    child.start()
    seen["mp_child"] = queue.get(timeout=60)
    child.join(30)
    time.sleep(0.3)  # a re-executed program would have announced itself by now
    seen["runs_after"] = runs()
    emit(**seen)
"""

PROFILED = """
class Plus(Task[int, int]):
    def run(self, x: int) -> int:
        return x + 1


@tarnish_py.task("triple")
def triple(x: int) -> int:
    return 3 * x


def parent():
    with Process(Plus) as p:
        emit(plus=p.call(1), triple=triple(2))
"""


def test_a_main_task_reexecutes_only_its_own_program(run_script) -> None:
    """A class that says __module__ == "__main__" but that the program's __main__ does
    not define at that name (rebuilt elsewhere, or renamed) is a SpawnError naming
    the cause — the program is never re-executed for it — also in a multiprocessing
    spawn child, where the error does not blame an interactive session."""
    (seen,) = records(run_script(program(GHOSTS + MAIN), timeout=90))
    assert seen["real"] == 2 and seen["runs_real"] == 1, seen
    for case in ("ghost", "alias", "mp_child"):
        assert seen[case]["error"] == "SpawnError", seen
        assert "does not define" in seen[case]["text"], seen
        assert "interactive" not in seen[case]["text"], seen
    assert "cloudpickle" in seen["ghost"]["text"], seen
    assert seen["runs_after"] == 1, seen


@pytest.mark.parametrize(
    "runner",
    [
        pytest.param(["-m", "cProfile", "-o", "profile.out"], id="cProfile"),
        pytest.param(["-m", "trace", "--count", "-C", "coverage"], id="trace"),
    ],
)
def test_a_script_run_under_a_profiler_serves_its_tasks(run_script, runner: list[str]) -> None:
    """``python -m cProfile script.py``: the script's own namespace (the frame that
    calls main()) is the program's __main__, in the parent and in the worker."""
    result = run_script(program(PROFILED + MAIN), python_args=[*runner, "prog.py"], timeout=90)
    (seen,) = records(result)
    assert seen == {"plus": 2, "triple": 6}, seen


# -- 13. the parent SIGKILLed at the worst moment; the watchdog killed -----------

DIES_BEFORE_REGISTER = """
class Stuck(Task[int, int]):
    def setup(self) -> None:
        hang()

    def run(self, x: int) -> int:
        return x


def die_now(pgid):
    with open("worker.pid", "w") as f:
        f.write(str(pgid))
    os.kill(os.getpid(), signal.SIGKILL)


def parent():
    from tarnish_py import _watchdog
    _watchdog.watchdog.register = die_now  # the parent dies just after the worker's Popen
    Process(Stuck)
"""

WATCHDOG_KILLED = """
class Busy(Task[str, int]):
    def run(self, how: str) -> int:
        exec(how)
        return os.getpid()


def parent():
    # exec'd workers: the parent's children are then its workers and the watchdog
    a = Process(Busy, start="exec")
    a.submit("sum(range(10**13))")  # holds the GIL in C: nothing in the worker runs
    time.sleep(0.2)
    (watchdog,) = [pid for pid in children() if pid != a.pid]
    os.kill(watchdog, signal.SIGKILL)
    wait_dead(watchdog, 5.0)
    b = Process(Busy, start="exec")
    emit(pids=[a.pid, b.pid], watchdog=watchdog)
    hang()
"""


def _kill_groups(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def test_parent_killed_right_after_starting_a_worker_takes_it_along(tmp_path: Path) -> None:
    """The parent is SIGKILLed between the worker's Popen and telling the watchdog
    about it, while the worker's setup() would hang: the worker still dies."""
    script = tmp_path / "prog.py"
    script.write_text(program(DIES_BEFORE_REGISTER + MAIN))
    proc = subprocess.run([sys.executable, str(script)], env=python_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    worker = int((tmp_path / "worker.pid").read_text())
    try:
        assert wait_dead(worker, 10.0), "the worker outlived its parent"
    finally:
        _kill_groups([worker])


def test_a_killed_watchdog_is_restarted_with_every_live_worker(tmp_path: Path) -> None:
    """The watchdog is SIGKILLed; the next worker start revives it with every live
    worker group, so a worker stuck in C (its own thread cannot run) started before
    still dies when the parent is SIGKILLed."""
    pids: list[int] = []
    try:
        with started(tmp_path, program(WATCHDOG_KILLED + MAIN), within=60) as (proc, line):
            pids = line["pids"]
            family = descendants(proc.pid)
            assert set(pids) <= family and line["watchdog"] not in family, (line, family)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            survivors = [pid for pid in family if not wait_dead(pid, 5.0)]
            assert not survivors, survivors
    finally:
        _kill_groups(pids)


# -- 14. what a timeout kill reaches ---------------------------------------------

HELPERS = """
class Starter(Task[str, int]):
    def run(self, how: str) -> int:
        if how == "start":
            code = "import time; time.sleep(600)"
            grouped = subprocess.Popen([sys.executable, "-c", code])
            detached = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
            with open("helpers.json", "w") as f:
                json.dump([grouped.pid, detached.pid], f)
            return 0
        hang()
        return 1


def parent():
    with Process(Starter) as p:
        p.call("start")
        with open("helpers.json") as f:
            grouped, detached = json.load(f)
        try:
            p.call("hang", timeout=0.5)
        except TaskTimeout:
            pass
        emit(grouped_dead=wait_dead(grouped, 5.0), detached_dead=wait_dead(detached, 0.5),
             detached=detached)
    os.kill(detached, signal.SIGKILL)
"""


def test_a_timeout_kills_the_workers_group_and_the_readme_says_so(run_script) -> None:
    """The documented limit, both sides of it: a process the task started dies with the
    worker's process group; one that left the group (start_new_session=True) does not,
    and README.md says exactly that."""
    (seen,) = records(run_script(program(HELPERS + MAIN), timeout=60))
    assert seen["grouped_dead"], seen
    assert not seen["detached_dead"], seen
    readme = (REPO / "README.md").read_text()
    assert "start_new_session=True" in readme and "leaves the worker's process group" in readme


# -- 18. out of fds or threads just after Popen ----------------------------------

SQUEEZED = OUTCOME + """
import resource

REAL_POPEN = subprocess.Popen
REAL_START = threading.Thread.start
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)
MODE = [None]


class SqueezedPopen(REAL_POPEN):
    # Right after a worker's process exists: no fd left, or no thread.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "TARNISH_PY_WORKER" in (kwargs.get("env") or {}):
            if MODE[0] == "fds":
                lowest = os.dup(0)
                os.close(lowest)
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, NOFILE[1]))
            elif MODE[0] == "threads":
                MODE[0] = "fail the next thread"


def start(thread):
    if MODE[0] == "fail the next thread":
        MODE[0] = None
        raise RuntimeError("can't start new thread")
    REAL_START(thread)


subprocess.Popen = SqueezedPopen
threading.Thread.start = start


class Plain(Task[int, int]):
    def run(self, x: int) -> int:
        return x


def snapshot(within=10.0):
    deadline = time.monotonic() + within
    while True:
        now = (len(os.listdir("/proc/self/fd")), sorted(children()))
        if now == BEFORE[0] or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


BEFORE = [None]


def parent():
    with Process(Plain) as p:  # the watchdog runs from here on
        p.call(1)
    BEFORE[0] = snapshot(0)
    seen = {}
    for mode in ("fds", "threads"):
        MODE[0] = mode
        try:
            seen[mode] = outcome(lambda: Process(Plain, spawn_timeout=10) and 0)
        finally:
            MODE[0] = None
            resource.setrlimit(resource.RLIMIT_NOFILE, NOFILE)
        seen[mode + "_after"] = snapshot()
    with Process(Plain) as p:
        seen["works"] = p.call(5)
    emit(before=BEFORE[0], **seen)
"""


def test_no_fd_or_thread_left_just_after_popen_is_a_spawn_error(run_script) -> None:
    """RLIMIT_NOFILE lowered, or thread creation failing, just after a worker's Popen:
    SpawnError, and the started process and every fd are released."""
    (seen,) = records(run_script(program(SQUEEZED + MAIN), timeout=60))
    for mode in ("fds", "threads"):
        assert seen[mode]["error"] == "SpawnError", seen
        assert seen[mode + "_after"] == seen["before"], seen
    assert seen["works"] == 5


# -- 19. a call's timeout bounds its wait for a starting worker ------------------

SLOW_REPLACEMENT = OUTCOME + """
class SlowStart(Task[int, int]):
    def setup(self) -> None:
        if os.path.exists("slow"):
            time.sleep(3.0)

    def run(self, x: int) -> int:
        if x < 0:
            os._exit(1)
        return os.getpid()


def parent():
    with Process(SlowStart) as p:
        open("slow", "w").close()
        seen = {"crash": outcome(lambda: p.call(-1))}
        starting = p.pid
        seen["call"] = outcome(lambda: p.call(0, timeout=0.5))
        seen["submit"] = outcome(lambda: p.submit(0, timeout=0.3).result(timeout=30))
        seen["later"] = outcome(lambda: p.call(0, timeout=30))
        emit(starting=starting, **seen)
"""


def test_a_call_timeout_bounds_the_wait_for_a_starting_worker(run_script) -> None:
    """The replacement worker takes 3 s in setup(): a call with timeout=0.5 made
    meanwhile is a TaskTimeout (not a result 3 s later), and the starting worker is
    not killed for it: the next call gets it."""
    (seen,) = records(run_script(program(SLOW_REPLACEMENT + MAIN), timeout=60))
    assert seen["crash"]["error"] == "WorkerCrashed", seen
    for form in ("call", "submit"):
        assert seen[form]["error"] == "TaskTimeout", seen
        assert "still starting" in seen[form]["text"], seen
    assert seen["later"] == {"value": seen["starting"]}, seen


# -- 20. the environment marker set by accident -----------------------------------

PLAIN_PROGRAM = "import tarnish_py, sys; print('normal program'); sys.stdout.flush()"


def _marker(parent: int, token: str | None = "ab" * 16) -> str:
    fields = {"module": "__main__", "name": "X", "max": 1024, "parent": parent, "path": None,
              "cwd": None}
    if token is not None:
        fields["token"] = token
    return json.dumps(fields)


def _run_with_marker(tmp_path: Path, marker: str, stdout_to_file: bool = False) -> tuple:
    env = python_env()
    env["TARNISH_PY_WORKER"] = marker
    out_path = tmp_path / "out.txt"
    with open(out_path, "wb") as out_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", PLAIN_PROGRAM], env=env, cwd=tmp_path,
            stdin=subprocess.PIPE,  # kept open: a live writer, as a real parent has
            stdout=out_file if stdout_to_file else subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=30) if not stdout_to_file else (b"", b"")
            if stdout_to_file:
                proc.wait(30)
                assert proc.stderr is not None
                err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    if stdout_to_file:
        out = out_path.read_bytes()
    return proc.returncode, out, err.decode()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


@pytest.mark.parametrize(
    "case",
    ["garbage", "not_my_parent", "stdout_not_a_pipe", "no_token", "empty"],
)
def test_a_stray_marker_leaves_a_normal_program_normal(tmp_path: Path, case: str) -> None:
    """TARNISH_PY_WORKER set by accident — garbage, a valid value naming another
    parent, stdout not a pipe, no token — is not a worker: the program runs as it
    would, with a warning on stderr; it never writes protocol bytes or kills its group."""
    me = os.getpid()
    marker = {
        "garbage": "{not json",
        "not_my_parent": _marker(os.getppid()),
        "stdout_not_a_pipe": _marker(me),
        "no_token": _marker(me, token=None),
        "empty": "",
    }[case]
    code, out, err = _run_with_marker(tmp_path, marker, stdout_to_file=case == "stdout_not_a_pipe")
    assert code == 0 and out == b"normal program\n", (code, out, err)
    assert "TARNISH_PY_WORKER" in err, err


def test_an_orphaned_worker_exits_instead_of_running_the_program(tmp_path: Path) -> None:
    """A marker naming a parent that is gone, with the channel pipes in place: the
    worker's parent died while it started. It exits at once, saying so, and never
    runs the program (which would start workers of its own)."""
    code, out, err = _run_with_marker(tmp_path, _marker(_dead_pid()))
    assert code != 0 and out == b"", (code, out, err)
    assert "normal program" not in err and "parent" in err, err


# -- 21. stdout noise that looks like a handshake --------------------------------

FORGED = [
    _wire.encode_frame([_protocol.HELLO, 1, 4242]),
    _wire.encode_frame([_protocol.HELLO, _protocol.PROTOCOL_VERSION, 4242]),
    _wire.encode_frame([_protocol.HELLO, "f" * 32, _protocol.PROTOCOL_VERSION, 4242]),
    _wire.encode_frame([_protocol.FATAL, "forged"]),
    _wire.encode_frame([_protocol.FATAL, "forged", "f" * 32]),
]

NOISY_TOP = f"""
import os
if "TARNISH_PY_WORKER" in os.environ:  # the re-executed worker, before importing tarnish_py
    os.write(1, {b"".join(FORGED)!r})
"""

NOISY = """
class Plus(Task[int, int]):
    def run(self, x: int) -> int:
        return x + 1


def parent():
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the forwarded noise is binary
    with Process(Plus) as p:
        emit(value=p.call(1), again=p.call(2))
"""


def test_stdout_noise_cannot_forge_a_handshake(run_script) -> None:
    """Frames written on stdout before ``import tarnish_py`` that look like Hello or
    Fatal (without this spawn's token) are noise: the worker starts and serves."""
    source = NOISY_TOP + program(NOISY + MAIN)
    (seen,) = records(run_script(source, timeout=60))
    assert seen == {"value": 2, "again": 3}, seen


# -- 24. a task that cannot be set up says why ------------------------------------

UNSERVABLE = OUTCOME + """
class BadSetup(Task[int, int]):
    def setup(self) -> None:
        raise RuntimeError("setup exploded: 8731")

    def run(self, x: int) -> int:
        return x


class NeedsArgs(Task[int, int]):
    def __init__(self, model: str) -> None:
        self.model = model

    def run(self, x: int) -> int:
        return x


class BadInit(Task[int, int]):
    def __init__(self) -> None:
        raise ValueError("init exploded: 5150")

    def run(self, x: int) -> int:
        return x


def parent():
    emit(**{cls.__name__: outcome(lambda: Process(cls, spawn_timeout=20) and 0)
            for cls in (BadSetup, NeedsArgs, BadInit)})
"""


def test_a_task_that_cannot_be_set_up_says_why_with_its_traceback(run_script) -> None:
    (seen,) = records(run_script(program(UNSERVABLE + MAIN), timeout=60))
    expected = {
        "BadSetup": ("setup() raised RuntimeError: setup exploded: 8731", "setup exploded: 8731"),
        "NeedsArgs": ("cannot be instantiated without arguments", "model"),
        "BadInit": ("raised ValueError: init exploded: 5150", "init exploded: 5150"),
    }
    for name, (phrase, in_stderr) in expected.items():
        error = seen[name]
        assert error["error"] == "SpawnError", (name, seen)
        assert phrase in error["reason"], (name, error)
        assert "Traceback (most recent call last)" in error["stderr"], (name, error)
        assert in_stderr in error["stderr"], (name, error)
