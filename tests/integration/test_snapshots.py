"""Task state that survives crashes (SPEC §7): snapshot and restore through a Process,
snapshot files (a round trip into a new worker, another task's file, atomic writes),
typed states, and restore_on_crash keeping the state across a segfault."""

from __future__ import annotations

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

TASKS = """
import datetime, threading


class Counter(Task[str, int]):
    def setup(self):
        self.count = 0

    def run(self, cmd: str) -> int:
        if cmd == "crash":
            segfault()
        if cmd == "slow-up":
            time.sleep(0.3)
        if cmd == "up-then-fail":
            self.count += 1
            raise ValueError("failed after counting")
        if cmd == "poison":
            self.count = 99
        self.count += {"up": 1, "slow-up": 1, "down": -1}.get(cmd, 0)
        return self.count

    def snapshot(self) -> int:
        if self.count == -1:
            segfault()  # a crash during a snapshot
        return self.count

    def restore(self, state: int) -> None:
        if state == 99:
            raise ValueError("99 is poison")
        self.count = state


class Other(Task[str, int]):
    def run(self, cmd: str) -> int:
        return 0

    def snapshot(self) -> int:
        return 7

    def restore(self, state: int) -> None:
        pass


class Plain(Task[int, int]):
    def setup(self):
        self.calls = 0

    def run(self, x: int) -> int:
        self.calls += 1
        return self.calls


class Notes(pydantic.BaseModel):
    when: datetime.datetime
    lines: list[str]
    blob: bytes


class Notebook(Task[str, int]):
    def setup(self):
        self.notes = Notes(when=datetime.datetime(2024, 1, 2, 3, 4, 5), lines=[], blob=b"")

    def run(self, line: str) -> int:
        self.notes.lines.append(line)
        self.notes.blob += b"\\x00\\xff"
        return len(self.notes.lines)

    def snapshot(self) -> Notes:
        return self.notes

    def restore(self, state: Notes) -> None:
        assert isinstance(state, Notes)  # validated in the worker as annotated
        self.notes = state


def outcome(fn, *args, **kwargs):
    try:
        return dict(value=fn(*args, **kwargs))
    except BaseException as e:
        return dict(error=type(e).__name__, text=str(e)[:400], task_error=isinstance(e, TaskError))


def listing():
    return sorted(os.listdir("snaps"))
"""


def run(run_script, body: str) -> dict:
    ending = "\n\nif __name__ == '__main__':\n    tarnish_py.main(parent)\n"
    (record,) = records(run_script(program(TASKS + body + ending), timeout=90))
    return record


def test_snapshot_restore_and_files(run_script) -> None:
    r = run(
        run_script,
        """
def parent():
    os.mkdir("snaps")
    out = {}
    with Process(Counter) as box:
        box.call("up")
        state = box.snapshot()
        out["state"] = [state, type(state).__name__]
        path = box.snapshot_to_file("snaps/counter.snap")
        out["path"] = str(path)
        out["side_effect"] = box.call("up")
        box.restore(state)
        out["undone"] = box.call("noop")
        out["invalid_restore"] = outcome(box.restore, "not an int")["error"]
        # A snapshot runs between calls: after the slow call submitted before it.
        slow = box.submit("slow-up")
        out["after_slow"] = box.snapshot()
        out["slow"] = slow.result(timeout=30)
        # Overwriting a file replaces it whole, and leaves no temporary file.
        box.snapshot_to_file("snaps/counter.snap")
        out["listing"] = listing()
        box.restore(-1)
        out["crash_in_snapshot"] = outcome(box.snapshot_to_file, "snaps/counter.snap")["error"]
        out["listing_after_crash"] = listing()
        out["fresh_after_crash"] = box.call("noop")
    with Process(Counter) as fresh:  # a new worker: the file is all it has
        fresh.restore_from_file("snaps/counter.snap")
        out["from_file"] = fresh.call("noop")
    with Process(Other) as other:
        other.snapshot_to_file("snaps/other.snap")
    with Process(Counter) as box:
        out["other_task"] = outcome(box.restore_from_file, "snaps/other.snap")
        with open("snaps/junk.snap", "wb") as f:
            f.write(b"not a snapshot")
        out["junk"] = outcome(box.restore_from_file, "snaps/junk.snap")
        out["count_untouched"] = box.call("noop")
    with Process(Plain) as plain:
        plain.call(0)
        out["no_hooks"] = [
            outcome(plain.snapshot),
            outcome(plain.restore, 1),
            outcome(plain.snapshot_to_file, "snaps/plain.snap"),
            outcome(plain.restore_from_file, "snaps/counter.snap"),
        ]
        out["plain_calls"] = plain.call(0)  # nothing reached the worker
    out["no_hooks_restore_on_crash"] = outcome(Process, Plain, restore_on_crash=True)
    out["bad_flag"] = outcome(Process, Counter, restore_on_crash="yes")
    emit(**out)
""",
    )
    assert r["state"] == [1, "int"]
    assert r["path"] == "snaps/counter.snap"
    assert (r["side_effect"], r["undone"]) == (2, 1)
    assert r["invalid_restore"] == "ValidationError"
    assert (r["slow"], r["after_slow"]) == (2, 2)
    assert r["listing"] == ["counter.snap"]
    # A crash while taking the state: WorkerCrashed; the last complete file stays.
    assert r["crash_in_snapshot"] == "WorkerCrashed"
    assert r["listing_after_crash"] == ["counter.snap"]
    assert r["fresh_after_crash"] == 0
    assert r["from_file"] == 2
    other = r["other_task"]
    assert other["error"] == "ValueError"
    assert "__main__:Other" in other["text"] and "__main__:Counter" in other["text"]
    assert r["junk"]["error"] == "ValueError" and "not a tarnish_py snapshot" in r["junk"]["text"]
    assert r["count_untouched"] == 0
    for failure in r["no_hooks"]:
        assert failure["error"] == "TypeError", failure
        assert "Plain" in failure["text"] and "snapshot" in failure["text"]
    assert r["plain_calls"] == 2
    assert r["no_hooks_restore_on_crash"]["error"] == "TypeError"
    assert r["bad_flag"]["error"] == "TypeError"


def test_pydantic_model_state(run_script) -> None:
    r = run(
        run_script,
        """
def parent():
    out = {}
    with Process(Notebook) as book:
        book.call("first")
        state = book.snapshot()
        out["type"] = type(state).__name__
        out["state"] = [state.when.isoformat(), state.lines, state.blob.hex()]
        book.snapshot_to_file("notes.snap")
        book.call("second")
        book.restore(state)                     # a model instance
        out["after_model"] = book.call("again")
        book.restore({"when": "2030-01-01T00:00:00", "lines": [], "blob": b"z"})  # validated
        out["after_dict"] = book.call("one")
        out["bad"] = outcome(book.restore, {"when": "never", "lines": [], "blob": b""})
    with Process(Notebook) as fresh:
        fresh.restore_from_file("notes.snap")
        again = fresh.snapshot()
        out["from_file"] = [again.when.isoformat(), again.lines, again.blob.hex()]
    emit(**out)
""",
    )
    assert r["type"] == "Notes"
    assert r["state"] == ["2024-01-02T03:04:05", ["first"], "00ff"]
    assert r["after_model"] == 2
    assert r["after_dict"] == 1
    assert r["bad"]["error"] == "ValidationError"
    assert r["from_file"] == r["state"]


def test_restore_on_crash_keeps_state_across_a_segfault(run_script) -> None:
    r = run(
        run_script,
        """
def through_crash(**keywords):
    with Process(Counter, **keywords) as box:
        for _ in range(3):
            box.call("up")
        pid = box.pid
        crash = outcome(box.call, "crash")["error"]
        after = box.call("noop")
        return dict(crash=crash, after=after, replaced=box.pid != pid)


def parent():
    out = {"kept": through_crash(restore_on_crash=True), "lost": through_crash()}
    with Process(Counter, restore_on_crash=True) as box:
        box.call("up")
        box.call("up")
        outcome(box.call, "up-then-fail")   # a failed call leaves no state to keep
        outcome(box.call, "crash")
        out["snapshot_after_crash"] = box.snapshot()   # restored before the snapshot
        box.restore(5)                       # an explicit restore is kept too
        outcome(box.call, "crash")
        out["after_explicit_restore"] = box.call("noop")
        box.call("poison")                   # a state restore() refuses
        outcome(box.call, "crash")
        out["poisoned"] = outcome(box.call, "noop")
        out["after_poison"] = box.call("noop")
    with tarnish_py.ProcessPool(Counter, 2, restore_on_crash=True) as pool:
        counts = [pool.call("up") for _ in range(4)]
        pids = set(pool.pids)
        out["pool_crash"] = outcome(pool.call, "crash")["error"]
        out["pool"] = [counts, [pool.call("noop") for _ in range(2)]]
        out["pool_replaced"] = len(set(pool.pids) - pids)
    emit(**out)
""",
    )
    assert r["kept"] == {"crash": "WorkerCrashed", "after": 3, "replaced": True}
    assert r["lost"] == {"crash": "WorkerCrashed", "after": 0, "replaced": True}
    assert r["snapshot_after_crash"] == 2
    assert r["after_explicit_restore"] == 5
    assert r["poisoned"]["task_error"] and "99 is poison" in r["poisoned"]["text"]
    assert r["after_poison"] == 0
    assert r["pool_crash"] == "WorkerCrashed"
    assert r["pool"] == [[1, 1, 2, 2], [2, 2]]
    assert r["pool_replaced"] == 1
