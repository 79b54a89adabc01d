"""The floor and the peers tarnish_py is measured against.

* the floor: a raw ``os.pipe`` ping-pong with a second Python process (8 bytes
  each way with os.write/os.read; no framing, no serialisation, no validation)
* ``concurrent.futures.ProcessPoolExecutor`` and ``multiprocessing.Pool``
  (standard library, default start method: fork on Linux)
* pebble ``ProcessPool`` and loky ``get_reusable_executor`` when installed
  (``pip install -e .[bench]``); missing ones are skipped with a note.

Each peer exposes the same small surface (:class:`Peer`): ``call(x)`` for one
round trip, ``map(xs)`` for throughput, ``pids()`` and ``close()``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib
import multiprocessing
import multiprocessing.pool
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["PipeFloor", "Peer", "burn", "echo", "make_peer", "optional"]

_FLOOR_CHILD = """\
import os
while True:
    data = os.read(0, 8)
    if not data:
        break
    os.write(1, data)
"""


def echo(x: Any) -> Any:
    return x


def burn(iterations: int) -> int:
    # pbkdf2 runs in C the whole time: CPU-bound native work.
    return len(hashlib.pbkdf2_hmac("sha256", b"tarnish", b"salt", iterations))


def optional(module: str) -> tuple[Any | None, str | None]:
    """(module, None) or (None, why it is missing)."""
    try:
        return importlib.import_module(module), None
    except ImportError as exc:
        return None, f"{module} not installed ({exc.name}); pip install -e '.[bench]'"


class PipeFloor:
    """Two Python processes, one pipe each way, 8 bytes there and back."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _FLOOR_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._w = self._proc.stdin.fileno()
        self._r = self._proc.stdout.fileno()
        self.call(0)

    def call(self, x: int) -> int:
        os.write(self._w, b"pingpong")
        os.read(self._r, 8)
        return x

    def pids(self) -> list[int]:
        return [self._proc.pid]

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        self._proc.wait(5)
        self._proc.stdout.close()


class Peer:
    """A peer pool behind one interface."""

    def __init__(self, kind: str, workers: int, chunksize: int = 1) -> None:
        self.kind = kind
        self.chunksize = chunksize
        self._obj: Any
        if kind == "ProcessPoolExecutor":
            self._obj = cf.ProcessPoolExecutor(workers)
        elif kind == "multiprocessing.Pool":
            self._obj = multiprocessing.Pool(workers)
        elif kind == "pebble":
            pebble, _ = optional("pebble")
            assert pebble is not None
            self._obj = pebble.ProcessPool(max_workers=workers)
        elif kind == "loky":
            loky, _ = optional("loky")
            assert loky is not None
            self._obj = loky.get_reusable_executor(max_workers=workers, reuse=False)
        else:
            raise ValueError(kind)
        self.call(0)  # start the workers before anything is timed

    def call(self, x: Any) -> Any:
        obj = self._obj
        if self.kind == "multiprocessing.Pool":
            return obj.apply(echo, (x,))
        if self.kind == "pebble":
            return obj.schedule(echo, args=(x,)).result()
        return obj.submit(echo, x).result()

    def map(self, xs: Iterable[Any], fn: Any = echo) -> list[Any]:
        obj = self._obj
        if self.kind == "multiprocessing.Pool":
            return list(obj.imap(fn, xs, self.chunksize))
        if self.kind == "pebble":
            return list(obj.map(fn, xs, chunksize=self.chunksize).result())
        return list(obj.map(fn, xs, chunksize=self.chunksize))

    def pids(self) -> list[int]:
        obj = self._obj
        if self.kind == "multiprocessing.Pool":
            return [p.pid for p in obj._pool]
        if self.kind == "pebble":
            return [w.pid for w in obj._pool_manager.worker_manager.workers.values()]
        return list(getattr(obj, "_processes", {}) or {})

    def close(self) -> None:
        obj = self._obj
        if self.kind == "multiprocessing.Pool":
            obj.close()
            obj.join()
        elif self.kind == "pebble":
            obj.close()
            obj.join(10)
        else:
            obj.shutdown(wait=True)


def make_peer(kind: str, workers: int, chunksize: int = 1) -> tuple[Peer | None, str | None]:
    """A started peer, or (None, why it is skipped)."""
    module = {"pebble": "pebble", "loky": "loky"}.get(kind)
    if module is not None:
        found, why = optional(module)
        if found is None:
            return None, why
    return Peer(kind, workers, chunksize), None
