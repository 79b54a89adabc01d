"""Fault injection on the parent's side: done-callbacks that close, call or raise
SystemExit, handles finalized on a library thread, close() from a signal handler,
Ctrl-C at every point of a call, fork, and what a finished call leaves behind.

Every program bounds each wait it makes and reports a stuck wait as a record
(then leaves with ``os._exit``), so a regression fails fast instead of hanging.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import python_env
from proc_checks import wait_dead

from ._prelude import program, records

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

# Shared by the programs below: tasks, a bounded join, and the way out when stuck.
COMMON = """
import concurrent.futures as cf, gc, logging, weakref


class Sleepy(Task[float, int]):
    def run(self, seconds: float) -> int:
        if seconds > 0:
            open(f"started-{seconds}-{os.getpid()}", "w").close()
        time.sleep(seconds)
        return os.getpid()


def started(seconds):
    \"\"\"How many calls of Sleepy(seconds) have started.\"\"\"
    return sum(name.startswith(f"started-{seconds}-") for name in os.listdir("."))


def in_thread(fn, within):
    \"\"\"Run fn in a thread; (finished, result or exception name) after at most `within` s.\"\"\"
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["value"] = type(e).__name__ + ": " + str(e)
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(within)
    return (not t.is_alive(), out.get("value"))


def give_up(**fields):
    \"\"\"Report a stuck wait and leave at once: a stuck library must not hang the test.\"\"\"
    emit(stuck=True, **fields)
    os._exit(0)


def outcome(future, within=5.0):
    try:
        return future.result(timeout=within)
    except cf.TimeoutError:
        return "still pending"
    except BaseException as e:
        return type(e).__name__ + ": " + str(e)


class Logged(logging.Handler):
    def __init__(self):
        super().__init__()
        self.seen = []

    def emit(self, record):
        self.seen.append(record.getMessage() + (record.exc_text or "")
                         + (repr(record.exc_info[1]) if record.exc_info else ""))
"""


def run(run_script, body: str, timeout: float = 60) -> list[dict]:
    return records(run_script(program(COMMON + body + MAIN), timeout=timeout))


# -- done-callbacks (items 2, 3, 5, 7) -------------------------------------------

CALLBACKS = """
def close_in_callbacks_of_queued_futures():
    # close() fails the queued futures; their callbacks close() again.
    p = Process(Sleepy, shutdown_timeout=1.0)
    running = p.submit(0.3)
    queued = [p.submit(0.0) for _ in range(3)]
    for f in queued:
        f.add_done_callback(lambda f: p.close())
    t0 = time.monotonic()
    done, _ = in_thread(p.close, 5.0)
    if not done:
        give_up(check="close_in_callbacks_of_queued_futures")
    return {"closed_within": elapsed_since(t0), "running": outcome(running),
            "queued": [outcome(f)[:11] for f in queued]}


def close_in_callback_with_a_call_queued():
    # The first call's callback closes the handle while a second call waits.
    p = Process(Sleepy, shutdown_timeout=1.0)
    first = p.submit(0.2)
    second = p.submit(30.0)
    closed = threading.Event()
    first.add_done_callback(lambda f: (p.close(), closed.set()))
    t0 = time.monotonic()
    if not closed.wait(5.0):
        give_up(check="close_in_callback_with_a_call_queued")
    return {"closed_within": elapsed_since(t0), "first": outcome(first),
            "second": outcome(second), "second_ran": started(30.0) > 0}


def call_in_callback_with_a_call_queued():
    with Process(Sleepy) as p:
        first = p.submit(0.2)
        second = p.submit(0.0)
        got = {}
        done = threading.Event()

        def callback(f):
            got["value"] = p.call(0.0)
            done.set()
        first.add_done_callback(callback)
        if not done.wait(5.0):
            give_up(check="call_in_callback_with_a_call_queued")
        return {"value": got["value"], "second": outcome(second)}


def system_exit_in_callback():
    logger = logging.getLogger("tarnish_py")
    handler = Logged()
    logger.addHandler(handler)
    with Process(Sleepy) as p:
        pid = p.pid
        for n in range(2):  # the driver survives, and again
            f = p.submit(0.0)
            f.add_done_callback(lambda f: sys.exit(3))
            f.result(5)
        later = p.submit(0.0)
        done, value = in_thread(lambda: p.call(0.0, timeout=2), 5.0)
        result = {"later": outcome(later), "call": value if done else "stuck",
                  "same_worker": outcome(later) == pid}
    deadline = time.monotonic() + 3.0  # callbacks may still be running
    while len(handler.seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    logger.removeHandler(handler)
    result["logged"] = sum("SystemExit" in text for text in handler.seen)
    return result


def cancelled_queued_futures_are_done():
    p = Process(Sleepy)
    running = p.submit(3.0)
    queued = [p.submit(0.0) for _ in range(3)]
    cancelled = queued[1].cancel()
    done_at_once, _ = cf.wait([queued[1]], timeout=1.0)
    p.close(0.2)
    done, not_done = cf.wait([running, *queued], timeout=3.0)
    completed = []
    try:
        for f in cf.as_completed([running, *queued], timeout=3.0):
            completed.append(f)
    except cf.TimeoutError:
        pass
    return {"cancelled": cancelled, "done_at_once": len(done_at_once),
            "not_done": len(not_done), "as_completed": len(completed),
            "states": ["cancelled" if f.cancelled() else str(outcome(f))[:11] for f in queued]}


def parent():
    emit(**close_in_callbacks_of_queued_futures())
    emit(**close_in_callback_with_a_call_queued())
    emit(**call_in_callback_with_a_call_queued())
    emit(**system_exit_in_callback())
    emit(**cancelled_queued_futures_are_done())
"""


def test_done_callbacks_that_close_call_or_raise_never_stall_the_handle(run_script) -> None:
    seen = run(run_script, CALLBACKS)
    assert not any(r.get("stuck") for r in seen), seen
    closing, closing_queued, calling, exiting, cancelling = seen
    # 2: close() re-entered from callbacks returns; queued calls get ClosedError.
    assert closing["closed_within"] < 3.0, closing
    assert isinstance(closing["running"], int), closing
    assert closing["queued"] == ["ClosedError"] * 3, closing
    # 2: a callback closing while a call waits: no stall, and the queued call
    # never reports "closed while running" unless it did run.
    assert closing_queued["closed_within"] < 3.0, closing_queued
    assert isinstance(closing_queued["first"], int), closing_queued
    second = closing_queued["second"]
    assert second.startswith("ClosedError"), closing_queued
    assert ("running" in second) == closing_queued["second_ran"], closing_queued
    # 3: a synchronous call from a callback with a submitted call queued.
    assert isinstance(calling["value"], int) and isinstance(calling["second"], int), calling
    # 5: SystemExit in a callback: logged, and the worker goes on serving.
    assert exiting["same_worker"] and isinstance(exiting["call"], int), exiting
    assert exiting["logged"] == 2, exiting
    # 7: cancelled queued futures are done, for wait() and as_completed().
    assert cancelling["cancelled"] and cancelling["done_at_once"] == 1, cancelling
    assert cancelling["not_done"] == 0 and cancelling["as_completed"] == 4, cancelling
    assert cancelling["states"] == ["ClosedError", "cancelled", "ClosedError"], cancelling


# -- a handle finalized on a library thread; close() in a signal handler (4, 6) --

FINALIZED = """
class Reply(pydantic.BaseModel):
    pid: int

    @pydantic.field_validator("pid")
    @classmethod
    def collect_in_the_parent(cls, v: int) -> int:
        if _boot.config is None and COLLECT.is_set():
            gc.collect()  # on the thread validating the reply: a driver thread
        return v


class Replier(Task[float, Reply]):
    def run(self, seconds: float) -> Reply:
        time.sleep(seconds)
        return Reply(pid=os.getpid())


COLLECT = threading.Event()


def finalized_on_a_driver():
    p = Process(Replier, shutdown_timeout=1.0)
    pid = p.pid
    p.cycle = p  # only the garbage collector frees it, and only the validator runs it
    gc.disable()
    first = p.submit(0.2)
    second = p.submit(0.0)
    del p
    COLLECT.set()
    t0 = time.monotonic()
    first_outcome = outcome(first, 5.0)
    second_outcome = outcome(second, 5.0)
    if "pending" in str(first_outcome) + str(second_outcome):
        give_up(check="finalized_on_a_driver", first=str(first_outcome))
    COLLECT.clear()
    gc.enable()
    if isinstance(second_outcome, Reply):
        second_outcome = "ran"
    return {"settled_within": elapsed_since(t0), "first": first_outcome.pid,
            "second": second_outcome, "worker_dead": wait_dead(pid, 3.0)}


def close_in_a_signal_handler():
    results = {}
    for size in (1, 2):
        p = ProcessPool(Sleepy, size=size) if size > 1 else Process(Sleepy)
        other = p.submit(0.3) if size > 1 else None
        signal.signal(signal.SIGALRM, lambda *_: p.close())
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        t0 = time.monotonic()
        try:
            p.call(30.0)
            error = None
        except Exception as e:
            error = type(e).__name__
        results[str(size)] = {"error": error, "returned_within": elapsed_since(t0),
                         "other": outcome(other) if other else None,
                         "closed": p.closed, "children": len(children())}
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return results


def parent():
    emit(**finalized_on_a_driver())
    emit(**close_in_a_signal_handler())
"""


def test_handle_finalized_on_a_driver_and_close_in_a_signal_handler(run_script) -> None:
    seen = run(run_script, FINALIZED)
    assert not any(r.get("stuck") for r in seen), seen
    finalized, in_handler = seen
    # 4: the finalizer closed the handle without stalling the driver it ran on.
    assert finalized["settled_within"] < 3.0, finalized
    assert finalized["first"] > 0, finalized
    assert finalized["second"] == "ran" or "ClosedError" in finalized["second"], finalized
    assert finalized["worker_dead"], finalized
    # 6: close() in a signal handler does not wait for the call it interrupted.
    for size, seen in in_handler.items():
        assert seen["error"] == "ClosedError", (size, seen)
        assert seen["returned_within"] < 3.0, (size, seen)
        assert seen["closed"], (size, seen)
        assert seen["children"] <= 1, (size, seen)  # the watchdog
    assert isinstance(in_handler["2"]["other"], int), in_handler  # the other call finished


# -- Ctrl-C at every point of a call (10) ----------------------------------------

INTERRUPTS = """
import _thread

LIBRARY = ("_dispatch.py", "_handle.py", "_future.py")


def in_library(frame):
    return frame is not None and frame.f_code.co_filename.endswith(LIBRARY)


class Injector:
    \"\"\"Interrupts the main thread (as Ctrl-C does) at chosen profile events in the
    library's frames: a call, a return, a C call's return: where the
    interpreter checks for a pending signal.\"\"\"

    def __init__(self, at):
        self.at = set(at)
        self.count = 0

    def __call__(self, frame, event, arg):
        if event == "call":
            hit = in_library(frame) or in_library(frame.f_back)
        elif event in ("return", "c_return"):
            hit = in_library(frame)
        else:
            return
        if hit:
            self.count += 1
            if self.count in self.at:
                _thread.interrupt_main()


def scenario(p, kind):
    if kind == "free":
        p.call(0.0)
    elif kind == "waits":  # another thread holds the worker: this call waits
        threading.Thread(target=p.call, args=(0.02,), name="scenario").start()
        time.sleep(0.01)
        p.call(0.0)
    else:  # this call hands the worker on to a submitted call and a waiting thread
        threading.Timer(0.01, p.submit, (0.0,)).start()
        waiter = threading.Thread(target=p.call, args=(0.0,), name="scenario")
        threading.Timer(0.015, waiter.start).start()
        p.call(0.03)


def settle():
    \"\"\"Stop injecting, let a pending interrupt land, wait for the scenario's threads.\"\"\"
    for _ in range(4):
        try:
            sys.setprofile(None)
            time.sleep(0.005)
            for t in threading.enumerate():
                if t is not threading.current_thread() and not t.daemon:
                    t.join(5)
            return
        except KeyboardInterrupt:
            pass


def probe(p):
    # A slot left busy, or a waiter left queued, never lets this call start.
    return in_thread(lambda: p.submit(0.0).result(3), 4.0)[0]


def sweep(p, kind, offsets):
    n = interrupted = 0
    while n < 400:
        n += 1
        injector = Injector([n + k for k in offsets])
        try:
            sys.setprofile(injector)
            scenario(p, kind)
        except KeyboardInterrupt:
            interrupted += 1
        except TarnishError:
            pass
        finally:
            settle()
        if not probe(p):
            give_up(check="interrupt", kind=kind, at=n, offsets=offsets, events=injector.count)
        if injector.count < n:
            break
    return {"kind": kind, "offsets": offsets, "events": n, "interrupted": interrupted}


def parent():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with Process(Sleepy) as p:
        for kind in ("free", "waits", "hands_on"):
            for offsets in ([0], [0, 2], [0, 6]):
                emit(**sweep(p, kind, offsets))
        emit(final=p.call(0.0) > 0, children=len(children()))
"""


def test_keyboard_interrupts_at_every_point_of_a_call_leave_no_half_state(run_script) -> None:
    seen = run(run_script, INTERRUPTS, timeout=110)
    assert not any(r.get("stuck") for r in seen), seen
    *sweeps, final = seen
    assert len(sweeps) == 9, seen
    for s in sweeps:
        assert s["events"] > 5 and s["interrupted"] > 0, s
    assert final == {"final": True, "children": 2}, final  # the worker and the watchdog


# -- fork (9) --------------------------------------------------------------------

FORKED = """
import multiprocessing


def in_child(p, report):
    try:
        p.call(0.0)
        error = None
    except Exception as e:
        error = type(e).__name__
    report.send({"error": error, "pids": getattr(p, "pids", None) or [p.pid]})
    del p
    gc.collect()


def child_process(p, conn):
    in_child(p, conn)


def parent():
    p = Process(Sleepy)
    pool = ProcessPool(Sleepy, size=2)
    workers = [p.pid, *pool.pids]
    seen = {}
    # os.fork(), and a child that exits through the interpreter's exit (atexit runs).
    r, w = multiprocessing.Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:
        in_child(p, w)
        sys.exit(0)
    seen["fork"] = r.recv() if r.poll(10) else "no report"
    os.waitpid(pid, 0)
    # multiprocessing with the fork start method.
    ctx = multiprocessing.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    child = ctx.Process(target=child_process, args=(pool, w))
    child.start()
    seen["multiprocessing"] = r.recv() if r.poll(10) else "no report"
    child.join(10)
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        seen["executor"] = ex.submit(os.getpid).result(10) > 0
    time.sleep(0.2)
    seen["same_workers"] = [p.pid, *pool.pids] == workers
    seen["calls"] = [p.call(0.0) in workers, pool.call(0.0) in workers]
    p.close()
    pool.close()
    emit(**seen)
"""


def test_forked_children_never_touch_the_parents_workers(run_script) -> None:
    (seen,) = run(run_script, FORKED)
    assert seen["fork"] == {"error": "ClosedError", "pids": [None]}, seen
    assert seen["multiprocessing"] == {"error": "ClosedError", "pids": [None, None]}, seen
    assert seen["executor"], seen
    assert seen["same_workers"] and seen["calls"] == [True, True], seen


# -- Ctrl-C ends the program at once (11) ----------------------------------------

CTRL_C = """
def call_stuck(handle):
    try:
        handle.call(600.0)
    except ClosedError:
        pass


def parent():
    global stuck
    stuck = Process(Sleepy)  # closed only by the exit hook
    threading.Thread(target=call_stuck, args=(stuck,)).start()
    with ProcessPool(Sleepy, size=2) as pool:
        threading.Thread(target=call_stuck, args=(pool,)).start()
        deadline = time.monotonic() + 20
        while started(600.0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        emit(ready=True, pids=[stuck.pid, *pool.pids])
        pool.call(600.0)
"""


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_with_calls_stuck_ends_the_program_at_once(tmp_path: Path, presses: int) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(program(COMMON + CTRL_C + MAIN))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = json.loads(proc.stdout.readline())
        time.sleep(0.3)  # the main thread's own call is running
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        proc.wait(20)
        took = time.monotonic() - t0
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert took < 3.0, (took, stderr)  # the bug: 5 s (shutdown_timeout) and more
    assert stderr.count("Traceback") == 1, stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert all(wait_dead(pid, 2.0) for pid in ready["pids"]), ready


# -- map, memory, acall, restart, ClosedError (15, 16, 23, 25) ------------------

LIFECYCLE = """
class Blob(pydantic.BaseModel):
    data: bytes


class Echo(Task[Blob, Blob]):
    def run(self, blob: Blob) -> Blob:
        return Blob(data=blob.data * 2)


class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x

    def close(self) -> None:
        open(f"closed-{os.getpid()}", "w").close()
        if os.path.exists("hang-on-close"):
            hang()


if _boot.config is not None and os.environ.get("SLOW_START"):
    time.sleep(1.0)  # this worker takes a while to start


@tarnish_py.task("double")
def double(x: int) -> int:
    return 2 * x


def ordered_map_yields_items_before_an_invalid_one():
    with ProcessPool(Double, size=2) as pool:
        it = pool.map([1, "a", 3])
        try:
            first = next(it)
        except pydantic.ValidationError:
            first = "ValidationError"
        try:
            second = next(it)
        except pydantic.ValidationError:
            second = "ValidationError"
        except StopIteration:
            second = "StopIteration"
        kept = list(pool.map([1, "a", 3], return_exceptions=True))
        unordered = list(pool.map([1, "a", 3], ordered=False, return_exceptions=True))
    return {"first": first, "second": second,
            "kept": [type(x).__name__ if isinstance(x, Exception) else x for x in kept],
            "unordered": sorted(type(x).__name__ if isinstance(x, Exception) else str(x)
                                for x in unordered)}


def finished_results_are_not_kept():
    alive = {}
    with ProcessPool(Echo, size=4) as pool:
        for form in ("submit", "callback", "call", "map"):
            refs = []
            if form == "call":
                for i in range(10):
                    blob = Blob(data=b"x" * i)
                    out = pool.call(blob)
                    refs += [weakref.ref(blob), weakref.ref(out)]
                    del blob, out
            elif form == "map":
                blobs = [Blob(data=b"y" * i) for i in range(10)]
                for out in pool.map(blobs):
                    refs.append(weakref.ref(out))
                refs += [weakref.ref(b) for b in blobs]
                del blobs, out
            else:
                futures = []
                for i in range(10):
                    blob = Blob(data=b"z" * i)
                    futures.append(pool.submit(blob))
                    refs.append(weakref.ref(blob))
                    if form == "callback":
                        futures[-1].add_done_callback(lambda f: None)
                    del blob
                for f in futures:
                    refs.append(weakref.ref(f.result(10)))
                del futures, f
            deadline = time.monotonic() + 3.0
            while True:
                gc.collect()
                alive[form] = sum(r() is not None for r in refs)
                if not alive[form] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    return alive


async def first_acall_does_not_block_the_loop():
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    counts = []
    os.environ["SLOW_START"] = "1"
    for _ in range(2):  # the first call, and the first after close()
        await asyncio.sleep(0.02)
        before = ticks
        value = await asyncio.wait_for(double.acall(21), 30)
        counts.append((value, ticks - before))
        double.close()
    del os.environ["SLOW_START"]
    ticking.cancel()
    return counts


def restart_is_graceful():
    p = Process(Double, shutdown_timeout=0.5)
    first = p.pid
    p.restart()
    second = p.pid
    open("hang-on-close", "w").close()
    p.restart()  # this close() hook hangs: the worker is killed after the grace
    os.remove("hang-on-close")
    third = p.pid
    value = p.call(4)
    p.close()
    return {"first_closed": os.path.exists(f"closed-{first}"),
            "second_closed": os.path.exists(f"closed-{second}"),
            "pids_differ": len({first, second, third}) == 3,
            "old_dead": wait_dead(first, 2.0) and wait_dead(second, 2.0), "value": value}


def closed_error_is_a_runtime_error():
    p = Process(Double)
    p.close()
    try:
        p.call(1)
    except Exception as e:
        return {"error": type(e).__name__, "runtime_error": isinstance(e, RuntimeError)}
    return {"error": None}


def parent():
    emit(**ordered_map_yields_items_before_an_invalid_one())
    emit(**finished_results_are_not_kept())
    emit(acall=asyncio.run(first_acall_does_not_block_the_loop()))
    emit(**restart_is_graceful())
    emit(**closed_error_is_a_runtime_error())
"""


def test_map_memory_acall_restart_and_closed_error(run_script) -> None:
    ordered, memory, acall, restart, closed = run(run_script, LIFECYCLE, timeout=90)
    # 15: items before an invalid input are yielded first.
    assert ordered["first"] == 2 and ordered["second"] == "ValidationError", ordered
    assert ordered["kept"] == [2, "ValidationError", 6], ordered
    assert ordered["unordered"] == ["2", "6", "ValidationError"], ordered
    # 16: nothing of a finished call is kept alive once the caller drops it.
    assert memory == {"submit": 0, "callback": 0, "call": 0, "map": 0}, memory
    # 23: the event loop runs while the @task's worker starts (about 1 s).
    assert [value for value, _ in acall["acall"]] == [42, 42], acall
    assert all(ticks >= 10 for _, ticks in acall["acall"]), acall
    # 25: restart() runs the task's close() hook, and kills a hook that hangs.
    assert restart == {"first_closed": True, "second_closed": True, "pids_differ": True,
                       "old_dead": True, "value": 8}, restart
    assert closed == {"error": "ClosedError", "runtime_error": True}, closed
