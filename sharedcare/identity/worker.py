"""The identity worker: resolves queued patients (no valid NHS number) with the splink model.

The server runs it (``create_app`` wires it into the Starlette lifespan: started with the server,
stopped with it -- nothing to start by hand). Several server processes may each run one: a row of
``identity_queue`` is *claimed* with a conditional update (status and lease), so one worker works
on it at a time; a worker that dies leaves a claim whose lease expires and another worker takes
it. :meth:`IdentityService.resolve` is idempotent, so a patient resolved twice (a lease expired
while its worker was still busy) is linked once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update

from ..background import PollingWorker, attach
from ..logsafe import log_failure
from ..store.repository import now_utc
from .schema import identity_queue

log = logging.getLogger(__name__)

LEASE_SECONDS = 120
MAX_ATTEMPTS = 5


def _later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")


class IdentityWorker(PollingWorker):
    thread_name = "identity-worker"

    def __init__(self, sc, lease_seconds: float = LEASE_SECONDS, batch: int = 50):
        from .service import IdentityService

        self.sc = sc
        self.identity = IdentityService.of(sc)
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.name = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:64]

    def claim(self, limit: int | None = None) -> list[str]:
        """Claim up to ``limit`` queued patients (pending, or claimed with an expired lease)."""
        now = now_utc()
        ready = or_(identity_queue.c.status == "pending",
                    and_(identity_queue.c.status == "claimed",
                         identity_queue.c.lease_until < now))
        with self.sc.store.reads.connect() as conn:  # look without a transaction
            ids = list(conn.execute(select(identity_queue.c.patient_id).where(ready)
                                    .order_by(identity_queue.c.enqueued)
                                    .limit(limit or self.batch)).scalars())
        if not ids:
            return []
        claimed = []
        until = _later(self.lease_seconds)
        with self.sc.store.begin_write() as conn, conn.begin():
            for pid in ids:
                n = conn.execute(update(identity_queue).where(
                    identity_queue.c.patient_id == pid, ready).values(
                    status="claimed", lease_until=until, owner=self.name,
                    attempts=identity_queue.c.attempts + 1)).rowcount
                if n == 1:
                    claimed.append(pid)
        return claimed

    def _finish(self, pid: str, error: Exception | None) -> None:
        mine = and_(identity_queue.c.patient_id == pid, identity_queue.c.owner == self.name,
                    identity_queue.c.status == "claimed")
        with self.sc.store.begin_write() as conn, conn.begin():
            if error is None:
                # A write since the claim put it back to pending (owner cleared): keep that.
                conn.execute(delete(identity_queue).where(mine))
                return
            attempts = conn.execute(select(identity_queue.c.attempts).where(mine)).scalar()
            if attempts is None:
                return
            conn.execute(update(identity_queue).where(mine).values(
                status="failed" if attempts >= MAX_ATTEMPTS else "pending", owner=None,
                lease_until=None, last_error=type(error).__name__[:200]))

    def run_once(self, limit: int | None = None) -> int:
        """Claim and resolve one batch. Returns how many patients were handled."""
        ids = self.claim(limit)
        for pid in ids:
            try:
                self.identity.resolve(pid)
            except Exception as e:  # noqa: BLE001 - one patient's failure must not stop the rest
                from ..fhir.outcome import FHIRError

                if isinstance(e, FHIRError) and e.status in (404, 410):
                    self._finish(pid, None)  # deleted since it was queued: nothing to do
                    continue
                log_failure(log, "identity resolution failed", e)
                self._finish(pid, e)
                continue
            self._finish(pid, None)
        return len(ids)

    def drain(self, timeout: float = 60.0) -> int:
        """Resolve until the queue has nothing ready (tests, operators). Returns the count."""
        total, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.run_once()
            if not n:
                return total
            total += n
        return total


def attach_identity_worker(app, sc, interval: float | None = None) -> None:
    """Run an identity worker for the web app's lifetime (its Starlette lifespan).
    ``SHAREDCARE_IDENTITY_WORKER=0`` turns it off (a dedicated process runs it instead)."""
    attach(app, lambda: IdentityWorker(sc), "identity", 1.0, interval)
