"""Logging records of a worker, carried to the parent's logging over the worker's stderr.

::

    worker   logging.getLogger("app").info(...) -> root logger -> _ToParent handler
             -> one line on fd 2:  MARK + JSON {name, levelno, msg, exc_text, ...} + "\\n"
    parent   the stderr pump (``_stderr``) finds MARK at the start of a line
             -> decode(): a LogRecord with ``process`` and ``worker_pid`` = the worker
             -> deliver(): logging.getLogger(name).handle(record), if enabled for its level

No protocol message is involved: a record shares the worker's stderr with
everything else the worker writes there, in the order it was written. The
worker's root level is the lowest level the parent's logging lets through
(:func:`parent_log_level`, sent in the worker's config), so a worker formats
nothing the parent would drop; the parent's own loggers and handlers then filter
each record exactly as they filter their own. Since the worker's root logger has
a handler, a ``logging.basicConfig()`` in a re-executed program does nothing in
the worker, and ``logging.lastResort`` never prints a record raw there.

Imports nothing of tarnish_py: both sides use it (``_boot`` in the worker,
``_stderr`` in the parent).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

__all__ = ["MARK", "decode", "deliver", "install", "parent_log_level", "tail_line"]

#: Starts a line that holds a record. Control characters a program does not print by
#: accident; a line that has the mark but does not decode is passed on as text.
MARK = b"\x1etarnish_py-log\x1f"

_FIELDS = (
    "name",
    "levelno",
    "pathname",
    "filename",
    "module",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "thread",
    "threadName",
    "processName",
)
_TEXT_LIMIT = 32 * 1024  # per text field, so that a record stays one readable line
_formatter = logging.Formatter()


def parent_log_level() -> int:
    """The lowest level any of this process's loggers lets through.

    The root logger's effective level, or a lower level set on any logger (a
    program may keep root at WARNING and set "myapp" to DEBUG); never below what
    ``logging.disable()`` turns off.
    """
    level = logging.getLogger().getEffectiveLevel()
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            level = min(level, logger.level)
    return max(level, logging.root.manager.disable + 1)


# -- in the worker -------------------------------------------------------------


class _ToParent(logging.Handler):
    """Writes each record as one marked line on fd 2, the pipe the parent reads."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = encode(record)
            if sys.stderr is not None:
                sys.stderr.flush()  # what was printed before the record comes before it
            view = memoryview(line)
            while view:
                view = view[os.write(2, view) :]
        except Exception:
            self.handleError(record)


def install(level: int) -> None:
    """In a worker: send every record of ``level`` and above to the parent."""
    root = logging.getLogger()
    root.addHandler(_ToParent())
    root.setLevel(level)


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= _TEXT_LIMIT:
        return text
    half = _TEXT_LIMIT // 2
    return text[:half] + "\n[... cut ...]\n" + text[-half:]


def encode(record: logging.LogRecord) -> bytes:
    """A record as one line: the mark, then JSON of its fields (message already formatted)."""
    data: dict[str, Any] = {field: getattr(record, field, None) for field in _FIELDS}
    data["msg"] = _cut(record.getMessage())
    exc_text = record.exc_text
    if record.exc_info and not exc_text:
        exc_text = _formatter.formatException(record.exc_info)
    data["exc_text"] = _cut(exc_text)
    data["stack_info"] = _cut(record.stack_info)
    return MARK + json.dumps(data, default=str).encode() + b"\n"


# -- in the parent -------------------------------------------------------------


def decode(line: bytes, pid: int) -> logging.LogRecord | None:
    """The record of a marked line from worker ``pid``; None if it is not one."""
    try:
        data = json.loads(line[len(MARK) :])
    except ValueError:
        return None
    if not (
        isinstance(data, dict)
        and isinstance(data.get("name"), str)
        and isinstance(data.get("levelno"), int)
        and isinstance(data.get("msg"), str)
    ):
        return None
    fields = {key: data.get(key) for key in (*_FIELDS, "exc_text", "stack_info")}
    record = logging.makeLogRecord(fields)
    record.msg = data["msg"]
    record.args = None
    record.levelname = logging.getLevelName(record.levelno)
    record.process = pid
    record.worker_pid = pid
    return record


def deliver(record: logging.LogRecord) -> None:
    """Hand a worker's record to the parent's logger of the same name."""
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def tail_line(record: logging.LogRecord) -> bytes:
    """How a record reads in ``WorkerCrashed.stderr``: ``WARNING:name:message``."""
    text = f"{record.levelname}:{record.name}:{record.msg}\n"
    if record.exc_text:
        text += record.exc_text.rstrip("\n") + "\n"
    return text.encode("utf-8", "replace")
