"""ProcessPool end to end: concurrent start, round-robin dispatch, parallelism,
crash isolation between calls, map (lazy, ordered or not, with exceptions),
threads and asyncio, cancellation, and closing. Each test runs a real program."""

from __future__ import annotations

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

# Tasks shared by the programs below. Sleep.run sleeps, then leaves a side
# effect (a file) so a test can tell whether a call ran to its end.
TASKS = """
import asyncio, concurrent.futures as cf, itertools, threading


class Pid(Task[int, int]):
    def run(self, x: int) -> int:
        return os.getpid()


class SlowStart(Task[int, int]):
    # Notes when its setup() ran (CLOCK_MONOTONIC is one clock for all processes).
    def setup(self) -> None:
        began = time.monotonic()
        time.sleep(1.0)
        with open(f"setup-{os.getpid()}.json", "w") as f:
            json.dump([began, time.monotonic()], f)

    def run(self, x: int) -> int:
        return os.getpid()


class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x


class Sleep(Task[tuple[float, str], int]):
    # (seconds, tag): announces its pid in <tag>.started, sleeps, writes <tag>.done
    # and returns its pid. Negative seconds: segfault.
    def run(self, job: tuple[float, str]) -> int:
        seconds, tag = job
        if seconds < 0:
            segfault()
        if tag:
            with open(tag + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(tag + ".tmp", tag + ".started")
        time.sleep(seconds)
        if tag:
            open(tag + ".done", "w").close()
        return os.getpid()


class Nap(Task[float, float]):
    def run(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


class Mixed(Task[int, int]):
    # x >= 0: 2x; -1: segfault; -2: raises; -3: returns an invalid result.
    def run(self, x: int):
        if x == -1:
            segfault()
        if x == -2:
            raise ValueError("minus two")
        if x == -3:
            return "not an int"
        return 2 * x


class Pbkdf2(Task[int, int]):
    def run(self, iterations: int) -> int:
        return len(hashlib.pbkdf2_hmac("sha256", b"password", b"salt", iterations))


def wait_for(tag, within=10.0):
    # The pid of the worker running the Sleep call tagged <tag>, once it started.
    deadline = time.monotonic() + within
    while not os.path.exists(tag + ".started"):
        assert time.monotonic() < deadline, f"{tag} never started"
        time.sleep(0.01)
    with open(tag + ".started") as f:
        return int(f.read())


def wait_replaced(pool, old_pid, within=10.0):
    # The killed worker is replaced from the thread that ran its call: poll.
    deadline = time.monotonic() + within
    while old_pid in pool.pids or None in pool.pids:
        assert time.monotonic() < deadline, f"worker {old_pid} not replaced: {pool.pids}"
        time.sleep(0.01)
"""


def run(run_script, body: str, timeout: float = 60.0) -> list[dict]:
    source = program(TASKS + body + "\n\nif __name__ == '__main__':\n    tarnish_py.main(parent)\n")
    return records(run_script(source, timeout=timeout))


def one(run_script, body: str, timeout: float = 60.0) -> dict:
    (record,) = run(run_script, body, timeout)
    return record


def test_size_pids_and_concurrent_start(run_script) -> None:
    rec = one(
        run_script,
        """
def parent():
    from tarnish_py import ProcessPool
    try:
        ProcessPool(Pid, size=0)
        zero = "accepted"
    except ValueError:
        zero = "ValueError"
    with ProcessPool(Pid) as pool:
        default = dict(zero=zero, size=pool.size, pids=pool.pids, cpus=os.cpu_count(),
                       served=sorted({pool.call(0) for _ in range(4 * pool.size)}))
    with Process(SlowStart) as p:
        single_pid = p.pid
    with ProcessPool(SlowStart, size=2) as pool:
        pair_pids = pool.pids
        alive = [not is_dead(pid) for pid in pair_pids]
    setups = []
    for pid in pair_pids:
        with open(f"setup-{pid}.json") as f:
            setups.append(json.load(f))
    emit(default=default, single_pid=single_pid, pair_pids=pair_pids, alive=alive,
         setups=setups)
""",
    )
    default = rec["default"]
    assert default["zero"] == "ValueError"
    assert default["size"] == default["cpus"] == len(default["pids"])
    assert len(set(default["pids"])) == default["size"]
    assert default["served"] == sorted(default["pids"])
    # Started concurrently: the two setup() calls (1 s each) overlap in time, which
    # one after the other (the second started when the first was ready) never do.
    (began_a, ended_a), (began_b, ended_b) = rec["setups"]
    assert max(began_a, began_b) < min(ended_a, ended_b), rec
    assert len(set(rec["pair_pids"])) == 2 and rec["single_pid"] not in rec["pair_pids"]
    assert rec["alive"] == [True, True]


def test_round_robin_and_free_worker_first(run_script) -> None:
    rec = one(
        run_script,
        """
def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Pid, size=3) as pool:
        cycle = [pool.call(i) for i in range(9)]
        pids = pool.pids
    with ProcessPool(Sleep, size=2) as pool:
        # Two 1 s calls at once on two workers.
        t0 = time.monotonic()
        futures = [pool.submit((1.0, "")) for _ in range(2)]
        parallel_pids = [f.result(timeout=30) for f in futures]
        parallel = time.monotonic() - t0
        # A slow call holds one worker; calls meanwhile all go to the other at once.
        slow = pool.submit((1.5, "slow"))
        wait_for("slow")
        t0 = time.monotonic()
        quick = [pool.call((0.0, "")) for _ in range(5)]
        quick_time = time.monotonic() - t0
        quick_future = pool.submit((0.0, ""))
        quick_future_pid = quick_future.result(timeout=30)
        quick_future_time = time.monotonic() - t0
        slow_done_early = slow.done()
        slow_pid = slow.result(timeout=30)
    emit(cycle=cycle, pids=pids, parallel=parallel, parallel_pids=parallel_pids,
         quick=quick, quick_time=quick_time, quick_future_pid=quick_future_pid,
         quick_future_time=quick_future_time, slow_done_early=slow_done_early,
         slow_pid=slow_pid)
""",
    )
    cycle = rec["cycle"]
    # Sequential calls on an idle pool visit every worker in a fixed cycle.
    assert sorted(cycle[:3]) == sorted(rec["pids"])
    assert cycle == cycle[:3] * 3
    assert rec["parallel"] < 1.8, rec
    assert len(set(rec["parallel_pids"])) == 2
    # The free worker took every call while the slow one was still running.
    assert not rec["slow_done_early"]
    assert rec["quick_time"] < 1.0 and rec["quick_future_time"] < 1.0, rec
    assert set(rec["quick"]) == {rec["quick_future_pid"]}
    assert rec["quick_future_pid"] != rec["slow_pid"]


def test_crash_leaves_other_call_unharmed(run_script) -> None:
    rec = one(
        run_script,
        """
def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Sleep, size=2) as pool:
        before = pool.pids
        results = {}

        def long_call():
            results["long"] = pool.call((1.0, "long"))

        def crash_call():
            try:
                pool.call((-1.0, ""))
            except WorkerCrashed as e:
                results["crash"] = dict(signal=e.signal, exitcode=e.exitcode)

        long_thread = threading.Thread(target=long_call)
        long_thread.start()
        long_pid = wait_for("long")
        crash_thread = threading.Thread(target=crash_call)
        crash_thread.start()
        crash_thread.join(30)
        long_running_after_crash = "long" not in results
        long_thread.join(30)
        (crash_pid,) = [p for p in before if p != long_pid]
        wait_replaced(pool, crash_pid)
        after = pool.pids
        served = sorted({pool.call((0.0, "")) for _ in range(6)})
        emit(before=before, long_pid=long_pid, crash_pid=crash_pid, results=results,
             long_running_after_crash=long_running_after_crash, after=after,
             size=pool.size, served=served, crashed_dead=wait_dead(crash_pid))
""",
    )
    results = rec["results"]
    assert rec["long_running_after_crash"]
    assert results["crash"] == {"signal": "SIGSEGV", "exitcode": -11}
    assert results["long"] == rec["long_pid"]
    assert rec["size"] == 2
    assert rec["long_pid"] in rec["after"]
    assert rec["crash_pid"] not in rec["after"]
    assert len(set(rec["after"])) == 2
    assert rec["served"] == sorted(rec["after"])
    assert rec["crashed_dead"]


def test_map_failures(run_script) -> None:
    rec = one(
        run_script,
        """
def describe(value):
    if isinstance(value, BaseException):
        return type(value).__name__
    return value


def raised(inputs):
    seen = []
    try:
        for value in pool.map(inputs):
            seen.append(value)
    except Exception as e:
        return dict(seen=seen, error=type(e).__name__)
    return dict(seen=seen, error=None)


def parent():
    global pool
    from tarnish_py import ProcessPool
    with ProcessPool(Mixed, size=2) as pool:
        inputs = [0, 1, -1, 2, -2, "abc", 3, -3, 4, -1, 5]
        with_exceptions = [describe(v) for v in pool.map(inputs, return_exceptions=True)]
        unordered = sorted(map(str, (describe(v) for v in pool.map(
            inputs, ordered=False, return_exceptions=True))))
        task_error = raised([0, 1, -2, -1, 2])
        crash = raised([0, -1, -2, 2])
        invalid = raised([0, 1, 2, 3, 4, 5, "abc", -1])
        emit(with_exceptions=with_exceptions, unordered=unordered, task_error=task_error,
             crash=crash, invalid=invalid, size=pool.size,
             after=list(pool.map(range(4))))
""",
    )
    assert rec["with_exceptions"] == [
        0, 2, "WorkerCrashed", 4, "TaskError", "ValidationError",
        6, "TaskError", 8, "WorkerCrashed", 10,
    ]  # fmt: skip
    assert rec["unordered"] == sorted(map(str, rec["with_exceptions"]))
    # Without return_exceptions the first failure (in input order) is raised.
    assert rec["task_error"] == {"seen": [0, 2], "error": "TaskError"}
    assert rec["crash"] == {"seen": [0], "error": "WorkerCrashed"}
    assert rec["invalid"]["error"] == "ValidationError"
    assert rec["invalid"]["seen"] == [0, 2, 4, 6, 8, 10][: len(rec["invalid"]["seen"])]
    assert rec["size"] == 2
    assert rec["after"] == [0, 2, 4, 6]


def test_map_unordered_and_lazy(run_script) -> None:
    rec = one(
        run_script,
        """
def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Nap, size=2) as pool:
        jobs = [1.0, 0.0, 0.0, 0.0]
        t0 = time.monotonic()
        unordered = pool.map(jobs, ordered=False)
        first = next(unordered)
        first_time = time.monotonic() - t0
        rest = list(unordered)
        ordered = list(pool.map(jobs))
    with ProcessPool(Double, size=2) as pool:
        produced = 0

        def naturals():
            nonlocal produced
            for i in itertools.count():
                produced = i + 1
                yield i

        lazy = pool.map(naturals())
        head = next(lazy)
        produced_at_first = produced
        more = list(itertools.islice(lazy, 30))
        lazy.close()
        unordered_head = sorted(itertools.islice(pool.map(itertools.count(), ordered=False), 20))
        after = pool.call(21)
    emit(first_time=first_time, first=first, rest=rest, ordered=ordered,
         head=head, produced_at_first=produced_at_first, more=more,
         unordered_head=unordered_head, after=after)
""",
    )
    # The fast item submitted second came out before the slow first one.
    assert rec["first"] == 0.0
    assert rec["first_time"] < 0.9, rec
    assert rec["rest"] == [0.0, 0.0, 1.0]
    assert rec["ordered"] == [1.0, 0.0, 0.0, 0.0]
    # An infinite input: results come out without reading it all first.
    assert rec["head"] == 0
    assert 1 <= rec["produced_at_first"] <= 2 * 2 + 1
    assert rec["more"] == [2 * i for i in range(1, 31)]
    assert len(rec["unordered_head"]) == 20 and len(set(rec["unordered_head"])) == 20
    assert all(v % 2 == 0 and v < 2 * 30 for v in rec["unordered_head"])
    assert rec["after"] == 42


def test_threads_share_a_pool(run_script) -> None:
    rec = one(
        run_script,
        """
def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Double, size=2) as pool:
        errors = []
        wrong = []

        def caller(k):
            try:
                for i in range(200):
                    x = k * 1000 + i
                    # Even threads call, odd ones submit and wait.
                    got = pool.call(x) if k % 2 == 0 else pool.submit(x).result(timeout=30)
                    if got != 2 * x:
                        wrong.append(x)
            except BaseException as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        emit(errors=errors, wrong=wrong, alive=[t.is_alive() for t in threads],
             size=pool.size)
""",
    )
    assert rec == {"errors": [], "wrong": [], "alive": [False] * 8, "size": 2}


def test_asyncio_gather_never_blocks_the_loop(run_script) -> None:
    rec = one(
        run_script,
        """
async def main_async(pool):
    ticks = []
    stop = False

    async def ticker():
        while not stop:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    results = await asyncio.gather(*(pool.acall((0.05, "")) for _ in range(40)))
    t1 = time.monotonic()
    stop = True
    await tick_task
    during = [t for t in ticks if t0 <= t <= t1]
    gaps = [b - a for a, b in zip(during, during[1:])]
    return dict(results=sorted(set(results)), pids=sorted(pool.pids), elapsed=t1 - t0,
                ticks=len(during), max_gap=max(gaps))


def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Sleep, size=2) as pool:
        emit(**asyncio.run(main_async(pool)))
""",
    )
    assert rec["results"] == rec["pids"]
    # 40 calls of 50 ms on 2 workers: about 1 s during which the loop kept ticking.
    assert rec["elapsed"] >= 0.9
    assert rec["ticks"] >= 20, rec
    assert rec["max_gap"] < 0.3, rec


def test_queued_calls_run_in_fifo_order_and_time_out(run_script) -> None:
    rec = one(
        run_script,
        """
class Log(Task[tuple[float, str], str]):
    # Appends its tag to log.txt when it starts, then sleeps.
    def run(self, job: tuple[float, str]) -> str:
        seconds, tag = job
        with open("log.txt", "a") as f:
            f.write(tag + "\\n")
        time.sleep(seconds)
        return tag


def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Log, size=1) as pool:
        blocker = pool.submit((0.5, "blocker"))
        while not os.path.exists("log.txt"):
            time.sleep(0.01)
        # While the only worker is busy: alternate threads calling and submits.
        threads, futures = [], []
        for i in range(6):
            if i % 2:
                futures.append(pool.submit((0.0, f"q{i}")))
            else:
                threads.append(threading.Thread(target=pool.call, args=((0.0, f"q{i}"),)))
                threads[-1].start()
            time.sleep(0.05)
        for t in threads:
            t.join(30)
        for f in futures:
            f.result(timeout=30)
        blocker.result(timeout=30)
        with open("log.txt") as f:
            order = f.read().split()
    with ProcessPool(Log, size=2, timeout=0.5) as pool:
        jobs = [(0.0, "a"), (5.0, "b"), (0.0, "c")]
        pool_timeout = [describe(v) for v in pool.map(jobs, return_exceptions=True)]
        # b's worker was replaced: a call's timeout also bounds the wait for a worker
        # that is still starting, so let the replacement get ready first.
        list(pool.map([(0.0, "ready")] * 2, timeout=30))
        jobs = [(0.0, "a"), (0.3, "b"), (0.0, "c")]
        call_timeout = [describe(v) for v in pool.map(jobs, timeout=0.1, return_exceptions=True)]
        t0 = time.monotonic()
        try:
            pool.call((5.0, "d"), timeout=0.2)
            single = None
        except TaskTimeout as e:
            single = isinstance(e, TimeoutError)
        single_time = time.monotonic() - t0
        after = sorted(pool.map([(0.0, "e")] * 4))
        emit(order=order, pool_timeout=pool_timeout, call_timeout=call_timeout,
             single=single, single_time=single_time, after=after, size=pool.size)


def describe(value):
    return type(value).__name__ if isinstance(value, BaseException) else value
""",
    )
    assert rec["order"] == ["blocker", "q0", "q1", "q2", "q3", "q4", "q5"]
    assert rec["pool_timeout"] == ["a", "TaskTimeout", "c"]
    assert rec["call_timeout"] == ["a", "TaskTimeout", "c"]
    assert rec["single"] is True and rec["single_time"] < 2.0
    assert rec["after"] == ["e"] * 4 and rec["size"] == 2


@pytest.mark.parametrize("how", ["acall", "future"])
def test_cancel_running_call_kills_its_worker(run_script, how: str) -> None:
    rec = one(
        run_script,
        f"""
HOW = {how!r}


async def cancel_acall(pool):
    call = asyncio.ensure_future(pool.acall((1.0, "victim")))
    while not os.path.exists("victim.started"):
        await asyncio.sleep(0.01)
    call.cancel()
    try:
        await call
        return "returned"
    except asyncio.CancelledError:
        return "cancelled"


def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Sleep, size=2) as pool:
        before = pool.pids
        if HOW == "acall":
            outcome = asyncio.run(cancel_acall(pool))
        else:
            future = pool.submit((1.0, "victim"))
            wait_for("victim")
            outcome = dict(cancel=future.cancel(), cancelled=future.cancelled())
        victim = wait_for("victim")
        victim_dead = wait_dead(victim)
        wait_replaced(pool, victim)
        after = pool.pids
        time.sleep(1.3)  # past the moment the victim would have written victim.done
        served = sorted(set(pool.map([(0.05, "")] * 8)))
        emit(outcome=outcome, before=before, victim=victim, victim_dead=victim_dead,
             after=after, size=pool.size, done_written=os.path.exists("victim.done"),
             served=served)
""",
    )
    expected = "cancelled" if how == "acall" else {"cancel": True, "cancelled": True}
    assert rec["outcome"] == expected
    assert rec["victim"] in rec["before"]
    assert rec["victim_dead"]
    assert rec["victim"] not in rec["after"]
    assert rec["size"] == 2 and len(set(rec["after"])) == 2
    assert not rec["done_written"]
    assert rec["served"] == sorted(rec["after"])


@pytest.mark.parametrize("how", ["future", "acall"])
def test_cancel_queued_call_removes_it(run_script, how: str) -> None:
    rec = one(
        run_script,
        f"""
HOW = {how!r}


async def with_acall(pool):
    busy = [asyncio.ensure_future(pool.acall((0.5, f"busy{{i}}"))) for i in range(2)]
    queued = asyncio.ensure_future(pool.acall((0.0, "queued")))
    while not (os.path.exists("busy0.started") and os.path.exists("busy1.started")):
        await asyncio.sleep(0.01)
    cancel = queued.cancel()
    busy_pids = sorted(await asyncio.gather(*busy))
    try:
        await queued
        queued_outcome = "ran"
    except asyncio.CancelledError:
        queued_outcome = "cancelled"
    return cancel, busy_pids, queued_outcome


def with_future(pool):
    busy = [pool.submit((0.5, f"busy{{i}}")) for i in range(2)]
    queued = pool.submit((0.0, "queued"))
    cancel = queued.cancel()
    busy_pids = sorted(f.result(timeout=30) for f in busy)
    try:
        queued.result(timeout=5)
        queued_outcome = "ran"
    except cf.CancelledError:
        queued_outcome = "cancelled"
    return cancel, busy_pids, queued_outcome


def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Sleep, size=2) as pool:
        before = pool.pids
        if HOW == "acall":
            cancel, busy_pids, queued_outcome = asyncio.run(with_acall(pool))
        else:
            cancel, busy_pids, queued_outcome = with_future(pool)
        served = sorted({{pool.call((0.0, "")) for _ in range(4)}})
        time.sleep(0.2)
        emit(before=sorted(before), cancel=cancel, busy_pids=busy_pids,
             queued_outcome=queued_outcome, after=sorted(pool.pids), served=served,
             queued_started=os.path.exists("queued.started"))
""",
    )
    assert rec["cancel"] is True
    assert rec["queued_outcome"] == "cancelled"
    assert not rec["queued_started"]
    # Nobody was killed: the same two workers ran everything.
    assert rec["busy_pids"] == rec["before"] == rec["after"] == rec["served"]


def test_cancel_running_future_never_kills_the_next_call(run_script) -> None:
    rec = one(
        run_script,
        """
def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(Sleep, size=1) as pool:
        victim = pool.submit((0.3, "victim"))
        innocent = pool.submit((1.0, "innocent"))  # queued behind the victim
        worker = wait_for("victim")
        victim.add_done_callback(lambda f: time.sleep(1.0))  # a slow done-callback
        cancel = victim.cancel()
        try:
            # It ran to its end: on a fresh worker if the cancel killed the victim's.
            innocent_outcome = isinstance(innocent.result(timeout=30), int) and worker > 0
        except BaseException as e:
            innocent_outcome = type(e).__name__
        emit(cancel=cancel, innocent=innocent_outcome,
             innocent_cancelled=innocent.cancelled())
""",
    )
    # The victim's call was cancelled; the innocent call was not and must succeed.
    assert rec["cancel"] is True
    assert rec["innocent_cancelled"] is False
    assert rec["innocent"] is True


@pytest.mark.parametrize(
    ("seconds", "shutdown_timeout", "running_outcome"),
    [
        pytest.param(0.5, 3.0, "finished", id="running-call-finishes"),
        pytest.param(30.0, 0.5, "ClosedError", id="running-call-killed"),
    ],
)
def test_close_with_running_and_queued_calls(
    run_script, seconds: float, shutdown_timeout: float, running_outcome: str
) -> None:
    rec = one(
        run_script,
        f"""
def outcome(future):
    try:
        future.result(timeout=60)
        return "finished"
    except BaseException as e:
        return type(e).__name__


def parent():
    from tarnish_py import ProcessPool
    pool = ProcessPool(Sleep, size=1, shutdown_timeout={shutdown_timeout})
    running = pool.submit(({seconds}, "running"))
    worker = wait_for("running")
    queued = pool.submit((0.0, "queued"))
    queued_sync = dict()

    def sync_call():
        try:
            pool.call((0.0, "queued"))
            queued_sync["outcome"] = "finished"
        except BaseException as e:
            queued_sync["outcome"] = type(e).__name__

    sync_thread = threading.Thread(target=sync_call)
    sync_thread.start()
    time.sleep(0.2)  # the thread is now waiting for the busy worker
    t0 = time.monotonic()
    pool.close()
    close_time = time.monotonic() - t0
    worker_dead = wait_dead(worker)
    sync_thread.join(30)
    refused = []
    for attempt in (lambda: pool.call((0.0, "")), lambda: pool.submit((0.0, "")),
                    lambda: list(pool.map([(0.0, "")])),
                    lambda: asyncio.run(pool.acall((0.0, "")))):
        try:
            attempt()
            refused.append("accepted")
        except BaseException as e:
            refused.append(type(e).__name__)
    t0 = time.monotonic()
    pool.close()
    pool.close()
    again = time.monotonic() - t0
    emit(running=outcome(running), queued=outcome(queued), close_time=close_time,
         queued_sync=queued_sync.get("outcome"),
         worker_dead=worker_dead, refused=refused, again=again,
         queued_started=os.path.exists("queued.started"),
         running_done=os.path.exists("running.done"))
""",
    )
    assert rec["queued"] == rec["queued_sync"] == "ClosedError"
    assert not rec["queued_started"]
    assert rec["running"] == running_outcome
    assert rec["running_done"] is (running_outcome == "finished")
    assert rec["worker_dead"]
    if running_outcome == "finished":
        assert rec["close_time"] < shutdown_timeout
    else:
        # Waited shutdown_timeout for the running call, then killed its worker.
        assert shutdown_timeout - 0.05 <= rec["close_time"] < shutdown_timeout + 2.5, rec
    assert rec["refused"] == ["ClosedError"] * 4
    assert rec["again"] < 0.5


def test_native_cpu_work_runs_on_two_workers_at_once(run_script) -> None:
    # How well it scales is a benchmark (benchmarks/: scaling); a test checks that two
    # calls of C work do run at the same time, on two workers.
    rec = one(
        run_script,
        """
class TimedPbkdf2(Task[int, list[float]]):
    def run(self, n: int) -> list[float]:
        t0 = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", n)
        return [os.getpid(), t0, time.monotonic()]


def parent():
    from tarnish_py import ProcessPool
    with ProcessPool(TimedPbkdf2, size=2) as pool:
        pool.call(1000)
        for _ in range(5):  # calls of 0.2 s or more; longer if a busy machine hides it
            (pid_a, start_a, end_a), (pid_b, start_b, end_b) = pool.map([200_000] * 2)
            overlap = start_a < end_b and start_b < end_a
            if overlap:
                break
    emit(pids=[pid_a, pid_b], overlap=overlap)
""",
        timeout=90,
    )
    assert len(set(rec["pids"])) == 2, rec
    assert rec["overlap"], rec
