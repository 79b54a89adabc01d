"""Typing: ``mypy --strict`` accepts the examples in tests/typing/ (what users'
type checkers infer) and rejects misuse with the error a user would see."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "tests" / "typing").glob("*.py"))

# Each line marked "# E: <text>" must get a mypy error containing <text>;
# no other line may get one.
MISUSE = """
import asyncio

import json
from typing import Protocol

from tarnish_py import IsolatedExecutor, IsolationContext, Process, ProcessPool, Task, task


class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x


@task("typing-misuse-scale")
def scale(x: float, factor: float = 2.0) -> float:
    return x * factor


p = Process(Double)
p.call("one")  # E: Argument 1 to "call" of "_Handle" has incompatible type "str"; expected "int"
p.submit(b"1")  # E: incompatible type "bytes"; expected "int"
asyncio.run(p.acall([1]))  # E: incompatible type "list[int]"; expected "int"
text: str = p.call(1)  # E: Incompatible types in assignment
ProcessPool(Double).map(["a"])  # E: List item 0 has incompatible type "str"; expected "int"
scale("x")  # E: incompatible type "str"; expected "float"
IsolatedExecutor().submit(scale, "x")  # E: incompatible type "str"; expected "float"


class NotJson(Protocol):
    def parse(self, text: str) -> int: ...


api: NotJson = IsolationContext().isolate(json)  # E: Incompatible types in assignment
IsolationContext().isolate("json")  # E: Value of type variable "M" of "isolate"
"""


def mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    # A cache of our own: mypy replays cached errors under the path it first saw.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            f"--cache-dir={cache}",
            str(path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_type_check(path: Path, tmp_path: Path) -> None:
    result = mypy(path, tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_misuse_is_reported(tmp_path: Path) -> None:
    source = textwrap.dedent(MISUSE)
    path = tmp_path / "misuse.py"
    path.write_text(source)
    expected = {
        n: line.split("# E: ", 1)[1]
        for n, line in enumerate(source.splitlines(), 1)
        if "# E: " in line
    }
    result = mypy(path, tmp_path / "cache")
    assert result.returncode == 1, result.stdout + result.stderr
    errors: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        if m := re.match(rf"{re.escape(str(path))}:(\d+): error: (.*)", line):
            errors.setdefault(int(m[1]), []).append(m[2])
    assert sorted(errors) == sorted(expected), result.stdout
    for n, text in expected.items():
        assert any(text in error for error in errors[n]), (n, text, errors[n])
