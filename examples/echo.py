"""The smallest tarnish_py program: one worker, one call.

Run: python examples/echo.py
"""

import tarnish_py
from tarnish_py import Process, Task


class Echo(Task[str, str]):
    def run(self, text: str) -> str:
        return text


def main() -> None:
    with Process(Echo) as worker:
        print(worker.call("hello from a worker process"))


if __name__ == "__main__":
    tarnish_py.main(main)
