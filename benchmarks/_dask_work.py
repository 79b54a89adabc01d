"""The work of benchmarks/dask_compare.py, in a module Dask workers can import."""

from __future__ import annotations

import ctypes
import hashlib
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from tarnish_py import Task


def checksum(record: bytes) -> str:
    """A stand-in for native decoding: a bad record dereferences a null pointer."""
    if record.startswith(b"\xde\xad"):
        ctypes.string_at(0)
    return hashlib.sha256(record * 2000).hexdigest()


class Checksum(Task[bytes, str]):
    def run(self, record: bytes) -> str:
        return checksum(record)


class WorkerLosses(SchedulerPlugin):
    """Counts the workers the scheduler removes (a Dask worker death is one)."""

    name = "worker-losses"

    def __init__(self) -> None:
        self.removed = 0

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.removed += 1
