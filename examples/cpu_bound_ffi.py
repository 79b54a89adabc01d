"""Native CPU-bound work scaled over a pool: each worker is its own process.

``hashlib.pbkdf2_hmac`` runs in C for the whole call. On a pool of N workers
the same batch finishes about N times faster, up to the number of cores.

Run: python examples/cpu_bound_ffi.py
"""

from __future__ import annotations

import hashlib
import os
import time

import tarnish_py
from tarnish_py import ProcessPool, Task

ITERATIONS = 300_000


class DeriveKey(Task[bytes, bytes]):
    def run(self, password: bytes) -> bytes:
        return hashlib.pbkdf2_hmac("sha256", password, b"salt", ITERATIONS)


def timed_batch(size: int, passwords: list[bytes]) -> float:
    with ProcessPool(DeriveKey, size=size) as pool:
        start = time.perf_counter()
        keys = list(pool.map(passwords))
        elapsed = time.perf_counter() - start
    assert len(keys) == len(passwords)
    return elapsed


def main() -> None:
    cores = os.cpu_count() or 1
    passwords = [f"password-{i}".encode() for i in range(4 * cores)]
    one = timed_batch(1, passwords)
    print(f"1 worker:  {one:.2f} s")
    many = timed_batch(cores, passwords)
    print(f"{cores} workers: {many:.2f} s  (speedup {one / many:.2f}x)")


if __name__ == "__main__":
    tarnish_py.main(main)
