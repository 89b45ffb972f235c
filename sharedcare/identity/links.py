"""Person links, edited in bulk inside a write transaction.

The identity of a person is a FHIR ``Person`` whose ``link[].target`` references each partner's
``Patient``; each Patient is linked from at most one Person. :class:`LinkPlan` reads the Persons
that a set of Patients touch in one query, changes their links in memory (a Person that gains
6,000 links in one load is written once, not 6,000 times) and returns the write operations.

Each link carries how it was made (``LINK_BASIS_EXT``: ``nhs-number``, ``match``,
``review``, ``operator``, ``own``) and, for a person's decision, who made it and why
(``LINK_REASON_EXT``), so every link can be explained and reversed.
"""

from __future__ import annotations

import uuid

import orjson
from sqlalchemy import Connection, bindparam, false, select, union

from ..fhir.codes import BASE, NHS_NUMBER_SYSTEM
from ..store.repository import WriteOp
from ..store.schema import idx_reference, resource
from . import nhs_number as nhs

_NS = uuid.UUID("6f0d2b8e-5d43-4f59-9a55-1f7a3c2b9e01")
LINK_BASIS_EXT = f"{BASE}/StructureDefinition/identity-link-basis"
LINK_REASON_EXT = f"{BASE}/StructureDefinition/identity-link-reason"
CHUNK = 500


def person_id_for_nhs(number: str) -> str:
    return str(uuid.uuid5(_NS, f"nhs|{number}"))


def person_id_for_patient(patient_id: str) -> str:
    return str(uuid.uuid5(_NS, f"patient|{patient_id}"))


def valid_nhs_number(patient: dict) -> str | None:
    for ident in patient.get("identifier") or []:
        if ident.get("system") == NHS_NUMBER_SYSTEM:
            digits = nhs.normalise(ident.get("value"))
            if digits and nhs.is_valid(digits):
                return digits
    return None


def _chunks(seq, n=CHUNK):
    seq = list(seq)
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def persons_of(conn: Connection, patient_ids) -> dict[str, list[str]]:
    """patient id -> ids of the current Persons linking it (normally one), one query per 500."""
    out: dict[str, list[str]] = {}
    for chunk in _chunks(set(patient_ids)):
        rows = conn.execute(
            select(idx_reference.c.target_id, resource.c.id)
            .join(resource, resource.c.pk == idx_reference.c.resource_pk)
            .where(idx_reference.c.target_id.in_(chunk), idx_reference.c.target_type == "Patient",
                   idx_reference.c.type == "Person", idx_reference.c.param == "link",
                   resource.c.deleted == false()))
        for patient, person in rows:
            lst = out.setdefault(patient, [])
            if person not in lst:
                lst.append(person)
    return out


def _persons_linking_sql():
    """Built once: the statement runs on every Patient write, and building it each time cost
    more than running it."""
    linking = select(resource.c.id, resource.c.content).where(
        resource.c.type == "Person", resource.c.deleted == false(),
        resource.c.pk.in_(select(idx_reference.c.resource_pk).where(
            idx_reference.c.target_id.in_(bindparam("patients", expanding=True)),
            idx_reference.c.target_type == "Patient",
            idx_reference.c.type == "Person", idx_reference.c.param == "link")))
    named = select(resource.c.id, resource.c.content).where(
        resource.c.type == "Person", resource.c.id.in_(bindparam("persons", expanding=True)),
        resource.c.deleted == false())
    return union(linking, named)


_PERSONS_LINKING = _persons_linking_sql()


def persons_linking(conn: Connection, patient_ids, person_ids=()) -> dict[str, dict]:
    """Current Persons that link any of the patients, or whose id is named: id -> resource.
    A UNION, not an OR, so both halves use their index on PostgreSQL."""
    out: dict[str, dict] = {}
    patients, persons = list(_chunks(sorted(patient_ids))), list(_chunks(sorted(person_ids)))
    for i in range(max(len(patients), len(persons))):
        # An empty IN list is valid with expanding parameters (it matches nothing).
        params = {"patients": patients[i] if i < len(patients) else [],
                  "persons": persons[i] if i < len(persons) else []}
        for rid, content in conn.execute(_PERSONS_LINKING, params):
            out.setdefault(rid, orjson.loads(content))
    return out


def read_current(conn: Connection, rtype: str, ids) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for chunk in _chunks(set(ids)):
        for rid, content in conn.execute(
                select(resource.c.id, resource.c.content).where(
                    resource.c.type == rtype, resource.c.id.in_(chunk),
                    resource.c.deleted == false())):
            out[rid] = orjson.loads(content)
    return out


def link_basis(link: dict) -> str | None:
    return next((e.get("valueCode") for e in link.get("extension") or []
                 if e.get("url") == LINK_BASIS_EXT), None)


def link_reason(link: dict) -> str | None:
    return next((e.get("valueString") for e in link.get("extension") or []
                 if e.get("url") == LINK_REASON_EXT), None)


def make_link(patient_id: str, assurance: str, basis: str, reason: str | None = None) -> dict:
    ext = [{"url": LINK_BASIS_EXT, "valueCode": basis}]
    if reason:
        ext.append({"url": LINK_REASON_EXT, "valueString": reason[:1000]})
    return {"extension": ext, "target": {"reference": f"Patient/{patient_id}"},
            "assurance": assurance}


class LinkPlan:
    """Moves of Patients between Persons within one transaction; :meth:`ops` writes them."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.current: dict[str, list[str]] = {}  # patient -> persons linking it (as loaded)
        self.persons: dict[str, dict | None] = {}  # person id -> resource (None: none yet)
        self.links: dict[str, dict[str, dict]] = {}  # person id -> {patient ref: link}
        self.changed: set[str] = set()

    def load(self, patient_ids, person_ids=()) -> None:
        """Read what the given patients' moves will touch: the Persons linking them and the
        named Persons, in one statement per 500 (this runs on every Patient write)."""
        patient_ids = {p for p in patient_ids if p not in self.current}
        person_ids = {q for q in person_ids if q not in self.persons}
        if not patient_ids and not person_ids:
            return
        for p in patient_ids:
            self.current[p] = []
        found = persons_linking(self.conn, patient_ids, person_ids)
        for qid, res in found.items():
            links = {(lk.get("target") or {}).get("reference"): lk
                     for lk in res.get("link") or []}
            for ref in links:
                pat = ref.split("/", 1)[1] if ref and ref.startswith("Patient/") else None
                if pat in patient_ids and qid not in self.current[pat]:
                    self.current[pat].append(qid)
            if qid not in self.persons:  # never replace a Person already changed in memory
                self.persons[qid], self.links[qid] = res, links
        for qid in person_ids - set(found):
            self.persons[qid], self.links[qid] = None, {}

    def person_of(self, patient_id: str) -> str | None:
        self.load([patient_id])
        for person in self.current[patient_id]:
            if f"Patient/{patient_id}" in self.links[person]:
                return person
        return None

    def link_of(self, patient_id: str) -> dict | None:
        person = self.person_of(patient_id)
        return self.links[person].get(f"Patient/{patient_id}") if person else None

    def members(self, person_id: str) -> list[str]:
        self.load([], [person_id])
        return [ref.split("/", 1)[1] for ref in self.links[person_id]
                if ref and ref.startswith("Patient/")]

    def move(self, patient_id: str, person_id: str, link: dict,
             identifier: dict | None = None) -> bool:
        """Put the patient in ``person_id`` (created if need be) and out of any other Person.
        Returns False when nothing changes."""
        self.load([patient_id], [person_id])
        ref = f"Patient/{patient_id}"
        changed = False
        for other in self.current[patient_id]:
            if other != person_id and ref in self.links[other]:
                del self.links[other][ref]
                self.changed.add(other)
                changed = True
        self.current[patient_id] = [person_id]
        if self.persons[person_id] is None:
            self.persons[person_id] = {"resourceType": "Person", "id": person_id, "active": True}
            if identifier:
                self.persons[person_id]["identifier"] = [identifier]
        old = self.links[person_id].get(ref)
        if old != link:
            self.links[person_id][ref] = link
            self.changed.add(person_id)
            changed = True
        return changed

    def remove(self, patient_id: str) -> None:
        """Take the patient out of every Person (a deleted Patient)."""
        self.load([patient_id])
        ref = f"Patient/{patient_id}"
        for other in self.current[patient_id]:
            if ref in self.links[other]:
                del self.links[other][ref]
                self.changed.add(other)
        self.current[patient_id] = []

    def ops(self) -> list[WriteOp]:
        out = []
        for pid in sorted(self.changed):
            res, links = self.persons[pid], self.links[pid]
            # The version read (0: none), so the store redoes the unit if another writer
            # changed this Person since (WriteOp.read_version).
            read = int(((res or {}).get("meta") or {}).get("versionId") or 0)
            if not links:
                if res is not None and "meta" in res:  # stored: retire it
                    out.append(WriteOp("DELETE", "Person", pid, None, read_version=read))
                continue
            body = {k: v for k, v in (res or {}).items() if k not in ("meta", "link")}
            meta = {k: v for k, v in ((res or {}).get("meta") or {}).items()
                    if k not in ("versionId", "lastUpdated")}
            if meta:
                body["meta"] = meta
            body["resourceType"], body["id"] = "Person", pid
            body["link"] = list(links.values())
            out.append(WriteOp("PUT", "Person", pid, body, read_version=read))
        self.changed.clear()
        return out
