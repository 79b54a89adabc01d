"""What the integration tests share: the top of every program they run, the
parsing of its JSON-lines stdout, and the check that nothing it started lives on."""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The top of each program: imports, tiny crash helpers named for what they do,
# and emit(), which prints one JSON record per line on the parent's stdout.
PRELUDE = '''\
import ctypes, functools, hashlib, json, os, signal, subprocess, sys, time
import pydantic
import tarnish_py
from tarnish_py import (ClosedError, Process, ProtocolError, SpawnError, Task,
                        TaskError, TaskTimeout, TarnishError, WorkerCrashed)
from proc_checks import is_dead, wait_dead


def emit(**fields):
    print(json.dumps(fields), flush=True)


def segfault():
    ctypes.string_at(0)


def abort():
    os.abort()


def stack_overflow():
    sys.setrecursionlimit(10**6)
    hash(functools.reduce(lambda a, _: (a,), range(10**6), ()))


def exit_(n):
    os._exit(n)


def sigkill():
    os.kill(os.getpid(), 9)


def hang():
    time.sleep(600)


def spin():
    while True:
        pass


def spin_in_c():
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2**31 - 1)
'''


def program(body: str) -> str:
    """A complete program: the prelude, then ``body`` (dedented)."""
    return PRELUDE + "\n\n" + textwrap.dedent(body)


def records(result: Any, *, check: bool = True) -> list[dict[str, Any]]:
    """The JSON records of the parent's stdout; every line must be one (no noise)."""
    if check:
        assert result.returncode == 0, str(result)
    out = []
    for line in result.stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"stdout line is not a JSON record: {line!r}\n{result}")
    return out


def _processes_under(folder: Path) -> list[str]:
    """Live processes whose working directory is ``folder`` (or below) or whose
    command line names it: what a test's program and its workers look like."""
    found = []
    needle = str(folder)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(needle) or needle in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()[:200]}")
    return found


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """After the test, no process started by its program is still alive."""
    yield
    deadline = time.monotonic() + 5.0
    while (left := _processes_under(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, "processes left behind:\n" + "\n".join(left)
