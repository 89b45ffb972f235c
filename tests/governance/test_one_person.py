"""One person, one record: reads, rules and counts follow the person across partners' Patient
records (store/persons.py keeps who is the same person from the Person resources).

GP1 registers the person (its Patient gp-p, NHS number); the hospital HOS keeps its own Patient
hos-p (its MRN and the same NHS number) with an open encounter and a potassium result; identity
joins the two under one Person.
"""

from __future__ import annotations

import pytest
from small_world import build
from sqlalchemy import select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, ODS_SYSTEM, SOURCE_ORG_SYSTEM
from sharedcare.governance.schema import audit_event
from sharedcare.identity.schema import identity_queue
from sharedcare.store.persons import patients_of_person
from sharedcare.store.repository import WriteOp

NHS = "9990000018"  # test range, valid modulus 11


def _write(sc, ods, *ops):
    return sc.store.write(list(ops), source_org=ods)


@pytest.fixture
def person(sc):
    build(sc)
    nhs = {"system": NHS_NUMBER_SYSTEM, "value": NHS}
    _write(sc, "GP1", WriteOp("PUT", "Patient", "gp-p", {
        "resourceType": "Patient", "identifier": [nhs], "name": [{"family": "Kaur"}],
        "birthDate": "1941-03-02", "generalPractitioner": [{"reference": "Organization/org-GP1"}]}),
        WriteOp("PUT", "Condition", "gp-cond", {
            "resourceType": "Condition", "subject": {"reference": "Patient/gp-p"},
            "code": {"text": "heart failure"}}))
    _write(sc, "HOS", WriteOp("PUT", "Patient", "hos-p", {
        "resourceType": "Patient", "name": [{"family": "Kaur"}], "birthDate": "1941-03-02",
        "identifier": [nhs, {"system": "https://hos.example/mrn", "value": "M123"}]}),
        WriteOp("PUT", "Encounter", "hos-enc", {
            "resourceType": "Encounter", "status": "in-progress", "class": {"code": "EMER"},
            "subject": {"reference": "Patient/hos-p"},
            "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": "HOS"}}}),
        WriteOp("PUT", "Observation", "hos-k", {
            "resourceType": "Observation", "status": "final", "code": {"text": "potassium"},
            "subject": {"reference": "Patient/hos-p"}}))
    # Identity links by NHS number on the write path; say so explicitly for this test's world.
    _write(sc, None, WriteOp("PUT", "Person", "person-1", {
        "resourceType": "Person", "link": [{"target": {"reference": "Patient/gp-p"}},
                                           {"target": {"reference": "Patient/hos-p"}}]}))
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        yield sc, c


def token(sc, user, ods, role="clinician"):
    return {"Authorization": f"Bearer {sc.governance.issue_token(user, ods, role)}"}


def ids(bundle) -> set[str]:
    return {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"}


def unlink(sc):
    _write(sc, None, WriteOp("PUT", "Person", "person-1", {
        "resourceType": "Person", "link": [{"target": {"reference": "Patient/gp-p"}}]}))


def test_the_person_is_one_across_patients(person):
    sc, _ = person
    with sc.engine.connect() as conn:
        assert patients_of_person(conn, "gp-p") == ["gp-p", "hos-p"]
        assert patients_of_person(conn, "hos-p") == ["hos-p", "gp-p"]


def test_the_gps_everything_holds_the_hospital_record(person):
    sc, c = person
    r = c.get("/fhir/Patient/gp-p/$everything", headers=token(sc, "gp.doc", "GP1"))
    assert r.status_code == 200
    assert {"gp-p", "gp-cond", "hos-p", "hos-enc", "hos-k"} <= ids(r.json())


def test_a_relationship_through_any_patient_covers_the_person(person):
    sc, c = person
    r = c.get("/fhir/Patient/gp-p/$everything", headers=token(sc, "hos.doc", "HOS"))
    assert r.status_code == 200, r.text
    assert {"gp-cond", "hos-k"} <= ids(r.json())


def test_mdm_and_compartment_searches_follow_the_person(person):
    sc, c = person
    h = token(sc, "gp.doc", "GP1")
    plain = c.get("/fhir/Observation?subject=Patient/gp-p", headers=h).json()
    assert "hos-k" not in ids(plain), "plain subject= keeps its FHIR meaning"
    mdm = c.get("/fhir/Observation?subject:mdm=Patient/gp-p", headers=h).json()
    assert "hos-k" in ids(mdm)
    comp = c.get("/fhir/Patient/gp-p/Observation", headers=h).json()
    assert "hos-k" in ids(comp)
    bad = c.get("/fhir/Observation?performer:mdm=Organization/x", headers=h)
    assert bad.status_code == 400


def test_a_search_by_nhs_number_finds_every_record_of_the_person(person):
    """The outpatient record a second clinic keeps without the NHS number is found by it once
    identity has joined it to the person; unlinked, it is not."""
    sc, c = person
    # One unit: the identity worker (running in this app) has nothing to place.
    _write(sc, None, WriteOp("PUT", "Patient", "hos-op", {
        "resourceType": "Patient", "name": [{"family": "Kaur"}], "birthDate": "1941-03-02",
        "meta": {"tag": [{"system": SOURCE_ORG_SYSTEM, "code": "HOS"}]},
        "identifier": [{"system": "https://hos.example/mrn", "value": "OP9"}]}),
        WriteOp("PUT", "Person", "person-1", {
            "resourceType": "Person", "link": [{"target": {"reference": f"Patient/{p}"}}
                                               for p in ("gp-p", "hos-p", "hos-op")]}))
    with sc.engine.connect() as conn:
        assert "hos-op" not in conn.execute(select(identity_queue.c.patient_id)).scalars().all()
    h = token(sc, "hos.doc", "HOS")
    by_nhs = f"/fhir/Patient?identifier={NHS_NUMBER_SYSTEM}|{NHS}"
    assert ids(c.get(by_nhs, headers=h).json()) == {"gp-p", "hos-p", "hos-op"}
    assert ids(c.get("/fhir/Patient?identifier=https://hos.example/mrn|OP9",
                     headers=h).json()) == {"hos-op"}, "other identifiers keep FHIR's meaning"
    unlink(sc)
    assert ids(c.get(by_nhs, headers=h).json()) == {"hos-p"}, \
        "unlinked: not the clinic's record, nor the GP's (no relationship through the person)"


@pytest.mark.parametrize("recorded_on", ["gp-p", "hos-p"])
def test_an_objection_on_either_patient_covers_the_person(person, recorded_on):
    sc, c = person
    sc.governance.record_choice(recorded_on, "objection-all")
    gp = c.get("/fhir/Patient/gp-p/$everything", headers=token(sc, "gp.doc", "GP1")).json()
    assert "hos-k" not in ids(gp) and "gp-cond" in ids(gp)
    hos = c.get("/fhir/Patient/hos-p/$everything", headers=token(sc, "hos.doc", "HOS")).json()
    assert "gp-cond" not in ids(hos) and "hos-k" in ids(hos)


def test_unlinking_takes_effect_on_the_next_query(person):
    sc, c = person
    gp, hos = token(sc, "gp.doc", "GP1"), token(sc, "hos.doc", "HOS")
    assert c.get("/fhir/Patient/gp-p/$everything", headers=hos).status_code == 200
    unlink(sc)
    assert "hos-k" not in ids(c.get("/fhir/Patient/gp-p/$everything", headers=gp).json())
    assert c.get("/fhir/Patient/gp-p/$everything", headers=hos).status_code == 403
    assert c.get("/fhir/Condition/gp-cond", headers=hos).status_code == 403


def test_break_glass_on_one_patient_covers_the_person(person):
    sc, _ = person
    gov = sc.governance
    nurse = gov.access_from_claims({"sub": "ch.nurse", "ods": "CH1", "role": "nurse",
                                    "scope": "user/*.cruds", "kind": "user"})
    assert not gov.has_glass(nurse, "gp-p")
    gov.break_glass(nurse, "hos-p", "collapsed in the care home, no history available")
    assert gov.has_glass(nurse, "gp-p")


def test_locating_a_person_by_nhs_number_is_audited_and_returns_only_an_id(person):
    sc, _ = person
    gov = sc.governance
    nurse = gov.access_from_claims({"sub": "ch.nurse", "ods": "CH1", "role": "nurse",
                                    "scope": "user/*.cruds", "kind": "user"})
    assert gov.locate_patient(nurse, NHS) in ("gp-p", "hos-p")
    with sc.engine.connect() as conn:
        last = conn.execute(select(audit_event).order_by(audit_event.c.seq.desc()).limit(1)).one()
    assert (last.action, last.username) == ("locate", "ch.nurse")
    assert NHS not in (last.entity or "")
    admin = gov.access_from_claims({"sub": "hos.admin", "ods": "HOS", "role": "admin",
                                    "scope": "user/*.cruds", "kind": "user"})
    assert gov.locate_patient(admin, NHS) is None


def test_patient_choices_are_consent_resources(person):
    """A choice is a FHIR Consent: recorded by the CLI's path or POSTed through the API, it
    takes effect at once on the whole person; withdrawn, it is kept as inactive and lifted."""
    sc, c = person
    gp = token(sc, "gp.doc", "GP1")
    hos = token(sc, "hos.doc", "HOS")  # the Consent sits with the record it was made on
    rid = sc.governance.record_choice("hos-p", "objection-from", "HOS")
    consent = c.get(f"/fhir/Consent/{rid}", headers=hos).json()
    assert consent["provision"]["type"] == "deny"
    assert consent["provision"]["actor"][0]["reference"]["identifier"]["value"] == "HOS"
    assert "hos-k" not in ids(c.get("/fhir/Patient/gp-p/$everything", headers=gp).json())
    assert sc.governance.withdraw_choice("hos-p", "objection-from", "HOS") == 1
    assert c.get(f"/fhir/Consent/{rid}", headers=hos).json()["status"] == "inactive"
    assert "hos-k" in ids(c.get("/fhir/Patient/gp-p/$everything", headers=gp).json())
    # The practice records the patient's objection to all sharing through the API.
    from sharedcare.governance.consent import consent_for

    r = c.post("/fhir/Consent", json=consent_for("gp-p", "objection-all"), headers=gp)
    assert r.status_code == 201, r.text
    seen = c.get("/fhir/Patient/hos-p/$everything", headers=hos).json()
    assert "gp-cond" not in ids(seen) and "hos-k" in ids(seen)


def test_national_opt_out_is_a_consent_with_its_policy(person):
    sc, c = person
    rid = sc.governance.record_choice("gp-p", "national-opt-out")
    consent = c.get(f"/fhir/Consent/{rid}", headers=token(sc, "gp.doc", "GP1")).json()
    assert consent["policy"][0]["uri"] == "https://digital.nhs.uk/services/national-data-opt-out"
    # It never stops direct care.
    hos = c.get("/fhir/Patient/hos-p/$everything", headers=token(sc, "hos.doc", "HOS")).json()
    assert "gp-cond" in ids(hos)
