"""What a type checker infers for isolated modules: checked by ``mypy --strict`` in
tests/test_typing.py, never run.

mypy types a module object used as a value as ``types.ModuleType``, so
``ctx.isolate(json)`` is a ``ModuleType`` whose attributes are ``Any``; what
the proxy keeps of the module's own types shows when it is assigned to a
Protocol: mypy checks the *module's* attributes against it (pyright goes
further and keeps ``Module("json")`` itself).
"""

from __future__ import annotations

import json
import types
from typing import Any, Protocol

from typing_extensions import assert_type

from tarnish_py import IsolationContext, RemoteObject, byvalue, import_isolated


class JsonApi(Protocol):
    def dumps(self, obj: Any, *, sort_keys: bool = ...) -> str: ...

    def loads(self, s: str | bytes) -> Any: ...


def isolate_keeps_the_module_type() -> None:
    with IsolationContext(timeout=5.0) as ctx:
        assert_type(ctx, IsolationContext)
        proxy = ctx.isolate(json)
        assert_type(proxy, types.ModuleType)
        api: JsonApi = ctx.isolate(json)  # checked against json's real signatures
        assert_type(api.dumps({"a": 1}, sort_keys=True), str)
        assert_type(ctx.pid, int | None)


def dynamic_ways_in_are_any() -> None:
    cv = import_isolated("brittle_cv")
    assert_type(cv, Any)
    ctx = IsolationContext(path=["vendor", "plugins"])
    assert_type(ctx.import_module("brittle_cv"), Any)
    assert_type(byvalue(cv.stats()), Any)


def proxies_support_the_operators(a: RemoteObject, b: RemoteObject) -> None:
    assert_type(len(a), int)
    assert_type(a in b, bool)
    assert_type(bool(a), bool)
    assert_type(a + 1, Any)
    assert_type(2 * a, Any)
    assert_type(-a, Any)
    assert_type(a < b, Any)
    assert_type(a[1:3], Any)
    assert_type(a.anything, Any)
    assert_type(a(1, key="v"), Any)
    for item in a:
        assert_type(item, Any)
    with a as entered:
        assert_type(entered, Any)
