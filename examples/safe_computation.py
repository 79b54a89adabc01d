"""Typed inputs and outputs, task errors, and a worker that keeps its state.

Run: python examples/safe_computation.py
"""

from __future__ import annotations

import pydantic

import tarnish_py
from tarnish_py import Process, Task, TaskError


class Stats(pydantic.BaseModel):
    count: int
    mean: float
    calls_so_far: int


class Summarise(Task[list[float], Stats]):
    """Keeps a call counter in the worker: the instance lives as long as the worker."""

    def setup(self) -> None:
        self.calls = 0

    def run(self, values: list[float]) -> Stats:
        self.calls += 1
        if not values:
            raise ValueError("cannot summarise an empty list")
        return Stats(count=len(values), mean=sum(values) / len(values), calls_so_far=self.calls)


def main() -> None:
    with Process(Summarise, timeout=10) as worker:
        print(worker.call([1.0, 2.0, 3.5]))

        try:
            worker.call([])
        except TaskError as error:  # run() raised: the worker is alive, state kept
            print(f"task error: {error.type_name}: {error.message}")

        try:
            worker.call(["not a number"])  # type: ignore[list-item]
        except pydantic.ValidationError as error:  # checked here; nothing was sent
            print(f"invalid input: {error.error_count()} error(s)")

        print(worker.call([10.0]))  # calls_so_far == 3: same instance, the failed call counted


if __name__ == "__main__":
    tarnish_py.main(main)
