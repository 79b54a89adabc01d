"""The task of examples/dask_batch.py, in an importable module.

Dask workers import a task by its module name; they cannot re-execute the
client's script, so a task for a Dask cluster never lives in ``__main__``.
"""

from __future__ import annotations

import ctypes
import zlib

from tarnish_py import Task


class Checksum(Task[bytes, int]):
    """A stand-in for a native decoder with a bug: a record that starts with
    ``b"\\xde\\xad"`` makes it dereference a null pointer (a segfault)."""

    def run(self, record: bytes) -> int:
        if record.startswith(b"\xde\xad"):
            ctypes.string_at(0)
        return zlib.crc32(record)
