"""@task: plain functions that run isolated — a success, an error, a crash.

Run: python examples/inline_task.py
"""

from __future__ import annotations

import os

import tarnish_py
from tarnish_py import TaskError, WorkerCrashed, task


@task("scale")
def scale(x: float, factor: float = 2.0) -> float:
    return x * factor


@task("parse")
def parse(text: str) -> int:
    return int(text)  # raises ValueError on bad text


@task("crash", timeout=30)
def crash() -> None:
    os.abort()  # stands in for a C library calling abort()


def main() -> None:
    print("scale(1.5) =", scale(1.5))
    print("scale(2, factor=10) =", scale(2, factor=10))
    print("scale.map([1, 2, 3]) =", list(scale.map([1.0, 2.0, 3.0], size=2)))

    try:
        parse("forty-two")
    except TaskError as error:
        print(f"parse failed in its worker: {error.type_name}: {error.message}")

    try:
        crash()
    except WorkerCrashed as error:
        print(f"crash() took its worker down ({error.signal}); the program goes on")

    print("parse('42') =", parse("42"))


if __name__ == "__main__":
    tarnish_py.main(main)
