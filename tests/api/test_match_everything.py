"""Patient/$match and Patient/$everything over HTTP, now modules of sharedcare/api/operations:
a match by NHS number finds the record the caller may see, scored; $everything pages the
person's record. SQLite and PostgreSQL."""

from __future__ import annotations

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM

from ..fhir._support import entries, outcome, pages

NHS = "9990000018"


def test_match_by_nhs_number(client):
    r = client.post("/fhir/Patient", json={
        "resourceType": "Patient", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS}],
        "name": [{"family": "Matchett", "given": ["Ann"]}], "birthDate": "1950-05-05",
        "gender": "female"})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    query = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
        "resourceType": "Patient", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS}],
        "name": [{"family": "Matchett"}], "birthDate": "1950-05-05"}}]}
    m = client.post("/fhir/Patient/$match", json=query)
    assert m.status_code == 200, m.text
    body = m.json()
    assert body["resourceType"] == "Bundle"
    found = [e for e in body["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert found and found[0]["resource"]["id"] == pid
    assert found[0]["search"]["score"] > 0.9
    bad = client.post("/fhir/Patient/$match", json={"resourceType": "Patient"})
    assert bad.status_code == 400 and "Parameters" in outcome(bad)


def test_everything_pages_the_record(client):
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
    for n in range(5):
        r = client.post("/fhir/Observation", json={
            "resourceType": "Observation", "status": "final", "code": {"text": f"obs {n}"},
            "subject": {"reference": f"Patient/{pid}"}})
        assert r.status_code == 201
    got = pages(client, f"/fhir/Patient/{pid}/$everything", {"_count": "2"})
    assert len(got) == 3 and got[0]["total"] == 6
    assert len(entries(got)) == 6
    only = pages(client, f"/fhir/Patient/{pid}/$everything", {"_type": "Observation"})
    assert {e["resource"]["resourceType"] for e in entries(only)} == {"Observation"}
    since = client.get(f"/fhir/Patient/{pid}/$everything", params={"_since": "yesterday"})
    assert since.status_code == 400 and "_since" in outcome(since)
