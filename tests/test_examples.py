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
    "dask_batch.py": [
        "3 crashed (SIGSEGV), 37 ok",
        "same 2 Dask workers (same processes): True",
        "scattered data still held: 1000 items",
    ],
}


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


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in (REPO / "examples").glob("*.py")) == sorted(EXPECTED)
