"""A real segfault through ctypes, survived.

The worker calls C's ``strlen`` on a NULL pointer, which kills the process
with SIGSEGV. The parent gets ``WorkerCrashed`` with the signal and the
worker's Python stack, and the next call runs on a fresh worker.

Run: python examples/ffi_segfault.py
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import tarnish_py
from tarnish_py import Process, Task, WorkerCrashed


class CStrlen(Task[bytes | None, int]):
    """Calls libc's strlen: fine on bytes, a segfault on None (a NULL pointer)."""

    def setup(self) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))
        self.libc.strlen.argtypes = [ctypes.c_char_p]
        self.libc.strlen.restype = ctypes.c_size_t

    def run(self, data: bytes | None) -> int:
        return int(self.libc.strlen(data))


def main() -> None:
    with Process(CStrlen) as worker:
        print(f"parent {os.getpid()}, worker {worker.pid}")
        print("strlen(b'tarnish') =", worker.call(b"tarnish"))

        print("\nstrlen(NULL) -- this segfaults inside the worker ...")
        try:
            worker.call(None)
        except WorkerCrashed as crash:
            print(f"caught WorkerCrashed: signal={crash.signal} exitcode={crash.exitcode}")
            print("the worker's last words (WorkerCrashed.stderr):")
            for line in crash.stderr.strip().splitlines()[-8:]:
                print("    " + line)

        print(f"\nthe parent is alive, and a fresh worker ({worker.pid}) is ready:")
        print("strlen(b'still here') =", worker.call(b"still here"))


if __name__ == "__main__":
    tarnish_py.main(main)
