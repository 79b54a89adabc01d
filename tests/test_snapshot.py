"""The pure parts of snapshots, without a worker: the state codec of a task class,
the snapshot file format and its atomic write, and the state requests of the protocol."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tarnish_py import Task, _protocol, _snapshot, _wire


class Counter(Task[str, int]):
    def run(self, cmd: str) -> int:
        return 0

    def snapshot(self) -> int:
        return 0

    def restore(self, state: int) -> None:
        pass


class Other(Counter):
    pass


class OnlySnapshot(Task[int, int]):
    def run(self, x: int) -> int:
        return x

    def snapshot(self) -> int:
        return 0


class Unannotated(Task[int, int]):
    def run(self, x: int) -> int:
        return x

    def snapshot(self):  # type: ignore[no-untyped-def]
        return 0

    def restore(self, state: int) -> None:
        pass


class NoHooks(Task[int, int]):
    def run(self, x: int) -> int:
        return x


def test_state_codec_reads_the_annotation() -> None:
    codec = _snapshot.state_codec(Counter)
    assert codec is not None and codec.type is int
    assert codec.encode(3) == 3
    assert _snapshot.state_codec(NoHooks) is None


@pytest.mark.parametrize(
    ("cls", "text"),
    [(OnlySnapshot, "restore(self, state)"), (Unannotated, "return annotation")],
)
def test_half_defined_hooks_are_a_type_error(cls: type[Task[Any, Any]], text: str) -> None:
    with pytest.raises(TypeError, match=r"restore\(self, state\)|return annotation") as info:
        _snapshot.state_codec(cls)
    assert text in str(info.value)


def test_require_names_the_task_and_the_caller() -> None:
    with pytest.raises(TypeError, match="Process.snapshot\\(\\) needs the state hooks.*NoHooks"):
        _snapshot.require_state_codec(NoHooks, "Process.snapshot()")


def test_file_round_trip_and_identity(tmp_path: Path) -> None:
    path = _snapshot.write_file(tmp_path / "c.snap", Counter, {"a": [1, b"x"]})
    assert _snapshot.read_file(path, Counter) == {"a": [1, b"x"]}
    with pytest.raises(ValueError, match="snapshot of task test_snapshot:Counter, not of "
                       "test_snapshot:Other"):
        _snapshot.read_file(path, Other)
    assert os.listdir(tmp_path) == ["c.snap"]


def test_unknown_format_and_damaged_files(tmp_path: Path) -> None:
    future = tmp_path / "future.snap"
    record = {"format": 99, "task": "test_snapshot:Counter", "state": 1}
    future.write_bytes(_snapshot.MAGIC + _wire.pack(record))
    with pytest.raises(ValueError, match="format 99"):
        _snapshot.read_file(future, Counter)
    damaged = tmp_path / "damaged.snap"
    damaged.write_bytes(_snapshot.MAGIC + b"\xc1")
    with pytest.raises(ValueError, match="damaged"):
        _snapshot.read_file(damaged, Counter)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _snapshot.write_file(tmp_path / "c.snap", Counter, 1)

    def power_cut(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError, match="disk gone"):
        _snapshot.write_file(path, Counter, 2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.snap"]
    assert _snapshot.read_file(path, Counter) == 1


@pytest.mark.parametrize("kind", [_protocol.SNAPSHOT, _protocol.RESTORE, _protocol.CALL_KEEP])
def test_state_requests_parse(kind: int) -> None:
    packed = _protocol.Packer().call(7, {"s": 1}, kind)
    message = _wire.unpack(packed)
    assert _protocol.parse_request(message) == _protocol.StateRequest(kind, 7, {"s": 1})


def test_keeper_restores_a_new_worker_once() -> None:
    keeper = _snapshot.StateKeeper()
    sent: list[tuple[Any, int]] = []

    def call(state: Any, timeout: float | None, kind: int) -> Any:
        sent.append((state, kind))
        return keeper.after(conn, kind, state, None)

    first, conn = object(), object()
    assert keeper.before(first, _protocol.CALL, call, None) == _protocol.CALL_KEEP
    assert keeper.after(first, _protocol.CALL_KEEP, "x", ["out", 5]) == "out"
    assert keeper.before(first, _protocol.CALL, call, None) == _protocol.CALL_KEEP
    assert keeper.after(first, _protocol.CALL_KEEP, "y", ["same state"]) == "same state"
    assert sent == []  # the worker that made the state has it
    assert keeper.before(conn, _protocol.SNAPSHOT, call, None) == _protocol.SNAPSHOT
    assert sent == [(5, _protocol.RESTORE)]
    keeper.before(conn, _protocol.CALL, call, None)
    assert len(sent) == 1
