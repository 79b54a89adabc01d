"""The batch arena: shared memory where a worker leaves each result of a batch as it
finishes, so that a crash loses none of them and the parent reads them without a
syscall per input.

::

    worker   memfd_create -> ftruncate(SIZE) -> mmap        announced as ArenaInfo(fd)
    parent   open("/proc/<worker pid>/fd/<fd>") -> mmap      (no name anywhere: nothing
                                                               to leak, even after SIGKILL)

    batch b uses half b % 2 (the parent runs one batch per worker at a time, and
    reads half b before it sends batch b + 2):

    word 0  batch id          worker: written when the batch starts
    word 1  progress          worker: (start time << 20) | k  -- input k started at
                              that time (monotonic ns >> 16), inputs 0..k-1 finished
    word 2  end of records    worker: byte offset past the last finished record
    word 3  stop              parent: a batch id; that batch stops before its next input
    byte 32...                the finished results' msgpack values, one after another

Each word is one aligned 8-byte store (``memoryview.cast("Q")``), so the parent
never sees half a word. The worker writes a record, then the end offset, then
the progress: whatever the parent reads after the worker died is consistent,
and while it runs, the progress word alone (one word) tells which input runs
since when. Results that do not fit, and errors, travel on the pipe instead.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Final

import msgpack

from . import _wire
from ._errors import ProtocolError

__all__ = ["HEADER", "INDEX_BITS", "INDEX_MASK", "SIZE", "Arena", "stamp"]

SIZE: Final = 1 << 21  # two halves of 1 MiB; pages are only used as they are written
HALF: Final = SIZE // 2
HALF_WORDS: Final = HALF // 8
HEADER: Final = 32
INDEX_BITS: Final = 20
INDEX_MASK: Final = (1 << INDEX_BITS) - 1
TIME_SHIFT: Final = 16  # progress time unit: 2**16 ns (66 µs); 44 bits last 36 years

W_BATCH, W_PROGRESS, W_END, W_STOP = 0, 1, 2, 3


def stamp(now_ns: int, index: int) -> int:
    """The progress word: input ``index`` started at ``now_ns`` (monotonic)."""
    return ((now_ns >> TIME_SHIFT) << INDEX_BITS) | index


class Arena:
    """One worker's arena, as mapped by the worker or by the parent."""

    __slots__ = ("map", "words")

    def __init__(self, mapping: mmap.mmap) -> None:
        self.map = mapping
        self.words = memoryview(mapping).cast("Q")

    @classmethod
    def create(cls) -> tuple[Arena, int]:
        """Worker: a new arena and its fd (kept open so the parent can open it)."""
        fd = os.memfd_create("tarnish_py-batch", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, SIZE)
            return cls(mmap.mmap(fd, SIZE)), fd
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, pid: int, fd: int, size: int) -> Arena | None:
        """Parent: map a worker's arena; None when this system does not allow it."""
        if size != SIZE:
            return None
        try:
            own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if os.fstat(own).st_size != SIZE:
                return None
            return cls(mmap.mmap(own, SIZE))
        except (OSError, ValueError):
            return None
        finally:
            os.close(own)

    def close(self) -> None:
        self.words.release()
        self.map.close()

    # -- parent side -----------------------------------------------------------

    def started(self, batch_id: int) -> bool:
        return bool(self.words[(batch_id & 1) * HALF_WORDS + W_BATCH] == batch_id)

    def progress(self, batch_id: int) -> tuple[int, int]:
        """(k, start ns of input k) of a started batch."""
        word: int = self.words[(batch_id & 1) * HALF_WORDS + W_PROGRESS]
        return word & INDEX_MASK, (word >> INDEX_BITS) << TIME_SHIFT

    def stop(self, batch_id: int) -> None:
        self.words[(batch_id & 1) * HALF_WORDS + W_STOP] = batch_id

    def values(self, batch_id: int, count: int) -> list[Any]:
        """The first ``count`` results the worker left for ``batch_id``."""
        if count == 0:
            return []
        half = batch_id & 1
        start = half * HALF + HEADER
        end: int = self.words[half * HALF_WORDS + W_END]
        if not start <= end <= (half + 1) * HALF:
            raise ProtocolError(f"batch arena: record end {end} out of bounds")
        # The records are msgpack values back to back: prefixed by an array
        # header they decode in one call. A worker that died between writing a
        # record and counting it leaves one extra, which is not ours to take.
        data = b"\xdd" + count.to_bytes(4, "big") + self.map[start:end]
        try:
            values: list[Any] = _wire.unpack(data)
        except msgpack.ExtraData as extra:
            values = extra.unpacked
        except Exception as exc:
            raise ProtocolError(f"batch arena: undecodable results: {exc}") from exc
        return values
