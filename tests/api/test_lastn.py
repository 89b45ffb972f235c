"""Observation/$lastn over HTTP: the latest `max` per code for one patient, filtered by
category and code, never including withheld items (counted, as $everything does), refused
without a legitimate relationship, one audit event per request. SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import SENSITIVITY_SYSTEM
from sharedcare.governance.schema import audit_event
from sharedcare.store.repository import WriteOp
from tests.governance.small_world import build, join_hospital_record

from ..fhir._support import entries, outcome

LOINC = "http://loinc.org"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
HB, K = "718-7", "2823-3"  # haemoglobin, potassium
PULSE = "8867-4"


def lab(rid, code, when, category="laboratory", labels=(), pid="P1", value=1.0):
    body = {"resourceType": "Observation", "id": rid, "status": "final",
            "category": [{"coding": [{"system": CAT, "code": category}]}],
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value}}
    if labels:
        body["meta"] = {"security": [{"system": SENSITIVITY_SYSTEM, "code": c} for c in labels]}
    return body


def audit_count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


@pytest.fixture
def world(sc):
    build(sc)
    gp = [lab("hb-1", HB, "2026-01-05"), lab("hb-3", HB, "2026-03-05"),
          lab("hb-2", HB, "2026-02-05"),
          # the newest haemoglobin is labelled sexual health: withheld from the hospital
          lab("hb-secret", HB, "2026-04-05", labels=("sexual-health",)),
          lab("k-1", K, "2025-12-01"),
          lab("pulse-1", PULSE, "2026-03-01", category="vital-signs"),
          lab("hb-p2", HB, "2026-05-01", pid="P2")]
    sc.store.write([WriteOp("PUT", "Observation", o["id"], o) for o in gp], source_org="GP1")
    sc.store.write([WriteOp("PUT", "Observation", "hb-hos",
                            lab("hb-hos", HB, "2026-02-20"))], source_org="HOS")
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        yield sc, c


def as_user(sc, user, ods, role="clinician"):
    return {"Authorization": f"Bearer {sc.governance.issue_token(user, ods, role)}"}


def lastn(c, headers, **params):
    r = c.get("/fhir/Observation/$lastn", params=params, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def ids(body) -> list[str]:
    return [e["resource"]["id"] for e in entries(body)]


def test_latest_per_code_without_withheld_items(world):
    sc, c = world
    h = as_user(sc, "hos.doc", "HOS")
    before = audit_count(sc)
    body = lastn(c, h, patient="P1", max="2", category="laboratory")
    assert audit_count(sc) == before + 1
    # haemoglobin: the newest two the hospital may see (not hb-secret); potassium: its one
    assert ids(body) == ["hb-3", "hb-hos", "k-1"]
    assert body["total"] == 3
    notes = [e["resource"] for e in entries(body, "outcome")]
    assert len(notes) == 1 and "withheld" in notes[0]["issue"][0]["diagnostics"]
    assert "hb-secret" not in str(body) and "hb-p2" not in str(body)
    # max defaults to 1; code and subject=Patient/ work as the search parameters do
    assert ids(lastn(c, h, subject="Patient/P1", code=f"{LOINC}|{HB}")) == ["hb-3"]
    assert ids(lastn(c, h, patient="P1", code=f"{K},{PULSE}")) == ["pulse-1", "k-1"]
    assert ids(lastn(c, h, patient="P1", category=f"{CAT}|vital-signs")) == ["pulse-1"]


def test_the_controller_sees_its_own_sensitive_entries(world):
    sc, c = world
    body = lastn(c, as_user(sc, "gp.doc", "GP1"), patient="P1", code=HB, max="2")
    assert ids(body) == ["hb-secret", "hb-3"]
    assert not entries(body, "outcome")


def test_no_relationship_is_refused_and_audited_once(world):
    sc, c = world
    before = audit_count(sc)
    r = c.get("/fhir/Observation/$lastn", params={"patient": "P1"},
              headers=as_user(sc, "ch.nurse", "CH1", role="nurse"))
    assert r.status_code == 403
    assert "relationship" in outcome(r) or "may not" in outcome(r)
    assert audit_count(sc) == before + 1
    # P2 is not the hospital's patient either
    r = c.get("/fhir/Observation/$lastn", params={"patient": "P2"},
              headers=as_user(sc, "hos.doc", "HOS"))
    assert r.status_code == 403 and "hb-p2" not in r.text


def test_bad_requests_name_the_parameter(world):
    sc, c = world
    h = as_user(sc, "hos.doc", "HOS")
    for params, name in (({}, "patient"), ({"patient": "P1", "max": "0"}, "max"),
                         ({"patient": "P1", "max": "many"}, "max"),
                         ({"patient": "P1", "date": "2026"}, "date"),
                         ({"patient": "P1", "subject": "Patient/P1"}, "subject"),
                         ({"subject": "Group/1"}, "subject")):
        r = c.get("/fhir/Observation/$lastn", params=params, headers=h)
        assert r.status_code == 400, (params, r.text)
        assert name in outcome(r)


def test_lastn_follows_the_person_across_partners_records(world):
    """The hospital keeps its own Patient record of P1 (joined by a Person); its newer
    haemoglobin there is the person's latest, whichever record the GP asks through."""
    sc, c = world
    join_hospital_record(sc, WriteOp("PUT", "Observation", "hb-hos-record",
                lab("hb-hos-record", HB, "2026-04-20", pid="hos-p1")))
    h = as_user(sc, "gp.doc", "GP1")
    assert ids(lastn(c, h, patient="P1", code=HB, max="2")) == ["hb-hos-record", "hb-secret"]
    assert ids(lastn(c, h, patient="hos-p1", code=HB)) == ["hb-hos-record"]
