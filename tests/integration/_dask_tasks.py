"""Tasks for tests/integration/test_dask.py, in an importable module: Dask
workers import them by name (they cannot re-execute the test's program)."""

from __future__ import annotations

import ctypes
import hashlib

from tarnish_py import Task, task

SPIN = 10**6  # an input that keeps the worker busy in C for hours
RAISE = 10**6 + 1  # an input whose run() raises ValueError


def _spin_in_c() -> None:
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2**31 - 1)


class Crashy(Task[int, int]):
    """Doubles; a negative input segfaults the worker."""

    def run(self, x: int) -> int:
        if x < 0:
            ctypes.string_at(0)
        if x == SPIN:
            _spin_in_c()
        if x == RAISE:
            raise ValueError(f"cannot take {x}")
        return 2 * x


class Stuck(Task[int, int]):
    """Never returns: for a pool with a timeout."""

    def run(self, x: int) -> int:
        _spin_in_c()
        return x


@task("dask-scale")
def scale(x: float, factor: float = 2.0) -> float:
    return x * factor
