"""ProcessPool.map in batches: batching never shows in the outcomes.

Each input the task starts is appended to a log file *in the worker*, so the
tests check "each input ran exactly once" where it happens, not only in what
the parent yields. Crashes, errors, hangs and a slow input sit inside batches
of several inputs (a fixed ``chunksize``), and in a worker's first batch (sent
before the worker's result arena is mapped) as well as in later ones.
"""

from __future__ import annotations

from collections import Counter

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

# The input x = phase * 10_000 + i; the task logs x to log<phase>.txt, then:
# i in CRASH segfaults, i in HANG sleeps (until a timeout kills it), i in RAISE
# raises, i == GATE waits until the file "open" exists; any other input -> 2x.
TASKS = """
import itertools, threading
from tarnish_py import ProcessPool

CRASH = {5, 77, 211}
HANG = {555}
RAISE = {150}
GATE = 999


class Log(Task[int, int]):
    def run(self, x: int) -> int:
        fd = os.open(f"log{x // 10_000}.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{x}\\n".encode())
        os.close(fd)
        i = x % 10_000
        if i in CRASH:
            segfault()
        if i in HANG:
            hang()
        if i in RAISE:
            raise ValueError(f"raised for {x}")
        if i == GATE:
            deadline = time.monotonic() + 20
            while not os.path.exists("open") and time.monotonic() < deadline:
                time.sleep(0.01)
        return 2 * x


class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x


def logged(phase):
    try:
        with open(f"log{phase}.txt") as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


def describe(value):
    if isinstance(value, BaseException):
        return [type(value).__name__, getattr(value, "input", None)]
    return value


def consume(results):
    seen = []
    try:
        for value in results:
            seen.append(value)
    except Exception as e:
        return dict(seen=seen, error=describe(e))
    return dict(seen=seen, error=None)
"""


def one(run_script, body: str, timeout: float = 90.0) -> dict:
    main = "\n\nif __name__ == '__main__':\n    tarnish_py.main(parent)\n"
    result = run_script(program(TASKS + body + main), timeout=timeout)
    recs = records(result)
    assert len(recs) == 1, result
    return recs[0]


def expected(phase: int, i: int) -> object:
    x = phase * 10_000 + i
    if i in (5, 77, 211):
        return ["WorkerCrashed", x]
    if i == 150:
        return ["TaskError", x]
    if i == 555:
        return ["TaskTimeout", x]
    return 2 * x


def test_failures_inside_batches_blame_one_input_and_run_each_once(run_script) -> None:
    rec = one(
        run_script,
        """
def parent():
    out = {}
    with ProcessPool(Log, size=2) as pool:
        p = lambda phase, it: [phase * 10_000 + i for i in it]
        # 1: ordered, a crash in a worker's first batch (5) and in later ones (77, 211)
        out["ordered"] = [describe(v) for v in pool.map(
            p(1, range(300)), chunksize=50, return_exceptions=True)]
        # 2: unordered, chunksize chosen by the map
        out["unordered"] = sorted(map(json.dumps, (describe(v) for v in pool.map(
            p(2, range(300)), ordered=False, return_exceptions=True))))
        # 3: without return_exceptions the first failure (the crash of 77) is raised
        out["raised"] = consume(pool.map(p(3, range(60, 300)), chunksize=50))
        # 4: a hang inside a batch of 40: only it times out
        out["timeout"] = [describe(v) for v in pool.map(
            p(4, range(500, 620)), chunksize=40, timeout=1.0, return_exceptions=True)]
        # 5: an invalid input takes its place; earlier results come first
        bad = [50_000, 50_001, "abc", 50_003]
        out["invalid"] = consume(pool.map(bad, chunksize=10))
        out["invalid_kept"] = [describe(v) for v in pool.map(bad, return_exceptions=True)]
        # 6: leaving a map early: the pool serves the next call
        it = pool.map(p(6, range(220, 500)), chunksize=50)
        out["early"] = [next(it) for _ in range(10)]
        it.close()
        out["after_early"] = pool.call(21)
        chunks = {}
        for bad_size in (0, -1, 1.5, True, "2", 2**20):
            try:
                pool.map(range(3), chunksize=bad_size)
                chunks[repr(bad_size)] = None
            except (TypeError, ValueError) as e:
                chunks[repr(bad_size)] = type(e).__name__
        out["chunks"] = chunks
        out["size"] = pool.size
    out["logs"] = {phase: logged(phase) for phase in range(1, 7)}
    emit(**out)
""",
    )
    # Every outcome in its place: crashes and errors name their input.
    assert rec["ordered"] == [expected(1, i) for i in range(300)]
    assert rec["unordered"] == sorted(
        json_dumps(expected(2, i)) for i in range(300)
    )
    logs = {int(k): v for k, v in rec["logs"].items()}
    # Checked in the worker: each input of phases 1, 2, 4 started exactly once.
    for phase, n in ((1, range(300)), (2, range(300)), (4, range(500, 620))):
        counts = Counter(logs[phase])
        assert sorted(counts) == [phase * 10_000 + i for i in n], phase
        assert set(counts.values()) == {1}, [x for x, c in counts.items() if c > 1]
    # Phase 3: results before the crash, then the crash of 77 is raised.
    assert rec["raised"] == {
        "seen": [2 * (30_000 + i) for i in range(60, 77)],
        "error": ["WorkerCrashed", 30_077],
    }
    counts = Counter(logs[3])
    assert set(counts.values()) == {1}
    assert {30_000 + i for i in range(60, 78)} <= set(counts)
    # The rest of 77's batch goes to a fresh worker at once; the map raises when the
    # consumer reaches 77 and drops what has not started. How much of it (and of the
    # other worker's batches) started meanwhile depends on how busy the machine is:
    # only that nothing ran twice (above) is asserted.
    assert rec["timeout"] == [expected(4, i) for i in range(500, 620)]
    assert rec["invalid"] == {"seen": [100_000, 100_002], "error": ["ValidationError", "abc"]}
    assert rec["invalid_kept"] == [100_000, 100_002, ["ValidationError", "abc"], 100_006]
    assert rec["early"] == [2 * (60_000 + i) for i in range(220, 230)]
    assert rec["after_early"] == 42
    assert set(Counter(logs[6]).values()) == {1}
    assert {60_000 + i for i in range(220, 230)} <= set(logs[6])
    assert rec["chunks"] == {
        "0": "ValueError", "-1": "ValueError", "1.5": "TypeError", "True": "TypeError",
        "'2'": "TypeError", str(2**20): "ValueError",
    }  # fmt: skip
    assert rec["size"] == 2


def json_dumps(value: object) -> str:
    import json

    return json.dumps(value)


def test_slow_input_lazy_generator_and_close(run_script) -> None:
    rec = one(
        run_script,
        """
def parent():
    out = {}
    with ProcessPool(Log, size=2) as pool:
        # Unordered: the gated input holds one worker; the other serves all the rest,
        # and only then does the consumer open the gate.
        order = []
        results = pool.map([10_999] + [10_000 + i for i in range(300, 340)], ordered=False)
        for value in results:
            order.append(value)
            if len(order) == 40:
                open("open", "w").close()
        out["unordered_order"] = order
        os.remove("open")
        # Ordered: the head waits at the gate; a thread opens it once the log shows
        # that the other worker went on with later inputs meanwhile (as far as the
        # window of inputs pulled ahead allows: a few batches per worker).
        def opener():
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if len([x for x in logged(2) if x != 20_999]) >= 3:
                    out["gate_opened_by_progress"] = True
                    break
                time.sleep(0.01)
            open("open", "w").close()
        gate = threading.Thread(target=opener)
        gate.start()
        out["ordered"] = list(pool.map([20_999] + [20_000 + i for i in range(300, 340)]))
        gate.join(30)
    with ProcessPool(Double, size=2) as pool:
        pulled = 0
        def naturals(n):
            nonlocal pulled
            for i in range(n):
                pulled += 1
                yield i
        ahead = 0
        total = 0
        for k, value in enumerate(pool.map(naturals(100_000))):
            ahead = max(ahead, pulled - k)
            total += value
        out["total"] = total
        out["max_ahead"] = ahead
        # Closing the pool while a map is suspended between results ends the map.
        it = pool.map(itertools.count(), chunksize=100)
        out["first"] = next(it)
        pool.close()
        try:
            for _ in range(10_000):
                next(it)
            out["after_close"] = None
        except Exception as e:
            out["after_close"] = type(e).__name__
    emit(**out)
""",
    )
    order = rec["unordered_order"]
    assert order[-1] == 2 * 10_999
    assert sorted(order[:-1]) == [2 * (10_000 + i) for i in range(300, 340)]
    assert rec.get("gate_opened_by_progress") is True
    assert rec["ordered"] == [2 * 20_999] + [2 * (20_000 + i) for i in range(300, 340)]
    assert rec["total"] == 2 * sum(range(100_000))
    # Bounded: a few batches per worker ahead of the consumer, never the whole input.
    assert 1 <= rec["max_ahead"] <= 10_000
    assert rec["first"] == 0
    assert rec["after_close"] == "ClosedError"
