"""A stand-in for a brittle native library: C memory through ctypes, and a bug.

``examples/isolated_module.py`` uses it through ``import_isolated``; it is
never imported by the example's own process.
"""

from __future__ import annotations

import ctypes


class Buffer:
    """A block of native memory (a ctypes buffer): state that cannot leave its process."""

    def __init__(self, size: int) -> None:
        self._memory = ctypes.create_string_buffer(size)
        self.size = size
        self.writes = 0

    def write(self, offset: int, data: bytes) -> int:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(f"{len(data)} bytes at {offset} do not fit in {self.size}")
        ctypes.memmove(ctypes.addressof(self._memory) + offset, data, len(data))
        self.writes += 1
        return len(data)

    def read(self) -> bytes:
        return self._memory.raw

    def __len__(self) -> int:
        return self.size


def checksum(buffer: Buffer) -> int:
    """Adler-style sum of a buffer's bytes."""
    return sum(buffer.read()) % 65521


def parse_header(data: bytes) -> dict[str, int]:
    """Parse a 2-byte header. The bug: a zero length byte reads through a NULL pointer."""
    if not data or data[0] == 0:
        ctypes.string_at(0)  # what a C parser does with a length it never checked
    return {"length": data[0], "kind": data[1] if len(data) > 1 else 0}
