"""Watching processes from the test's side: is a pid dead, what did a program
start, and a parent program run in its own session whose output is read as it
comes, for tests that must signal it while it runs."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from conftest import python_env
from proc_checks import descendants


class Parent:
    """A program started in a session of its own (so a signal to its process
    group reaches it alone), with stdout lines and stderr collected by threads.

    Leaving the ``with`` block SIGKILLs whatever of it is still alive.
    """

    def __init__(self, script: Path, *args: str) -> None:
        self.script = script
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=script.parent,
            env=python_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.tree: set[int] = set()  # pids to SIGKILL on the way out, if alive
        self._lines: queue.Queue[str] = queue.Queue()
        self._out: list[str] = []
        self._err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _read(self, stream: IO[str], into: list[str], lines: bool) -> None:
        for line in stream:
            into.append(line)
            if lines:
                self._lines.put(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def __str__(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def expect(self, prefix: str, within: float = 30.0) -> list[str]:
        """The words after ``prefix`` on the next stdout line that starts with it."""
        deadline = time.monotonic() + within
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line {prefix!r} within {within} s\n{self}") from None
            if line.startswith(prefix):
                return line[len(prefix) :].split()

    def expect_stderr(self, text: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while text not in self.stderr:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on stderr within {within} s\n{self}")
            time.sleep(0.02)

    def wait(self, within: float) -> int:
        """The exit status; fails the test if the program runs ``within`` seconds more."""
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the program did not exit within {within} s\n{self}") from None
        for reader in self._readers:
            reader.join(5.0)
        return code

    def __enter__(self) -> Parent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.tree |= descendants(self.pid)
        for pid in [self.pid, *self.tree]:
            for kill in (os.killpg, os.kill):  # workers lead process groups
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL failed
            pass
        for reader in self._readers:
            reader.join(5.0)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
