"""Process checks shared by the tests and by the programs they run (both import
this module: tests/ is on the programs' PYTHONPATH). Linux /proc only."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def state(pid: int) -> str | None:
    """The process state letter (R, S, Z ...), or None if it is gone."""
    fields = _stat(pid)
    return fields[0] if fields else None


def is_dead(pid: int) -> bool:
    """Gone, or a zombie (PID 1 here may never reap what it adopts)."""
    return state(pid) in (None, "Z", "X")


def wait_dead(pid: int, within: float = 5.0) -> bool:
    """Whether ``pid`` is dead within ``within`` seconds."""
    return not still_alive([pid], within)


def still_alive(pids: Iterable[int], within: float) -> list[int]:
    """Wait up to ``within`` seconds for every pid to die; return the survivors."""
    pids = list(pids)
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in pids if not is_dead(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def _live_parents() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[0] not in ("Z", "X"):
            parents[int(entry)] = int(fields[1])
    return parents


def children(pid: int | None = None) -> list[int]:
    """The live children of ``pid`` (default: this process)."""
    me = os.getpid() if pid is None else pid
    return [child for child, parent in _live_parents().items() if parent == me]


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` in the process tree."""
    below: dict[int, list[int]] = {}
    for child, parent in _live_parents().items():
        below.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in below.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
