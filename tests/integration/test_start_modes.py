"""Every way a program can be started, and how a worker is started from it: the
worker re-executes the program the same way (arguments and interpreter flags
kept), importable tasks work without main(), and a program that cannot serve a
worker fails fast with SpawnError instead of hanging or spawning a chain."""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import pytest

from ._programs import PRELUDE, no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

# Facts about the interpreter that the parent and its worker must share.
FACTS = """
def facts():
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    return {
        "args": sys.argv[1:],
        "argv0": os.path.basename(sys.argv[0]),
        "dev_mode": sys.flags.dev_mode,
        "optimize": sys.flags.optimize,
        "warnoptions": sys.warnoptions,
        "xoptions": sorted(sys._xoptions),
        "main_spec": main_spec.name if main_spec is not None else None,
    }
"""

PROBE = (
    FACTS
    + """
class Probe(Task[int, dict]):
    def run(self, x: int) -> dict:
        return {**facts(), "pid": os.getpid(), "x": x}


def parent():
    if CHDIR:
        os.makedirs(CHDIR, exist_ok=True)
        os.chdir(CHDIR)
    with Process(Probe) as p:
        worker = p.call(7)
        emit(parent=facts(), worker=worker, parent_pid=os.getpid())


if __name__ == "__main__":
    tarnish_py.main(parent)
"""
)


def probe_source(chdir: str = "") -> str:
    return program(f"CHDIR = {chdir!r}\n" + PROBE)


# id: (file the program is written to, python arguments or None for "python <file>",
#      program arguments, folder the parent moves to before spawning)
MODES = {
    "script-with-args": ("prog.py", None, ["arg one", "--flag", "-m"], ""),
    "relative-script-then-chdir": ("app/prog.py", ["app/prog.py"], ["x"], "elsewhere"),
    "absolute-cwd-change": ("prog.py", None, ["x"], "/"),
    "module": ("pkg/mod.py", ["-m", "pkg.mod"], ["x", "y"], ""),
    "package-main": ("pkg/__main__.py", ["-m", "pkg"], ["x"], ""),
    "module-then-chdir": ("pkg/mod.py", ["-m", "pkg.mod"], ["x"], "elsewhere"),
    "directory": ("appdir/__main__.py", ["appdir"], ["x"], ""),
    "directory-then-chdir": ("appdir/__main__.py", ["appdir"], ["x"], "elsewhere"),
    "command": ("unused.py", ["-c", "<source>"], ["x", "y"], ""),
    "command-then-chdir": ("unused.py", ["-c", "<source>"], ["x"], "elsewhere"),
    "flag-X-dev": ("prog.py", ["-X", "dev", "prog.py"], ["x"], ""),
    "flag-W-error": ("prog.py", ["-W", "error::DeprecationWarning", "prog.py"], [], ""),
    "flag-O": ("prog.py", ["-O", "prog.py"], [], ""),
    "flags-glued": ("prog.py", ["-Xdev", "-Wignore::UserWarning", "-OO", "prog.py"], [], ""),
    "flags-and-module": ("pkg/mod.py", ["-X", "dev", "-O", "-m", "pkg.mod"], ["-X"], ""),
    "flags-and-command": (
        "unused.py",
        ["-W", "error::DeprecationWarning", "-c", "<source>"],
        [],
        "",
    ),
}

# What the parent's own facts must show, so that a mode the test did not really
# set up cannot pass.
EXPECTED_PARENT = {
    "flag-X-dev": {"dev_mode": True},
    "flag-W-error": {"warnoptions": ["error::DeprecationWarning"]},
    "flag-O": {"optimize": 1},
    "flags-glued": {"dev_mode": True, "optimize": 2},
    "flags-and-module": {"dev_mode": True, "optimize": 1, "main_spec": "pkg.mod"},
    "flags-and-command": {"warnoptions": ["error::DeprecationWarning"], "argv0": "-c"},
    "module": {"main_spec": "pkg.mod"},
    "package-main": {"main_spec": "pkg.__main__"},
    "directory": {"argv0": "appdir"},
    "command": {"argv0": "-c"},
}




@pytest.mark.parametrize(
    "mode",
    list(MODES),
)
def test_worker_runs_the_program_the_way_it_was_started(run_script, mode: str) -> None:
    name, python_args, args, chdir = MODES[mode]
    source = probe_source(chdir)
    if python_args is not None:
        python_args = [source if a == "<source>" else a for a in python_args]
    files = {"pkg/__init__.py": ""} if name.startswith("pkg/") else None
    (found,) = records(
        run_script(source, *args, name=name, python_args=python_args, files=files, timeout=60)
    )
    parent, worker = found["parent"], found["worker"]
    assert worker["x"] == 7 and worker["pid"] != found["parent_pid"]
    assert parent["args"] == args
    for key, value in EXPECTED_PARENT.get(mode, {}).items():
        assert parent[key] == value, (key, parent)
    assert {k: worker[k] for k in parent} == parent


@pytest.mark.parametrize("chdir", [pytest.param("", id="same-dir"), pytest.param("/", id="chdir")])
def test_worker_of_a_zipapp(run_script, tmp_path: Path, chdir: str) -> None:
    with zipfile.ZipFile(tmp_path / "app.pyz", "w") as zf:
        zf.writestr("__main__.py", probe_source(chdir))
    (found,) = records(run_script("", "x", python_args=["app.pyz"], name="unused.py", timeout=60))
    assert found["worker"]["x"] == 7
    assert {k: found["worker"][k] for k in found["parent"]} == found["parent"]


IMPORTABLE = {
    "probe_tasks.py": """
        import os
        import sys

        from tarnish_py import Task

        class Probe(Task[int, dict]):
            def run(self, x: int) -> dict:
                return {"x": x, "pid": os.getpid(), "module": __name__}
    """
}


@pytest.mark.parametrize("args", [pytest.param([], id="no-args"), pytest.param(["a"], id="args")])
def test_program_from_stdin_with_an_importable_task(run_script, args: list[str]) -> None:
    source = program(
        """
from probe_tasks import Probe

def parent():
    with Process(Probe) as p:
        emit(result=p.call(3), parent_pid=os.getpid(), args=sys.argv[1:])

tarnish_py.main(parent)
"""
    )
    (found,) = records(
        run_script("", *args, python_args=["-"], stdin=source, files=IMPORTABLE, timeout=60)
    )
    assert found["args"] == args
    assert found["result"]["x"] == 3 and found["result"]["module"] == "probe_tasks"
    assert found["result"]["pid"] != found["parent_pid"]


def test_main_task_from_stdin_cannot_be_reexecuted(run_script) -> None:
    source = program(
        """
class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x

def parent():
    started = time.monotonic()
    try:
        Process(Double)
    except SpawnError as e:
        emit(error=str(e), elapsed=time.monotonic() - started)

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
    )
    (found,) = records(run_script("", python_args=["-"], stdin=source, timeout=30))
    assert "re-execute" in found["error"], found
    assert "standard input" in found["error"] or "stdin" in found["error"], found
    assert found["elapsed"] < 10


# Where the importable task's module lives, and how the parent finds it at run time.
SYS_PATH_CHANGES = {
    "beside-the-script": ("probe_tasks.py", ""),
    "absolute-path-added": ("lib/probe_tasks.py", "sys.path.insert(0, os.path.abspath('lib'))"),
    "relative-path-added": ("lib/probe_tasks.py", "sys.path.append('lib')"),
}


@pytest.mark.parametrize("where", list(SYS_PATH_CHANGES))
def test_importable_task_works_without_main(run_script, where: str) -> None:
    path, change = SYS_PATH_CHANGES[where]
    source = program(
        f"""
{change}
from probe_tasks import Probe

with Process(Probe) as p:
    emit(result=p.call(5), parent_pid=os.getpid())
"""
    )
    (found,) = records(run_script(source, files={path: IMPORTABLE["probe_tasks.py"]}, timeout=60))
    assert found["result"]["x"] == 5 and found["result"]["module"] == "probe_tasks"
    assert found["result"]["pid"] != found["parent_pid"]


IMPORTABLE_FACTS = {
    "probe_tasks.py": "import os, sys\nfrom tarnish_py import Task\n"
    + FACTS
    + """
class Probe(Task[int, dict]):
    def run(self, x: int) -> dict:
        return {**facts(), "x": x}
"""
}

# (python arguments, stdin or None, folder the parent moves to before spawning)
IMPORTABLE_STARTS = {
    "script-with-flags": (
        ["-X", "dev", "-O", "-W", "error::DeprecationWarning", "prog.py"],
        False,
        "",
    ),
    "command-with-flags": (
        ["-X", "dev", "-W", "error::DeprecationWarning", "-c", "<source>"],
        False,
        "",
    ),
    "stdin-with-flags": (["-OO", "-"], True, ""),
    "script-then-chdir": (["prog.py"], False, "/"),
    "command-then-chdir": (["-c", "<source>"], False, "/"),
    "stdin-then-chdir": (["-"], True, "/"),
}


@pytest.mark.parametrize(
    "start",
    list(IMPORTABLE_STARTS),
)
def test_importable_task_keeps_flags_and_finds_its_module(run_script, start: str) -> None:
    python_args, from_stdin, chdir = IMPORTABLE_STARTS[start]
    source = program(
        FACTS
        + f"""
from probe_tasks import Probe

if {chdir!r}:
    os.chdir({chdir!r})
with Process(Probe) as p:
    emit(worker=p.call(9), parent=facts())
"""
    )
    python_args = [source if a == "<source>" else a for a in python_args]
    (found,) = records(
        run_script(
            source,
            python_args=python_args,
            stdin=source if from_stdin else None,
            files=IMPORTABLE_FACTS,
            timeout=60,
        )
    )
    parent, worker = found["parent"], found["worker"]
    assert worker["x"] == 9
    if "flags" in start:
        assert parent["dev_mode"] or parent["optimize"] == 2, parent
    for key in ("dev_mode", "optimize", "warnoptions", "xoptions"):
        assert worker[key] == parent[key], (key, parent, worker)


FORGOT_MAIN = {
    "spawns-at-top-level": "{spawn}",
    "spawns-under-name-guard": 'if __name__ == "__main__":\n{spawn_indented}',
    "spawns-only-on-first-run": (
        'if not os.path.exists("spawned-once"):\n'
        '    open("spawned-once", "w").close()\n{spawn_indented}'
    ),
}

SPAWN = """\
started = time.monotonic()
try:
    with Process(Double) as p:
        emit(value=p.call(1))
except SpawnError as e:
    emit(error=str(e), elapsed=time.monotonic() - started)
"""


@pytest.mark.parametrize("how", list(FORGOT_MAIN))
def test_program_without_main_fails_fast_without_a_chain(
    run_script, tmp_path: Path, how: str
) -> None:
    spawn = FORGOT_MAIN[how].format(spawn=SPAWN, spawn_indented=textwrap.indent(SPAWN, "    "))
    source = (
        'import os\nwith open("starts.log", "a") as f:\n    f.write(f"{os.getpid()}\\n")\n'
        + PRELUDE
        + """
class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x

"""
        + spawn
    )
    (found,) = records(run_script(source, timeout=30))
    assert "main()" in found["error"], found
    assert found["elapsed"] < 20
    starts = (tmp_path / "starts.log").read_text().split()
    assert len(starts) == 2, f"the program was started {len(starts)} times: {starts}"


FLAKY = {
    "flaky_tasks.py": """
        import os

        with open("imports.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        if os.path.exists("break-imports"):
            raise ImportError("flaky_tasks cannot load libfrobnicate.so")

        from tarnish_py import Task

        class Flaky(Task[int, int]):
            def run(self, x: int) -> int:
                if x < 0:
                    os._exit(1)
                return x
    """
}


def test_worker_whose_import_fails_is_a_spawn_error_without_respawn_loop(run_script) -> None:
    source = program(
        """
from flaky_tasks import Flaky

def imports():
    with open("imports.log") as f:
        return len(f.read().split())

def attempt(what):
    started = time.monotonic()
    try:
        what()
    except SpawnError as e:
        time.sleep(0.5)  # a respawn loop would import the module again meanwhile
        emit(error=str(e), stderr=e.stderr, imports=imports(),
             elapsed=time.monotonic() - started)

def parent():
    # exec: the replacement imports the module again (a fork server would not);
    # the handles below start a fork server, whose import fails the same way.
    with Process(Flaky, start="exec") as p:
        emit(value=p.call(1), imports=imports())
        open("break-imports", "w").close()
        try:
            p.call(-1)
        except WorkerCrashed:
            pass
        attempt(lambda: p.call(1))
        attempt(lambda: p.call(1))
    attempt(lambda: Process(Flaky))
    attempt(lambda: Process(Flaky))

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
    )
    first, *failures = records(run_script(source, files=FLAKY, timeout=60))
    assert first == {"value": 1, "imports": 2}
    assert len(failures) == 4
    for failure in failures:
        assert "libfrobnicate" in failure["error"] + failure["stderr"], failure
        assert "ImportError" in failure["error"] + failure["stderr"], failure
        assert failure["elapsed"] < 10
    # One import per attempt: the replacement after the crash, then one per call.
    assert [f["imports"] for f in failures] == [3, 4, 5, 6]


def test_task_defined_inside_a_function_is_refused(run_script) -> None:
    source = program(
        """
def make_task():
    class Local(Task[int, int]):
        def run(self, x: int) -> int:
            return x
    return Local

def parent():
    try:
        Process(make_task())
    except TypeError as e:
        emit(error=str(e))

if __name__ == "__main__":
    tarnish_py.main(parent)
"""
    )
    (found,) = records(run_script(source, timeout=30))
    assert "Local" in found["error"]
    assert "function" in found["error"]
