"""A delivery worker killed with SIGKILL mid-delivery loses nothing: its lease expires, the next
worker sends again with the same Idempotency-Key, and every notification arrives (SQLite and
PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from sharedcare.notify import subscribe
from tests.conftest import ROOT

from ._support import FEED, GP, ack_ok, admission, audits, deliveries, world
from .test_delivery import until_settled, worker

WORKER = """
import sys, time
from pathlib import Path
from sharedcare.app import SharedCare
from sharedcare.notify import NotifyWorker
sc = SharedCare.open(sys.argv[1], Path(sys.argv[2]), upgrade=False)
w = NotifyWorker(sc, lease_seconds=float(sys.argv[3]), backoff_base=0.02)
while True:
    w.run_once()
    time.sleep(0.02)
"""

NUMBERS = ["9434765919", "9434765870", "9434765846", "9434765838", "9434765811"]


def test_worker_killed_mid_delivery_loses_nothing(sc, database_url, tmp_path, receiver):
    feeds = world(sc)
    hook = subscribe(sc, ods=GP, topics=["admission"], channel="rest-hook",
                     endpoint=receiver.url)
    for n, nhs in enumerate(NUMBERS, 1):
        assert ack_ok(feeds.ingest_hl7(admission(n, nhs=nhs), FEED))
    receiver.hold = threading.Event()  # the first POST hangs until the worker is dead
    proc = subprocess.Popen([sys.executable, "-c", WORKER, database_url,
                             str(tmp_path / "data"), "2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert receiver.arrived.wait(60), proc.stderr.read1(4000) if proc.poll() else "no POST"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert deliveries(sc) == {"pending": 5}  # killed before anything was recorded as sent
    receiver.hold.set()  # the hung request completes at the receiver (its sender is gone)
    receiver.hold = None
    assert until_settled(worker(sc), sc, timeout=30) == {"sent": 5}
    unique = receiver.unique()
    assert sorted(unique) == sorted(f"{hook}/{e}" for e in _event_ids(sc))
    assert len(receiver.received) in (5, 6)  # the one in flight may arrive twice: same key
    assert [a.outcome for a in audits(sc)] == ["0"] * 5  # one audit event per delivery


def _event_ids(sc) -> list[int]:
    from ._support import events

    return [e.id for e in events(sc)]


def test_two_workers_share_the_work_each_notification_once_in_order(sc, receiver):
    """Two servers' workers on one database: every notification once, each subscriber's in
    event order (leases on subscribers; SKIP LOCKED on PostgreSQL)."""
    import time

    feeds = world(sc)
    hooks = [subscribe(sc, ods=GP, topics=["admission", "discharge"], channel="rest-hook",
                       endpoint=receiver.url) for _ in range(3)]
    workers = [worker(sc), worker(sc)]
    stops = [w.start(interval=0.01) for w in workers]
    try:
        for n, nhs in enumerate(NUMBERS, 1):
            assert ack_ok(feeds.ingest_hl7(admission(n, nhs=nhs), FEED))
            assert ack_ok(feeds.ingest_hl7(admission(n, nhs=nhs, discharged=True), FEED))
        deadline = time.monotonic() + 30
        while len(receiver.received) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for w, stop in zip(workers, stops, strict=True):
            w.stop(stop)
    assert deliveries(sc) == {"sent": 30}
    keys = receiver.keys()
    assert len(keys) == len(set(keys)) == 30
    for hook in hooks:
        mine = [int(k.rsplit("/", 1)[1]) for k in keys if k.startswith(hook + "/")]
        assert len(mine) == 10 and mine == sorted(mine)


def test_a_slow_receiver_does_not_outlast_the_lease(sc, receiver):
    """Sends slower than the lease: the worker renews it, so a second worker never takes the
    subscriber over mid-turn (no duplicates, order kept)."""
    import time

    feeds = world(sc)
    hook = subscribe(sc, ods=GP, topics=["admission"], channel="rest-hook",
                     endpoint=receiver.url)
    for n, nhs in enumerate(NUMBERS[:3], 1):
        assert ack_ok(feeds.ingest_hl7(admission(n, nhs=nhs), FEED))
    receiver.delay = 0.3
    workers = [worker(sc, lease_seconds=0.6), worker(sc, lease_seconds=0.6)]
    stops = [w.start(interval=0.02) for w in workers]
    try:
        deadline = time.monotonic() + 20
        while deliveries(sc) != {"sent": 3} and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for w, stop in zip(workers, stops, strict=True):
            w.stop(stop)
    assert deliveries(sc) == {"sent": 3}
    keys = receiver.keys()
    assert len(keys) == len(set(keys)) == 3
    numbers = [int(k.rsplit("/", 1)[1]) for k in keys]
    assert numbers == sorted(numbers) and all(k.startswith(hook) for k in keys)
