"""Shared fixtures. Integration tests run real programs in a temporary folder:
a worker re-executes its program, so pytest itself is never re-run."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# A run started in the background of a script (as CI may start it) inherits
# SIGINT ignored, and so would every program the tests start: their Ctrl-C
# tests could not interrupt anything. A handler of our own (not an ignore)
# becomes the default again in each program the tests execute.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


ScriptRunner = Callable[..., Result]


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    # The repository (for tarnish_py) and tests/ (for proc_checks) come first.
    paths = [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.pop("TARNISH_PY_WORKER", None)
    env["PYTHONFAULTHANDLER"] = "1"
    return env


@contextmanager
def started(
    folder: Path, source: str, within: float = 30.0
) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """Start ``source`` as ``folder/victim.py``; yield the process and the first JSON
    line it prints, which it must print within ``within`` seconds. A program still
    running at the end is killed (tests SIGKILL it to see what it leaves behind)."""
    script = folder / "victim.py"
    script.write_text(source)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=python_env(),
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], within)
        assert ready, "the program never got ready"
        yield proc, json.loads(proc.stdout.readline())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def run_script(tmp_path: Path) -> ScriptRunner:
    """Write ``source`` to ``tmp_path/name`` and run it with this interpreter.

    ``args`` are program arguments, ``python_args`` go before the script
    (``["-m", "mod"]`` or ``["-c", code]`` replace the script), ``stdin`` is fed
    to the program. Every run is bounded by ``timeout`` seconds.
    """

    def run(
        source: str,
        *args: str,
        name: str = "prog.py",
        python_args: list[str] | None = None,
        stdin: str | None = None,
        timeout: float = 60.0,
        files: dict[str, str] | None = None,
    ) -> Result:
        for rel, text in (files or {}).items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        script = tmp_path / name
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(textwrap.dedent(source))
        cmd = [sys.executable, *(python_args if python_args is not None else [str(script)]), *args]
        proc = subprocess.run(
            cmd,
            cwd=tmp_path,
            env=python_env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run
