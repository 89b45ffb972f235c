"""`Prefer: return=minimal | representation | OperationOutcome` on create, update and
transaction/batch entries; conditional reads with `If-None-Match` and `If-Modified-Since`.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from sqlalchemy import func, select

from sharedcare.governance.schema import audit_event

from ..fhir._support import FHIR_JSON, outcome

MRN = "http://hospital.example.org/mrn"


def patient(mrn: str, **extra) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": "Preferton"}], **extra}


def audit_count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


def test_create_and_update_honour_prefer_return(client):
    minimal = client.post("/fhir/Patient", json=patient("p-1"),
                          headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b""
    location = minimal.headers["Location"]
    assert minimal.headers["ETag"] == 'W/"1"' and "/_history/1" in location
    rid = location.split("/")[1]
    rep = client.put(f"/fhir/Patient/{rid}", json=patient("p-1", id=rid, gender="male"),
                     headers={"Prefer": "return=representation"})
    assert rep.status_code == 200 and rep.json()["gender"] == "male"
    oo = client.put(f"/fhir/Patient/{rid}", json=patient("p-1", id=rid, gender="female"),
                    headers={"Prefer": "return=OperationOutcome"})
    assert oo.status_code == 200 and oo.headers["content-type"].startswith(FHIR_JSON)
    assert f"Patient/{rid}" in outcome(oo) and oo.json()["issue"][0]["severity"] == "information"
    # no preference: the resource, as before; an unknown preference is ignored
    plain = client.post("/fhir/Patient", json=patient("p-2"), headers={"Prefer": "return=weird"})
    assert plain.status_code == 201 and plain.json()["resourceType"] == "Patient"
    # a conditional create that matched answers the same way
    matched = client.post("/fhir/Patient", json=patient("p-2"), headers={
        "If-None-Exist": f"identifier={MRN}|p-2", "Prefer": "return=minimal"})
    assert matched.status_code == 200 and matched.content == b""
    cond = client.put(f"/fhir/Patient?identifier={MRN}|p-2", json=patient("p-2", gender="male"),
                      headers={"Prefer": "return=minimal"})
    assert cond.status_code == 200 and cond.content == b""


def transaction(*entries) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_and_batch_entries_honour_prefer(client):
    bundle = transaction(
        {"fullUrl": "urn:uuid:1", "resource": patient("t-1"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final",
                      "code": {"text": "weight"}, "subject": {"reference": "urn:uuid:1"}},
         "request": {"method": "POST", "url": "Observation"}})
    rep = client.post("/fhir", json=bundle, headers={"Prefer": "return=representation"})
    assert rep.status_code == 200, rep.text
    entries = rep.json()["entry"]
    assert [e["resource"]["resourceType"] for e in entries] == ["Patient", "Observation"]
    pid = entries[0]["resource"]["id"]
    assert entries[1]["resource"]["subject"] == {"reference": f"Patient/{pid}"}
    oo = client.post("/fhir", json=transaction(
        {"resource": patient("t-2"), "request": {"method": "POST", "url": "Patient"}}),
        headers={"Prefer": "return=OperationOutcome"})
    entry = oo.json()["entry"][0]
    assert "resource" not in entry
    assert entry["response"]["outcome"]["resourceType"] == "OperationOutcome"
    minimal = client.post("/fhir", json=transaction(
        {"resource": patient("t-3"), "request": {"method": "POST", "url": "Patient"}}),
        headers={"Prefer": "return=minimal"})
    entry = minimal.json()["entry"][0]
    assert "resource" not in entry and entry["response"]["status"].startswith("201")
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("b-1"), "request": {"method": "POST", "url": "Patient"}}]}
    rep = client.post("/fhir", json=batch, headers={"Prefer": "return=representation"})
    assert rep.json()["entry"][0]["resource"]["identifier"][0]["value"] == "b-1"


def test_if_none_match_on_read(client, sc):
    rid = client.post("/fhir/Patient", json=patient("n-1")).json()["id"]
    url = f"/fhir/Patient/{rid}"
    before = audit_count(sc)
    same = client.get(url, headers={"If-None-Match": 'W/"1"'})
    assert same.status_code == 304 and same.content == b"" and same.headers["ETag"] == 'W/"1"'
    assert client.get(url, headers={"If-None-Match": '"1"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '*'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": 'W/"0", W/"1"'}).status_code == 304
    client.put(url, json=patient("n-1", id=rid, gender="male"))
    stale = client.get(url, headers={"If-None-Match": 'W/"1"'})
    assert stale.status_code == 200 and stale.json()["gender"] == "male"
    # each conditional read is still one audited read
    assert audit_count(sc) == before + 6
    # a version never changes: vread answers 304 to its own ETag
    assert client.get(f"{url}/_history/1", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"{url}/_history/1", headers={"If-None-Match": 'W/"2"'}).status_code == 200
    cs = client.get("/fhir/metadata").json()
    patient_cs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert patient_cs["conditionalRead"] == "full-support"


def test_if_modified_since_on_read(client):
    created = client.post("/fhir/Patient", json=patient("m-1"))
    rid = created.json()["id"]
    url = f"/fhir/Patient/{rid}"
    changed = datetime.fromisoformat(created.json()["meta"]["lastUpdated"])
    later = format_datetime(changed + timedelta(seconds=2), usegmt=True)
    earlier = format_datetime(changed - timedelta(seconds=2), usegmt=True)
    assert client.get(url, headers={"If-Modified-Since": later}).status_code == 304
    r = client.get(url, headers={"If-Modified-Since": earlier})
    assert r.status_code == 200 and r.json()["id"] == rid
    # ISO instants are taken too
    iso = (changed + timedelta(seconds=2)).astimezone(UTC).isoformat()
    assert client.get(url, headers={"If-Modified-Since": iso}).status_code == 304
    # If-None-Match decides when both are sent (RFC 9110)
    assert client.get(url, headers={"If-Modified-Since": later,
                                    "If-None-Match": 'W/"9"'}).status_code == 200
    bad = client.get(url, headers={"If-Modified-Since": "yesterday-ish"})
    assert bad.status_code == 400 and "If-Modified-Since" in outcome(bad)
