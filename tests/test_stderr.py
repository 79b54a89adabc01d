"""The parent's side of a worker's stderr, without a worker: bytes written into a
pipe come out forwarded, captured or logged, records reach logging, the tail is kept."""

from __future__ import annotations

import logging
import os
import sysconfig
from collections.abc import Iterator

import pytest

from tarnish_py import _stderr, _worker_logging

STDLIB = sysconfig.get_path("stdlib").encode()
DUMP = (
    b"Fatal Python error: Segmentation fault\n\n"
    b"Current thread 0x00007f0b2d5f7b80 (most recent call first):\n"
    b'  File "' + STDLIB + b'/ctypes/__init__.py", line 519 in string_at\n'
    b'  File "/home/me/app/thumbs.py", line 23 in run\n'
    b'  File "/home/me/app/thumbs.py", line 52 in <module>\n\n'
    b"Extension modules: msgpack._cmsgpack (total: 1)\n"
)


@pytest.fixture
def forwarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    out: list[bytes] = []
    monkeypatch.setattr(_stderr, "forward", out.append)
    yield out


def pump(chunks: list[bytes], mode: str = "forward", tail: int = 1 << 15) -> _stderr.StderrPump:
    """Run a pump over ``chunks`` written into a pipe, to EOF."""
    r, w = os.pipe()
    thread = _stderr.StderrPump(r, 4321, mode, tail)
    thread.start()
    for chunk in chunks:
        os.write(w, chunk)
    os.close(w)
    thread.join(10)
    assert not thread.is_alive()
    return thread


def record_line(name: str, level: int, message: str) -> bytes:
    record = logging.LogRecord(name, level, "/w/app.py", 7, message, None, None, func="run")
    return _worker_logging.encode(record)


def test_forward_prefixes_whole_lines_across_chunks(forwarded: list[bytes]) -> None:
    p = pump([b"hello\nwor", b"ld\npartial", b" line"])
    assert b"".join(forwarded) == (
        b"[worker 4321] hello\n[worker 4321] world\n[worker 4321] partial line\n"
    )
    assert p.tail() == "hello\nworld\npartial line\n"


def test_forward_collapses_a_faulthandler_dump_to_one_line(forwarded: list[bytes]) -> None:
    # Split mid-dump, after an unfinished line of the program's own.
    p = pump([b"before\nno newline yet", DUMP[:70], DUMP[70:]])
    lines = b"".join(forwarded).decode().splitlines()
    assert lines == [
        "[worker 4321] before",
        "[worker 4321] no newline yet",
        "[worker 4321] Fatal Python error: Segmentation fault at app/thumbs.py:23 in run "
        "(full stack: WorkerCrashed.stderr)",
    ]
    assert p.tail().endswith(DUMP.decode())  # the tail keeps the whole dump


def test_the_summary_names_the_crashed_thread_not_the_first_one_dumped(
    forwarded: list[bytes],
) -> None:
    # faulthandler dumps threads in no fixed order: another thread may come first.
    other = (
        b"Thread 0x00007f0b2c1ff640 (most recent call first):\n"
        b'  File "/home/me/app/watch.py", line 9 in poll_forever\n\n'
    )
    header, rest = DUMP.split(b"\n\n", 1)
    pump([header + b"\n\n" + other + rest])
    assert b"".join(forwarded).decode().splitlines() == [
        "[worker 4321] Fatal Python error: Segmentation fault at app/thumbs.py:23 in run "
        "(full stack: WorkerCrashed.stderr)",
    ]


def test_capture_prints_nothing_and_keeps_the_tail(forwarded: list[bytes]) -> None:
    p = pump([b"x" * 100 + b"\n", b"chatter\n", DUMP], mode="capture", tail=len(DUMP) + 8)
    assert forwarded == []
    assert p.tail() == "chatter\n" + DUMP.decode()  # bounded: the oldest bytes dropped


def test_log_mode_makes_records(
    forwarded: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tarnish_py.worker"):
        pump([b"a warning from C\n", DUMP], mode="log")
    assert forwarded == []
    mine = [r for r in caplog.records if r.name == "tarnish_py.worker"]
    assert [(r.levelname, r.getMessage().splitlines()[0]) for r in mine] == [
        ("WARNING", "a warning from C"),
        ("ERROR", "Fatal Python error: Segmentation fault"),
    ]
    assert all(r.process == 4321 and r.worker_pid == 4321 for r in mine)  # type: ignore[attr-defined]
    assert "line 23 in run" in mine[1].getMessage()


@pytest.mark.parametrize("mode", ["forward", "capture", "log"])
def test_records_reach_logging_in_every_mode(
    mode: str, forwarded: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    line = record_line("app.part", logging.WARNING, "50% done")
    with caplog.at_level(logging.INFO, logger="app"):
        p = pump([b"text\n" + line[:20], line[20:] + b"half a line" + line], mode=mode)
    mine = [r for r in caplog.records if r.name == "app.part"]
    assert [r.getMessage() for r in mine] == ["50% done", "50% done"]
    assert all(r.process == 4321 and r.funcName == "run" and r.lineno == 7 for r in mine)
    if mode == "forward":
        assert b"".join(forwarded) == b"[worker 4321] text\n[worker 4321] half a line\n"
    assert p.tail() == "text\nWARNING:app.part:50% done\nhalf a line\nWARNING:app.part:50% done\n"


def test_records_below_the_parents_level_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app"):
        pump([record_line("app", logging.INFO, "quiet"), record_line("app", 40, "loud")])
    assert [r.getMessage() for r in caplog.records if r.name == "app"] == ["loud"]


def test_a_forged_mark_is_text(forwarded: list[bytes]) -> None:
    pump([_worker_logging.MARK + b"{not json\n", _worker_logging.MARK + b'{"name": 1}\n'])
    assert b"".join(forwarded).count(b"[worker 4321] ") == 2


def test_an_endless_line_is_passed_on_in_bounded_pieces(forwarded: list[bytes]) -> None:
    pump([b"y" * (1 << 20)], mode="forward")
    assert sum(len(x) for x in forwarded) >= 1 << 20
    assert max(len(x) for x in forwarded) < (1 << 18) + 100


def test_parent_log_level_is_the_lowest_any_logger_lets_through() -> None:
    root, app = logging.getLogger(), logging.getLogger("test_stderr.app")
    saved = root.level, app.level
    # Other tests' libraries (distributed ...) leave loggers of their own at INFO.
    others = {
        logger: logger.level
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and logger is not app
    }
    for logger in others:
        logger.setLevel(logging.NOTSET)
    try:
        root.setLevel(logging.WARNING)
        app.setLevel(logging.NOTSET)
        assert _worker_logging.parent_log_level() == logging.WARNING
        app.setLevel(logging.DEBUG)
        assert _worker_logging.parent_log_level() == logging.DEBUG
        logging.disable(logging.INFO)
        assert _worker_logging.parent_log_level() == logging.INFO + 1
    finally:
        logging.disable(logging.NOTSET)
        for logger, level in others.items():
            logger.setLevel(level)
        root.setLevel(saved[0])
        app.setLevel(saved[1])
