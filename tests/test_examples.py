"""Every example runs as a user would run it, and says what the README says it does."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, python_env

EXPECTED = {
    "echo.py": ["hello from a worker process"],
    "safe_computation.py": [
        "task error: ValueError",
        "invalid input: 1 error(s)",
        "calls_so_far=3",
    ],
    "crash_recovery.py": ["worker crashed (SIGSEGV)", "6 skipped: crashes every time"],
    "ffi_segfault.py": ["signal=SIGSEGV", "strlen(b'still here') = 10"],
    "pool.py": ["crashed with SIGSEGV", "still 4 workers"],
    "inline_task.py": ["scale(1.5) = 3.0", "(SIGABRT)", "parse('42') = 42"],
    "cpu_bound_ffi.py": ["speedup"],
    "batch_with_crashes.py": ["5 crashed (SIGSEGV)", "3 crashed (SIGABRT)", "29 ok"],
    "isolated_module.py": [
        "imported in this process: False",
        "buffer is a RemoteObject: True; len=16, writes=1",
        "crashed the worker (SIGSEGV)",
        "parse_header(b'\\x02\\x07') = {'length': 2, 'kind': 7}",
        "ProxyLost: the remote brittle_native.Buffer object was lost",
        "a new buffer works: b'again",
    ],
    "stateful_counter.py": [
        "count after the crash: 3 (kept)",
        "count after the crash: 0 (lost)",
        "restored the snapshot: 1",
        "a new Process restored counter.snap: 1",
    ],
    "progress.py": ["120 inputs, each with an outcome: 101 ok, 11 crashed, 8 failed"],
    "dask_batch.py": [
        "3 crashed (SIGSEGV), 37 ok",
        "same 2 Dask workers (same processes): True",
        "scattered data still held: 1000 items",
    ],
}

# The demo reads as a success: a caught crash is reported by the example itself,
# in a line or two, never as faulthandler's dump on the terminal.
QUIET = ["ffi_segfault.py", "batch_with_crashes.py", "progress.py"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / name)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in EXPECTED[name]:
        assert text in proc.stdout, (text, proc.stdout)
    if name in QUIET:
        assert "Fatal Python error" not in proc.stdout + proc.stderr, proc.stderr
        assert "Current thread" not in proc.stdout + proc.stderr, proc.stderr


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in (REPO / "examples").glob("*.py")) == sorted(EXPECTED)
