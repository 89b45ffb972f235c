"""The patient view shows only what the role's data categories allow: a hospital feed that tags
its discharge medicines and diagnoses "encounters" does not put them in front of a social
worker (README: "no GP problem list, results or medication")."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import DATA_CATEGORY_SYSTEM, ODS_SYSTEM
from sharedcare.store.repository import WriteOp

CLINICAL_TYPES = ("Condition/", "MedicationStatement/", "MedicationRequest/",
                  "AllergyIntolerance/", "Observation/", "DiagnosticReport/")


def tagged(category: str) -> dict:
    return {"tag": [{"system": DATA_CATEGORY_SYSTEM, "code": category}]}


@pytest.fixture
def world(sc):
    gov = sc.governance
    for ods, kind in (("HOS", "acute-trust"), ("LA1", "social-care")):
        gov.add_organisation(ods, f"Organisation {ods}", kind)
        sc.store.write([WriteOp("PUT", "Organization", f"org-{ods}", {
            "resourceType": "Organization", "name": f"Organisation {ods}",
            "identifier": [{"system": ODS_SYSTEM, "value": ods}]})], source_org=ods)
    gov.add_agreement("isa-1", "Hospital and council", ["HOS", "LA1"], ["direct-care"],
                      ["demographics", "encounters", "gp-summary", "results", "social-care"],
                      status="active")
    gov.add_staff("sw.one", "Sam Social", [("LA1", "social-worker")], "pw-not-used")
    gov.add_staff("hos.doc", "Dr Hos", [("HOS", "clinician")], "pw-not-used")
    subject = {"reference": "Patient/P1"}
    sc.store.write([WriteOp("PUT", "Patient", "P1", {
        "resourceType": "Patient", "name": [{"family": "Example", "given": ["Edna"]}]})],
        source_org="HOS")
    sc.store.write([
        WriteOp("PUT", "EpisodeOfCare", "eoc-1", {  # the council's package of care
            "resourceType": "EpisodeOfCare", "status": "active", "patient": subject,
            "managingOrganization": {"reference": "Organization/org-LA1"}})], source_org="LA1")
    sc.store.write([
        WriteOp("PUT", "Encounter", "adm-1", {
            "resourceType": "Encounter", "status": "in-progress", "class": {"code": "IMP"},
            "subject": subject, "period": {"start": "2024-03-01"},
            "serviceProvider": {"reference": "Organization/org-HOS"}, "meta": tagged("encounters")}),
        WriteOp("PUT", "MedicationStatement", "dis-med-1", {
            "resourceType": "MedicationStatement", "status": "completed", "subject": subject,
            "medicationCodeableConcept": {"text": "Furosemide 40mg tablets"},
            "effectiveDateTime": "2024-03-09", "meta": tagged("encounters")}),
        WriteOp("PUT", "Condition", "dx-1", {
            "resourceType": "Condition", "subject": subject, "code": {"text": "Heart failure"},
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                "code": "encounter-diagnosis"}]}],
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "resolved"}]},
            "recordedDate": "2024-03-01", "meta": tagged("encounters")}),
        WriteOp("PUT", "Observation", "bnp-1", {
            "resourceType": "Observation", "status": "final", "subject": subject,
            "code": {"text": "NT-proBNP"}, "meta": tagged("encounters")}),
    ], source_org="HOS")
    return sc


def items(html: str) -> set[str]:
    return set(re.findall(r'data-item="([^"]+)"', html))


def test_social_worker_sees_no_medicines_problems_or_results(world):
    sc = world
    gov = sc.governance
    with TestClient(create_app(sc)) as c:
        c.cookies.set("sc_session", gov.issue_token("sw.one", "LA1", "social-worker"))
        r = c.get("/patients/P1")
        assert r.status_code == 200, r.text[:500]
        shown = items(r.text)
        assert "Encounter/adm-1" in shown  # encounters are the social worker's to see
        assert not [i for i in shown if i.startswith(CLINICAL_TYPES)], shown
        assert "Past problems and medicines" not in r.text
        assert "Furosemide" not in r.text and "Heart failure" not in r.text
        # The hospital's clinicians still have them, as gp-summary and results.
        c.cookies.set("sc_session", gov.issue_token("hos.doc", "HOS", "clinician"))
        c.get("/")
        r = c.get("/patients/P1")
        assert {"MedicationStatement/dis-med-1", "Condition/dx-1",
                "Observation/bnp-1"} <= items(r.text)
        assert "Past problems and medicines" in r.text


def test_demo_social_worker_page_has_no_clinical_items(demo, signed_in, items_of):
    r = signed_in(demo.personas["Social worker"].username).get(f"/patients/{demo.pid}")
    assert r.status_code == 200
    shown = items_of(r.text)
    assert not [i for i in shown if i.startswith(CLINICAL_TYPES)], sorted(shown)[:10]
    assert "Past problems and medicines" not in r.text
