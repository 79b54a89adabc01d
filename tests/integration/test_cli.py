"""``python -m tarnish_py serve MODULE:NAME``: a relay driven through its stdin and
stdout, as a user's program would drive it — for a Task class and an @task function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._programs import no_leftovers  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

TASKS = """
import ctypes

from tarnish_py import Task, task

print("module-level output of the task's module")


class Counter(Task[str, int]):
    def setup(self) -> None:
        self.count = 0

    def run(self, cmd: str) -> int:
        if cmd == "crash":
            ctypes.string_at(0)
        if cmd == "fail":
            raise KeyError(cmd)
        self.count += {"up": 1, "down": -1}.get(cmd, 0)
        return self.count

    def snapshot(self) -> int:
        return self.count

    def restore(self, state: int) -> None:
        self.count = state


@task("scale")
def scale(x: float, factor: float = 2.0) -> float:
    if x < 0:
        ctypes.string_at(0)
    return x * factor
"""


def serve(run_script, *args: str, lines: list[str]) -> list[dict]:
    result = run_script(
        "",
        python_args=["-m", "tarnish_py", "serve", *args],
        stdin="".join(line + "\n" for line in lines),
        files={"tasks.py": TASKS},
        timeout=60,
    )
    assert result.returncode == 0, str(result)  # EOF: workers closed, exit 0
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_task_class_session(run_script, tmp_path: Path) -> None:
    (tmp_path / "snaps").mkdir()
    answers = serve(
        run_script,
        "tasks:Counter",
        "--snapshot-dir",
        "snaps",
        lines=[
            '"up"',
            '"up"',
            "!!snapshot",
            '"up"',
            "{not json",
            "42",
            "",
            '"fail"',
            '"crash"',
            '"noop"',
            "!!restore snaps/missing.snap",
            "!!frobnicate",
            "!!snapshot named.snap",
            '"up"',
            "!!restore snaps/named.snap",
            '"noop"',
        ],
    )
    assert len(answers) == 15  # one answer per line; the blank one is skipped
    ok = [a.get("ok") for a in answers]
    assert ok[:2] == [1, 2]
    snap = Path(answers[2]["snapshot"])
    assert snap.parent == (tmp_path / "snaps").resolve() and snap.is_file()
    assert ok[3] == 3
    assert [answers[i]["error"]["type"] for i in (4, 5)] == ["ValidationError", "ValidationError"]
    assert answers[6]["error"]["type"] == "KeyError"
    crash = answers[7]["error"]
    assert crash["type"] == "WorkerCrashed"
    assert (crash["signal"], crash["exitcode"]) == ("SIGSEGV", -11)
    assert ok[8] == 0  # a fresh worker: the state is lost without --restore-on-crash
    assert answers[9]["error"]["type"] == "FileNotFoundError"
    assert "!!snapshot" in answers[10]["error"]["message"]
    assert answers[11] == {"snapshot": str((tmp_path / "snaps" / "named.snap").resolve())}
    assert ok[12] == 1
    assert answers[13] == {"restored": "snaps/named.snap"}
    assert ok[14] == 0
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == sorted(
        [snap.name, "named.snap"]
    )

    # The first snapshot, restored by another relay that keeps its state across crashes.
    again = serve(
        run_script,
        "tasks:Counter",
        "--restore-on-crash",
        lines=[f"!!restore {snap}", '"noop"', '"up"', '"crash"', '"noop"'],
    )
    assert again[0] == {"restored": str(snap)}
    assert [a.get("ok") for a in again[1:3]] == [2, 3]
    assert again[3]["error"]["type"] == "WorkerCrashed"
    assert again[4] == {"ok": 3}  # kept across the crash


def test_task_function_session(run_script) -> None:
    lines = [
        '{"x": 1.5}',
        '{"x": 1, "factor": 3}',
        '{"y": 1}',
        '{"x": "abc"}',
        '[1, 2]',
        '{"x": -1}',
        '{"x": 2}',
        "!!snapshot",
    ]
    for size in ("1", "2"):
        answers = serve(run_script, "tasks:scale", "--size", size, "--timeout", "30", lines=lines)
        assert [a.get("ok") for a in answers[:2]] == [3.0, 3.0]
        assert [a["error"]["type"] for a in answers[2:5]] == ["ValidationError"] * 3
        assert answers[5]["error"]["signal"] == "SIGSEGV"
        assert answers[6] == {"ok": 4.0}
        error = answers[7]["error"]
        if size == "1":
            assert error["type"] == "TypeError" and "snapshot" in error["message"]
        else:
            assert error["type"] == "ValueError" and "--size 1" in error["message"]
        assert len(answers) == len(lines)


def test_help_and_bad_target(run_script) -> None:
    helped = run_script("", python_args=["-m", "tarnish_py", "serve", "--help"], timeout=30)
    assert helped.returncode == 0, str(helped)
    for text in ("MODULE:NAME", "!!snapshot", "!!restore", "--snapshot-dir", "--size", "EOF"):
        assert text in helped.stdout, text
    top = run_script("", python_args=["-m", "tarnish_py", "--help"], timeout=30)
    assert top.returncode == 0 and "serve" in top.stdout
    bad = run_script(
        "", python_args=["-m", "tarnish_py", "serve", "no_such_module:X"], timeout=30
    )
    assert bad.returncode == 2 and "no_such_module" in bad.stderr
    assert bad.stdout == ""
