"""What the fault-injection tests share: the top of every program they run, and
the parsing of its stdout (one JSON record per line)."""

from __future__ import annotations

import json
import textwrap
from typing import Any

# The top of each program: imports, crash helpers named for what they do,
# /proc probes, and emit(), which prints one JSON record on the parent's stdout.
PRELUDE = '''\
import _thread, asyncio, ctypes, hashlib, json, os, signal, subprocess, sys, threading, time
import pydantic
import tarnish_py
from tarnish_py import (ClosedError, Process, ProcessPool, ProtocolError, SpawnError, Task,
                        TaskError, TaskTimeout, WorkerCrashed)
from tarnish_py import _boot, _protocol, _wire
from proc_checks import children, is_dead, state, wait_dead


def emit(**fields):
    print(json.dumps(fields), flush=True)


def segfault():
    ctypes.string_at(0)


def hang():
    time.sleep(600)


def spin_in_c():
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2**31 - 1)


def frame(message):
    return _wire.encode_frame(message)


def to_parent(data):
    """Write raw bytes on the worker's channel, behind the library's back."""
    os.write(_boot.channel_out, data)


def close_channel(inbound=True, outbound=True):
    if inbound:
        os.close(_boot.channel_in)
    if outbound:
        os.close(_boot.channel_out)


def start_stubborn_child():
    """A process of the task's own that ignores SIGTERM; returns its pid once it does."""
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    child.stdout.readline()
    return child.pid


def memory(field):
    """VmRSS or VmHWM (peak RSS) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def elapsed_since(t0):
    return round(time.monotonic() - t0, 3)
'''


def program(body: str) -> str:
    """A runnable program: the prelude, then ``body``."""
    return PRELUDE + "\n\n" + textwrap.dedent(body)


def records(result: Any) -> list[dict[str, Any]]:
    """The JSON records a program printed; its failure output if it did not exit 0."""
    assert result.returncode == 0, str(result)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
