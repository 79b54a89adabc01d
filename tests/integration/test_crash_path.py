"""The crash path as a user lives it (issue 10): which input failed, ``except
ValueError`` around a remote ValueError, a crash reported on one line instead of a
wall of dumps, worker logging in the parent's log file, pickling of errors,
@task functions and (refused) handles."""

from __future__ import annotations

import re

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

MAIN = "\n\nif __name__ == '__main__':\n    tarnish_py.main(parent)\n"

RISKY = """
import asyncio, pickle
from tarnish_py import ProcessPool


class Custom(Exception):
    pass


class Risky(Task[int, int]):
    def run(self, n: int) -> int:
        if n == 3:
            segfault()
        if n == 4:
            raise ValueError(f"bad {n}")
        if n == 5:
            raise KeyError(n)
        if n == 6:
            open("/nonexistent/x.png")
        if n == 7:
            return 1 // 0
        if n == 8:
            raise Custom("mine")
        if n == 9:
            hang()
        return 2 * n


def describe(e, caught_as=None):
    back = pickle.loads(pickle.dumps(e))
    return dict(
        type=type(e).__name__, caught_as=caught_as, input=e.input,
        input_type=type(e.input).__name__, pid=e.pid, str=str(e),
        task_error=isinstance(e, TaskError), value_error=isinstance(e, ValueError),
        back=dict(type=type(back).__name__, input=back.input, pid=back.pid, str=str(back),
                  value_error=isinstance(back, ValueError),
                  file_not_found=isinstance(back, FileNotFoundError)),
        stderr=getattr(e, "stderr", None),
    )


def call_catching(p, n):
    # The builtin except clauses a user writes around a call, most specific first.
    try:
        p.call(n, timeout=2)
    except FileNotFoundError as e:
        return describe(e, "FileNotFoundError")
    except KeyError as e:
        return describe(e, "KeyError")
    except ZeroDivisionError as e:
        return describe(e, "ZeroDivisionError")
    except ValueError as e:
        return describe(e, "ValueError")
    except TarnishError as e:
        return describe(e, "TarnishError")
"""


def test_errors_name_their_input_and_worker_and_are_caught_as_builtins(run_script) -> None:
    body = RISKY + """
def parent():
    out = {}
    with Process(Risky) as p:
        first_pid = p.pid
        # A str input validated to int: errors carry the validated value.
        out["call"] = {str(n): call_catching(p, n) for n in ["3", 4, 5, 6, 7, 8, 9]}
        out["submit"] = describe(p.submit("4").exception(timeout=30))
        out["acall"] = describe(asyncio.run(outcome_of(p.acall(3))))
        out["crashed_pid_was"] = first_pid
        out["pid_now"] = p.pid
        emit(**out)
    with ProcessPool(Risky, size=2) as pool:
        pids = set(pool.pids)
        failed = {}
        for result in pool.map(range(10), ordered=False, return_exceptions=True, timeout=2):
            if isinstance(result, BaseException):
                failed[result.input] = dict(type=type(result).__name__, pid=result.pid,
                                            from_pool=result.pid in pids)
        emit(map=failed)


async def outcome_of(awaitable):
    try:
        await awaitable
    except BaseException as e:
        return e
"""
    calls, mapped = records(run_script(program(body + MAIN), timeout=90))
    c = calls["call"]
    crash = c["3"]
    assert (crash["type"], crash["caught_as"], crash["input"], crash["input_type"]) == (
        "WorkerCrashed", "TarnishError", 3, "int")
    assert crash["pid"] == calls["crashed_pid_was"] != calls["pid_now"]
    assert crash["str"] == f"worker {crash['pid']} was killed by SIGSEGV"  # one short line
    assert "Fatal Python error: Segmentation fault" in crash["stderr"]
    assert "in segfault" in crash["stderr"]
    assert crash["back"] == dict(type="WorkerCrashed", input=3, pid=crash["pid"], str=crash["str"],
                                 value_error=False, file_not_found=False)
    expected = {"4": "ValueError", "5": "KeyError", "6": "FileNotFoundError",
                "7": "ZeroDivisionError"}
    for n, kind in expected.items():
        e = c[n]
        assert (e["caught_as"], e["task_error"], e["input"]) == (kind, True, int(n)), e
        assert e["type"] == "TaskError" and e["str"].startswith(kind), e
        assert e["pid"] == c["4"]["pid"] != crash["pid"], e  # the worker lives on
        assert e["back"]["input"] == int(n) and e["back"]["str"] == e["str"], e
    assert c["4"]["value_error"] and c["4"]["back"]["value_error"]
    assert c["6"]["back"]["file_not_found"]
    custom = c["8"]
    assert (custom["caught_as"], custom["type"], custom["value_error"]) == (
        "TarnishError", "TaskError", False)
    assert custom["str"] == "__main__.Custom: mine"
    timeout = c["9"]
    assert (timeout["type"], timeout["input"]) == ("TaskTimeout", 9)
    assert timeout["pid"] == c["4"]["pid"] != calls["pid_now"]  # killed, replaced
    assert (calls["submit"]["type"], calls["submit"]["input"], calls["submit"]["value_error"]) == (
        "TaskError", 4, True)
    assert calls["submit"]["pid"] is not None
    assert (calls["acall"]["type"], calls["acall"]["input"]) == ("WorkerCrashed", 3)
    # map(ordered=False, return_exceptions=True): every failure names its input.
    kinds = {int(n): f["type"] for n, f in mapped["map"].items()}
    assert kinds == {3: "WorkerCrashed", 4: "TaskError", 5: "TaskError", 6: "TaskError",
                     7: "TaskError", 8: "TaskError", 9: "TaskTimeout"}
    assert all(f["pid"] is not None for f in mapped["map"].values())
    assert mapped["map"]["4"]["from_pool"]


STDERR_MODES = """
import logging


class Crash(Task[str, int]):
    def run(self, mode: str) -> int:
        print(f"hello from {mode}", file=sys.stderr, flush=True)
        if mode != "twice":
            segfault()
        return os.getpid()


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def parent():
    kept = Keep()
    logging.getLogger("tarnish_py.worker").addHandler(kept)
    logging.getLogger("tarnish_py.worker").setLevel(logging.INFO)
    logging.getLogger("tarnish_py.worker").propagate = False
    out = {}
    for mode in ("forward", "capture", "log"):
        with Process(Crash, stderr=mode) as p:
            try:
                p.call(mode)
            except WorkerCrashed as e:
                out[mode] = dict(pid=e.pid, str=str(e), stderr=e.stderr)
            out[mode]["twice"] = p.call("twice")
    out["records"] = [dict(level=r.levelname, msg=r.getMessage(), pid=r.worker_pid,
                           process=r.process) for r in kept.records]
    emit(**out)
"""


def test_stderr_forward_capture_and_log(run_script) -> None:
    result = run_script(program(STDERR_MODES + MAIN), timeout=60)
    (out,) = records(result)
    err = result.stderr
    fwd, cap, log = out["forward"], out["capture"], out["log"]
    for mode in (fwd, cap, log):
        # Whatever the mode, the crash is one line and the tail has the whole dump.
        assert "\n" not in mode["str"] and "SIGSEGV" in mode["str"]
        assert "hello from" in mode["stderr"]
        assert "Fatal Python error: Segmentation fault" in mode["stderr"]
        assert "Current thread" in mode["stderr"] and "in segfault" in mode["stderr"]
    # forward: each worker line prefixed with its pid; the dump collapsed to one line.
    assert f"[worker {fwd['pid']}] hello from forward\n" in err, err
    fatal = [line for line in err.splitlines() if "Fatal Python error" in line]
    assert len(fatal) == 1, err
    assert re.fullmatch(
        rf"\[worker {fwd['pid']}\] Fatal Python error: Segmentation fault at "
        r"\S*prog\.py:\d+ in segfault \(full stack: WorkerCrashed\.stderr\)",
        fatal[0],
    ), fatal
    assert "Current thread" not in err and "Extension modules" not in err, err
    assert f"[worker {fwd['twice']}] hello from twice" in err
    # capture: nothing of that worker on the parent's stderr.
    assert "hello from capture" not in err and f"[worker {cap['pid']}]" not in err, err
    # log: each line a record of tarnish_py.worker, the dump one ERROR record.
    assert "hello from log" not in err, err
    by_pid = [r for r in out["records"] if r["pid"] == log["pid"]]
    assert [r["level"] for r in by_pid] == ["WARNING", "ERROR"], out["records"]
    assert by_pid[0]["msg"] == "hello from log" and by_pid[0]["process"] == log["pid"]
    assert by_pid[1]["msg"].startswith("Fatal Python error: Segmentation fault\n")
    assert "Current thread" in by_pid[1]["msg"] and "in segfault" in by_pid[1]["msg"]
    assert {r["msg"] for r in out["records"]} == {
        "hello from log", by_pid[1]["msg"], "hello from twice"}


LOGGING = """
import logging

# At module level, as programs do: in a worker it changes nothing (the worker's
# records already go to the parent), so the file is written by the parent only.
logging.basicConfig(
    filename="app.log", level=logging.INFO,
    format="%(process)d|%(name)s|%(levelname)s|%(message)s",
)
logging.getLogger("app.verbose").setLevel(logging.DEBUG)
logging.getLogger("noisy").setLevel(logging.ERROR)
log = logging.getLogger("app.worker")


class Logs(Task[str, int]):
    def run(self, what: str) -> int:
        log.debug("debug %s", what)
        log.info("info %s", what)
        log.warning("warning %s", what)
        logging.getLogger("app.verbose").debug("verbose debug %s", what)
        logging.getLogger("noisy").warning("noisy warning")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("boom %s", what)
        print("plain print", flush=True)
        return os.getpid()


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def parent():
    kept = Keep()
    logging.getLogger("app").addHandler(kept)
    with Process(Logs) as p:
        pid = p.call("x")
    with open("app.log") as f:
        lines = f.read().splitlines()
    emit(pid=pid, lines=lines, records=[
        dict(name=r.name, level=r.levelname, worker_pid=getattr(r, "worker_pid", None),
             process=r.process, funcName=r.funcName, exc_text=r.exc_text) for r in kept.records])
"""


def test_worker_logging_reaches_the_parents_handlers(run_script) -> None:
    result = run_script(program(LOGGING + MAIN), timeout=60)
    (out,) = records(result)
    pid = out["pid"]
    lines = out["lines"]
    assert f"{pid}|app.worker|INFO|info x" in lines
    assert f"{pid}|app.worker|WARNING|warning x" in lines
    assert f"{pid}|app.verbose|DEBUG|verbose debug x" in lines  # a logger set below root
    assert f"{pid}|app.worker|ERROR|boom x" in lines
    text = "\n".join(lines)
    assert "ZeroDivisionError: division by zero" in text  # the exception's traceback
    assert "debug x|" not in text and "|debug x" not in text  # below the parent's levels
    assert "noisy" not in text
    assert sum("info x" in line for line in lines) == 1, lines  # written once, by the parent
    # Nothing raw on stderr: the records went to the log file only.
    assert "warning x" not in result.stderr and "boom" not in result.stderr, result.stderr
    assert f"[worker {pid}] plain print" in result.stderr
    kept = out["records"]
    assert [r["level"] for r in kept] == ["INFO", "WARNING", "DEBUG", "ERROR"], kept
    assert all(r["worker_pid"] == pid == r["process"] and r["funcName"] == "run" for r in kept)
    assert "ZeroDivisionError" in kept[3]["exc_text"]


TASKS_MODULE = """
import os
from tarnish_py import task


@task("mod-double")
def double(x: int) -> int:
    return 2 * x
"""

DECORATED = """
import pickle, threading
from pathlib import Path
from tarnish_py import ProcessPool, task
from tasks_mod import double


@task("overlap", size=2)
def meet(name: str) -> bool:
    # Each call says it started, then waits (bounded) for the other call: it sees
    # the other only if both run at once.
    Path(f"started-{name}").touch()
    other = "b" if name == "a" else "a"
    for _ in range(400):
        if Path(f"started-{other}").exists():
            return True
        time.sleep(0.025)
    return False


class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x


def plain(x: int) -> int:
    return x


def refusal(fn):
    try:
        fn()
    except TypeError as e:
        return str(e)


def parent():
    met = {}
    threads = [threading.Thread(target=lambda n=n: met.update({n: meet(n)})) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    again = pickle.loads(pickle.dumps(meet))
    mod_again = pickle.loads(pickle.dumps(double))
    elsewhere = subprocess.run(
        [sys.executable, "-c",
         "import pickle, sys; f = pickle.loads(sys.stdin.buffer.read()); print(f(21))"],
        input=pickle.dumps(double), capture_output=True, timeout=60,
    )
    with Process(Double) as p, ProcessPool(Double, size=1) as pool:
        handles = [refusal(lambda: pickle.dumps(p)), refusal(lambda: pickle.dumps(pool))]
    emit(met=met, same=again is meet, mod_same=mod_again is double, mod_call=mod_again(5),
         elsewhere=elsewhere.stdout.decode().strip(), elsewhere_err=elsewhere.stderr.decode(),
         handles=handles, plain=refusal(lambda: Process(plain)),
         isolated=refusal(lambda: Process(meet)))
"""


def test_task_size_pickling_and_handle_refusals(run_script) -> None:
    result = run_script(program(DECORATED + MAIN), timeout=90, files={"tasks_mod.py": TASKS_MODULE})
    (out,) = records(result)
    assert out["met"] == {"a": True, "b": True}  # size=2: both calls ran at once
    assert out["same"] and out["mod_same"] and out["mod_call"] == 10
    assert out["elsewhere"] == "42", out["elsewhere_err"]
    for message in out["handles"]:
        assert message.startswith("a handle to live worker processes cannot be pickled")
        assert "pass the Task class" in message
    assert "@tarnish_py.task('label')" in out["plain"] and "plain" in out["plain"]
    assert ".task_class" in out["isolated"]
