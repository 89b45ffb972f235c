"""One person across partners: which Patient records are the same person.

Each partner keeps its own `Patient` for a person; identity (sharedcare/identity) joins them
under one FHIR `Person` whose `link[].target` names each. This module keeps `person_link` -- one
row per Patient, the key of its Person (or its own id while none links it) -- current as Persons
and Patients are written, in the same transaction. Every rule and read that follows the person
(legitimate relationships, patient choices, break-glass, $everything, `:mdm` searches) goes
through `same_person` (SQL) or `patients_of_person` (Python), so unlinking takes effect on the
very next query.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, select, update
from sqlalchemy.sql.elements import ColumnElement

from .schema import person_link


def same_person(patient: ColumnElement):
    """SELECT of every patient id that is the same person as `patient` (a column or value);
    empty for a patient id no Patient resource has (callers also match the id directly)."""
    mine = person_link.alias("pl_mine")
    theirs = person_link.alias("pl_theirs")
    return (select(theirs.c.patient_id)
            .join(mine, mine.c.person_key == theirs.c.person_key)
            .where(mine.c.patient_id == patient))


def patients_of_person(conn: Connection, patient_id: str) -> list[str]:
    """The patient itself first, then the person's other Patient records."""
    others = conn.execute(same_person(patient_id)).scalars().all()
    return [patient_id] + sorted(p for p in others if p != patient_id)


def _targets(person: dict) -> set[str]:
    out = set()
    for link in person.get("link") or []:
        ref = ((link or {}).get("target") or {}).get("reference") or ""
        if ref.startswith("Patient/"):
            out.add(ref.split("/", 1)[1])
    return out


def maintain_person_links(conn: Connection, results) -> None:
    """Store hook: Patients get their own row; a Person's links set their key; patients a
    Person no longer links (or a deleted Person's) go back to being their own person."""
    patients = [r.stored.id for r in results if r.stored.type == "Patient" and not r.stored.deleted]
    persons = [r.stored for r in results if r.stored.type == "Person"]
    # In bulk: a load that writes thousands of Persons costs a few statements, not a few each.
    linked: dict[str, str] = {}
    for s in persons:
        if not s.deleted and s.content:
            for p in _targets(orjson.loads(s.content)):
                linked[p] = s.id
    # Patients these Persons linked before and no longer do become their own person again
    # (a Person just created linked nobody before).
    for chunk in _chunks(sorted({r.stored.id for r in results
                                 if r.stored.type == "Person" and not r.created})):
        stale = conn.execute(select(person_link.c.patient_id).where(
            person_link.c.person_key.in_(chunk))).scalars().all()
        gone = [p for p in stale if p not in linked]
        for part in _chunks(gone):
            conn.execute(update(person_link).where(person_link.c.patient_id.in_(part))
                         .values(person_key=person_link.c.patient_id))
    # Linked patients take their Person's key; other new Patients are their own person.
    _upsert(conn, sorted(linked.items()), replace=True)
    _upsert(conn, [(p, p) for p in dict.fromkeys(patients) if p not in linked], replace=False)


def _upsert(conn: Connection, rows: list[tuple[str, str]], replace: bool) -> None:
    # Plain SQL to the driver's executemany: this runs on every Patient write, and compiling an
    # ON CONFLICT statement each time cost more than running it. Same syntax on both backends.
    if not rows:
        return
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    action = "DO UPDATE SET person_key = excluded.person_key" if replace else "DO NOTHING"
    conn.exec_driver_sql(f"INSERT INTO {person_link.name} (patient_id, person_key) "
                         f"VALUES ({mark}, {mark}) ON CONFLICT (patient_id) {action}", rows)


def _chunks(seq, n: int = 500):
    seq = list(seq)
    for i in range(0, len(seq), n):
        yield seq[i: i + n]
