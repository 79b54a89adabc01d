"""A batch where some inputs crash the native code: every input gets an outcome.

Think of 10,000 images through a flaky C library: the batch finishes, and the
report says which inputs crashed and how. Here the "library" segfaults on
multiples of 7 and aborts on multiples of 11. ``stderr="capture"`` keeps the
workers' crash dumps off the terminal (each is in its ``WorkerCrashed.stderr``),
so the report is the whole output.

Run: python examples/batch_with_crashes.py
"""

from __future__ import annotations

import collections
import ctypes
import os

import tarnish_py
from tarnish_py import ProcessPool, Task, TaskError, WorkerCrashed


class Thumbnail(Task[int, str]):
    def run(self, image_id: int) -> str:
        if image_id % 7 == 0:
            ctypes.string_at(0)  # segfault
        if image_id % 11 == 0:
            os.abort()  # abort()
        if image_id % 13 == 0:
            raise ValueError(f"image {image_id} is not a valid PNG")
        return f"thumb-{image_id}.png"


def main() -> None:
    images = range(1, 41)
    summary: collections.Counter[str] = collections.Counter()
    with ProcessPool(Thumbnail, size=2, stderr="capture") as pool:
        results = pool.map(images, return_exceptions=True)
        for image_id, outcome in zip(images, results, strict=True):
            if isinstance(outcome, WorkerCrashed):
                kind = f"crashed ({outcome.signal})"
                detail = f"{kind} in worker {outcome.pid}"
            elif isinstance(outcome, TaskError):
                kind = f"failed ({outcome.type_name})"
                detail = f"{kind}: {outcome.message}"
            elif isinstance(outcome, BaseException):
                kind = detail = f"error ({type(outcome).__name__})"
            else:
                kind, detail = "ok", outcome
            summary[kind] += 1
            print(f"image {image_id:3}: {detail}")
        print(f"\npool still has {pool.size} live workers: {pool.pids}")
    print("summary:", ", ".join(f"{n} {kind}" for kind, n in sorted(summary.items())))


if __name__ == "__main__":
    tarnish_py.main(main)
