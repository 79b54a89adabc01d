"""A batch with crashes under a progress bar: every input ends with an outcome.

120 inputs through a "native library" that segfaults on some of them, on a pool
of 2, with results taken as they finish (``ordered=False``). Each failure names
its input (``error.input``), so nothing is lost out of order. ``stderr="capture"``
keeps the workers' output off the terminal, where it would break the bar; each
crash is reported in one line through the bar's own ``write()``. Uses tqdm when it
is installed, else a small text bar.

Run: python examples/progress.py
"""

from __future__ import annotations

import ctypes
import importlib
import sys
from typing import Any, TextIO

import tarnish_py
from tarnish_py import ProcessPool, Task, TaskError, WorkerCrashed


class Resize(Task[int, tuple[int, int]]):
    """(input, its "size"): a segfault on multiples of 11, a bad file on 13k+5."""

    def run(self, n: int) -> tuple[int, int]:
        if n % 11 == 0:
            ctypes.string_at(0)
        if n % 13 == 5:
            raise ValueError(f"input {n}: not an image")
        return n, n * n


class TextBar:
    """The part of tqdm's interface used here, drawn on one line of ``stream``
    (redrawn only on a terminal; elsewhere, as in a log, drawn once at the end)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total, self.done, self.postfix = total, 0, ""
        self.stream, self.width = stream, width
        self.live = stream.isatty()

    def _draw(self, final: bool = False) -> None:
        if not (self.live or final):
            return
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {self.postfix}")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def write(self, line: str) -> None:
        # Clear the bar's line, print, and draw the bar again under it.
        if self.live:
            self.stream.write("\r" + " " * (self.width + 40 + len(self.postfix)) + "\r")
        self.stream.write(line + "\n")
        self._draw()

    def close(self) -> None:
        self._draw(final=True)
        self.stream.write("\n")


def progress_bar(total: int) -> Any:
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return TextBar(total)
    return tqdm.tqdm(total=total, unit="input")


def main() -> None:
    inputs = range(120)
    outcomes: dict[int, str] = {}
    bar = progress_bar(len(inputs))
    try:
        with ProcessPool(Resize, size=2, stderr="capture") as pool:
            for result in pool.map(inputs, ordered=False, return_exceptions=True):
                if isinstance(result, WorkerCrashed):
                    outcomes[result.input] = "crashed"
                    bar.write(f"input {result.input}: {result}")
                elif isinstance(result, TaskError):
                    outcomes[result.input] = "failed"
                elif isinstance(result, BaseException):
                    raise result  # not expected here: a bug worth seeing
                else:
                    outcomes[result[0]] = "ok"
                counts = [list(outcomes.values()).count(k) for k in ("ok", "crashed", "failed")]
                bar.set_postfix_str("ok={} crashed={} failed={}".format(*counts))
                bar.update(1)
    finally:
        bar.close()
    assert sorted(outcomes) == list(inputs), "every input has an outcome"
    summary = {kind: list(outcomes.values()).count(kind) for kind in ("ok", "crashed", "failed")}
    print(f"{len(outcomes)} inputs, each with an outcome: "
          + ", ".join(f"{n} {kind}" for kind, n in summary.items()))


if __name__ == "__main__":
    tarnish_py.main(main)
