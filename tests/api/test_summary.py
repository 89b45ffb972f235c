"""Patient/$summary over HTTP: an IPS-shaped document Bundle (Composition first, sections for
allergies, problems, medications, results, vital signs) holding only what the viewer may see,
with withheld items counted; refused without a legitimate relationship; one audit event per
request. SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import SENSITIVITY_SYSTEM
from sharedcare.fhir.validation import problems
from sharedcare.governance.schema import audit_event
from sharedcare.store.repository import WriteOp
from tests.governance.small_world import build, join_hospital_record

from ..fhir._support import outcome

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def label(body, *labels):
    body["meta"] = {"security": [{"system": SENSITIVITY_SYSTEM, "code": c} for c in labels]}
    return body


def condition(rid, text, status="active", pid="P1"):
    return {"resourceType": "Condition", "id": rid, "code": {"text": text},
            "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
            "subject": {"reference": f"Patient/{pid}"}}


def medication(rid, text, status="active"):
    return {"resourceType": "MedicationStatement", "id": rid, "status": status,
            "medicationCodeableConcept": {"text": text},
            "subject": {"reference": "Patient/P1"}}


def allergy(rid, text):
    return {"resourceType": "AllergyIntolerance", "id": rid, "code": {"text": text},
            "patient": {"reference": "Patient/P1"}}


def lab(rid, code, when, category="laboratory"):
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "category": [{"coding": [{"system": CAT, "code": category}]}],
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": "Patient/P1"}, "effectiveDateTime": when}


@pytest.fixture
def world(sc):
    build(sc)
    sc.store.write([WriteOp("PUT", r["resourceType"], r["id"], r) for r in (
        condition("c-diabetes", "Type 2 diabetes"),
        condition("c-old", "Fractured wrist", status="resolved"),
        label(condition("c-secret", "Chlamydia"), "sexual-health"),
        condition("c-p2", "Asthma", pid="P2"),
        medication("m-metformin", "Metformin 500mg"),
        medication("m-stopped", "Amoxicillin", status="stopped"),
        allergy("a-penicillin", "Penicillin"),
        lab("hba1c-1", "4548-4", "2026-01-01"), lab("hba1c-2", "4548-4", "2026-06-01"),
        lab("bp-1", "85354-9", "2026-06-02", category="vital-signs"))], source_org="GP1")
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        yield sc, c


def as_user(sc, user, ods, role="clinician"):
    return {"Authorization": f"Bearer {sc.governance.issue_token(user, ods, role)}"}


def audit_count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


def summary(c, headers, pid="P1") -> dict:
    r = c.get(f"/fhir/Patient/{pid}/$summary", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def sections(doc) -> dict[str, list[str]]:
    comp = doc["entry"][0]["resource"]
    return {s["title"]: [e["reference"] for e in s.get("entry", [])] for s in comp["section"]}


def test_summary_is_an_ips_shaped_document(world):
    sc, c = world
    before = audit_count(sc)
    doc = summary(c, as_user(sc, "hos.doc", "HOS"))
    assert audit_count(sc) == before + 1
    assert doc["resourceType"] == "Bundle" and doc["type"] == "document"
    assert doc["timestamp"] and doc["identifier"]["value"]
    comp = doc["entry"][0]["resource"]
    assert comp["resourceType"] == "Composition" and comp["status"] == "final"
    assert comp["type"]["coding"][0] == {"system": LOINC, "code": "60591-5",
                                         "display": "Patient summary Document"}
    assert comp["subject"] == {"reference": "Patient/P1"}
    codes = [s.get("code", {}).get("coding", [{}])[0].get("code") for s in comp["section"]]
    assert codes[:5] == ["48765-2", "11450-4", "10160-0", "30954-2", "8716-3"]
    got = sections(doc)
    assert got["Allergies and intolerances"] == ["AllergyIntolerance/a-penicillin"]
    assert got["Problems"] == ["Condition/c-diabetes"]  # current only; never the sensitive one
    assert got["Medications"] == ["MedicationStatement/m-metformin"]
    # the latest result of each code; the small world's uncategorised results too
    assert "Observation/hba1c-2" in got["Results"] and "Observation/hba1c-1" not in got["Results"]
    assert got["Vital signs"] == ["Observation/bp-1"]
    # every reference resolves inside the document; the Patient is there
    full = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in doc["entry"][1:]}
    assert {r for refs in got.values() for r in refs} <= full
    assert doc["entry"][1]["resource"]["id"] == "P1"
    assert all(e["fullUrl"] for e in doc["entry"])
    # withheld: counted, never shown (o-sexual of the small world and c-secret)
    assert "c-secret" not in str(doc) and "Chlamydia" not in str(doc) and "o-sexual" not in str(doc)
    assert "2 items withheld" in comp["text"]["div"]
    assert got["Information withheld"] == []
    # and it is valid FHIR
    assert problems(doc, "Bundle") == []


def test_the_controller_sees_its_own_sensitive_entries(world):
    sc, c = world
    doc = summary(c, as_user(sc, "gp.doc", "GP1"))
    assert "Condition/c-secret" in sections(doc)["Problems"]
    assert "Information withheld" not in sections(doc)


def test_no_relationship_is_refused_and_audited_once(world):
    sc, c = world
    before = audit_count(sc)
    r = c.get("/fhir/Patient/P2/$summary", headers=as_user(sc, "hos.doc", "HOS"))
    assert r.status_code == 403 and "Asthma" not in r.text
    outcome(r)
    r = c.get("/fhir/Patient/P1/$summary", headers=as_user(sc, "ch.nurse", "CH1", "nurse"))
    assert r.status_code == 403
    missing = c.get("/fhir/Patient/nobody/$summary", headers=as_user(sc, "gp.doc", "GP1"))
    assert missing.status_code in (403, 404)
    odd = c.get("/fhir/Patient/P1/$summary?profile=x", headers=as_user(sc, "gp.doc", "GP1"))
    assert odd.status_code == 400 and "profile" in outcome(odd)
    assert audit_count(sc) == before + 4


def test_summary_follows_the_person_across_partners_records(world):
    sc, c = world
    join_hospital_record(sc, WriteOp("PUT", "Condition", "c-hos", condition("c-hos", "Atrial fibrillation",
                                                        pid="hos-p1")))
    doc = summary(c, as_user(sc, "gp.doc", "GP1"))
    assert set(sections(doc)["Problems"]) == {"Condition/c-diabetes", "Condition/c-secret",
                                              "Condition/c-hos"}
    patients = [e["resource"]["id"] for e in doc["entry"]
                if e["resource"]["resourceType"] == "Patient"]
    assert patients == ["P1", "hos-p1"]
    assert problems(doc, "Bundle") == []


def test_summary_and_lastn_of_a_synthea_record(client):
    """On a real-shaped record (Synthea): the document is valid FHIR, every section entry
    resolves in it, results hold one per code, and $lastn agrees with the source."""
    from ..fhir._support import load_files, patient_file

    loaded = load_files(client, [patient_file("Tom_Goodwin")])
    pid = next(iter(loaded.patients))
    r = client.get(f"/fhir/Patient/{pid}/$summary")
    assert r.status_code == 200, r.text[:500]
    doc = r.json()
    assert problems(doc, "Bundle") == []
    got = sections(doc)
    full = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in doc["entry"][1:]}
    assert {ref for refs in got.values() for ref in refs} <= full
    source_obs = [o for _, o in loaded.of_type("Observation")]
    assert any(c.get("code") == "laboratory" for o in source_obs
               for cat in o.get("category", []) for c in cat.get("coding", []))
    assert got["Results"] and got["Problems"]
    result_codes = [doc_entry["resource"]["code"]["coding"][0]["code"]
                    for doc_entry in doc["entry"]
                    if f"Observation/{doc_entry['resource'].get('id')}" in got["Results"]]
    assert len(result_codes) == len(set(result_codes))  # the latest of each code
    # $lastn's newest of one code is the source's newest of that code
    code = source_obs[0]["code"]["coding"][0]
    same = [o for o in source_obs if o["code"]["coding"][0]["code"] == code["code"]]
    newest = max(o.get("effectiveDateTime", "") for o in same)
    body = client.get("/fhir/Observation/$lastn", params={
        "patient": pid, "code": f"{code['system']}|{code['code']}"}).json()
    assert [e["resource"]["effectiveDateTime"] for e in body["entry"]] == [newest]
