"""A Dask batch where a few records segfault the native code.

With ``tarnish_py.dask.IsolatedPool`` each Dask worker keeps a pool of
isolated worker processes: a segfault fails that one Dask task with
``WorkerCrashed``; no Dask worker dies, the data the workers hold stays, and
the rest of the batch completes. (Plain Dask would lose a worker per crash,
retry the task on the others and finally raise ``KilledWorker``.)

Run: python examples/dask_batch.py   (needs: pip install 'tarnish_py[dask]')
"""

from __future__ import annotations

import collections
import logging
import os
import sys

try:
    import distributed
except ImportError:
    print("this example needs Dask distributed: pip install 'tarnish_py[dask]'")
    sys.exit(0)

from dask_tasks import Checksum  # an importable module: Dask workers import it by name

from tarnish_py import WorkerCrashed
from tarnish_py.dask import IsolatedPool


def main() -> None:
    records = [(b"\xde\xad %d" if i in (3, 17, 31) else b"record %d") % i for i in range(40)]
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # keep the "Compute Failed" logs out of the way
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        checksum = IsolatedPool(Checksum, timeout=30)  # size=None: one per Dask thread
        client.register_plugin(checksum)  # a pool on every Dask worker, now and later
        workers_before = client.run(os.getpid)
        [lookup] = client.scatter([{"table": list(range(1000))}], broadcast=True)

        futures = client.map(checksum.call, records)
        distributed.wait(futures, timeout=120)
        summary: collections.Counter[str] = collections.Counter()
        for index, future in enumerate(futures):
            error = future.exception() if future.status == "error" else None
            if isinstance(error, WorkerCrashed):
                summary[f"crashed ({error.signal})"] += 1
                print(f"record {index:2}: crashed ({error.signal}, exit code {error.exitcode})")
            elif error is not None:
                summary[f"error ({type(error).__name__})"] += 1
            else:
                summary["ok"] += 1

        print("summary:", ", ".join(f"{n} {kind}" for kind, n in sorted(summary.items())))
        same = client.run(os.getpid) == workers_before
        print(f"same {len(workers_before)} Dask workers (same processes): {same}")
        print(f"scattered data still held: {len(client.gather(lookup)['table'])} items")


if __name__ == "__main__":
    main()
