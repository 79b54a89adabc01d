"""The soak (tests/reliability/soak.py) in its short form: 2,000 calls, 1 % faults.
``make soak`` runs the long one (20,000 calls) and prints the report."""

from __future__ import annotations

import json
from pathlib import Path

SOAK = Path(__file__).with_name("soak.py")


def test_soak_accounts_for_every_call_and_leaks_nothing(run_script) -> None:
    result = run_script(SOAK.read_text(), "--calls", "2000", "--seed", "7", timeout=90)
    report = json.loads(result.stdout)
    assert report["calls"] == 2000
    assert sum(report["faults"].values()) == 20
    assert all(n >= 1 for n in report["faults"].values()), report["faults"]
    # Each call's caller saw its value or the error its fault calls for, exactly once,
    # and each call ran exactly once in a worker.
    assert (report["lost"], report["duplicated"], report["mismatched"]) == (0, 0, 0), report
    pool = report["pool"]
    assert pool["size"] == 2 and pool["all_alive"] and pool["distinct"], pool
    assert report["growth"] == {"fds": 0, "threads": 0, "children": 0, "zombies": 0}, report
    assert report["rss_growth"] < 20 << 20, report
    closed = report["after_close"]
    assert closed["children"] <= 1 and closed["zombies"] == 0, closed  # the watchdog
    assert closed["threads"] == report["baseline_before_pool"]["threads"], closed
    assert report["ok"] and result.returncode == 0, result
