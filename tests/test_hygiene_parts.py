"""The pure parts of worker hygiene, without a worker: the environment built for
each ``env=`` form, Limits as marker data, and the RSS the parent reads."""

from __future__ import annotations

import os
import shutil

import pytest

from tarnish_py import Limits
from tarnish_py._boot import WorkerConfig
from tarnish_py._environ import STARTUP, carried, worker_env
from tarnish_py._limits import rlimits
from tarnish_py._recycle import _rss_ps, rss_of


@pytest.fixture
def parent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in STARTUP:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("SECRET", "s3cret")
    monkeypatch.setenv("KEEP", "yes")
    monkeypatch.setenv("PYTHONPATH", "/checkout/src")


@pytest.mark.usefixtures("parent_env")
def test_worker_env_for_each_form() -> None:
    assert worker_env(None) == dict(os.environ)
    assert carried(None) == ()

    names = worker_env(["KEEP", "ABSENT"])
    assert names == {"PATH": "/usr/bin:/bin", "KEEP": "yes", "PYTHONPATH": "/checkout/src"}
    assert carried(["KEEP"]) == STARTUP  # dropped again in the worker

    mapping = worker_env({"A": "1"})
    assert mapping == {"A": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": "/checkout/src"}
    assert worker_env({"A": "1", "PATH": "/x"})["PATH"] == "/x"

    # A start-up variable the user names is theirs: kept in the worker, not replaced.
    own = {"PYTHONPATH": "/mine"}
    assert worker_env(own)["PYTHONPATH"] == "/mine" and "PYTHONPATH" not in carried(own)
    assert "PYTHONPATH" not in carried(["PYTHONPATH"])


def test_worker_env_without_parent_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH")
    for name in STARTUP:
        monkeypatch.delenv(name, raising=False)
    assert worker_env([]) == {} and worker_env({"A": "1"}) == {"A": "1"}


def test_limits_travel_in_the_marker() -> None:
    assert rlimits(None) == () and rlimits(Limits()) == ()
    pairs = rlimits(Limits(memory=1 << 30, file_size=4096))
    assert pairs == (("memory", 1 << 30), ("file_size", 4096))
    config = WorkerConfig("m", "T", 10, 1, limits=pairs, drop_env=("PYTHONPATH",))
    assert WorkerConfig.loads(config.dumps()) == config


def test_rss_read_by_the_parent() -> None:
    rss = rss_of(os.getpid())
    assert rss is not None and rss > 1 << 20
    if shutil.which("ps"):  # the fallback where there is no /proc
        by_ps = _rss_ps(os.getpid())
        assert by_ps is not None and by_ps > 1 << 20
    assert rss_of(2**22 + 12345) is None  # no such process
