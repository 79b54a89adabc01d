"""The worker's side of a batched map: run a Batch, leave each result where a crash
cannot take it.

::

    Batch(b, flags, values)       (``_worker._loop`` hands it over)
      first batch of this worker:  ArenaInfo(fd) --pipe--> parent maps the arena
      flags & BATCH_USE_ARENA:     for each input k:  stop word says b? -> end early
                                     run -> its value appended to arena half b % 2,
                                     end offset, progress = (now, k + 1)
                                   an error or a result too large for the arena:
                                     BatchItem(b, k, reply) --pipe-->  at once
      otherwise (no arena yet):    BatchItem(b, k, reply) --pipe-->  per input
      then                         BatchDone(b, count, seconds) --pipe-->

Every result is in the arena or on the pipe before the next input starts, so
the parent, after a crash, knows each finished result and which input ran.
Layout of the arena: ``_arena``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import _arena, _boot, _protocol, _wire

__all__ = ["run_batch"]

ErrorOf = Callable[[int, BaseException], _protocol.Error]


class _State:
    arena: _arena.Arena | None = None
    tried = False  # an arena is created once per worker; a failure means: pipe only
    pack: Callable[[Any], bytes] | None = None


def run_batch(
    batch: _protocol.Batch,
    run: Callable[[Any], Any],
    decode_input: Callable[[Any], Any],
    encode_output: Callable[[Any], Any],
    limit: int,
    error_of: ErrorOf,
) -> None:
    """Run every input of ``batch`` (or until the parent says stop) and report."""
    if not _State.tried:
        _State.tried = True
        _announce_arena()
    t0 = time.monotonic()
    step = _Step(batch.batch_id, run, decode_input, encode_output, limit, error_of)
    arena = _State.arena
    if batch.flags & _protocol.BATCH_USE_ARENA and arena is not None:
        count = _run_in_arena(step, arena, batch)
    else:
        for k, value in enumerate(batch.values):
            ok, result = step.one(value)
            step.send(k, ok, result)
        count = len(batch.values)
    done = _wire.encode_frame([_protocol.BATCH_DONE, batch.batch_id, count, time.monotonic() - t0])
    _boot.write_all(_boot.channel_out, done)


def _announce_arena() -> None:
    try:
        arena, fd = _arena.Arena.create()
    except (OSError, AttributeError, ValueError):  # no memfd here: results go on the pipe
        return
    _State.arena = arena
    frame = _wire.encode_frame([_protocol.ARENA, fd, _arena.SIZE])
    _boot.write_all(_boot.channel_out, frame)


class _Step:
    """Runs one input and sends a reply on the pipe."""

    __slots__ = ("batch_id", "decode_input", "encode_output", "error_of", "limit", "run")

    def __init__(
        self,
        batch_id: int,
        run: Callable[[Any], Any],
        decode_input: Callable[[Any], Any],
        encode_output: Callable[[Any], Any],
        limit: int,
        error_of: ErrorOf,
    ) -> None:
        self.batch_id = batch_id
        self.run = run
        self.decode_input = decode_input
        self.encode_output = encode_output
        self.limit = limit
        self.error_of = error_of

    def one(self, value: Any) -> tuple[bool, Any]:
        """(True, plain result) or (False, the exception)."""
        try:
            return True, self.encode_output(self.run(self.decode_input(value)))
        except BaseException as exc:  # any exception of run() is the task's error (SPEC §2)
            return False, exc

    def send(self, k: int, ok: bool, result: Any) -> None:
        """Send input ``k``'s reply as a BatchItem frame."""
        frame = None
        if ok:
            try:
                packed = _wire.pack([_protocol.BATCH_ITEM, self.batch_id, k,
                                     [_protocol.RESULT, k, result]])
                if len(packed) > self.limit:
                    raise ValueError(
                        f"the result takes {len(packed)} bytes, more than "
                        f"max_message_bytes ({self.limit})"
                    )
                frame = _wire.frame_packed(packed)
            except Exception as exc:
                result = exc
        if frame is None:
            error = self.error_of(k, result)
            reply = [_protocol.ERROR, *error]
            frame = _wire.encode_frame([_protocol.BATCH_ITEM, self.batch_id, k, reply])
        _boot.write_all(_boot.channel_out, frame)


def _run_in_arena(step: _Step, arena: _arena.Arena, batch: _protocol.Batch) -> int:
    """The hot loop: results into the arena, errors and oversized results on the pipe."""
    bid = batch.batch_id
    half = bid & 1
    words, mapping = arena.words, arena.map
    w_batch = half * _arena.HALF_WORDS
    w_progress, w_end, w_stop = w_batch + 1, w_batch + 2, w_batch + 3
    offset = half * _arena.HALF + _arena.HEADER
    end = (half + 1) * _arena.HALF
    stamped = batch.flags & _protocol.BATCH_STAMP
    clock = time.monotonic_ns
    pack = _State.pack
    if pack is None:
        pack = _State.pack = _wire.packer()
    run, decode_input, encode_output = step.run, step.decode_input, step.encode_output
    words[w_end] = offset
    words[w_progress] = _arena.stamp(clock(), 0) if stamped else 0
    words[w_batch] = bid
    for k, value in enumerate(batch.values):
        if words[w_stop] == bid:
            return k
        try:
            result = encode_output(run(decode_input(value)))
            packed = pack(result)
        except BaseException as exc:  # an error (or an unpackable result): on the pipe
            step.send(k, False, exc)
        else:
            n = len(packed)
            if offset + n <= end and n <= step.limit:
                mapping[offset : offset + n] = packed
                offset += n
                words[w_end] = offset  # the record is whole before it is counted
            else:  # too large for the arena (or at all): on the pipe, or refused there
                step.send(k, True, result)
        # Input k is finished and input k + 1 starts now.
        words[w_progress] = _arena.stamp(clock(), k + 1) if stamped else k + 1
    return len(batch.values)
