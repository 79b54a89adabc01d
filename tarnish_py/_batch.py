"""``ProcessPool.map`` in batches, driven by the consuming thread itself.

::

    for result in pool.map(inputs):   the consumer's thread, inside the generator:
      pull    islice(inputs, chunk) -> Codec.encode_input each -> Run   (lazy; at most
              `window` inputs pulled and not yet handed out)
      lend    free slots of the pool become Lanes (never jumping callers that wait)
      send    Lane.send(Run) -> one [BATCH, b, flags, payloads] frame per batch
      wait    poll() over every lane's fd and pidfd (and the nearest input deadline):
              a worker dead while a process it forked holds its pipe is EOF too
      done    BatchDone -> send the lane its next Run first, then read the results
              (arena + inline) -> outcomes in input order -> yield
      crash   EOF -> which input ran (``Lane.finished``) -> it fails (WorkerCrashed),
              those before it keep their results, those after it go back to be
              sent again (they never started)
      timeout the input running past its deadline -> kill -> TaskTimeout for it,
              the rest of its batch to a fresh worker
      end     slots go back; a batch still running is told to stop and drained by a
              short-lived thread, so that breaking out of the loop never waits
      stop    (``stop=Stopper``, for a map driven by a thread of its own) another
              thread's ``Stopper.set()`` wakes the wait and the generator ends

Why this shape (measured on the 2-core development VM, 10,000 tiny calls, 2
workers, unpinned; see benchmarks/README.md): a Future, a hand-off to a driver
thread and a condition per input cost the parent ~35-44 µs per input, so the
old map ran at 0.03x ``ProcessPoolExecutor(2).map(chunksize=100)``. Here the
parent spends ~0.5 µs per input (chunksize None or 100; PPE(100): ~1.9 µs in
its threads), and the map ran at 1.05x and 1.11x PPE(100) in two runs.

Crash attribution without a reply per input: replying per input (one write and
one wake-up of the parent per input) measured 0.46-0.69x of replying per batch.
So a worker leaves each finished result in shared memory (``_arena``: a memfd
the parent maps through /proc, which no crash can leak), and stamps which input
it is about to start; the pipe carries one BatchDone per batch (plus errors and
oversized results, which are rare). After a crash the parent reads the arena:
nothing finished is lost, and exactly the input that had started fails.
Inputs after it had not started: sending them to the fresh worker runs each
input once. Without an arena (its first batch, or a system that refuses the
/proc open) a worker replies per input: slower, equally exact.

A worker runs one batch at a time, so a batch never waits behind a slow input
of another; the lane is sent its next batch before its results are decoded,
which keeps its idle gap to a wake-up and one write. ``chunksize=None`` starts
at 1 (the first results come at once) and doubles towards ~2 ms of work per
batch, at most 1024 inputs.
"""

from __future__ import annotations

import itertools
import math
import select
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from . import _wire
from ._arena import INDEX_MASK
from ._batch_lane import (
    Failed,
    Lane,
    Run,
    codec_of,
    has_waiters,
    slot_discard,
    slot_lost,
    tag,
    try_acquire,
)
from ._conn import BadMessage, Conn, Deadline, Eof
from ._dispatch import Dispatcher
from ._errors import ClosedError, ProtocolError, SpawnError, TaskTimeout
from ._stopper import Stopper

__all__ = ["batched_map", "check_chunksize"]

AUTO_MAX = 1024  # the largest batch chunksize=None makes
TARGET_SECONDS = 0.002  # the work chunksize=None aims to put in one batch
RUNS_AHEAD = 1  # prepared runs per lane, so a finished lane is refilled at once
WINDOW_BATCHES = 2  # inputs pulled and not handed out: about this many batches per worker

_batch_ids = itertools.count(1)  # unique per process: a worker never sees an id twice


def check_chunksize(chunksize: Any) -> None:
    if chunksize is None:
        return
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be a positive int or None, not {chunksize!r}")
    if not 1 <= chunksize <= INDEX_MASK:
        raise ValueError(f"chunksize must be between 1 and {INDEX_MASK}, not {chunksize!r}")


def batched_map(
    dispatcher: Dispatcher,
    inputs: Iterable[Any],
    *,
    ordered: bool,
    return_exceptions: bool,
    timeout: float | None,
    chunksize: int | None,
    stop: Stopper | None = None,
) -> Iterator[Any]:
    """The results of the task on every input (see ``ProcessPool.map``).

    ``stop``: once set (from another thread), the generator ends at its next step,
    even while it waits for a worker, as if the consumer had closed it.
    """
    check_chunksize(chunksize)
    state = _Map(dispatcher, iter(inputs), ordered, return_exceptions, timeout, chunksize)
    state.stop = stop
    return state.results()


class _Map:
    """The state of one map; only the thread that holds ``lock`` touches it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        inputs: Iterator[Any],
        ordered: bool,
        return_exceptions: bool,
        timeout: float | None,
        chunksize: int | None,
    ) -> None:
        self.d = dispatcher
        self.size = len(dispatcher.slots)
        codec = codec_of(dispatcher)
        self.encode = codec.encode_input
        self.decode = codec.decode_output
        self.limit = dispatcher.settings.max_message_bytes
        self.timeout = timeout if timeout is not None else dispatcher.settings.timeout
        self.inputs = inputs
        self.exhausted = False
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.fixed = chunksize
        self.chunk = chunksize or 1
        self.lanes: list[Lane] = []
        self.parity: dict[int, int] = {}  # slot index -> last batch id's parity
        self.pending: deque[Run] = deque()
        self.pulled = 0
        self.emitted = 0
        self.ready: dict[int, list[Any]] = {}  # ordered: first seq -> outcomes
        self.ready_queue: deque[list[Any]] = deque()  # unordered
        self.next_out = 0
        self.lock = threading.Lock()
        self.closing = False
        self.abandoned = False
        self.broken = False
        self.pack = _wire.packer()
        self.stop: Stopper | None = None

    # -- the generator -----------------------------------------------------------

    def results(self) -> Iterator[Any]:
        self.lock.acquire()
        self.d.close_hooks.append(self._on_close)
        try:
            while True:
                segment = self._next_segment()
                if segment is None:
                    if self._all_done() or (self.stop is not None and self.stop.requested):
                        return
                    try:
                        self._step()
                    except BaseException:
                        self.broken = True  # mid-send or mid-read: kill, never drain
                        raise
                    continue
                self.lock.release()
                try:
                    yield from self._emit(segment)
                finally:
                    self.lock.acquire()
                if self.abandoned:
                    raise ClosedError("the handle was closed during the map")
        finally:
            self._finish()

    def _emit(self, outcomes: list[Any]) -> Iterator[Any]:
        for outcome in outcomes:
            if type(outcome) is Failed:
                if not self.return_exceptions:
                    raise outcome.error
                yield outcome.error
            else:
                yield outcome

    def _next_segment(self) -> list[Any] | None:
        if self.ordered:
            segment = self.ready.pop(self.next_out, None)
            if segment is not None:
                self.next_out += len(segment)
        else:
            segment = self.ready_queue.popleft() if self.ready_queue else None
        if segment is not None:
            self.emitted += len(segment)
        return segment

    def _all_done(self) -> bool:
        return (
            self.exhausted
            and not self.pending
            and all(lane.sent is None for lane in self.lanes)
            and not self.ready
            and not self.ready_queue
        )

    def _deliver(self, seq: int, outcomes: list[Any]) -> None:
        if not outcomes or self.closing:
            return
        if self.ordered:
            self.ready[seq] = outcomes
        else:
            self.ready_queue.append(outcomes)

    # -- one round: fill the lanes, wait for one of them -----------------------------

    def _step(self) -> None:
        self._fill()
        if any(lane.poll_fds() is not None for lane in self.lanes):
            self._wait(None)
        elif not self.lanes and (self.pending or not self.exhausted):
            self.lanes.append(Lane(self.d.acquire(), self.limit))  # waits its turn (FIFO)
        elif not self._all_done() and not self._next_ready() and not self.pending:
            raise RuntimeError("tarnish_py map: no input in flight and none to send")

    def _next_ready(self) -> bool:
        return bool(self.ready) if self.ordered else bool(self.ready_queue)

    def _fill(self) -> None:
        while len(self.lanes) < self.size and (self.pending or not self.exhausted):
            slot = try_acquire(self.d)
            if slot is None:
                break
            self.lanes.append(Lane(slot, self.limit))
        self._top_up()
        for lane in list(self.lanes):
            if lane.sent is not None:
                continue
            if has_waiters(self.d):
                self._release(lane)  # another caller waits: lend the worker back
            elif lane.conn() is None:
                self._start(lane)  # its worker failed to start: try again
            elif lane.is_ready() and self.pending:
                self._send(lane, self.pending.popleft())

    def _top_up(self) -> None:
        want = RUNS_AHEAD * max(1, len(self.lanes))
        while len(self.pending) < want and not self.exhausted:
            window = (WINDOW_BATCHES * self.size + 1) * self.chunk
            room = min(self.chunk, window - (self.pulled - self.emitted))
            if room <= 0:
                return
            self._pull(room)

    def _pull(self, n: int) -> None:
        items = list(itertools.islice(self.inputs, n))
        if len(items) < n:
            self.exhausted = True
        seq = self.pulled
        self.pulled += len(items)
        encode = self.encode
        try:
            payloads = [encode(item) for item in items]
        except Exception:
            self._pull_slowly(seq, items)
            return
        if items:
            self.pending.append(Run(seq, items, payloads))

    def _pull_slowly(self, seq: int, items: list[Any]) -> None:
        """Some input is invalid: its error takes its place, the others run."""
        start = 0
        payloads: list[Any] = []
        for k, item in enumerate(items):
            try:
                payloads.append(self.encode(item))
            except Exception as exc:
                if payloads:
                    self.pending.append(Run(seq + start, items[start:k], payloads))
                payloads = []
                self._deliver(seq + k, [Failed(tag(exc, item, None))])
                start = k + 1
        if payloads:
            self.pending.append(Run(seq + start, items[start:], payloads))

    def _send(self, lane: Lane, run: Run) -> None:
        # Alternate the parity of a lane's batch ids: batch b uses arena half b % 2, and
        # the lane is sent its next batch while the last one's half is still being read.
        parity = 1 - self.parity.get(lane.slot.index, 1)
        bid = next(_batch_ids)
        bid += (bid & 1) != parity
        self.parity[lane.slot.index] = parity
        deadline = time.monotonic() + self.timeout if self.timeout is not None else None
        try:
            lane.send(run, bid, self.timeout is not None, self.pack, deadline)
        except ValueError as exc:  # more than max_message_bytes
            if len(run.items) == 1:
                self._deliver(run.seq, [Failed(tag(exc, run.items[0], None))])
            else:
                half = len(run.items) // 2
                self.pending.appendleft(run.tail(half))
                self.pending.appendleft(Run(run.seq, run.items[:half], run.payloads[:half]))
        except Eof:
            self._lost(lane)
        except Deadline:
            self._expire(lane, force=True)

    def _start(self, lane: Lane) -> None:
        try:
            lane.start()
        except SpawnError as exc:
            if self.closing:
                return
            self._top_up()
            if self.pending:  # as a call would: the next inputs get the SpawnError
                run = self.pending.popleft()
                self._deliver(run.seq, [Failed(tag(exc, item, None)) for item in run.items])

    # -- waiting and what a worker says ------------------------------------------------

    def _wait(self, cap: float | None) -> None:
        poller = select.poll()
        by_fd: dict[int, Lane] = {}
        deaths: dict[int, Lane] = {}  # pidfds: readable once the worker has exited
        for lane in self.lanes:
            fds = lane.poll_fds()
            if fds is not None:
                poller.register(fds[0], select.POLLIN)
                by_fd[fds[0]] = lane
                if fds[1] >= 0:
                    poller.register(fds[1], select.POLLIN)
                    deaths[fds[1]] = lane
        if not by_fd:
            return
        stop_fd = -1
        if self.stop is not None and not self.closing:  # the drain never polls it: the
            stop_fd = self.stop.fd                      # owner may close it by then
            poller.register(stop_fd, select.POLLIN)
        deadline = self._nearest_deadline()
        if cap is not None:
            deadline = cap if deadline is None else min(deadline, cap)
        ms = None if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
        events = poller.poll(ms)
        readable = {by_fd[fd] for fd, _ in events if fd in by_fd}
        serviced: set[Lane] = set()
        for fd, _ in events:
            if fd == stop_fd:
                continue  # seen by results() after this step
            lane = by_fd.get(fd) or deaths[fd]
            # Once per wake-up: a lane whose pipe and pidfd are both ready has one
            # read's worth of bytes; a second read may block on an empty pipe that a
            # process the dead worker forked still holds open.
            if lane not in self.lanes or lane in serviced:
                continue
            serviced.add(lane)
            if lane not in readable:
                # Its worker died, and nothing is left to read, yet no EOF came: a
                # process it forked holds the pipe. Ending the group brings the EOF.
                lane.end_group()
            self._service(lane)
        if self.timeout is not None:
            for lane in list(self.lanes):
                if lane.sent is not None:
                    self._expire(lane)

    def _nearest_deadline(self) -> float | None:
        if self.timeout is None:
            return None
        nearest = None
        for lane in self.lanes:
            if lane.sent is not None:
                since = lane.running_since(lane.sent)
                if since is not None and (nearest is None or since < nearest):
                    nearest = since
        return None if nearest is None else nearest + self.timeout

    def _service(self, lane: Lane) -> None:
        if lane.sent is None:
            self._start(lane)  # a starting worker's Hello (or its death)
            return
        try:
            messages, eof = lane.pump()
            done = lane.take(messages)
        except (BadMessage, ProtocolError) as exc:
            self._broken(lane, exc)
            return
        if done is not None:
            self._done(lane, done.ran, done.seconds)
        elif eof:
            self._lost(lane)

    def _done(self, lane: Lane, count: int, seconds: float) -> None:
        sent = lane.sent
        assert sent is not None
        lane.sent = None
        if not self.closing and self.pending and not has_waiters(self.d):
            self._send(lane, self.pending.popleft())  # first: the worker is idle
        try:
            outcomes = lane.outcomes(sent, count, self.decode)
        except ProtocolError as exc:  # a corrupt arena: the worker is not to be trusted
            error = ProtocolError(f"the worker broke the protocol and was killed: {exc}")
            outcomes = [Failed(tag(error, item, None)) for item in sent.run.items[:count]]
            if lane.sent is not None:
                self._broken(lane, exc)
            else:
                self._discard(lane)
        if count < len(sent.run.items):  # told to stop: the rest never started
            self.pending.appendleft(sent.run.tail(count))
        self._deliver(sent.run.seq, outcomes)
        if self.fixed is None and count and self.emitted:  # grow once results flow
            per_input = seconds / count
            grown = min(2 * self.chunk, AUTO_MAX)
            self.chunk = max(1, min(grown, int(TARGET_SECONDS / per_input) if per_input else grown))
        if lane.sent is None and (self.closing or has_waiters(self.d)):
            self._release(lane)

    # -- failures ------------------------------------------------------------------------

    def _lost(self, lane: Lane) -> None:
        """EOF: the worker died. Its running input fails, the rest goes to the next one."""
        conn = lane.conn()
        assert conn is not None
        lane.drain_to_eof()
        error = slot_lost(lane.slot, conn)
        self._settle(lane, conn, error)
        if isinstance(error, ClosedError) and not self.closing:
            raise error

    def _expire(self, lane: Lane, force: bool = False) -> None:
        sent = lane.sent
        assert sent is not None and self.timeout is not None
        since = lane.running_since(sent)
        if not force and (since is None or time.monotonic() < since + self.timeout):
            return
        conn = lane.conn()
        assert conn is not None
        conn.kill()
        lane.drain_to_eof()
        self._settle(lane, conn, TaskTimeout(self.timeout))
        slot_discard(lane.slot, conn)

    def _broken(self, lane: Lane, exc: Exception) -> None:
        conn = lane.conn()
        assert conn is not None
        conn.kill()
        lane.drain_to_eof()
        error = ProtocolError(f"the worker broke the protocol and was killed: {exc}")
        self._settle(lane, conn, error)
        slot_discard(lane.slot, conn)

    def _discard(self, lane: Lane) -> None:
        conn = lane.conn()
        if conn is not None:
            slot_discard(lane.slot, conn)
        lane.forget(conn)

    def _settle(self, lane: Lane, conn: Conn, error: BaseException) -> None:
        """The worker of ``lane`` is dead: settle its batch as far as it got."""
        pid = conn.pid
        sent = lane.sent
        assert sent is not None
        lane.sent = None
        done, running = lane.finished(sent)
        try:
            outcomes = lane.outcomes(sent, done, self.decode)
        except ProtocolError as exc:
            outcomes = [Failed(tag(exc, item, pid)) for item in sent.run.items[:done]]
        if running:
            outcomes.append(Failed(tag(error, sent.run.items[done], pid)))
            done += 1
        if done < len(sent.run.items):
            self.pending.appendleft(sent.run.tail(done))
        self._deliver(sent.run.seq, outcomes)
        lane.forget(conn)

    # -- ending ----------------------------------------------------------------------------

    def _release(self, lane: Lane) -> None:
        self.lanes.remove(lane)
        self.d.release(lane.slot)

    def _finish(self) -> None:
        """The generator ends: idle workers go back now, running batches are drained."""
        try:
            self.closing = True
            for lane in list(self.lanes):
                if lane.sent is None:
                    self._release(lane)
                elif self.broken:
                    conn = lane.conn()  # a frame may be half sent: the drain sees EOF
                    if conn is not None:
                        conn.kill()
                else:
                    lane.stop()
        finally:
            busy = bool(self.lanes)
            if not busy:
                self._unhook()
            self.lock.release()
        if busy:
            threading.Thread(target=self._drain_later, name="tarnish_py-map-drain",
                             daemon=True).start()

    def _drain_later(self) -> None:
        with self.lock:
            try:
                self._drain(None)
            finally:
                self._unhook()

    def _drain(self, deadline: float | None) -> None:
        """Wait for the running batches (killing them at ``deadline``), then let go."""
        killed = False
        try:
            while self.lanes:
                for lane in list(self.lanes):
                    if lane.sent is None:
                        self._release(lane)
                if deadline is not None and not killed and time.monotonic() >= deadline:
                    killed = True
                    for lane in self.lanes:
                        conn = lane.conn()
                        if conn is not None:
                            conn.kill()
                self._wait(None if killed else deadline)
        finally:
            for lane in list(self.lanes):  # only after an unexpected error
                if lane.sent is not None:
                    lane.sent = None
                    self._discard(lane)
                self._release(lane)

    def _on_close(self, grace: float) -> None:
        """Dispatcher.close: a map suspended between results lets go of its workers."""
        if not self.lock.acquire(blocking=False):
            return  # the map's thread is at work: it sees the kill and lets go itself
        try:
            if self.lanes:
                self.abandoned = self.closing = True
                for lane in self.lanes:
                    lane.stop()
                self._drain(time.monotonic() + grace)
        finally:
            self.lock.release()

    def _unhook(self) -> None:
        try:
            self.d.close_hooks.remove(self._on_close)
        except ValueError:
            pass
