"""Identity on every intake path: a store ``after_write`` hook.

Whatever writes a ``Patient`` -- the FHIR API (create, update, batch, transaction), HL7 v2, CSV
and FHIR feeds, ``sharedcare load`` -- runs this hook inside its own transaction:

* a Patient with a valid NHS number (modulus 11) joins the Person of that number in the same
  transaction (so a committed Patient is never without its Person, and two writers cannot make
  two Persons for one number: the Person id is derived from the number);
* a Patient without one, and not yet linked, is queued in ``identity_queue`` for the worker
  (:mod:`sharedcare.identity.worker`), which the server runs: the splink model is too slow for
  the write path;
* a deleted Patient leaves its Person; a Patient whose NHS number was removed leaves the Person
  of that number and is queued again.

Several Patients of one unit of work are handled together: the Persons they touch are read in
one query and each is written once. The hook's own Person writes run the store's hooks again;
they carry no Patient, and a flag on the connection stops any recursion.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..fhir.codes import NHS_NUMBER_SYSTEM
from ..store.repository import WriteResult, now_utc
from .links import (
    LinkPlan,
    _chunks,
    link_basis,
    make_link,
    person_id_for_nhs,
    valid_nhs_number,
)
from .schema import identity_queue

_ACTIVE = "sharedcare.identity.hook"


def enqueue(conn: Connection, patient_ids) -> None:
    """Queue patients for the worker (again, if they were queued before: pending, unclaimed)."""
    ids = sorted(set(patient_ids))
    if not ids:
        return
    stamp = now_utc()
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    for chunk in _chunks(ids):
        stmt = ins(identity_queue).values([
            {"patient_id": p, "status": "pending", "enqueued": stamp, "attempts": 0}
            for p in chunk])
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[identity_queue.c.patient_id],
            set_={"status": "pending", "enqueued": stamp, "owner": None, "lease_until": None,
                  "attempts": 0, "last_error": None}))


def dequeue(conn: Connection, patient_ids) -> None:
    for chunk in _chunks(sorted(set(patient_ids))):
        conn.execute(delete(identity_queue).where(identity_queue.c.patient_id.in_(chunk)))


def link_written_patients(store, conn: Connection, results: list[WriteResult]) -> None:
    if conn.info.get(_ACTIVE):
        return
    patients = {}
    for r in results:
        if r.stored.type == "Patient" and not r.unchanged:
            patients[r.stored.id] = r.stored  # the last write of one id wins
    if not patients:
        return
    conn.info[_ACTIVE] = True
    try:
        _link(store, conn, patients)
    finally:
        conn.info.pop(_ACTIVE, None)


def _link(store, conn: Connection, patients: dict) -> None:
    plan = LinkPlan(conn)
    numbers: dict[str, str | None] = {}
    for pid, s in patients.items():
        numbers[pid] = None if s.deleted else valid_nhs_number(s.json())
    plan.load(patients, {person_id_for_nhs(n) for n in numbers.values() if n})
    queue, done = [], []
    for pid, s in patients.items():
        number = numbers[pid]
        if s.deleted:
            plan.remove(pid)
            done.append(pid)
        elif number:
            plan.move(pid, person_id_for_nhs(number), make_link(pid, "level4", "nhs-number"),
                      {"system": NHS_NUMBER_SYSTEM, "value": number})
            done.append(pid)
        else:
            link = plan.link_of(pid)
            if link is None:
                queue.append(pid)
            elif link_basis(link) == "nhs-number":
                # Its NHS number was removed or corrected to an invalid one: it no longer
                # belongs to that number's Person; the model decides again.
                plan.remove(pid)
                queue.append(pid)
    ops = plan.ops()
    if ops:
        store.write(ops, conn)
    dequeue(conn, done)
    enqueue(conn, queue)


def install(store) -> None:
    """Register the hook on a store (once)."""
    if not any(getattr(h, "_identity_hook", False) for h in store.after_write):
        def hook(conn, results, store=store):
            link_written_patients(store, conn, results)
        hook._identity_hook = True
        store.after_write.append(hook)
