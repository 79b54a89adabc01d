"""Worker hygiene (issue 13): the environment a worker sees under each ``env=``
form, each resource limit of ``limits=`` hit as documented, and workers recycled
by ``max_calls`` and ``max_memory`` without a failed call, with close() run and
each recycle logged."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import Result, python_env

from ._programs import PRELUDE, no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

# ---------------------------------------------------------------------------
# env=

ENV_TASK = """
import os, subprocess, sys
from tarnish_py import Task


def environment() -> dict:
    # What a program the task starts inherits: os.environ really unset, not only popped.
    child = subprocess.run(
        [sys.executable, "-S", "-c", "import os, json; print(json.dumps(sorted(os.environ)))"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return {"env": dict(os.environ), "child": child.stdout.strip(), "pid": os.getpid()}


class ImportedEnv(Task[None, dict]):
    def run(self, _: None) -> dict:
        return environment()
"""

ENV_PROGRAM = """
import json
from envtask import ImportedEnv, environment


class MainEnv(Task[None, dict]):
    def run(self, _: None) -> dict:
        return environment()


FORMS = {
    "inherit": None,
    "names": ["PASS_ME", "NOT_SET_ANYWHERE"],
    "mapping": {"ONLY": "1"},
    "mapping_with_path": {"ONLY": "2", "PATH": "/nowhere"},
}


def parent():
    os.environ["SECRET_TOKEN"] = "s3cret"
    os.environ["PASS_ME"] = "yes"
    seen = {}
    for task in (MainEnv, ImportedEnv):
        for form, env in FORMS.items():
            with Process(task, env=env) as p:
                seen[f"{task.__name__}/{form}"] = p.call(None)
    emit(path=os.environ["PATH"], pythonpath=os.environ["PYTHONPATH"], no_site=sys.flags.no_site,
         seen=seen)


if __name__ == "__main__":
    tarnish_py.main(parent)
"""


def run_from_checkout(tmp_path: Path, source: str, files: dict[str, str]) -> Result:
    """Run ``source`` as a user running from a checkout: ``python -S``, so nothing
    installed is seen, and tarnish_py and its dependencies found only through
    PYTHONPATH (the repository, tests/, and this interpreter's site-packages)."""
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    script = tmp_path / "prog.py"
    script.write_text(source)
    env = python_env()
    site_dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], *sorted(site_dirs)])
    proc = subprocess.run(
        [sys.executable, "-S", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _names(found: dict) -> set[str]:
    # A Python started without a locale sets LC_CTYPE itself (PEP 538 coercion).
    return set(found["env"]) - {"LC_CTYPE"}


def test_worker_environment_under_each_env_form(tmp_path: Path) -> None:
    result = run_from_checkout(tmp_path, program(ENV_PROGRAM), {"envtask.py": ENV_TASK})
    (record,) = records(result)
    assert record["no_site"] == 1  # the worker could only find tarnish_py through PYTHONPATH
    path, seen = record["path"], record["seen"]
    for task in ("MainEnv", "ImportedEnv"):
        inherit = seen[f"{task}/inherit"]
        assert inherit["env"]["SECRET_TOKEN"] == "s3cret"
        assert inherit["env"]["PYTHONPATH"] == record["pythonpath"]
        assert "TARNISH_PY_WORKER" not in inherit["env"]

        names = seen[f"{task}/names"]
        assert _names(names) == {"PATH", "PASS_ME"}, names  # no SECRET_TOKEN, no PYTHONPATH
        assert names["env"]["PATH"] == path and names["env"]["PASS_ME"] == "yes"

        mapping = seen[f"{task}/mapping"]
        assert _names(mapping) == {"PATH", "ONLY"}, mapping
        assert mapping["env"] == {**mapping["env"], "ONLY": "1", "PATH": path}

        own_path = seen[f"{task}/mapping_with_path"]
        assert _names(own_path) == {"PATH", "ONLY"}, own_path
        assert own_path["env"]["PATH"] == "/nowhere"

        for form in ("names", "mapping", "mapping_with_path"):
            child = set(json.loads(seen[f"{task}/{form}"]["child"]))
            assert child - {"LC_CTYPE"} == _names(seen[f"{task}/{form}"]), (form, child)


# ---------------------------------------------------------------------------
# limits=

LIMITS_PROGRAM = """
import errno, resource
from tarnish_py import Limits

NAMES = ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_FSIZE"]


def rlimits():
    return {name: list(resource.getrlimit(getattr(resource, name))) for name in NAMES}


class Hog(Task[str, dict]):
    def run(self, what: str) -> dict:
        if what == "memory":
            block = bytearray(1 << 30)  # 1 GiB of address space, over the limit
        elif what == "files":
            opened = []
            try:
                while True:
                    opened.append(open(os.devnull))
            finally:
                for f in opened:
                    f.close()
        elif what == "file_size":
            with open("big.bin", "wb") as f:
                f.write(b"x" * (1 << 20))
        elif what == "fork":
            subprocess.run([sys.executable, "-S", "-c", "pass"], check=True, timeout=30)
        elif what == "spin":
            spin()
        return {"pid": os.getpid(), "rlimits": rlimits()}


def attempt(p, what):
    try:
        return dict(value=p.call(what, timeout=60))
    except TaskError as e:
        return dict(error="TaskError", type_name=e.type_name, message=e.message)
    except WorkerCrashed as e:
        return dict(error="WorkerCrashed", signal=e.signal, where="in spin" in e.stderr)


def parent():
    before = rlimits()
    limits = Limits(memory=512 << 20, open_files=64, file_size=64 << 10, processes=1)
    out = {}
    with Process(Hog, limits=limits) as p:
        pid = p.pid
        for what in ("limits", "memory", "files", "file_size", "fork", "limits"):
            out[what if what not in out else "after"] = attempt(p, what)
        out["same_pid"] = p.pid == pid
    with Process(Hog, limits=Limits(cpu_seconds=1)) as p:
        pid = p.pid
        out["spin"] = attempt(p, "spin")
        out["after_spin"] = attempt(p, "limits")
        out["spin_replaced"] = p.pid != pid
    # The parent is untouched: its limits, and it may open, write and fork freely.
    files = [open(os.devnull) for _ in range(200)]
    for f in files:
        f.close()
    with open("parent.bin", "wb") as f:
        f.write(b"x" * (1 << 20))
    subprocess.run([sys.executable, "-S", "-c", "pass"], check=True, timeout=30)
    emit(out=out, before=before, after=rlimits(), root=os.geteuid() == 0,
         efbig=os.strerror(errno.EFBIG), emfile=os.strerror(errno.EMFILE))


if __name__ == "__main__":
    tarnish_py.main(parent)
"""


def test_each_limit_hit_as_documented(run_script) -> None:
    (record,) = records(run_script(program(LIMITS_PROGRAM), timeout=90))
    out = record["out"]
    limits = out["limits"]["value"]["rlimits"]
    assert limits["RLIMIT_AS"] == [512 << 20, 512 << 20]
    assert limits["RLIMIT_NOFILE"] == [64, 64]
    assert limits["RLIMIT_FSIZE"] == [64 << 10, 64 << 10]
    assert limits["RLIMIT_NPROC"] == [1, 1]

    memory = out["memory"]
    assert memory["error"] == "TaskError" and memory["type_name"] == "MemoryError"

    files = out["files"]
    assert files["type_name"] == "OSError"
    assert record["emfile"] in files["message"]

    file_size = out["file_size"]  # SIGXFSZ ignored: the write fails, the worker lives
    assert file_size["type_name"] == "OSError" and record["efbig"] in file_size["message"]

    if record["root"]:
        # root is exempt from RLIMIT_NPROC: the limit is set (above), forks still work.
        assert "value" in out["fork"]
    else:
        assert out["fork"]["type_name"] == "BlockingIOError"

    assert out["after"]["value"]["pid"] == out["limits"]["value"]["pid"]
    assert out["same_pid"]  # every one of these is a TaskError: the worker was kept

    assert out["spin"] == {"error": "WorkerCrashed", "signal": "SIGXCPU", "where": True}
    assert out["spin_replaced"] and "value" in out["after_spin"]

    assert record["after"] == record["before"]


# ---------------------------------------------------------------------------
# max_calls, max_memory

RECYCLE_PROGRAM = """
import logging
from collections import Counter as Tally


class Count(Task[int, int]):
    def run(self, x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return os.getpid()

    def close(self) -> None:
        with open("closed.txt", "a") as f:
            f.write(f"{os.getpid()}\\n")


class Grow(Task[int, int]):
    def setup(self) -> None:
        self.hoard = []

    def run(self, mib: int) -> int:
        self.hoard.append(b"\\x01" * (mib << 20))  # written, so resident
        return os.getpid()


class Keep(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seen = []

    def emit(self, record):
        self.seen.append([record.levelname, record.getMessage()])


def outcome(p, x):
    try:
        return p.call(x, timeout=60)
    except TaskError:
        return "TaskError"


def parent():
    keep = Keep()
    logger = logging.getLogger("tarnish_py")
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)

    with Process(Count, max_calls=3) as p:
        calls = [outcome(p, x) for x in (1, 2, -1, 4, 5, 6, 7)]
        last = p.pid
    with open("closed.txt") as f:
        closed = [int(line) for line in f]

    with Process(Grow, max_memory=200 << 20) as p:
        grown = [p.call(100, timeout=60) for _ in range(4)]

    with tarnish_py.ProcessPool(Count, size=2, max_calls=2) as pool:
        mapped = list(pool.map(range(1, 13)))
        size, pids = pool.size, pool.pids
        after = pool.call(100, timeout=60)

    emit(calls=calls, last=last, closed=closed, grown=grown, mapped=mapped, size=size,
         pids=pids, after=after, log=keep.seen)


if __name__ == "__main__":
    tarnish_py.main(parent)
"""


def test_workers_recycled_by_calls_and_memory(run_script) -> None:
    result = run_script(program(RECYCLE_PROGRAM), timeout=90)
    (record,) = records(result)
    assert "WorkerCrashed" not in result.stderr and "Traceback" not in result.stderr

    # max_calls=3: a TaskError counts as a call served; no call fails for it.
    calls = record["calls"]
    assert calls[2] == "TaskError"
    a, b, c = calls[0], calls[3], calls[6]
    assert calls == [a, a, "TaskError", b, b, b, c] and len({a, b, c}) == 3
    assert record["last"] == c
    assert sorted(record["closed"]) == sorted([a, b, c])  # each worker's close() ran once

    grown = record["grown"]  # 100 MiB per call, max_memory 200 MiB: two calls a worker
    assert grown[0] == grown[1] != grown[2] == grown[3]

    mapped = record["mapped"]  # a pool keeps its size; no worker serves over 2 calls
    assert len(mapped) == 12 and all(isinstance(pid, int) for pid in mapped)
    assert max(collections.Counter(mapped).values()) <= 2 and len(set(mapped)) >= 6
    assert record["size"] == 2 and len(set(record["pids"])) == 2 and None not in record["pids"]
    assert isinstance(record["after"], int)

    infos = [message for level, message in record["log"] if level == "INFO"]
    assert not [entry for entry in record["log"] if entry[0] not in ("INFO", "DEBUG")]
    by_calls = [m for m in infos if "max_calls=3" in m]
    assert len(by_calls) == 2
    assert f"pid {a}" in by_calls[0] and f"pid {b}" in by_calls[1]
    assert all("3 calls" in m for m in by_calls)
    by_memory = [m for m in infos if "max_memory" in m]
    assert len(by_memory) == 2 and f"pid {grown[0]}" in by_memory[0]
    assert "2 calls" in by_memory[0]
    assert len([m for m in infos if "max_calls=2" in m]) >= 5
