"""Fault injection: workers and parents that misbehave in every way we could
think of. Each test runs a real program, names what the caller sees, and checks
that nothing else is lost: the misbehaving worker is dead, the next call works
on a fresh worker, no process is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import python_env, started
from proc_checks import descendants, wait_dead

from ._prelude import program, records

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

# -- a worker that breaks the channel ------------------------------------------

BREAKER = """
import msgpack


def envelope(message, lengths):
    return _wire.envelope_frame(_wire.pack(message), lengths)


class Breaker(Task[str, int]):
    def run(self, how: str) -> int:
        exec(how)
        return os.getpid()


def parent():
    with Process(Breaker, max_message_bytes=1 << 20) as p:
        old = p.call("pass")
        t0 = time.monotonic()
        try:
            p.call(BEHAVIOUR, timeout=CALL_TIMEOUT)
            seen = {"error": None}
        except Exception as e:
            seen = {"error": type(e).__name__, "text": str(e),
                    "exitcode": getattr(e, "exitcode", None)}
        seen["elapsed"] = elapsed_since(t0)
        seen["old_dead"] = wait_dead(old, 2.0)
        new = p.call("pass")
        emit(old=old, new=new, pid=p.pid, running=p.is_running(),
             children=len(children()), **seen)
"""

# (what the worker does in run(), what the caller sees, a phrase of its message)
BREAKS = [
    pytest.param(
        "close_channel(); hang()",
        "ProtocolError",
        "closed its channel but kept running",
        id="closes_channel_keeps_running",
    ),
    pytest.param(
        "close_channel(inbound=False); hang()",
        "ProtocolError",
        "closed its channel but kept running",
        id="closes_channel_out_keeps_running",
    ),
    pytest.param(
        "close_channel()",  # run() returns: the reply cannot be written, the worker exits 1
        "WorkerCrashed",
        "exited with code 1",
        id="closes_channel_then_returns",
    ),
    pytest.param(
        "f = frame([_protocol.RESULT, 2, 42]); to_parent(f[: len(f) // 2]); os._exit(7)",
        "WorkerCrashed",
        "exited with code 7",
        id="half_frame_then_exit",
    ),
    pytest.param(
        "f = frame([_protocol.RESULT, 2, 42]); to_parent(f[: len(f) // 2]); hang()",
        "TaskTimeout",
        "did not finish within 1 s",
        id="half_frame_then_hang",
    ),
    pytest.param(
        "to_parent(frame([_protocol.RESULT, 999, 42])); hang()",
        "ProtocolError",
        "unexpected reply to call 2",
        id="result_for_call_999",
    ),
    pytest.param(
        "to_parent(frame([_protocol.ERROR, 999, 'E', 'm', 'tb'])); hang()",
        "ProtocolError",
        "unexpected reply to call 2",
        id="error_for_call_999",
    ),
    pytest.param(
        "to_parent(frame([_protocol.HELLO, _protocol.PROTOCOL_VERSION, os.getpid()])); hang()",
        "ProtocolError",
        "unexpected reply to call 2",
        id="hello_mid_call",
    ),
    pytest.param(
        "to_parent(frame([42, 2, 0])); hang()",
        "ProtocolError",
        "unexpected reply to call 2",
        id="unknown_kind",
    ),
    pytest.param(
        "to_parent(b'\\x07not cobs nor msgpack\\x00'); hang()",
        "ProtocolError",
        "undecodable frame",
        id="garbage_frame",
    ),
    pytest.param(
        "to_parent(b'\\x01' * (8 << 20)); hang()",  # never a terminator: past max_message_bytes
        "ProtocolError",
        "exceeds the limit",
        id="endless_frame",
    ),
    # Large values out of band (_segments): an envelope frame, then raw segments.
    pytest.param(
        "to_parent(envelope([_protocol.RESULT, 2, 0], [10 << 30])); hang()",
        "ProtocolError",
        "announcing 10737418",  # refused before a byte is allocated
        id="envelope_announcing_10_GiB",
    ),
    pytest.param(
        "to_parent(envelope([_protocol.RESULT, 2, 0], [512 << 10]) + b'x' * 1000); os._exit(7)",
        "WorkerCrashed",
        "exited with code 7",
        id="half_segment_then_exit",
    ),
    pytest.param(
        "to_parent(envelope([_protocol.RESULT, 2, 0], [512 << 10]) + b'x' * 1000); hang()",
        "TaskTimeout",
        "did not finish within 1 s",
        id="half_segment_then_hang",
    ),
    pytest.param(
        "to_parent(frame([_protocol.RESULT, 2, msgpack.ExtType(101, bytes(4))])); hang()",
        "ProtocolError",
        "no envelope announced",
        id="segment_reference_without_envelope",
    ),
]


@pytest.mark.parametrize(("behaviour", "error", "phrase"), BREAKS)
def test_worker_breaking_the_channel_is_killed_and_replaced(
    run_script, behaviour: str, error: str, phrase: str
) -> None:
    source = f"BEHAVIOUR = {behaviour!r}\nCALL_TIMEOUT = 1.0\n" + BREAKER + MAIN
    (seen,) = records(run_script(program(source), timeout=60))
    assert seen["error"] == error, seen
    assert phrase in seen["text"], seen
    if error == "WorkerCrashed":
        assert seen["exitcode"] == int(phrase.rsplit(" ", 1)[1])
    # Never a hang: at most the library's grace for a worker that outlives EOF (2 s).
    assert seen["elapsed"] < 6.0, seen
    assert seen["old_dead"], seen
    assert seen["new"] == seen["pid"] != seen["old"], seen
    assert seen["running"]
    assert seen["children"] == 2, seen  # the new worker and the watchdog


# -- a worker that floods stderr -----------------------------------------------

FLOOD = """
class Flood(Task[int, int]):
    def run(self, megabytes: int) -> int:
        chunk = b"x" * 1023 + b"\\n"
        chunk *= 1024
        for _ in range(megabytes):
            os.write(FD, chunk)
        return megabytes


def parent():
    with Process(Flood, timeout=60) as p:
        p.call(1)
        rss, peak = memory("VmRSS"), memory("VmHWM")
        t0 = time.monotonic()
        value = p.call(300)
        emit(value=value, elapsed=elapsed_since(t0), rss_before=rss, peak_before=peak,
             peak_after=memory("VmHWM"), next=p.call(2))
"""


@pytest.mark.parametrize("fd", [2, 1], ids=["stderr", "stdout"])
def test_worker_flooding_stderr_does_not_block_or_bloat_the_parent(tmp_path: Path, fd: int) -> None:
    """300 MB on the worker's stderr (or its stdout, which goes there too) while the
    parent waits: the call returns its value and the parent's peak RSS barely moves.
    The parent forwards the flood to its own stderr, which is /dev/null here."""
    script = tmp_path / "flood.py"
    script.write_text(program(f"FD = {fd}\n" + FLOOD + MAIN))
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=python_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout
    (seen,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert seen["value"] == 300 and seen["next"] == 2, seen
    assert seen["peak_after"] - seen["peak_before"] < 32 << 20, seen


# -- a worker that cannot start ------------------------------------------------

SPAWN = """
class Starter(Task[int, int]):
    def setup(self) -> None:
        with open(os.environ["PIDFILE"], "w") as f:
            f.write(str(os.getpid()))
        exec(SETUP)

    def run(self, x: int) -> int:
        return x


def parent():
    os.environ["PIDFILE"] = os.path.abspath("worker.pid")
    t0 = time.monotonic()
    try:
        Process(Starter, spawn_timeout=SPAWN_TIMEOUT)
        seen = {"error": None}
    except Exception as e:
        seen = {"error": type(e).__name__, "text": str(e)}
    seen["elapsed"] = elapsed_since(t0)
    with open("worker.pid") as f:
        seen["pid_dead"] = wait_dead(int(f.read()), 1.0)
    time.sleep(0.3)  # a respawn loop would show up as more workers here
    seen["children"] = len(children())
    emit(**seen)
"""

HANG_AT_IMPORT = """
if _boot.config is not None:  # only in the re-executed worker
    with open(os.environ["PIDFILE"], "w") as f:
        f.write(str(os.getpid()))
    hang()
"""

# (code at the top of the worker, code in setup(), a phrase of the SpawnError)
SPAWN_FAILURES = [
    pytest.param("", "hang()", "did not become ready within 1 s", id="setup_hangs"),
    pytest.param(HANG_AT_IMPORT, "", "did not become ready within 1 s", id="import_hangs"),
    pytest.param(
        "",
        "raise RuntimeError('setup exploded: 8731')",
        "RuntimeError: setup exploded: 8731",
        id="setup_raises",
    ),
    pytest.param("", "os._exit(5)", "exited with code 5", id="setup_exits"),
    pytest.param("", "segfault()", "killed by SIGSEGV", id="setup_segfaults"),
]


@pytest.mark.parametrize(("top", "setup", "phrase"), SPAWN_FAILURES)
def test_worker_that_cannot_start_raises_spawn_error(
    run_script, top: str, setup: str, phrase: str
) -> None:
    source = f"SETUP = {setup!r}\nSPAWN_TIMEOUT = 1.0\n" + top + SPAWN + MAIN
    (seen,) = records(run_script(program(source), timeout=60))
    assert seen["error"] == "SpawnError", seen
    assert phrase in seen["text"], seen
    assert seen["elapsed"] < 5.0, seen
    assert seen["pid_dead"], seen
    assert seen["children"] <= 1, seen  # the watchdog at most: no respawn loop


# -- a worker that ignores shutdown --------------------------------------------

STUBBORN = """
class Stubborn(Task[int, int]):
    def close(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        exec(CLOSE)

    def run(self, x: int) -> int:
        return os.getpid()


def parent():
    p = Process(Stubborn, **OPTIONS)
    pid = p.call(0)
    t0 = time.monotonic()
    p.close(**CLOSE_ARGS)
    elapsed = elapsed_since(t0)
    dead = wait_dead(pid, 0.5)
    t1 = time.monotonic()
    p.close()
    again = elapsed_since(t1)
    try:
        p.call(0)
        after = None
    except Exception as e:
        after = type(e).__name__
    emit(elapsed=elapsed, dead=dead, again=again, after=after, children=len(children()))
"""

STUBBORN_CASES = [
    pytest.param("hang()", {"shutdown_timeout": 1.0}, {}, id="sleeps_shutdown_timeout"),
    pytest.param("spin_in_c()", {}, {"timeout": 1.0}, id="spins_in_c_close_timeout"),
]


@pytest.mark.parametrize(("close", "options", "close_args"), STUBBORN_CASES)
def test_worker_ignoring_shutdown_is_killed_after_the_grace(
    run_script, close: str, options: dict, close_args: dict
) -> None:
    source = (
        f"CLOSE = {close!r}\nOPTIONS = {options!r}\nCLOSE_ARGS = {close_args!r}\n" + STUBBORN + MAIN
    )
    (seen,) = records(run_script(program(source), timeout=60))
    assert 0.9 <= seen["elapsed"] < 2.5, seen  # waited the grace, then killed
    assert seen["dead"], seen
    assert seen["again"] < 0.1, seen  # idempotent
    assert seen["after"] == "ClosedError", seen
    assert seen["children"] <= 1, seen  # the watchdog


# -- a worker whose task started a process that ignores SIGTERM ----------------

GRANDCHILD = """
class Parent(Task[str, int]):
    def run(self, how: str) -> int:
        if how == "start":
            return start_stubborn_child()
        exec(how)
        return 0


def parent():
    p = Process(Parent)
    grandchild = p.call("start")
    t0 = time.monotonic()
    try:
        exec(END)
        error = None
    except Exception as e:
        error = type(e).__name__
    emit(error=error, dead=wait_dead(grandchild, 1.0), elapsed=elapsed_since(t0))
    p.close()
"""

ENDINGS = [
    pytest.param("p.close()", None, id="close"),
    pytest.param("p.call('segfault()')", "WorkerCrashed", id="crash"),
    pytest.param("p.call('hang()', timeout=0.5)", "TaskTimeout", id="timeout"),
    pytest.param("p.call('close_channel(); hang()')", "ProtocolError", id="protocol_error"),
]


@pytest.mark.parametrize(("end", "error"), ENDINGS)
def test_process_started_by_a_task_dies_with_its_worker(
    run_script, end: str, error: str | None
) -> None:
    (seen,) = records(run_script(program(f"END = {end!r}\n" + GRANDCHILD + MAIN), timeout=60))
    assert seen["error"] == error, seen
    assert seen["dead"], seen


# -- a parent interrupted by Ctrl-C in the middle of a call ---------------------

INTERRUPTED = """
class Slow(Task[str, int]):
    def run(self, how: str) -> int:
        exec(how)
        return os.getpid()


def on_alarm(signum, frame):
    raise KeyboardInterrupt


def interrupt_soon():
    if TRIGGER == "sigint":
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    elif TRIGGER == "alarm":
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
    else:
        threading.Timer(0.5, _thread.interrupt_main).start()


def parent():
    with Process(Slow) as p:
        old = p.call("pass")
        interrupt_soon()
        t0 = time.monotonic()
        try:
            p.call(SLOW)
            seen = {"interrupted": False}
        except KeyboardInterrupt:
            seen = {"interrupted": True}
        seen["elapsed"] = elapsed_since(t0)
        seen["old_dead"] = wait_dead(old, 2.0)
        new = p.call("pass")
        emit(old=old, new=new, pid=p.pid, **seen)
"""

# A slow call, and one whose reply is half written when the interrupt comes.
SLOW_CALLS = [
    pytest.param("time.sleep(5)", id="sleeping"),
    pytest.param(
        "f = frame([_protocol.RESULT, 2, os.getpid()]); to_parent(f[:3]); time.sleep(5); "
        "to_parent(f[3:]); hang()",
        id="reply_half_sent",
    ),
]


# A real signal interrupts the parent's blocking read at once. interrupt_main()
# only sets Python's flag, so (as with time.sleep) the KeyboardInterrupt comes
# when the read returns: in the middle of the library's handling of the reply.
TRIGGERS = [
    pytest.param("sigint", True, id="sigint"),
    pytest.param("alarm", True, id="alarm"),
    pytest.param("interrupt_main", False, id="interrupt_main"),
]


@pytest.mark.parametrize("slow", SLOW_CALLS)
@pytest.mark.parametrize(("trigger", "prompt"), TRIGGERS)
def test_keyboard_interrupt_mid_call_propagates_and_next_call_gets_a_new_worker(
    run_script, trigger: str, prompt: bool, slow: str
) -> None:
    source = f"TRIGGER = {trigger!r}\nSLOW = {slow!r}\n" + INTERRUPTED + MAIN
    (seen,) = records(run_script(program(source), timeout=60))
    assert seen["interrupted"], seen
    if prompt:
        assert seen["elapsed"] < 2.5, seen  # at once, not when the 5 s call ends
    assert seen["old_dead"], seen
    assert seen["new"] == seen["pid"] != seen["old"], seen


# -- a parent that cancels an asyncio call -------------------------------------

CANCELLED = """
class Slow(Task[float, int]):
    def run(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


async def main(pool):
    before = pool.pids
    slow = asyncio.ensure_future(pool.acall(60.0))
    other = asyncio.ensure_future(pool.acall(1.0))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    try:
        if HOW == "cancel":
            slow.cancel()
            await slow
        else:
            await asyncio.wait_for(slow, 0.2)
        seen = {"error": None}
    except BaseException as e:
        seen = {"error": type(e).__name__}
    seen["elapsed"] = elapsed_since(t0)
    other_pid = await other
    tick.cancel()
    killed = [pid for pid in before if pid != other_pid]
    seen["killed_dead"] = len(killed) == 1 and wait_dead(killed[0], 2.0)
    seen["other_kept"] = other_pid in before and other_pid in pool.pids
    results = await asyncio.gather(*(pool.acall(0.0) for _ in range(4)))
    seen["after"] = sorted(set(results))
    seen["pids"] = pool.pids
    seen["ticks"] = ticks
    return seen


def parent():
    with ProcessPool(Slow, size=2) as pool:
        emit(**asyncio.run(main(pool)))
"""


@pytest.mark.parametrize(
    ("how", "error"),
    [("cancel", "CancelledError"), ("wait_for", "TimeoutError")],
)
def test_cancelled_acall_kills_only_its_worker(run_script, how: str, error: str) -> None:
    (seen,) = records(run_script(program(f"HOW = {how!r}\n" + CANCELLED + MAIN), timeout=60))
    assert seen["error"] == error, seen
    assert seen["elapsed"] < 1.0, seen
    assert seen["killed_dead"], seen  # the cancelled call's worker
    assert seen["other_kept"], seen  # the other call finished on its own worker
    assert seen["after"] == sorted(seen["pids"]) and len(seen["after"]) == 2, seen
    assert seen["ticks"] >= 50, seen  # the event loop ran all along


# -- a parent that closes the pool while eight threads are calling -------------

RACE = """
class Sleeper(Task[tuple[int, float], int]):
    def run(self, call: tuple[int, float]) -> int:
        time.sleep(call[1])
        return call[0] * 3


def caller(pool, n, out):
    values = wrong = 0
    for i in range(n * 100000, (n + 1) * 100000):
        x = (i, DURATIONS[i % len(DURATIONS)])
        try:
            if MODE == "call":
                v = pool.call(x)
            else:
                v = pool.submit(x).result(timeout=30)
        except ClosedError:
            out[n] = {"values": values, "wrong": wrong, "end": "ClosedError"}
            return
        except BaseException as e:
            out[n] = {"values": values, "wrong": wrong, "end": repr(e)}
            return
        values += 1
        wrong += v != i * 3


def parent():
    pool = ProcessPool(Sleeper, size=2)
    pids = pool.pids
    out = {}
    threads = [threading.Thread(target=caller, args=(pool, n, out)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    pool.close(**CLOSE_ARGS)
    elapsed = elapsed_since(t0)
    for t in threads:
        t.join(10)
    emit(out=out, elapsed=elapsed, hung=sum(t.is_alive() for t in threads),
         workers_dead=all(wait_dead(pid, 1.0) for pid in pids), children=len(children()))
"""

RACES = [
    # Short calls: close() lets the running ones finish; queued ones get ClosedError.
    pytest.param("call", [0.0, 0.01, 0.05], {}, id="call_polite"),
    pytest.param("submit", [0.0, 0.01, 0.05], {}, id="submit_polite"),
    # Calls longer than the grace: close() kills them; their callers get ClosedError.
    pytest.param("call", [0.0, 0.05, 3.0], {"timeout": 0.5}, id="call_killed"),
    pytest.param("submit", [0.0, 0.05, 3.0], {"timeout": 0.5}, id="submit_killed"),
]


@pytest.mark.parametrize(("mode", "durations", "close_args"), RACES)
def test_close_while_eight_threads_call(
    run_script, mode: str, durations: list[float], close_args: dict
) -> None:
    source = (
        f"MODE = {mode!r}\nDURATIONS = {durations!r}\nCLOSE_ARGS = {close_args!r}\n" + RACE + MAIN
    )
    (seen,) = records(run_script(program(source), timeout=60))
    assert seen["hung"] == 0, seen
    ends = {n: r["end"] for n, r in seen["out"].items()}
    assert ends == {str(n): "ClosedError" for n in range(8)}, seen
    assert all(r["wrong"] == 0 for r in seen["out"].values()), seen
    assert sum(r["values"] for r in seen["out"].values()) > 0, seen
    assert seen["elapsed"] < (1.5 if close_args else 1.0), seen
    assert seen["workers_dead"], seen
    assert seen["children"] <= 1, seen  # the watchdog


# -- a parent that is SIGKILLed ------------------------------------------------

VICTIM = """
class Busy(Task[str, int]):
    def run(self, how: str) -> int:
        open(os.path.join(os.environ["STARTED"], str(os.getpid())), "w").close()
        exec(how)
        return 0


def parent():
    os.environ["STARTED"] = started = os.path.abspath("started")
    os.mkdir(started)
    pool = ProcessPool(Busy, size=2)
    futures = [pool.submit(WORK) for _ in range(2)] if WORK else []
    deadline = time.monotonic() + 20
    while len(os.listdir(started)) < len(futures) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # let a grandchild start
    emit(ready=True, pids=pool.pids)
    hang()
"""


@pytest.mark.parametrize(
    "work",
    [
        pytest.param("", id="idle"),
        pytest.param("spin_in_c()", id="busy_in_c"),
        pytest.param("start_stubborn_child(); spin_in_c()", id="busy_with_grandchild"),
    ],
)
def test_sigkilled_parent_leaves_no_process_behind(tmp_path: Path, work: str) -> None:
    source = program(f"WORK = {work!r}\n" + VICTIM + MAIN)
    with started(tmp_path, source) as (proc, line):
        family = descendants(proc.pid)  # workers, their children, the watchdog
        assert set(line["pids"]) <= set(family)
        if "grandchild" in work:
            assert len(family) == 5, family  # 2 workers, 2 grandchildren, the watchdog
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert all(wait_dead(pid, 1.0) for pid in family), [
            (pid, wait_dead(pid, 0)) for pid in family
        ]


# -- a parent that cancels a call whose reply has already come back ------------

LATE_CANCEL = """
class Checked(pydantic.BaseModel):
    pid: int

    @pydantic.field_validator("pid")
    @classmethod
    def slow_in_the_parent(cls, v: int) -> int:
        if _boot.config is None:  # the parent takes 0.5 s to validate a reply
            time.sleep(0.5)
        return v


class Reply(Task[float, Checked]):
    def run(self, seconds: float) -> Checked:
        time.sleep(seconds)
        return Checked(pid=os.getpid())


def parent():
    with Process(Reply) as p:
        worker = p.pid
        future = p.submit(0.0)
        if LATE_KILL:  # a slow done-callback delays the kill cancel() does after it
            future.add_done_callback(lambda _: time.sleep(1.0))
        out = {}

        def innocent():
            time.sleep(0.6)  # after the cancelled call has released the worker
            try:
                out["value"] = p.call(LATE_KILL and 2.0 or 0.0).pid
            except BaseException as e:
                out["error"] = type(e).__name__
        thread = threading.Thread(target=innocent)
        thread.start()
        time.sleep(0.2)  # the worker has replied; the parent is validating the reply
        cancelled = future.cancel()
        thread.join(20)
        emit(cancelled=cancelled, worker=worker, **out)
"""


@pytest.mark.parametrize("late_kill", [False, True], ids=["next_call", "kill_lands_mid_call"])
def test_cancel_after_the_reply_leaves_the_next_call_alone(run_script, late_kill: bool) -> None:
    """Cancelling a submitted call while the parent validates its reply: the future is
    cancelled (fine), and the next call, which nobody cancelled, gets its value."""
    source = f"LATE_KILL = {late_kill!r}\n" + LATE_CANCEL + MAIN
    (seen,) = records(run_script(program(source), timeout=60))
    assert seen["cancelled"], seen
    assert seen.get("error") is None, seen
    assert seen["value"] > 0, seen


# -- a parent that keeps the errors of failed calls ----------------------------

KEEPER = """
import gc, tracemalloc


class Crasher(Task[int, int]):
    def run(self, x: int) -> int:
        if x % 2:
            os._exit(3)
        return x


def parent():
    with ProcessPool(Crasher, size=2) as pool:
        list(pool.map(range(4), return_exceptions=True))  # warm up every path
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = list(pool.map(range(2 * N), return_exceptions=True))
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        crashed = sum(isinstance(e, WorkerCrashed) for e in kept)
        emit(crashed=crashed, values=kept[::2], per_error=grown // max(crashed, 1))
"""


def test_kept_errors_do_not_pin_dead_workers(run_script) -> None:
    """map(..., return_exceptions=True) keeps one WorkerCrashed per crashed input: that
    should cost the error's own data (a stderr tail, a traceback), not a dead worker."""
    n = 16
    (seen,) = records(run_script(program(f"N = {n}\n" + KEEPER + MAIN), timeout=60))
    assert seen["crashed"] == n and seen["values"] == list(range(0, 2 * n, 2)), seen
    assert seen["per_error"] < 64 * 1024, seen
