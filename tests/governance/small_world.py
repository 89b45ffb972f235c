"""A small, hand-made care system for the targeted governance tests.

GP1 (a practice) registers patients P1 and P2; HOS (a hospital) has an open encounter with P1
only; an active direct-care agreement lets GP1 and HOS share demographics, encounters, results and
gp-summary. GP1 recorded for P1: a plain Observation, a sexual-health labelled Observation and a
mental-health labelled one; HOS recorded an Observation for P1. P2 has a GP1 Observation.
"""

from __future__ import annotations

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, ODS_SYSTEM, SENSITIVITY_SYSTEM
from sharedcare.governance import Access
from sharedcare.store.repository import PermitAll, WriteOp

PATIENT_FAMILY = "Wolfeschlegelstein"
USERS = {
    "gp.doc": [("GP1", "clinician")],
    "hos.doc": [("HOS", "clinician")],
    "hos.admin": [("HOS", "admin")],
    "hos.ig": [("HOS", "ig-lead")],
    "dual": [("HOS", "clinician"), ("HOS", "admin")],
    "ch.nurse": [("CH1", "nurse")],
}


def obs(rid, pid, labels=(), **extra):
    body = {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"text": "blood pressure"}, "subject": {"reference": f"Patient/{pid}"}, **extra}
    if labels:
        body["meta"] = {"security": [{"system": SENSITIVITY_SYSTEM, "code": s} for s in labels]}
    return body


def build(sc, password: str | None = None) -> None:
    gov = sc.governance
    for ods, kind in (("GP1", "gp-practice"), ("HOS", "acute-trust"), ("CH1", "care-home")):
        gov.add_organisation(ods, f"Organisation {ods}", kind)
    gov.add_agreement("isa-1", "GP and hospital", ["GP1", "HOS"], ["direct-care"],
                      ["demographics", "encounters", "results", "gp-summary"], status="active")
    for user, roles in USERS.items():
        gov.add_staff(user, f"Dr {user}", roles, password)
    w = sc.store.write
    for ods in ("GP1", "HOS", "CH1"):
        w([WriteOp("PUT", "Organization", f"org-{ods}", {
            "resourceType": "Organization", "identifier": [{"system": ODS_SYSTEM, "value": ods}],
            "name": f"Organisation {ods}"})], source_org=ods)
    w([WriteOp("PUT", "Patient", pid, {
        "resourceType": "Patient", "name": [{"family": fam, "given": ["Hubert"]}],
        "generalPractitioner": [{"reference": "Organization/org-GP1"}]})
       for pid, fam in (("P1", PATIENT_FAMILY), ("P2", "Ordinary"))], source_org="GP1")
    w([WriteOp("PUT", "Observation", "o-plain", obs("o-plain", "P1")),
       WriteOp("PUT", "Observation", "o-sexual", obs("o-sexual", "P1", ["sexual-health"])),
       WriteOp("PUT", "Observation", "o-mental", obs("o-mental", "P1", ["mental-health"])),
       WriteOp("PUT", "Observation", "o-p2", obs("o-p2", "P2"))], source_org="GP1")
    w([WriteOp("PUT", "Encounter", "e-1", {
        "resourceType": "Encounter", "status": "in-progress", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/P1"},
        "serviceProvider": {"reference": "Organization/org-HOS"}}),
       WriteOp("PUT", "Observation", "o-hos", obs("o-hos", "P1"))], source_org="HOS")


def access(sc, username, ods, role, scope="user/*.cruds", **kw) -> Access:
    return sc.governance.prepare(Access(username, ods, role, scopes=frozenset(scope.split()), **kw))


def system(sc, ods) -> Access:
    return sc.governance.prepare(Access(None, ods, "system", scopes=frozenset({"system/*.cruds"}),
                                        client_id=f"sys-{ods}", kind="system"))


def bearer(sc, user, ods, role="clinician", scope="user/*.cruds") -> dict:
    """An Authorization header for a person's token."""
    return {"Authorization": f"Bearer {sc.governance.issue_token(user, ods, role, scope=scope)}"}


def join_hospital_record(sc, *ops: WriteOp) -> None:
    """The hospital HOS keeps its own Patient hos-p1 of P1 (same NHS number), with `ops` on
    it; a Person joins the two records."""
    nhs = [{"system": NHS_NUMBER_SYSTEM, "value": "9990000018"}]
    p1 = sc.store.read("Patient", "P1", PermitAll()).json()
    sc.store.write([WriteOp("PUT", "Patient", "P1", {**p1, "identifier": nhs})],
                   source_org="GP1")
    sc.store.write([WriteOp("PUT", "Patient", "hos-p1", {
        "resourceType": "Patient", "name": [{"family": "Wolfeschlegelstein"}],
        "identifier": nhs}), *ops], source_org="HOS")
    sc.store.write([WriteOp("PUT", "Person", "person-p1", {
        "resourceType": "Person", "link": [{"target": {"reference": "Patient/P1"}},
                                           {"target": {"reference": "Patient/hos-p1"}}]})])
