"""The identity queue is shared safely by several workers (server processes): a claim holds a row
until its lease expires; a resolved row leaves the queue (SQLite and PostgreSQL)."""

from __future__ import annotations

from sharedcare.identity.worker import IdentityWorker
from sharedcare.store.repository import WriteOp

from ._support import patient, person_of, queued


def test_claims_are_exclusive_and_expire(sc):
    ps = [patient(f"G{i}", f"F{i}", "1970-01-01", "female", "M1 1AA", "RTEST", pid=f"q{i}")
          for i in range(4)]
    sc.store.write([WriteOp("PUT", "Patient", p["id"], p) for p in ps])
    one, two = IdentityWorker(sc, lease_seconds=3600), IdentityWorker(sc, lease_seconds=3600)
    assert sorted(one.claim()) == ["q0", "q1", "q2", "q3"]
    assert two.claim() == []  # held by the first worker
    assert set(queued(sc).values()) == {"claimed"}
    # The first worker dies; once its lease has run out another worker takes the rows.
    from sharedcare.identity.schema import identity_queue

    with sc.engine.begin() as c:
        c.execute(identity_queue.update().values(lease_until="2000-01-01T00:00:00"))
    assert two.run_once() == 4
    assert queued(sc) == {}
    assert all(person_of(sc, p["id"]) is not None for p in ps)
    one.run_once()  # the dead worker's late finish changes nothing
    assert queued(sc) == {}
