"""A brittle native module used without changing a line of it: ``import_isolated``.

``native_lib/brittle_native.py`` holds native memory (a ctypes buffer) and has
a parser that segfaults on some inputs. Imported through an
``IsolationContext``, it runs in a worker process: objects it makes stay there
(the program holds proxies), plain values come back by value, and a segfault
fails one call with ``WorkerCrashed`` while the module keeps working.

Run: python examples/isolated_module.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from tarnish_py import IsolationContext, ProxyLost, RemoteObject, WorkerCrashed, byvalue

HERE = Path(__file__).resolve().parent


def main() -> None:
    with IsolationContext(path=HERE / "native_lib", timeout=30) as ctx:
        native = ctx.import_module("brittle_native")
        print(f"worker {ctx.pid}; brittle_native imported in this process: "
              f"{'brittle_native' in sys.modules}")

        buffer = native.Buffer(16)  # native memory, in the worker
        buffer.write(0, b"tarnish")
        print(f"buffer is a RemoteObject: {isinstance(buffer, RemoteObject)}; "
              f"len={len(buffer)}, writes={buffer.writes}, checksum={native.checksum(buffer)}")
        print(f"its bytes, by value: {byvalue(buffer.read())!r}")
        try:
            byvalue(buffer)
        except TypeError:
            print("the buffer itself cannot travel: it stays in the worker")

        for header in [b"\x05\x01", b"\x00", b"\x02\x07"]:
            try:
                print(f"parse_header({header!r}) = {native.parse_header(header)}")
            except WorkerCrashed as crash:
                print(f"parse_header({header!r}) crashed the worker ({crash.signal}); "
                      f"this process lives on, the new worker is {ctx.pid}")

        try:
            buffer.read()
        except ProxyLost as lost:
            print(f"the old buffer is gone: ProxyLost: {lost}")

        buffer = native.Buffer(8)  # the module was imported again in the fresh worker
        buffer.write(0, b"again")
        print(f"a new buffer works: {buffer.read()!r}")


if __name__ == "__main__":
    main()
