"""Adversarial: every worker that ends is reaped, also one forked by the fork server.

A forked worker is not the program's child: the fork server keeps its zombie (so
that its process group id cannot be reused while the parent may still kill the
group) until the parent sends REAP once it knows the exit status. If the parent
learns that status by polling before it waits, nothing may skip the REAP: else
every crashed, timed-out or killed worker stays a zombie of the fork server for
the handle's whole life, and a program that survives many crashes fills the
process table.
"""

from __future__ import annotations

import pytest
from integration._programs import no_leftovers  # noqa: F401
from reliability._prelude import program, records

pytestmark = pytest.mark.usefixtures("no_leftovers")

MAIN = """
if __name__ == "__main__":
    tarnish_py.main(parent)
"""

ENDINGS = """
class Ends(Task[str, int]):
    def run(self, how: str) -> int:
        exec(how)
        return os.getpid()


def zombies_below(pid):
    # Zombie children of the program's children (the fork server's unreaped workers).
    parents = set(children(pid))
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) in parents:
                found.append(int(entry))
    return found


def settled_zombies():
    deadline = time.monotonic() + 5
    while (found := zombies_below(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


ENDS = ["os.kill(os.getpid(), 9)", "segfault()", "os._exit(3)", "hang()"]


def parent():
    seen = {}
    for name, make in (("process", lambda: Process(Ends)),
                       ("pool", lambda: ProcessPool(Ends, size=2))):
        with make() as h:
            ended = set()
            for how in ENDS * 2:
                try:
                    h.call(how, timeout=0.5 if how == "hang()" else None)
                except (WorkerCrashed, TaskTimeout) as e:
                    ended.add(e.pid)
                h.call("pass")
            seen[name] = {"ended": len(ended), "zombies": settled_zombies()}
    emit(**seen)
"""


def test_crashed_and_timed_out_forked_workers_are_reaped(run_script) -> None:
    """Eight workers ended by SIGKILL, a segfault, os._exit and a timeout, on a
    Process and on a pool: none is left a zombie under the fork server."""
    (seen,) = records(run_script(program(ENDINGS + MAIN), timeout=60))
    for name in ("process", "pool"):
        assert seen[name]["ended"] == 8, seen
        assert seen[name]["zombies"] == [], seen
