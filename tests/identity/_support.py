"""Helpers for identity tests: patients, Persons, the queue, audit events."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM
from sharedcare.identity.links import link_basis
from sharedcare.identity.schema import identity_queue
from sharedcare.store.repository import PermitAll


def patient(given, family, birth, sex, postcode, ods, nhs=None, pid=None):
    res = {"resourceType": "Patient", "id": pid or str(uuid.uuid4()),
           "meta": {"tag": [{"system": SOURCE_ORG_SYSTEM, "code": ods}]},
           "name": [{"family": family, "given": [given]}], "birthDate": birth, "gender": sex,
           "address": [{"postalCode": postcode}]}
    if nhs:
        res["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": nhs}]
    return res


def persons(sc) -> list[dict]:
    return [s.json() for s in sc.store.iter_current(PermitAll(), ["Person"])]


def person_of(sc, patient_id: str) -> dict | None:
    """The one Person linking the patient (fails if several do)."""
    found = [p for p in persons(sc) if f"Patient/{patient_id}" in
             {lk["target"]["reference"] for lk in p.get("link") or []}]
    assert len(found) <= 1, f"Patient/{patient_id} is linked from {len(found)} Persons"
    return found[0] if found else None


def link_of(sc, patient_id: str) -> dict | None:
    p = person_of(sc, patient_id)
    return next((lk for lk in p["link"] if lk["target"]["reference"] == f"Patient/{patient_id}"),
                None) if p else None


def basis(sc, patient_id: str) -> str | None:
    lk = link_of(sc, patient_id)
    return link_basis(lk) if lk else None


def queued(sc) -> dict[str, str]:
    with sc.engine.connect() as c:
        return dict(c.execute(select(identity_queue.c.patient_id, identity_queue.c.status)).all())


def audit_rows(sc, action: str) -> list[dict]:
    from sharedcare.governance.schema import audit_event

    with sc.engine.connect() as c:
        return [dict(r) for r in c.execute(select(audit_event).where(
            audit_event.c.action == action).order_by(audit_event.c.seq)).mappings()]
