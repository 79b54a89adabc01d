"""tarnish_py.dask on a real LocalCluster (2 worker processes, 1 thread each):
segfaults fail single Dask tasks and nothing else, @task functions travel by
reference, a cancelled Dask future kills its isolated call, and restarted or
killed Dask workers leave no isolated process behind.

One cluster serves the whole module (a start costs seconds). The tests that
restart or kill Dask workers come last; each test reads the worker set it
starts from instead of assuming the first one.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from proc_checks import descendants, still_alive  # noqa: E402

from tarnish_py import ProcessPool, Task, TaskError, TaskTimeout, WorkerCrashed  # noqa: E402
from tarnish_py.dask import IsolatedPool  # noqa: E402

from . import _dask_tasks  # noqa: E402
from ._dask_tasks import RAISE, SPIN, Crashy, Stuck, scale  # noqa: E402

MARK = "TARNISH_DASK_TEST"
SERVER = b"TARNISH_PY_FORKSERVER"  # in a fork server's environment (tarnish_py._forkserver)


# -- the cluster -------------------------------------------------------------


class Cluster:
    def __init__(self, client: Any, token: str) -> None:
        self.client = client
        self.token = token
        self.plugin = IsolatedPool(Crashy)
        client.register_plugin(self.plugin)

    def pids(self) -> dict[str, int]:
        """Dask worker address -> its process id."""
        return dict(self.client.run(os.getpid))

    def isolated(self, dask_pid: int) -> set[int]:
        """The isolated workers of the registered pool (Crashy) below one Dask worker."""
        return {pid for pid in descendants(dask_pid) if _is_isolated(pid, self.token, "Crashy")}

    def isolated_anywhere(self) -> set[int]:
        """Every isolated worker started by this cluster, whoever its parent is now."""
        return {
            int(e) for e in os.listdir("/proc") if e.isdigit() and _is_isolated(int(e), self.token)
        }

    def wait_pools(self, within: float = 20.0) -> dict[int, set[int]]:
        """Dask worker pid -> its isolated workers, once each has its pool (size 1)."""
        deadline = time.monotonic() + within
        while True:
            pools = {pid: self.isolated(pid) for pid in self.pids().values()}
            if all(len(p) == 1 for p in pools.values()) or time.monotonic() > deadline:
                return pools
            time.sleep(0.1)


def _is_isolated(pid: int, token: str, task: str | None = None) -> bool:
    """Whether ``pid`` is a live tarnish_py worker (of ``task``) started in this cluster
    (not a fork server: the workers forked from one are its children)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if f"{MARK}={token}".encode() not in environ or fields[0] in ("Z", "X"):
        return False
    if any(entry.startswith(SERVER + b"=") for entry in environ):
        # A forked worker inherits its server's initial environment: tell them
        # apart by the parent, which for a worker is the server.
        if not _has_worker_marker(int(fields[1])):
            return False
    marker = b"TARNISH_PY_WORKER="
    for entry in environ:
        if entry.startswith(marker):
            return task is None or json.loads(entry[len(marker) :])["name"] == task
    return False


def _has_worker_marker(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(entry.startswith(b"TARNISH_PY_WORKER=") for entry in environ)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    token = uuid.uuid4().hex
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env={MARK: token},
        ) as local,
        distributed.Client(local) as client,
    ):
        cl = Cluster(client, token)
        yield cl
    # Closing the cluster tears the pools down: nothing of it may live on.
    left = still_alive(cl.isolated_anywhere(), within=10.0)
    assert not left, f"isolated workers left after the cluster closed: {left}"


# -- tests --------------------------------------------------------------------


def test_segfaults_fail_only_their_tasks(cluster: Cluster) -> None:
    client = cluster.client
    workers_before = set(client.scheduler_info()["workers"])
    pids_before = cluster.pids()
    # One piece of data on each Dask worker: it cannot be recomputed, so it
    # survives only if its worker does.
    held = {
        address: client.scatter([list(range(1000))], workers=[address], hash=False)[0]
        for address in workers_before
    }

    inputs = [-i if i in (4, 15, 27) else i for i in range(30)]  # distinct: no shared key
    futures = client.map(cluster.plugin.call, inputs)
    distributed.wait(futures, timeout=60)

    assert len({f.key for f in futures}) == 30
    assert [i for i, f in zip(inputs, futures, strict=True) if f.status == "error"] == [
        -4,
        -15,
        -27,
    ]
    crashed = [f.exception() for f in futures if f.status == "error"]
    assert len(crashed) == 3 and all(isinstance(e, WorkerCrashed) for e in crashed), crashed
    for error in crashed:
        assert error.signal == "SIGSEGV" and error.exitcode == -signal.SIGSEGV
        assert "Segmentation fault" in error.stderr  # the worker's faulthandler dump travelled
    results = {i: f.result() for i, f in zip(inputs, futures, strict=True) if f.status != "error"}
    assert results == {i: 2 * i for i in inputs if i >= 0}

    # No Dask worker died: same members, same processes, held data still there.
    assert set(client.scheduler_info()["workers"]) == workers_before
    assert cluster.pids() == pids_before
    for address, data in held.items():
        assert set(client.who_has([data])[data.key]) == {address}
        assert data.result(timeout=30) == list(range(1000))


def test_isolated_memory_reaches_the_scheduler(cluster: Cluster) -> None:
    def reported() -> list[Any]:
        workers = cluster.client.scheduler_info()["workers"].values()
        return [w["metrics"].get(cluster.plugin.metric) for w in workers]

    deadline = time.monotonic() + 20.0
    while not all(isinstance(rss, int) and rss > 1 << 20 for rss in reported()):
        assert time.monotonic() < deadline, reported()
        time.sleep(0.2)


def test_task_errors_and_timeouts_reach_the_client(cluster: Cluster) -> None:
    client = cluster.client
    failed = client.submit(cluster.plugin.call, RAISE)
    distributed.wait([failed], timeout=30)
    error = failed.exception()
    assert isinstance(error, TaskError), error
    assert error.type_name == "ValueError" and "cannot take" in error.message
    assert "_dask_tasks.py" in error.traceback

    # A pool started on first use (never registered), with a per-call timeout.
    stuck = IsolatedPool(Stuck, size=1, timeout=0.5)
    late = client.submit(stuck.call, 1)
    distributed.wait([late], timeout=60)
    timeout = late.exception()
    assert isinstance(timeout, TaskTimeout) and timeout.timeout == 0.5, timeout


def test_task_functions_travel_by_reference(cluster: Cluster) -> None:
    client = cluster.client
    assert pickle.loads(pickle.dumps(scale)) is scale
    # Called as itself on the Dask workers (its own worker there, started on first use) ...
    assert client.gather(client.map(scale, [1.0, 2.5])) == [2.0, 5.0]
    # ... or through a pool, with the function's own argument binding.
    pool = IsolatedPool(scale)
    assert client.gather(client.map(pool.call, [1.0, 2.0], factor=3.0)) == [3.0, 6.0]
    assert client.submit(pool.call, x=2.0, pure=False).result(timeout=30) == 4.0
    assert pool.name != cluster.plugin.name
    assert pickle.loads(pickle.dumps(pool)).name == pool.name


def test_cancelling_a_dask_future_kills_its_isolated_call(cluster: Cluster) -> None:
    client = cluster.client
    address, dask_pid = next(iter(cluster.pids().items()))
    [isolated] = cluster.wait_pools()[dask_pid]

    stuck = client.submit(cluster.plugin.call, SPIN, workers=[address], pure=False)
    _wait_executing(client, address, stuck.key)
    stuck.cancel()

    # The Dask worker's only thread is free again: the next task runs there.
    after = client.submit(cluster.plugin.call, 21, workers=[address], pure=False)
    assert after.result(timeout=15) == 42
    assert not still_alive([isolated], within=5.0), "the cancelled call's worker lives on"
    assert len(cluster.isolated(dask_pid)) == 1  # replaced by a fresh one


def _wait_executing(client: Any, address: str, key: Any, within: float = 20.0) -> None:
    def executing(dask_worker: Any) -> bool:
        record = dask_worker.state.tasks.get(key)
        return record is not None and record.state == "executing"

    deadline = time.monotonic() + within
    while not client.run(executing, workers=[address])[address]:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    time.sleep(0.3)  # the call reaches its isolated worker


def test_restart_and_killed_workers_leave_no_isolated_process(cluster: Cluster) -> None:
    client = cluster.client
    old = cluster.wait_pools()
    old_isolated = set().union(*old.values())
    assert len(old_isolated) == 2

    client.restart(timeout=60)
    assert not still_alive(old_isolated, within=10.0), "isolated workers outlived restart()"
    restarted = cluster.wait_pools()  # Dask ran setup again: fresh pools
    assert set(restarted).isdisjoint(old)
    assert all(len(pids) == 1 for pids in restarted.values()), restarted

    address, victim = next(iter(cluster.pids().items()))
    [orphan] = restarted[victim]
    os.kill(victim, signal.SIGKILL)
    assert not still_alive([orphan], within=10.0), "isolated worker outlived its Dask worker"
    _wait_replaced(client, address)
    survivors = cluster.wait_pools()
    assert victim not in survivors and len(survivors) == 2
    assert all(len(pids) == 1 for pids in survivors.values()), survivors
    # Every isolated process of this cluster sits below a live Dask worker.
    assert cluster.isolated_anywhere() == set().union(*survivors.values())
    assert client.gather(client.map(cluster.plugin.call, [1, 2, 3])) == [2, 4, 6]


def _wait_replaced(client: Any, address: str, within: float = 60.0) -> None:
    """Until the scheduler has dropped the dead worker and the nanny's new one joined."""
    deadline = time.monotonic() + within
    while True:
        workers = client.scheduler_info()["workers"]
        if address not in workers and len(workers) == 2:
            return
        assert time.monotonic() < deadline, f"no replacement for {address}: {list(workers)}"
        time.sleep(0.1)


# -- no cluster needed ------------------------------------------------------------


def test_construction_refuses_what_workers_cannot_import() -> None:
    main_task = types.new_class(
        "MainTask",
        (Task[int, int],),
        exec_body=lambda ns: ns.update({"run": lambda self, x: x, "__module__": "__main__"}),
    )
    with pytest.raises(TypeError, match="importable module"):
        IsolatedPool(main_task)
    with pytest.raises(TypeError, match="Task subclass or an @task function"):
        IsolatedPool(len)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        IsolatedPool(Crashy, size=0)
    with pytest.raises(ValueError, match="timeout"):
        IsolatedPool(Crashy, timeout=-1)
    assert IsolatedPool(Crashy).name == IsolatedPool(Crashy, size=3).name


def test_handles_refuse_pickling() -> None:
    assert _dask_tasks.Crashy is Crashy
    with ProcessPool(Crashy, size=1) as pool:
        with pytest.raises(TypeError, match="cannot be pickled.*IsolatedPool"):
            pickle.dumps(pool)
