"""PATCH over HTTP: JSON Patch (RFC 6902) and FHIRPath Patch, If-Match, conditional patch, the
errors FHIR names (400, 404, 410, 412, 415, 422), and governance: a controller-only write
through the write door, a hidden resource answering as a missing one, one audit event per
request. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.governance.schema import audit_event
from sharedcare.store.repository import PermitAll
from tests.governance.small_world import bearer, build

from ..fhir._support import FHIR_JSON, outcome

JSON_PATCH = "application/json-patch+json"
MRN = "http://hospital.example.org/mrn"


def patient(mrn: str, **extra) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": "Patchley", "given": ["Ada", "Grace"]}],
            "birthDate": "1980-02-29", **extra}


def create(client, res: dict) -> dict:
    r = client.post(f"/fhir/{res['resourceType']}", json=res)
    assert r.status_code == 201, r.text
    return r.json()


def json_patch(client, path: str, ops, **headers):
    return client.patch(path, content=__import__("json").dumps(ops),
                        headers={"Content-Type": JSON_PATCH, **headers})


def fhirpath_patch(client, path: str, *operations, **headers):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": parts} for parts in operations]}
    return client.patch(path, json=body, headers={"Content-Type": FHIR_JSON, **headers})


def op(kind: str, path: str, **kw) -> list[dict]:
    parts = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for k, v in kw.items():
        if k in ("index", "source", "destination"):
            parts.append({"name": k, "valueInteger": v})
        elif k == "name":
            parts.append({"name": "name", "valueString": v})
        else:  # value: {"valueX": ...}
            parts.append({"name": "value", **v})
    return parts


def audit_count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


def stored(sc, rtype, rid) -> dict:
    return sc.store.read(rtype, rid, PermitAll()).json()


# ------------------------------------------------------------------ JSON Patch
def test_json_patch_changes_only_what_it_says(client, sc):
    p = create(client, patient("jp-1"))
    before = audit_count(sc)
    r = json_patch(client, f"/fhir/Patient/{p['id']}", [
        {"op": "replace", "path": "/birthDate", "value": "1981-03-01"},
        {"op": "add", "path": "/gender", "value": "female"},
        {"op": "remove", "path": "/name/0/given/1"},
        {"op": "test", "path": "/identifier/0/value", "value": "jp-1"}])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    assert r.headers["ETag"] == 'W/"2"'
    assert r.headers["Location"].endswith(f"Patient/{p['id']}/_history/2")
    body = r.json()
    assert body["birthDate"] == "1981-03-01" and body["gender"] == "female"
    assert body["name"] == [{"family": "Patchley", "given": ["Ada"]}]
    assert body["identifier"] == p["identifier"] and body["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{p['id']}").json() == body
    # one request, one audit event (the write's own)
    assert audit_count(sc) == before + 2  # the patch and the read above


def test_json_patch_errors_name_the_operation(client, sc):
    p = create(client, patient("jp-2"))
    url = f"/fhir/Patient/{p['id']}"
    not_array = json_patch(client, url, {"op": "add"})
    assert not_array.status_code == 400 and "array" in outcome(not_array)
    bad_op = json_patch(client, url, [{"op": "frobnicate", "path": "/gender"}])
    assert bad_op.status_code == 400 and "[0]" in outcome(bad_op)
    no_value = json_patch(client, url, [{"op": "replace", "path": "/gender"}])
    assert no_value.status_code == 400 and "[0].value" in outcome(no_value)
    missing = json_patch(client, url, [{"op": "remove", "path": "/telecom"}])
    assert missing.status_code == 422 and "/telecom" in outcome(missing)
    failed = json_patch(client, url, [{"op": "test", "path": "/birthDate", "value": "2000"},
                                      {"op": "replace", "path": "/birthDate",
                                       "value": "2001-01-01"}])
    assert failed.status_code == 422 and "/birthDate" in outcome(failed)
    invalid = json_patch(client, url, [{"op": "replace", "path": "/birthDate",
                                        "value": "last tuesday"}])
    assert invalid.status_code == 422 and "birthDate" in outcome(invalid)
    new_id = json_patch(client, url, [{"op": "replace", "path": "/id", "value": "other"}])
    assert new_id.status_code == 422 and "id" in outcome(new_id)
    new_type = json_patch(client, url, [{"op": "replace", "path": "/resourceType",
                                         "value": "Group"}])
    assert new_type.status_code == 422 and "resourceType" in outcome(new_type)
    wrong_media = client.patch(url, content=b"[]", headers={"Content-Type": "text/plain"})
    assert wrong_media.status_code == 415 and "Content-Type" in outcome(wrong_media)
    # nothing was written by any of them
    assert stored(sc, "Patient", p["id"])["meta"]["versionId"] == "1"


# ------------------------------------------------------------------ FHIRPath Patch
def test_fhirpath_patch_operations(client):
    p = create(client, patient("fp-1", identifier=[{"system": MRN, "value": "fp-1"},
                                                   {"system": "urn:other", "value": "x"}]))
    url = f"/fhir/Patient/{p['id']}"
    r = fhirpath_patch(
        client, url,
        op("replace", "Patient.birthDate", value={"valueDate": "1979-12-31"}),
        op("add", "Patient", name="gender", value={"valueCode": "female"}),
        op("add", "Patient", name="telecom",
           value={"valueContactPoint": {"system": "phone", "value": "0161 000 0000"}}),
        op("add", "Patient.name[0]", name="prefix", value={"valueString": "Dr"}),
        op("delete", "Patient.name[0].given[1]"),
        op("insert", "Patient.identifier", index=0,
           value={"valueIdentifier": {"system": "urn:third", "value": "y"}}),
        op("move", "Patient.identifier", source=2, destination=0),
        op("delete", "Patient.identifier.where(system='urn:third')"),
        op("delete", "Patient.deceased"))  # deleting what is not there is no error
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["birthDate"] == "1979-12-31" and body["gender"] == "female"
    assert body["telecom"] == [{"system": "phone", "value": "0161 000 0000"}]
    assert body["name"] == [{"family": "Patchley", "given": ["Ada"], "prefix": ["Dr"]}]
    assert body["identifier"] == [{"system": "urn:other", "value": "x"},
                                  {"system": MRN, "value": "fp-1"}]


def test_fhirpath_patch_choice_elements_and_complex_values(client):
    o = create(client, {"resourceType": "Observation", "status": "final",
                        "code": {"text": "pulse"}, "valueQuantity": {"value": 70}})
    url = f"/fhir/Observation/{o['id']}"
    r = fhirpath_patch(client, url, op("replace", "Observation.value",
                                       value={"valueString": "irregular"}))
    assert r.status_code == 200, r.text
    assert r.json()["valueString"] == "irregular" and "valueQuantity" not in r.json()
    r = fhirpath_patch(client, url, op("add", "Observation", name="note", value={"part": [
        {"name": "text", "valueMarkdown": "taken at rest"}]}))
    assert r.status_code == 200, r.text
    assert r.json()["note"] == [{"text": "taken at rest"}]


def test_fhirpath_patch_errors(client, sc):
    p = create(client, patient("fp-2"))
    url = f"/fhir/Patient/{p['id']}"
    two = fhirpath_patch(client, url, op("replace", "Patient.name.given",
                                         value={"valueString": "x"}))
    assert two.status_code == 422 and "part(path)" in outcome(two)
    exists = fhirpath_patch(client, url, op("add", "Patient", name="birthDate",
                                            value={"valueDate": "2000-01-01"}))
    assert exists.status_code == 422 and "part(name)" in outcome(exists)
    bad_type = fhirpath_patch(client, url, op("upsert", "Patient.gender"))
    assert bad_type.status_code == 400 and "part(type)" in outcome(bad_type)
    no_value = fhirpath_patch(client, url, op("replace", "Patient.birthDate"))
    assert no_value.status_code == 400 and "part(value)" in outcome(no_value)
    invalid = fhirpath_patch(client, url, op("replace", "Patient.birthDate",
                                             value={"valueString": "soon"}))
    assert invalid.status_code == 422 and "birthDate" in outcome(invalid)
    not_params = client.patch(url, json=patient("x"), headers={"Content-Type": FHIR_JSON})
    assert not_params.status_code == 400 and "Parameters" in outcome(not_params)
    assert stored(sc, "Patient", p["id"])["meta"]["versionId"] == "1"


# ------------------------------------------------------------------ versions and conditions
def test_if_match_missing_and_deleted(client, sc):
    p = create(client, patient("im-1"))
    url = f"/fhir/Patient/{p['id']}"
    change = [{"op": "add", "path": "/gender", "value": "male"}]
    stale = json_patch(client, url, change, **{"If-Match": 'W/"7"'})
    assert stale.status_code == 412 and "If-Match" in outcome(stale)
    assert stored(sc, "Patient", p["id"])["meta"]["versionId"] == "1"
    ok = json_patch(client, url, change, **{"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.json()["meta"]["versionId"] == "2"
    missing = json_patch(client, "/fhir/Patient/no-such-patient", change)
    assert missing.status_code == 404 and "no-such-patient" in outcome(missing)
    assert client.delete(url).status_code == 204
    gone = json_patch(client, url, change)
    assert gone.status_code == 410
    outcome(gone)


def test_conditional_patch(client, sc):
    p = create(client, patient("cp-1"))
    create(client, patient("cp-2"))
    create(client, patient("cp-3"))
    change = [{"op": "add", "path": "/gender", "value": "other"}]
    r = json_patch(client, f"/fhir/Patient?identifier={MRN}|cp-1", change)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == p["id"] and r.json()["gender"] == "other"
    none = json_patch(client, f"/fhir/Patient?identifier={MRN}|nobody", change)
    assert none.status_code == 404
    outcome(none)
    several = json_patch(client, "/fhir/Patient?family=Patchley", change)
    assert several.status_code == 412
    outcome(several)


def test_prefer_on_patch(client):
    p = create(client, patient("pp-1"))
    url = f"/fhir/Patient/{p['id']}"
    minimal = json_patch(client, url, [{"op": "add", "path": "/gender", "value": "male"}],
                         Prefer="return=minimal")
    assert minimal.status_code == 200 and minimal.content == b""
    assert minimal.headers["ETag"] == 'W/"2"'
    oo = json_patch(client, url, [{"op": "replace", "path": "/gender", "value": "female"}],
                    Prefer="return=OperationOutcome")
    assert oo.status_code == 200 and "version 3" in outcome(oo)


# ------------------------------------------------------------------ governance
@pytest.fixture
def world(sc):
    build(sc)
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        yield sc, c


CHANGE = [{"op": "replace", "path": "/status", "value": "amended"}]


def test_patch_by_a_non_controller_is_refused_and_writes_nothing(world):
    sc, c = world
    before = audit_count(sc)
    # HOS may see GP1's o-plain (agreement, relationship) but does not control it.
    r = json_patch(c, "/fhir/Observation/o-plain", CHANGE, **bearer(sc, "hos.doc", "HOS"))
    assert r.status_code == 403
    assert "GP1" in outcome(r)
    assert stored(sc, "Observation", "o-plain")["status"] == "final"
    assert stored(sc, "Observation", "o-plain")["meta"]["versionId"] == "1"
    assert audit_count(sc) == before + 1
    # a role that never writes is refused too
    admin = json_patch(c, "/fhir/Observation/o-hos", CHANGE, **bearer(sc, "hos.admin", "HOS",
                                                                      role="admin"))
    assert admin.status_code in (403, 404)
    # a token without update scope
    ro = json_patch(c, "/fhir/Observation/o-hos", CHANGE,
                    **bearer(sc, "hos.doc", "HOS", scope="user/*.rs"))
    assert ro.status_code == 403
    assert stored(sc, "Observation", "o-hos")["status"] == "final"
    assert audit_count(sc) == before + 3


def test_patch_of_a_hidden_resource_answers_like_a_missing_one(world):
    sc, c = world
    h = bearer(sc, "hos.doc", "HOS")  # HOS has no relationship with P2
    before = audit_count(sc)
    hidden = json_patch(c, "/fhir/Observation/o-p2", CHANGE, **h)
    missing = json_patch(c, "/fhir/Observation/o-nope", CHANGE, **h)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"]
    assert stored(sc, "Observation", "o-p2")["meta"]["versionId"] == "1"
    # sensitive entries another organisation recorded are hidden the same way
    sensitive = json_patch(c, "/fhir/Observation/o-sexual", CHANGE, **h)
    assert sensitive.status_code == 404
    # conditional: a hidden match is no match
    cond = json_patch(c, "/fhir/Observation?_id=o-p2", CHANGE, **h)
    assert cond.status_code == 404
    assert audit_count(sc) == before + 4


def test_the_controller_patches_its_own_record_once_audited(world):
    sc, c = world
    before = audit_count(sc)
    r = fhirpath_patch(c, "/fhir/Observation/o-plain",
                       op("replace", "Observation.status", value={"valueCode": "amended"}),
                       **bearer(sc, "gp.doc", "GP1"))
    assert r.status_code == 200, r.text
    assert stored(sc, "Observation", "o-plain")["status"] == "amended"
    with sc.engine.connect() as conn:
        new = conn.execute(select(audit_event.c.action, audit_event.c.outcome,
                                  audit_event.c.entity)
                           .where(audit_event.c.seq > before)).all()
    assert len(new) == 1
    assert new[0].action == "update" and new[0].outcome == "0"
    assert "Observation/o-plain" in new[0].entity
    # the sensitivity labels a record carries survive a patch that drops them
    r = json_patch(c, "/fhir/Observation/o-sexual", [{"op": "remove", "path": "/meta/security"}],
                   **bearer(sc, "gp.doc", "GP1"))
    assert r.status_code == 200, r.text
    assert stored(sc, "Observation", "o-sexual")["meta"]["security"]


# ------------------------------------------------------------------ merge patch, a real client
def test_merge_patch(client):
    p = create(client, patient("mp-1", gender="male"))
    r = client.patch(f"/fhir/Patient/{p['id']}", json={
        "gender": None, "birthDate": "1970-01-01", "name": [{"family": "Merged"}]},
        headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "gender" not in body and body["birthDate"] == "1970-01-01"
    assert body["name"] == [{"family": "Merged"}] and body["identifier"] == p["identifier"]


def test_fhirpy_patch_over_a_socket(live_server, system_token):
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(f"{live_server}/fhir", authorization=f"Bearer {system_token}")
    pat = client.resource("Patient", identifier=[{"system": MRN, "value": "fhirpy-patch"}],
                          name=[{"family": "Pyclient"}], birthDate="1990-01-01")
    pat.save()
    # fhirpy sends part of the resource as application/json: a merge patch
    changed = client.patch("Patient", pat.id, gender="female", birthDate="1991-02-03")
    assert changed["gender"] == "female" and changed["birthDate"] == "1991-02-03"
    assert changed["meta"]["versionId"] == "2"
    again = client.reference("Patient", pat.id).to_resource()
    assert again["name"] == [{"family": "Pyclient"}] and again["gender"] == "female"


# ------------------------------------------------------------------ PATCH entries in Bundles
def _b64(value) -> str:
    import base64
    import json

    return base64.b64encode(json.dumps(value).encode()).decode()


def test_patch_entries_in_a_transaction(client, sc):
    p = create(client, patient("tx-1"))
    o = create(client, {"resourceType": "Observation", "status": "preliminary",
                        "code": {"text": "pulse"}})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:new-patient", "resource": patient("tx-2"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Observation"},
            {"name": "name", "valueString": "subject"},
            {"name": "value", "valueReference": {"reference": "urn:uuid:new-patient"}}]}]},
         "request": {"method": "PATCH", "url": f"Observation/{o['id']}"}},
        {"resource": {"resourceType": "Binary", "contentType": JSON_PATCH,
                      "data": _b64([{"op": "add", "path": "/gender", "value": "female"}])},
         "request": {"method": "PATCH", "url": f"Patient?identifier={MRN}|tx-1",
                     "ifMatch": 'W/"1"'}}]}
    r = client.post("/fhir", json=bundle, headers={"Prefer": "return=representation"})
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    new_id = entries[0]["resource"]["id"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "200 OK", "200 OK"]
    assert stored(sc, "Observation", o["id"])["subject"] == {"reference": f"Patient/{new_id}"}
    assert stored(sc, "Patient", p["id"])["gender"] == "female"
    # a patch that cannot apply rolls the whole transaction back, naming the entry
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("tx-3"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Binary", "contentType": JSON_PATCH,
                      "data": _b64([{"op": "remove", "path": "/telecom"}])},
         "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}}]}
    r = client.post("/fhir", json=bad)
    assert r.status_code == 422 and "Bundle.entry[1]" in outcome(r)
    assert client.get("/fhir/Patient", params={"identifier": f"{MRN}|tx-3"}).json()["total"] == 0
    stale = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": JSON_PATCH,
                      "data": _b64([{"op": "remove", "path": "/gender"}])},
         "request": {"method": "PATCH", "url": f"Patient/{p['id']}", "ifMatch": 'W/"1"'}}]}
    r = client.post("/fhir", json=stale)
    assert r.status_code == 412 and "ifMatch" in outcome(r)


def test_patch_entries_in_a_batch_are_governed_each(world):
    sc, c = world
    change = {"resourceType": "Binary", "contentType": JSON_PATCH, "data": _b64(CHANGE)}
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": change, "request": {"method": "PATCH", "url": "Observation/o-hos"}},
        {"resource": change, "request": {"method": "PATCH", "url": "Observation/o-plain"}},
        {"resource": change, "request": {"method": "PATCH", "url": "Observation/o-p2"}}]}
    before = audit_count(sc)
    r = c.post("/fhir", json=bundle, headers=bearer(sc, "hos.doc", "HOS"))
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0] == "200 OK" and statuses[1] == "403" and statuses[2] == "404"
    assert stored(sc, "Observation", "o-hos")["status"] == "amended"
    assert stored(sc, "Observation", "o-plain")["status"] == "final"
    assert stored(sc, "Observation", "o-p2")["status"] == "final"
    assert "GP1" not in str(r.json()["entry"][2])  # nothing about the hidden record
    assert audit_count(sc) - before == 3  # one per entry, as every batch entry is
