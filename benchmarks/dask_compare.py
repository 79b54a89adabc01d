"""Plain Dask vs ``tarnish_py.dask.IsolatedPool`` on a batch with segfaulting records.

Run by hand (not part of the test suite)::

    python benchmarks/dask_compare.py [--records 200] [--bad 5] [--workers 2]

Each mode gets a fresh LocalCluster (processes, ``--workers`` workers with one
thread each), scatters a lookup table to every worker, runs the batch and then
reports: tasks that returned a result, tasks that failed (and how), Dask
worker deaths seen by the scheduler, wall time of the batch, and whether the
scattered table is still held.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
from typing import Any

import distributed
from _dask_work import Checksum, WorkerLosses, checksum

from tarnish_py.dask import IsolatedPool


def _records(n: int, bad: int) -> list[bytes]:
    step = max(1, n // max(1, bad))
    bad_at = {i * step + step // 2 for i in range(bad)}
    return [(b"\xde\xad %d" if i in bad_at else b"record %d") % i for i in range(n)]


def run(mode: str, records: list[bytes], workers: int, budget: float) -> dict[str, Any]:
    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(WorkerLosses())
        fn: Any = checksum
        if mode == "isolated":
            pool = IsolatedPool(Checksum, timeout=60)
            client.register_plugin(pool)
            fn = pool.call
        [table] = client.scatter([list(range(100_000))], broadcast=True)
        start = time.perf_counter()
        futures = client.map(fn, records)
        try:
            distributed.wait(futures, timeout=budget)
        except TimeoutError:
            pass  # plain Dask may stall after many worker deaths: counted as unfinished
        wall = time.perf_counter() - start
        outcomes: collections.Counter[str] = collections.Counter()
        for future in futures:
            if future.status == "finished":
                outcomes["ok"] += 1
            elif future.status == "error":
                outcomes[type(future.exception()).__name__] += 1
            else:
                outcomes[f"unfinished after {budget:g} s"] += 1
        try:
            intact = len(table.result(timeout=30)) == 100_000
        except Exception:  # the scattered data died with its workers
            intact = False
        alive = len(client.scheduler_info()["workers"])
        losses = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins[WorkerLosses.name].removed
        )
    return {
        "mode": mode,
        "outcomes": dict(outcomes),
        "worker_deaths": losses,
        "wall_s": round(wall, 2),
        "table_intact": intact,
        "workers_left": alive,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--bad", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per batch")
    args = parser.parse_args()
    records = _records(args.records, args.bad)
    print(
        f"{args.records} records, {args.bad} segfaulting, {args.workers} Dask workers "
        f"x 1 thread, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"distributed {distributed.__version__}"
    )
    print(
        "| mode | results | failed tasks | Dask worker deaths | workers at the end "
        "| wall time | scattered data |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in ("plain", "isolated"):
        r = run(mode, records, args.workers, args.budget)
        outcomes = dict(r["outcomes"])
        ok = outcomes.pop("ok", 0)
        failed = ", ".join(f"{n} {kind}" for kind, n in sorted(outcomes.items()) if n) or "0"
        label = "plain Dask" if mode == "plain" else "IsolatedPool"
        intact = "intact" if r["table_intact"] else "lost"
        print(
            f"| {label} | {ok}/{len(records)} | {failed} | {r['worker_deaths']} "
            f"| {r['workers_left']} | {r['wall_s']:.2f} s | {intact} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
