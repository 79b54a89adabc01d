"""Whatever a worker writes to stdout or stderr never corrupts the channel: calls
return the right values and the text reaches the parent's stderr."""

from __future__ import annotations

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

CALLS = 3

# (statement run by the task before it returns, text that must reach the parent's stderr)
NOISES = [
    pytest.param("print('NOISE-print', x)", "NOISE-print", id="print"),
    pytest.param("print('NOISE-no-newline', x, end='')", "NOISE-no-newline", id="print-no-eol"),
    pytest.param("sys.stdout.write(f'NOISE-write {x}\\n')", "NOISE-write", id="sys.stdout"),
    pytest.param(
        "libc.printf(b'NOISE-printf %d\\n', x); libc.fflush(None)", "NOISE-printf", id="printf"
    ),
    pytest.param(
        "os.write(1, b'NOISE-oswrite\\x00\\x00 with NUL bytes\\n')", "NOISE-oswrite", id="os.write"
    ),
    pytest.param(
        "os.write(1, b'\\x00\\x02\\x01\\x00\\x03\\x13\\x01\\x00NOISE-frame-like\\x00')",
        "NOISE-frame-like",
        id="frame-like-bytes",
    ),
    pytest.param(
        "subprocess.run(['echo', 'NOISE-child'], check=True)", "NOISE-child", id="child-process"
    ),
    pytest.param(
        "sys.stderr.write('NOISE-stderr\\n'); sys.stderr.flush()", "NOISE-stderr", id="sys.stderr"
    ),
    pytest.param("os.write(2, b'NOISE-fd2\\n')", "NOISE-fd2", id="os.write-2"),
    pytest.param("print('NOISE-big' + 'x' * 3_000_000, flush=True)", "NOISE-big", id="megabytes"),
]


@pytest.mark.parametrize(("noise", "marker"), NOISES)
def test_worker_output_goes_to_parent_stderr(run_script, noise: str, marker: str) -> None:
    result = run_script(
        program(
            f"""
libc = ctypes.CDLL(None)

class Noisy(Task[int, int]):
    def run(self, x: int) -> int:
        {noise}
        return 2 * x

def parent():
    with Process(Noisy) as p:
        pid = p.pid
        for x in range({CALLS}):
            emit(x=x, doubled=p.call(x))
        emit(same_worker=p.pid == pid)
    sys.stderr.flush()

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
        ),
        timeout=60,
    )
    *calls, last = records(result)
    assert [(r["x"], r["doubled"]) for r in calls] == [(x, 2 * x) for x in range(CALLS)]
    assert last["same_worker"], "noise must not make the parent kill the worker"
    assert marker not in result.stdout
    # Text without a final newline may still sit in a buffer when the worker is stopped.
    minimum = 1 if "no-newline" in marker else CALLS
    assert result.stderr.count(marker) >= minimum, result.stderr[-3000:]


# Top-level statements of a re-executed script run in the fork server before main().
TOP_LEVEL = [
    pytest.param("print('TOP-before-import')", "TOP-before-import", "before", id="print-before"),
    pytest.param(
        "os.write(1, b'TOP-raw-before\\x00\\x00import\\n')",
        "TOP-raw-before",
        "before",
        id="os.write-NUL-before",
    ),
    pytest.param(
        "print('TOP-before-flushed', flush=True)",
        "TOP-before-flushed",
        "before",
        id="print-flush-before",
    ),
    pytest.param("print('TOP-after-import')", "TOP-after-import", "after", id="print-after"),
    pytest.param(
        "import ctypes; ctypes.CDLL(None).printf(b'TOP-printf-after\\n');"
        " ctypes.CDLL(None).fflush(None)",
        "TOP-printf-after",
        "after",
        id="printf-after",
    ),
]


@pytest.mark.parametrize(("statement", "marker", "where"), TOP_LEVEL)
def test_top_level_output_of_the_reexecuted_script(
    run_script, statement: str, marker: str, where: str
) -> None:
    before = statement if where == "before" else ""
    after = statement if where == "after" else ""
    source = f"""\
import os, sys
{before}
import json
import tarnish_py
from tarnish_py import Process, Task, WorkerCrashed
{after}

class Double(Task[int, int]):
    def run(self, x: int) -> int:
        if x < 0:
            os._exit(1)
        return 2 * x

def parent():
    sys.stdout.flush()
    with Process(Double) as p:
        print(json.dumps({{"doubled": p.call(21)}}), flush=True)
        try:
            p.call(-1)
        except WorkerCrashed:
            pass
        print(json.dumps({{"doubled": p.call(4)}}), flush=True)
    sys.stderr.flush()

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
    result = run_script(source, timeout=60)
    assert result.returncode == 0, str(result)
    lines = result.stdout.splitlines()
    # The parent ran the statement once, on its own stdout; the results follow.
    assert len(lines) == 3 and marker in lines[0], str(result)
    assert lines[1:] == ['{"doubled": 42}', '{"doubled": 8}'], str(result)
    # The handle's fork server ran it once, to stderr; the workers forked from it,
    # the first and its replacement, do not run it again (test_forkserver.py checks
    # that start="exec" runs it in every worker).
    assert result.stderr.count(marker) == 1, str(result)
