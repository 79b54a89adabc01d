"""A real segfault through ctypes, survived.

The worker calls C's ``strlen`` on a NULL pointer, which kills the process
with SIGSEGV. The parent gets ``WorkerCrashed`` — one line saying what killed
which worker — and the next call runs on a fresh worker. With
``stderr="capture"`` the worker's crash dump stays off the terminal; it is kept
in ``WorkerCrashed.stderr``.

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


def where(stderr: str) -> str:
    """The frame of this program in faulthandler's dump: the line that crashed."""
    frames = [line.strip() for line in stderr.splitlines() if line.startswith("  File ")]
    mine = [frame for frame in frames if os.path.basename(__file__) in frame]
    return (mine or frames or ["(no Python frame)"])[0]


def main() -> None:
    with Process(CStrlen, stderr="capture") as worker:
        print(f"parent {os.getpid()}, worker {worker.pid}")
        print("strlen(b'tarnish') =", worker.call(b"tarnish"))

        print("\nstrlen(NULL) -- this segfaults inside the worker ...")
        try:
            worker.call(None)
        except WorkerCrashed as crash:
            print(f"caught WorkerCrashed: {crash}")
            print(f"  signal={crash.signal} exitcode={crash.exitcode}")
            print(f"  crashed at: {where(crash.stderr)}")

        print(f"\nthe parent is alive, and a fresh worker ({worker.pid}) is ready:")
        print("strlen(b'still here') =", worker.call(b"still here"))


if __name__ == "__main__":
    tarnish_py.main(main)
