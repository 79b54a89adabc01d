"""Isolated modules (SPEC §6) end to end: a module imported through
``import_isolated`` runs in a worker; its objects stay there behind proxies that
forward every operation; a crash fails one call, the module works again, and
proxies of the dead worker raise ProxyLost. Two programs, each checking many things."""

from __future__ import annotations

import pytest

from ._programs import no_leftovers, program, records  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")

# The brittle module the programs isolate (written next to them, so it is importable).
BRITTLE = '''
import ctypes, datetime, decimal, os, time, uuid

VERSION = (1, 2)
LIMITS = {"max": 10, "names": ["a", "b"], "when": datetime.date(2024, 1, 2)}
IMPORTED_IN = os.getpid()


class Counter:
    """State in native memory, kept across calls."""

    def __init__(self, start=0):
        self.cell = ctypes.c_long(start)
        self.label = "counter"

    def bump(self, by=1):
        self.cell.value += by
        return self.cell.value

    def __repr__(self):
        return f"Counter({self.cell.value})"

    def __str__(self):
        return f"count={self.cell.value}"

    def __len__(self):
        return self.cell.value

    def __bool__(self):
        return self.cell.value != 0

    def __eq__(self, other):
        return isinstance(other, Counter) and other.cell.value == self.cell.value

    __hash__ = None

    def __lt__(self, other):
        return self.cell.value < (other.cell.value if isinstance(other, Counter) else other)

    def __add__(self, other):
        return self.cell.value + (other.cell.value if isinstance(other, Counter) else other)

    def __radd__(self, other):
        return ("radd", other, self.cell.value)

    def __sub__(self, other):
        return ("sub", self.cell.value, other)

    def __rsub__(self, other):
        return ("rsub", other, self.cell.value)

    def __mul__(self, other):
        return ("mul", other)

    def __rmul__(self, other):
        return ("rmul", other)

    def __truediv__(self, other):
        return ("truediv", other)

    def __rtruediv__(self, other):
        return ("rtruediv", other)

    def __floordiv__(self, other):
        return ("floordiv", other)

    def __rfloordiv__(self, other):
        return ("rfloordiv", other)

    def __mod__(self, other):
        return ("mod", other)

    def __rmod__(self, other):
        return ("rmod", other)

    def __pow__(self, other):
        return ("pow", other)

    def __rpow__(self, other):
        return ("rpow", other)

    def __neg__(self):
        return Counter(-self.cell.value)

    def __enter__(self):
        self.label = "entered"
        return self

    def __exit__(self, exc_type, exc, tb):
        self.label = f"exited with {exc_type.__name__ if exc_type else None}: {exc}"
        return exc_type is KeyError  # swallows KeyError only


class Bag:
    def __init__(self):
        self.items = {}

    def __getitem__(self, key):
        return self.items[key]

    def __setitem__(self, key, value):
        self.items[key] = value

    def __delitem__(self, key):
        del self.items[key]

    def __contains__(self, key):
        return key in self.items

    def __iter__(self):
        return iter(sorted(self.items))

    def __len__(self):
        return len(self.items)


ANCHOR = Counter(7)  # a module constant the wire cannot carry


def plain():
    return {
        "tuple": (1, "a"),
        "set": {1, 2},
        "frozen": frozenset({"x"}),
        "bytes": b"\\x00\\xff",
        "decimal": decimal.Decimal("1.10"),
        "uuid": uuid.UUID(int=5),
        "complex": 1 + 2j,
        "big": 2**80,
        "nested": [{"k": [None, True, 1.5]}],
    }


def make_counters(n):
    return [Counter(i) for i in range(n)]


def kinds(value):
    """The types the worker sees, recursively: proxies must arrive as real objects."""
    if isinstance(value, (list, tuple)):
        return [kinds(v) for v in value]
    if isinstance(value, dict):
        return {k: kinds(v) for k, v in value.items()}
    return type(value).__name__


def total(*counters, extra=None):
    return sum(c.cell.value for c in counters) + (extra.cell.value if extra else 0)


def fail(kind):
    raise {"value": ValueError, "key": KeyError}[kind]("bad " + kind)


def segfault():
    ctypes.string_at(0)


def sleep(seconds):
    time.sleep(seconds)
    return seconds
'''

# Another module, on a path only the context knows about, which uses brittle's objects.
PLUGIN = '''
import os


def bump_twice(counter):
    counter.bump()
    return counter.bump()


def pid():
    return os.getpid()
'''

PROXIES = """
import datetime, decimal, gc, uuid
from tarnish_py import RemoteObject, byvalue, import_isolated
from tarnish_py._isolated import _default_context


def outcome(fn, *args, **kwargs):
    try:
        return dict(value=repr(fn(*args, **kwargs)))
    except BaseException as e:
        return dict(error=type(e).__name__, text=str(e)[:300])


def main():
    b = import_isolated("brittle")
    ctx = _default_context()
    emit(step="import", in_parent="brittle" in sys.modules, proxy=repr(b),
         same=import_isolated("brittle") is b)

    # By value: constants and results the wire carries, with their exact types.
    limits = b.LIMITS
    emit(step="by value", version=b.VERSION == (1, 2), version_type=type(b.VERSION).__name__,
         limits=limits == {"max": 10, "names": ["a", "b"], "when": datetime.date(2024, 1, 2)},
         plain={k: [type(v).__name__, repr(v)] for k, v in b.plain().items()},
         imported_in_worker=b.IMPORTED_IN == ctx.pid)

    # By reference: objects, a list holding objects, a constant that cannot travel.
    c = b.Counter(1)
    many = b.make_counters(3)
    emit(step="by reference", counter=type(c).__name__, many=isinstance(many, RemoteObject),
         anchor=isinstance(b.ANCHOR, RemoteObject), anchor_repr=repr(b.ANCHOR),
         first=repr(many[0]), len_many=len(many))

    # State kept across calls on a remote object.
    emit(step="state", bumps=[c.bump(), c.bump(), c.bump(by=10)], value=c.cell.value)

    # Proxies as arguments, also nested; module proxies too.
    emit(step="arguments", kinds=b.kinds([c, (c, 1), {"x": c, "y": [c, "s"]}, b]),
         total=b.total(c, many[2], extra=c), escaped=b.kinds(["\\x00tarnish-proxy", 1]),
         unsendable=outcome(b.kinds, object()))

    # Every operation a proxy forwards.
    c.label = "renamed"
    got_label = c.label
    del c.label
    missing = outcome(getattr, c, "label")
    emit(step="attributes", label=got_label, missing=missing, hasattr=hasattr(c, "nope"),
         dir="bump" in dir(c), call=b.Counter.__name__)
    bag = b.Bag()
    bag["one"] = 1
    bag["two"] = c
    bag["three"] = 3
    del bag["three"]
    emit(step="container", get=bag["one"], proxy_item=repr(bag["two"]), length=len(bag),
         contains=["one" in bag, "three" in bag], keys=list(bag), slice=b.VERSION[0:1],
         remote_slice=b.make_counters(4)[1:3] is not None,
         missing=outcome(lambda: bag["zzz"]))
    d = b.Counter(6)
    emit(step="operators", add=c + 1, add_proxy=c + d, radd=1 + c, sub=c - 1, rsub=1 - c,
         mul=c * 2, rmul=2 * c, div=c / 2, rdiv=2 / c, floordiv=c // 2, rfloordiv=2 // c,
         mod=c % 2, rmod=2 % c, pow=c ** 2, rpow=2 ** c, neg=repr(-d),
         lt=[d < 7, d < 6, d < c], eq=[d == b.Counter(6), d == b.Counter(5), d != c],
         unsendable=outcome(lambda: c + object()))
    emit(step="text", repr=repr(c), str=str(c), format=f"{c}", bool=[bool(c), bool(b.Counter(0))])
    with d as entered:
        inside = d.label
    after = d.label
    try:
        with d:
            raise KeyError("swallowed")
    except KeyError:
        swallowed = False
    else:
        swallowed = True
    emit(step="with", entered=repr(entered), inside=inside, after=after, swallowed=swallowed,
         after_error=d.label)

    # byvalue
    emit(step="byvalue", value=byvalue(bag.items["one"]), plain_same=byvalue(limits) is limits,
         nested=repr(byvalue([b.VERSION, {"k": b.VERSION}])), counter=outcome(byvalue, c),
         many=outcome(byvalue, many), module=outcome(byvalue, b))

    # Remote exceptions are TaskErrors.
    try:
        b.fail("value")
    except tarnish_py.TaskError as e:
        emit(step="task error", type=e.type_name, message=e.message, tb="fail" in e.traceback,
             no_module=outcome(import_isolated, "no_such_module"))

    # Dropped proxies are released in the worker with the next request.
    del entered, many, d
    gc.collect()
    before = ctx._object_count()
    batch = b.make_counters(5)
    items = [batch[i] for i in range(5)]
    held = ctx._object_count()
    del batch, items
    gc.collect()
    emit(step="release", grew=held - before, after=ctx._object_count() - before)


main()
"""


def by_step(result) -> dict:
    return {r.pop("step"): r for r in records(result)}


def test_proxies_values_and_operations(run_script) -> None:
    result = run_script(program(PROXIES), files={"brittle.py": BRITTLE}, timeout=60)
    steps = by_step(result)

    assert steps["import"] == {"in_parent": False, "proxy": "<isolated module 'brittle'>",
                               "same": True}
    by_value = steps["by value"]
    assert by_value["version"] and by_value["version_type"] == "tuple"
    assert by_value["limits"] and by_value["imported_in_worker"]
    assert by_value["plain"] == {
        "tuple": ["tuple", "(1, 'a')"],
        "set": ["set", "{1, 2}"],
        "frozen": ["frozenset", "frozenset({'x'})"],
        "bytes": ["bytes", "b'\\x00\\xff'"],
        "decimal": ["Decimal", "Decimal('1.10')"],
        "uuid": ["UUID", "UUID('00000000-0000-0000-0000-000000000005')"],
        "complex": ["complex", "(1+2j)"],
        "big": ["int", str(2**80)],
        "nested": ["list", "[{'k': [None, True, 1.5]}]"],
    }
    assert steps["by reference"] == {"counter": "RemoteObject", "many": True, "anchor": True,
                                     "anchor_repr": "Counter(7)", "first": "Counter(0)",
                                     "len_many": 3}
    assert steps["state"] == {"bumps": [2, 3, 13], "value": 13}
    arguments = steps["arguments"]
    assert arguments["kinds"] == [
        "Counter", ["Counter", "int"], {"x": "Counter", "y": ["Counter", "str"]}, "module"
    ]
    assert arguments["total"] == 13 + 2 + 13
    assert arguments["escaped"] == ["str", "int"]  # a user's list that looks like a ref
    assert arguments["unsendable"]["error"] == "Unsendable"
    assert "cannot send a object" in arguments["unsendable"]["text"]

    attributes = steps["attributes"]
    assert attributes["label"] == "renamed"
    assert attributes["missing"]["error"] == "AttributeError"
    assert "label" in attributes["missing"]["text"]
    assert attributes["hasattr"] is False and attributes["dir"] is True
    assert attributes["call"] == "Counter"
    container = steps["container"]
    assert container["get"] == 1 and container["proxy_item"] == "Counter(13)"
    assert container["length"] == 2 and container["contains"] == [True, False]
    assert container["keys"] == ["one", "two"] and container["slice"] == [1]
    assert container["remote_slice"] is True
    assert container["missing"]["error"] == "TaskError" and "zzz" in container["missing"]["text"]
    operators = steps["operators"]
    assert operators == {
        "add": 14, "add_proxy": 19, "radd": ["radd", 1, 13], "sub": ["sub", 13, 1],
        "rsub": ["rsub", 1, 13], "mul": ["mul", 2], "rmul": ["rmul", 2],
        "div": ["truediv", 2], "rdiv": ["rtruediv", 2], "floordiv": ["floordiv", 2],
        "rfloordiv": ["rfloordiv", 2], "mod": ["mod", 2], "rmod": ["rmod", 2],
        "pow": ["pow", 2], "rpow": ["rpow", 2], "neg": "Counter(-6)",
        "lt": [True, False, True], "eq": [True, False, True],
        "unsendable": {"error": "TypeError", "text": operators["unsendable"]["text"]},
    }
    assert "unsupported operand" in operators["unsendable"]["text"]
    assert steps["text"] == {"repr": "Counter(13)", "str": "count=13", "format": "count=13",
                             "bool": [True, False]}
    assert steps["with"] == {"entered": "Counter(6)", "inside": "entered",
                             "after": "exited with None: None", "swallowed": True,
                             "after_error": "exited with KeyError: 'swallowed'"}

    byvalue = steps["byvalue"]
    assert byvalue["value"] == 1 and byvalue["plain_same"] is True
    assert byvalue["nested"] == "[(1, 2), {'k': (1, 2)}]"
    assert byvalue["counter"]["error"] == "TypeError"
    assert "cannot carry a brittle.Counter" in byvalue["counter"]["text"]
    assert "a list holding a brittle.Counter" in byvalue["many"]["text"]
    assert byvalue["module"]["error"] == "TypeError"
    task_error = steps["task error"]
    assert (task_error["type"], task_error["message"], task_error["tb"]) == (
        "ValueError", "bad value", True
    )
    assert task_error["no_module"]["error"] == "TaskError"
    assert "ModuleNotFoundError" in task_error["no_module"]["text"]
    assert steps["release"] == {"grew": 6, "after": 0}


CRASHES = """
import gc, threading
from tarnish_py import IsolationContext, ProxyLost, RemoteObject


def outcome(fn, *args, **kwargs):
    try:
        return dict(value=fn(*args, **kwargs))
    except BaseException as e:
        return dict(error=type(e).__name__, text=str(e)[:400])


def main():
    ctx = IsolationContext(path="plugins", timeout=2.0)
    b = ctx.import_module("brittle")
    plugin = ctx.import_module("plugin")
    worker_sys = ctx.import_module("sys")
    first_pid = ctx.pid
    emit(step="shared", same_pid=plugin.pid() == first_pid == b.IMPORTED_IN,
         plugin_in_parent="plugin" in sys.modules,
         parent_finds_plugin=outcome(__import__, "plugin").get("error"),
         mixed=plugin.bump_twice(b.Counter(5)))

    # A crash fails the call that crashed; the module works again on a fresh worker.
    counter = b.Counter(3)
    bump = counter.bump
    total = b.total  # a module's function: found again by name after a crash
    anchor = b.ANCHOR  # a module's instance: its state dies with the worker
    crashed = outcome(b.segfault)
    second_pid = ctx.pid
    lost = outcome(lambda: counter.bump())
    emit(step="crash", crashed=crashed["error"], signal="SIGSEGV" in crashed["text"],
         new_pid=second_pid not in (None, first_pid), first_dead=wait_dead(first_pid),
         lost=lost, bound_method_lost=outcome(bump)["error"],
         repr=repr(counter), works=b.Counter(2).bump(), by_name=total(b.Counter(4)),
         reimported=["brittle" in worker_sys.modules, "plugin" in worker_sys.modules],
         as_argument=outcome(b.total, counter)["error"],
         instance_constant=outcome(lambda: anchor.bump())["error"])

    # A timeout of the context kills the worker like a crash.
    late = b.Counter(1)
    timed_out = outcome(b.sleep, 30)
    emit(step="timeout", error=timed_out["error"], lost=outcome(lambda: late.bump())["text"],
         works=b.sleep(0))

    # restart() replaces the worker on purpose.
    kept = b.Counter(1)
    before = ctx.pid
    ctx.restart()
    emit(step="restart", new_pid=ctx.pid != before, lost=outcome(lambda: kept.bump())["text"],
         works=plugin.pid() == ctx.pid)

    # Threads share the context: requests run one at a time, each gets its own answer.
    answers = {}

    def work(i):
        mine = b.Counter(i * 100)
        answers[i] = [mine.bump() for _ in range(20)][-1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    emit(step="threads", answers=answers)

    # A proxy belongs to its own context.
    with IsolationContext() as other:
        b2 = other.import_module("brittle")
        emit(step="two contexts", other_pid=other.pid != ctx.pid,
             foreign=outcome(b2.total, b.Counter(1))["error"])

    # close() kills the worker; proxies then refuse.
    last = b.Counter(1)
    pid = ctx.pid
    with ctx:
        pass
    emit(step="close", dead=wait_dead(pid), proxy=outcome(lambda: last.bump())["error"],
         module=outcome(getattr, b, "VERSION")["error"], repr=repr(last))


main()
"""


def test_crash_timeout_restart_and_contexts(run_script) -> None:
    files = {"brittle.py": BRITTLE, "plugins/plugin.py": PLUGIN}
    steps = by_step(run_script(program(CRASHES), files=files, timeout=90))

    shared = steps["shared"]
    assert shared["same_pid"] is True and shared["plugin_in_parent"] is False
    assert shared["parent_finds_plugin"] == "ModuleNotFoundError"  # only on the worker's path
    assert shared["mixed"] == 7

    crash = steps["crash"]
    assert crash["crashed"] == "WorkerCrashed" and crash["signal"] is True
    assert crash["new_pid"] is True and crash["first_dead"] is True
    assert crash["lost"]["error"] == "ProxyLost"
    assert "brittle.Counter object was lost with the worker" in crash["lost"]["text"]
    assert "crashed" in crash["lost"]["text"] and "SIGSEGV" in crash["lost"]["text"]
    assert crash["bound_method_lost"] == "ProxyLost"
    assert crash["repr"].startswith("<RemoteObject brittle.Counter (lost: its worker crashed")
    assert crash["works"] == 3 and crash["by_name"] == 4
    assert crash["reimported"] == [True, True]  # at once, with the first request
    assert crash["as_argument"] == "ProxyLost" and crash["instance_constant"] == "ProxyLost"

    timeout = steps["timeout"]
    assert timeout["error"] == "TaskTimeout" and "timeout" in timeout["lost"]
    assert timeout["works"] == 0

    restart = steps["restart"]
    assert restart["new_pid"] is True and "restarted" in restart["lost"]
    assert restart["works"] is True

    assert steps["threads"]["answers"] == {"0": 20, "1": 120, "2": 220, "3": 320}
    assert steps["two contexts"] == {"other_pid": True, "foreign": "TypeError"}
    close = steps["close"]
    assert close["dead"] is True
    assert close["proxy"] == "ClosedError" and close["module"] == "ClosedError"
    assert close["repr"] == "<RemoteObject brittle.Counter (closed)>"
