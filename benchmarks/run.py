"""tarnish_py benchmarks: side-by-side ratios against a raw pipe floor and the peers.

    python benchmarks/run.py [--quick] [--only latency,throughput,...] [--rounds N]

Prints a markdown report and writes it, with the same figures as JSON, to
benchmarks/results/latest.{md,json}. The contenders of each table run in the
same rounds, in rotating order; the report shows the median and min-max.

The workers of the tasks below re-execute this script (``tarnish_py.main``), so
its top stays as light as a user's program would be: tarnish_py and the tasks.
The benchmark code itself is in _suite.py, imported only by the parent.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # run from a checkout without an install
    sys.path.append(REPO)

import tarnish_py  # noqa: E402
from tarnish_py import Task  # noqa: E402


class Echo(Task[int, int]):
    def run(self, x: int) -> int:
        return x


class EchoBytes(Task[bytes, bytes]):
    def run(self, data: bytes) -> bytes:
        return data


class Burn(Task[int, int]):
    """CPU-bound native work: pbkdf2 runs in C for the whole call."""

    def run(self, iterations: int) -> int:
        import hashlib

        return len(hashlib.pbkdf2_hmac("sha256", b"tarnish", b"salt", iterations))


class Crash(Task[int, int]):
    """Echoes; a negative input segfaults the worker."""

    def setup(self) -> None:
        import ctypes
        import faulthandler

        self._string_at = ctypes.string_at
        self._quiet = faulthandler.disable

    def run(self, x: int) -> int:
        if x < 0:
            self._quiet()  # keep the report free of the worker's crash dump
            self._string_at(0)
        return x


def echo(x: int) -> int:
    """Echo as a plain function: what IsolatedExecutor runs (found by reference)."""
    return x


def parent() -> None:
    import _suite

    _suite.main(Echo, EchoBytes, Burn, Crash, echo, doc=__doc__)


if __name__ == "__main__":
    tarnish_py.main(parent)
