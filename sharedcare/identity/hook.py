"""Identity on every intake path: a store ``before_write`` hook.

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
one query and each is written once, in the same batch of statements as the Patients (a nested
write cost a quarter of an HL7 message's time).
"""

from __future__ import annotations

from sqlalchemy import Connection, delete

from ..fhir.codes import NHS_NUMBER_SYSTEM
from ..store.repository import WriteOp, WriteResult, now_utc
from .links import (
    LinkPlan,
    _chunks,
    link_basis,
    make_link,
    person_id_for_nhs,
    valid_nhs_number,
)
from .schema import identity_queue


def enqueue(conn: Connection, patient_ids) -> None:
    """Queue patients for the worker (again, if they were queued before: pending, unclaimed)."""
    ids = sorted(set(patient_ids))
    if not ids:
        return
    stamp = now_utc()
    # Plain SQL to the driver's executemany (same syntax on both backends): a bulk load queues
    # every Patient without an NHS number, and compiling a multi-row ON CONFLICT statement per
    # chunk cost more than running it.
    conflict = (" ON CONFLICT (patient_id) DO UPDATE SET status = 'pending', "
                "enqueued = excluded.enqueued, owner = NULL, lease_until = NULL, attempts = 0, "
                "last_error = NULL")
    head = f"INSERT INTO {identity_queue.name} (patient_id, status, enqueued, attempts) "
    if conn.dialect.name == "postgresql":  # one statement over an array
        conn.exec_driver_sql(head + "SELECT unnest(%s::text[]), 'pending', %s, 0" + conflict,
                             (ids, stamp))
    else:
        conn.exec_driver_sql(head + "VALUES (?, 'pending', ?, 0)" + conflict,
                             [(p, stamp) for p in ids])


def dequeue(conn: Connection, patient_ids) -> None:
    for chunk in _chunks(sorted(set(patient_ids))):
        conn.execute(delete(identity_queue).where(identity_queue.c.patient_id.in_(chunk)))


def person_ops(conn: Connection, ops: list[WriteOp]) -> list[WriteOp]:
    """The Person writes that go with the Patient writes of one unit of work."""
    patients: dict[str, dict | None] = {}
    for op in ops:
        if op.rtype == "Patient":
            patients[op.rid] = None if op.method == "DELETE" else op.resource  # last one wins
    if not patients:
        return []
    plan = LinkPlan(conn)
    numbers = {pid: valid_nhs_number(res) if res is not None else None
               for pid, res in patients.items()}
    plan.load(patients, {person_id_for_nhs(n) for n in numbers.values() if n})
    # Patients that a Person written in this same unit links are placed by its writer.
    placed = {(lk.get("target") or {}).get("reference", "").removeprefix("Patient/")
              for op in ops if op.rtype == "Person" and op.resource
              for lk in op.resource.get("link") or [] if isinstance(lk, dict)}
    queue = []
    for pid, res in patients.items():
        number = numbers[pid]
        if res is None:
            plan.remove(pid)
        elif number:
            plan.move(pid, person_id_for_nhs(number), make_link(pid, "level4", "nhs-number"),
                      {"system": NHS_NUMBER_SYSTEM, "value": number})
        else:
            link = plan.link_of(pid)
            if link is None:
                if pid not in placed:
                    queue.append(pid)
            elif link_basis(link) == "nhs-number":
                # Its NHS number was removed or corrected to an invalid one: it no longer
                # belongs to that number's Person; the model decides again.
                plan.remove(pid)
                queue.append(pid)
    enqueue(conn, queue)
    # A Person the caller writes itself in this unit is the caller's to write.
    own = {op.rid for op in ops if op.rtype == "Person"}
    return [op for op in plan.ops() if op.rid not in own]


def leave_queue(conn: Connection, results: list[WriteResult]) -> None:
    """After the write: Patients now linked by NHS number, or deleted, leave the worker's queue.
    A Patient just created was never queued, so the common case costs no statement."""
    done = [r.stored.id for r in results if r.stored.type == "Patient" and not r.created
            and (r.stored.deleted or valid_nhs_number(r.stored.json()))]
    dequeue(conn, done)


def install(store) -> None:
    """Register the hooks on a store (once)."""
    if person_ops not in store.before_write:
        store.before_write.append(person_ops)
        store.after_write.append(leave_queue)
