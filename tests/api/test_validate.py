"""$validate over HTTP, and UK Core on the write path (SQLite and PostgreSQL): every problem as a
200 OperationOutcome (or one information issue), a resource body or Parameters (resource, mode,
profile), an unknown profile a 400, nothing written, one audit event, the write's scope needed;
a write of a UK Core Patient breaking its profile is a 422 with nothing written."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.governance.schema import audit_event

from ..fhir.test_ukcore import ETHNIC, SD, richard_smith

BAD_ETHNICITY = {"url": ETHNIC, "valueString": "White British"}


def bad_patient() -> dict:
    p = richard_smith()
    p["extension"][0] = copy.deepcopy(BAD_ETHNICITY)
    return p


def audit_count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


def errors(outcome: dict) -> list[tuple[str, str]]:
    assert outcome["resourceType"] == "OperationOutcome"
    return [(i["code"], i["expression"][0]) for i in outcome["issue"]
            if i["severity"] == "error"]


def patients(client) -> int:
    return client.get("/fhir/Patient", params={"_summary": "count"}).json()["total"]


def test_a_valid_uk_core_patient_validates_and_nothing_is_written(client, sc):
    before = audit_count(sc)
    r = client.post("/fhir/Patient/$validate", json=richard_smith())
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    issues = r.json()["issue"]
    assert issues[0]["severity"] == "information"
    assert "no problems" in issues[0]["diagnostics"] and SD + "UKCore-Patient" in \
        issues[0]["diagnostics"]
    assert all(i["severity"] == "information" for i in issues)
    assert audit_count(sc) == before + 1
    assert patients(client) == 0


def test_every_problem_is_listed_with_its_location(client):
    p = bad_patient()
    p["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = "99"
    p["identifier"].append({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"})
    r = client.post("/fhir/Patient/$validate", json=p)
    assert r.status_code == 200
    assert sorted(errors(r.json())) == [
        ("code-invalid", "Patient.identifier[0].extension[0].value[x]"),
        ("extension", "Patient.extension[0].value[x]"),
        ("structure", "Patient.identifier")]


def test_r4_problems_are_reported_too(client):
    p = bad_patient()
    p["birthDate"] = "11/09/1970"
    r = client.post("/fhir/Patient/$validate", json=p)
    assert r.status_code == 200
    assert ("structure", "Patient.birthDate") in errors(r.json())


def test_the_profile_parameter_selects_the_profile(client):
    p = bad_patient()
    del p["meta"]
    # claiming nothing, the resource is valid R4
    r = client.post("/fhir/Patient/$validate", json=p)
    assert r.status_code == 200 and errors(r.json()) == []
    # asked against UK Core (Parameters body), the extension is wrong
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": p},
        {"name": "mode", "valueCode": "create"},
        {"name": "profile", "valueUri": SD + "UKCore-Patient"}]}
    r = client.post("/fhir/Patient/$validate", json=body)
    assert r.status_code == 200
    assert errors(r.json()) == [("extension", "Patient.extension[0].value[x]")]
    # or as a URL parameter
    r = client.post("/fhir/Patient/$validate", params={"profile": SD + "UKCore-Patient"},
                    json=p)
    assert errors(r.json()) == [("extension", "Patient.extension[0].value[x]")]


def test_an_unknown_profile_is_a_400_saying_so(client, sc):
    before = audit_count(sc)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": richard_smith()},
        {"name": "profile", "valueUri": SD + "UKCore-NoSuchProfile"}]}
    r = client.post("/fhir/Patient/$validate", json=body)
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert issue["code"] == "not-supported" and "UKCore-NoSuchProfile" in issue["diagnostics"]
    assert "not known" in issue["diagnostics"]
    assert audit_count(sc) == before + 1  # refused requests are audited too (once)
    # a profile for another type
    r = client.post("/fhir/Patient/$validate",
                    params={"profile": SD + "UKCore-Observation"}, json=richard_smith())
    assert r.status_code == 400 and "Observation" in r.json()["issue"][0]["diagnostics"]


def test_requests_that_cannot_be_validated_are_400(client):
    r = client.post("/fhir/Observation/$validate", json=richard_smith())
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["resourceType"]
    r = client.post("/fhir/Patient/$validate", json={"resourceType": "Parameters",
                                                     "parameter": []})
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "required"
    r = client.post("/fhir/Patient/$validate", params={"mode": "profile"}, json=richard_smith())
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["mode"]
    r = client.post("/fhir/NoSuchType/$validate", json=richard_smith())
    assert r.status_code == 404


def test_instance_level_update_and_delete(client):
    p = richard_smith()
    r = client.post(f"/fhir/Patient/{p['id']}/$validate", json=p)
    assert r.status_code == 200 and errors(r.json()) == []
    r = client.post("/fhir/Patient/someone-else/$validate", json=p)
    assert errors(r.json()) == [("invariant", "Patient.id")]
    r = client.post(f"/fhir/Patient/{p['id']}/$validate", json={
        "resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]})
    assert r.status_code == 200 and errors(r.json()) == []
    assert patients(client) == 0


def test_validate_needs_the_scope_of_the_write_it_stands_for(sc):
    read_only = sc.governance.issue_system_token("reader", "RTEST", scope="system/Patient.rs")
    creator = sc.governance.issue_system_token("creator", "RTEST", scope="system/Patient.c")
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        r = c.post("/fhir/Patient/$validate", json=richard_smith(),
                   headers={"Authorization": f"Bearer {read_only}"})
        assert r.status_code == 403
        r = c.post("/fhir/Patient/$validate", json=richard_smith(),
                   headers={"Authorization": f"Bearer {creator}"})
        assert r.status_code == 200
        r = c.post("/fhir/Patient/x/$validate", json={**richard_smith(), "id": "x"},
                   headers={"Authorization": f"Bearer {creator}"})
        assert r.status_code == 403  # an update needs u
        r = c.post("/fhir/Patient/$validate", json=richard_smith())
        assert r.status_code == 401


def test_bundle_entries_are_checked_against_the_profiles_they_claim(client):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": richard_smith(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad_patient(), "request": {"method": "POST", "url": "Patient"}}]}
    r = client.post("/fhir/Bundle/$validate", json=bundle)
    assert r.status_code == 200
    assert errors(r.json()) == [("extension", "Bundle.entry[1].resource.extension[0].value[x]")]
    assert patients(client) == 0


# ------------------------------------------------------------------ UK Core on the write path
def test_a_write_breaking_uk_core_is_a_422_and_nothing_is_written(client):
    r = client.post("/fhir/Patient", json=bad_patient())
    assert r.status_code == 422
    assert errors(r.json()) == [("extension", "Patient.extension[0].value[x]")]
    p = bad_patient()
    r = client.put(f"/fhir/Patient/{p['id']}", json=p)
    assert r.status_code == 422
    assert client.get(f"/fhir/Patient/{p['id']}").status_code == 404
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "fine"},
         "request": {"method": "PUT", "url": "Patient/fine"}},
        {"resource": bad_patient(), "request": {"method": "POST", "url": "Patient"}}]}
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 422
    assert errors(r.json()) == [("extension", "Bundle.entry[1].resource.extension[0].value[x]")]
    assert client.get("/fhir/Patient/fine").status_code == 404
    assert patients(client) == 0


def test_the_same_patient_valid_is_created(client):
    r = client.post("/fhir/Patient", json=richard_smith())
    assert r.status_code == 201
    stored = client.get(f"/fhir/Patient/{r.json()['id']}").json()
    assert stored["extension"][0]["url"] == ETHNIC
    assert patients(client) == 1


@pytest.mark.parametrize("body", [
    b"", b"[1]", b'{"resourceType": "Parameters", "parameter": [{"name": "nope"}]}'])
def test_malformed_bodies_are_400(client, body):
    r = client.post("/fhir/Patient/$validate", content=body,
                    headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
