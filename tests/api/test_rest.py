"""REST semantics of the FHIR API (create, read, vread, update, conditional interactions,
delete, history, metadata) and its answers to bad input. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import func, select

from ..fhir._support import FHIR_JSON, load_json, next_link, outcome, patient_file, relative

MRN = "http://hospital.example.org/mrn"


def patient(mrn: str, family: str = "Testperson", **extra) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": family, "given": ["Ada"]}], "birthDate": "1980-02-29", **extra}


def create(client, res: dict):
    r = client.post(f"/fhir/{res['resourceType']}", json=res)
    assert r.status_code == 201, r.text
    return r


def resource_count(sc, rtype: str | None = None) -> int:
    from sharedcare.store.schema import resource

    stmt = select(func.count()).select_from(resource).where(resource.c.deleted.is_(False))
    if rtype:
        stmt = stmt.where(resource.c.type == rtype)
    with sc.engine.connect() as c:
        return c.execute(stmt).scalar_one()


def version_count(sc) -> int:
    from sharedcare.store.schema import resource_version

    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(resource_version)).scalar_one()


# ----------------------------------------------------------------------------- create/read
def test_create_returns_201_location_etag_and_the_resource(client):
    r = create(client, patient("c-1"))
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    rid = body["id"]
    assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"]
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"].endswith(f"Patient/{rid}/_history/1")
    assert r.headers["Last-Modified"]
    # a client-supplied id on create is ignored (the server assigns one)
    r2 = create(client, patient("c-2", id="my-own-id"))
    assert r2.json()["id"] != "my-own-id"


def test_read_returns_what_was_created(client):
    sent = patient("r-1", gender="female")
    created = create(client, sent).json()
    r = client.get(f"/fhir/Patient/{created['id']}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_JSON)
    assert r.headers["ETag"] == 'W/"1"'
    got = r.json()
    assert got == created
    assert {k: v for k, v in got.items() if k not in ("id", "meta")} == sent
    assert client.get("/fhir/Patient/no-such-id").status_code == 404
    assert "no-such-id" in outcome(client.get("/fhir/Patient/no-such-id"))
    assert client.get(f"/fhir/Patient/{created['id']}",
                      headers={"If-None-Match": 'W/"1"'}).status_code == 304


def test_update_vread_and_if_match(client):
    rid = create(client, patient("u-1")).json()["id"]
    v1 = client.get(f"/fhir/Patient/{rid}").json()
    v2_body = {**copy.deepcopy(v1), "gender": "male"}
    r = client.put(f"/fhir/Patient/{rid}", json=v2_body, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == 'W/"2"' and r.json()["meta"]["versionId"] == "2"
    # a stale If-Match is refused with 412 and changes nothing
    stale = client.put(f"/fhir/Patient/{rid}", json={**v2_body, "gender": "other"},
                       headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert "1" in outcome(stale)
    assert client.get(f"/fhir/Patient/{rid}").json()["gender"] == "male"
    # vread serves each version as it was
    old = client.get(f"/fhir/Patient/{rid}/_history/1")
    assert old.status_code == 200 and old.json()["meta"]["versionId"] == "1"
    assert "gender" not in old.json()
    assert client.get(f"/fhir/Patient/{rid}/_history/2").json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{rid}/_history/3").status_code == 404
    # update-as-create with a client id
    r = client.put("/fhir/Patient/client-chosen-1", json=patient("u-2", id="client-chosen-1"))
    assert r.status_code == 201 and r.json()["id"] == "client-chosen-1"


def test_update_with_id_not_matching_url_is_400(client):
    r = client.put("/fhir/Patient/abc", json=patient("x", id="def"))
    assert r.status_code == 400
    assert "id" in outcome(r)


def test_conditional_create_if_none_exist(client, sc):
    r1 = client.post("/fhir/Patient", json=patient("cc-1"),
                     headers={"If-None-Exist": f"identifier={MRN}|cc-1"})
    assert r1.status_code == 201
    r2 = client.post("/fhir/Patient", json=patient("cc-1", family="Other"),
                     headers={"If-None-Exist": f"identifier={MRN}|cc-1"})
    assert r2.status_code == 200 and r2.json()["id"] == r1.json()["id"]
    assert r2.json()["name"][0]["family"] == "Testperson"
    assert resource_count(sc, "Patient") == 1
    create(client, patient("cc-2", family="Twin"))
    create(client, patient("cc-3", family="Twin"))
    r3 = client.post("/fhir/Patient", json=patient("cc-4"), headers={"If-None-Exist": "family=Twin"})
    assert r3.status_code == 412
    outcome(r3)
    assert resource_count(sc, "Patient") == 3


def test_conditional_update_by_identifier(client, sc):
    r = client.put(f"/fhir/Patient?identifier={MRN}|cu-1", json=patient("cu-1"))
    assert r.status_code == 201
    rid = r.json()["id"]
    r = client.put(f"/fhir/Patient?identifier={MRN}|cu-1", json=patient("cu-1", gender="female"))
    assert r.status_code == 200 and r.json()["id"] == rid
    assert r.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{rid}").json()["gender"] == "female"
    create(client, patient("dup"))
    create(client, patient("dup"))
    r = client.put(f"/fhir/Patient?identifier={MRN}|dup", json=patient("dup"))
    assert r.status_code == 412
    assert resource_count(sc, "Patient") == 3


def test_delete_then_read_is_410_and_history_shows_it(client):
    rid = create(client, patient("d-1")).json()["id"]
    r = client.delete(f"/fhir/Patient/{rid}")
    assert r.status_code in (200, 204)
    gone = client.get(f"/fhir/Patient/{rid}")
    assert gone.status_code == 410
    outcome(gone)
    assert client.get("/fhir/Patient", params={"identifier": f"{MRN}|d-1"}).json().get(
        "entry", []) == []
    hist = client.get(f"/fhir/Patient/{rid}/_history").json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "POST"]
    assert hist["entry"][0]["response"]["status"].startswith("410")
    # the old version can still be vread; a PUT revives the resource as version 3
    assert client.get(f"/fhir/Patient/{rid}/_history/1").status_code == 200
    r = client.put(f"/fhir/Patient/{rid}", json=patient("d-1", id=rid))
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "3"


def test_delete_of_unknown_or_already_deleted_resource_is_harmless(client, sc):
    rid = create(client, patient("d-2")).json()["id"]
    assert client.delete(f"/fhir/Patient/{rid}").status_code in (200, 204)
    versions = version_count(sc)
    assert client.delete(f"/fhir/Patient/{rid}").status_code in (200, 204)
    assert client.delete("/fhir/Patient/never-existed").status_code in (200, 204, 404)
    assert version_count(sc) == versions
    assert client.get(f"/fhir/Patient/{rid}").status_code == 410


def test_instance_and_type_history_with_paging(client):
    rid = create(client, patient("h-1")).json()["id"]
    body = client.get(f"/fhir/Patient/{rid}").json()
    for n in range(6):
        body = {**body, "gender": ["male", "female"][n % 2]}
        r = client.put(f"/fhir/Patient/{rid}", json=body)
        assert r.status_code == 200
        body = r.json()
    for n in range(4):
        create(client, patient(f"h-other-{n}"))
    hist = client.get(f"/fhir/Patient/{rid}/_history")
    assert hist.status_code == 200 and hist.headers["content-type"].startswith(FHIR_JSON)
    h = hist.json()
    assert h["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in h["entry"]] == [str(v) for v in
                                                                        range(7, 0, -1)]
    # type history, paged three at a time via the next link
    versions, page = [], client.get("/fhir/Patient/_history", params={"_count": "3"}).json()
    npages = 1
    while True:
        assert len(page["entry"]) <= 3
        versions += [(e["resource"]["id"], e["resource"]["meta"]["versionId"])
                     for e in page["entry"]]
        link = next_link(page)
        if not link:
            break
        page = client.get(relative(link)).json()
        npages += 1
    assert npages >= 4
    assert len(versions) == len(set(versions)) == 7 + 4
    assert {v for i, v in versions if i == rid} == {str(v) for v in range(1, 8)}


def test_metadata_lists_types_params_and_everything(client):
    r = client.get("/fhir/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_JSON)
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    res = {x["type"]: x for x in cs["rest"][0]["resource"]}
    for rtype, params in {"Patient": {"identifier", "family", "birthdate", "name", "_id",
                                      "_lastUpdated"},
                          "Observation": {"subject", "code", "date", "value-quantity",
                                          "patient"},
                          "Encounter": {"date", "patient"},
                          "Organization": {"identifier", "name"},
                          "Provenance": {"target"}}.items():
        assert rtype in res, rtype
        have = {p["name"] for p in res[rtype]["searchParam"]}
        assert params <= have, (rtype, params - have)
        assert {"read", "vread", "update", "delete", "create", "search-type",
                "history-instance"} <= {i["code"] for i in res[rtype]["interaction"]}
    assert any(op["name"] == "everything" for op in res["Patient"].get("operation", []))
    assert {"transaction", "batch"} <= {i["code"] for i in cs["rest"][0]["interaction"]}


def test_every_advertised_search_param_is_accepted(client):
    """What metadata advertises must not be refused as unknown."""
    cs = client.get("/fhir/metadata").json()
    refused = []
    for res in cs["rest"][0]["resource"]:
        if res["type"] not in ("Patient", "Observation", "Encounter", "Condition"):
            continue
        for p in res["searchParam"]:
            value = {"date": "2020", "number": "1", "quantity": "1", "token": "x",
                     "string": "x", "reference": "Patient/x", "uri": "http://x"}[p["type"]]
            r = client.get(f"/fhir/{res['type']}", params={p["name"]: value, "_count": "1"})
            if r.status_code != 200:
                refused.append(f"{res['type']}?{p['name']}: {r.status_code}")
    assert not refused, refused


# ----------------------------------------------------------------------------- bad input
def test_malformed_json_is_400_and_writes_nothing(client, sc):
    before = version_count(sc)
    for raw in (b'{"resourceType": "Patient",', b"", b"[1, 2]", b"\xff\xfe"):
        r = client.post("/fhir/Patient", content=raw, headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 400, raw
        outcome(r)
    assert version_count(sc) == before


def test_wrong_resource_type_for_the_url_is_400(client, sc):
    r = client.post("/fhir/Observation", json=patient("w-1"))
    assert r.status_code == 400
    assert "resourceType" in outcome(r)
    r = client.put("/fhir/Observation/x1", json={**patient("w-1"), "id": "x1"})
    assert r.status_code == 400
    assert resource_count(sc) == 0


def test_schema_invalid_resource_is_400_naming_the_field(client, sc):
    r = client.post("/fhir/Patient", json={**patient("v-1"), "birthDate": "last tuesday"})
    assert r.status_code == 400
    assert "birthDate" in outcome(r)
    r = client.post("/fhir/Patient", json={**patient("v-1"), "gendr": "male"})
    assert r.status_code == 400
    assert "gendr" in outcome(r)
    assert resource_count(sc) == 0


def test_unknown_resource_type_is_rejected(client):
    r = client.get("/fhir/Spaceship")
    assert r.status_code in (400, 404)
    assert "Spaceship" in outcome(r)


def test_transaction_with_invalid_last_entry_writes_nothing(client, sc):
    bundle = load_json(patient_file("Tom_Goodwin"))
    n = len(bundle["entry"]) - 1
    last = bundle["entry"][n]["resource"]
    last["status"] = "not-a-status-code"
    last["unexpectedField"] = True
    before = {t: resource_count(sc, t) for t in ("Patient", "Observation", "Organization")}
    versions = version_count(sc)
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 400, r.text[:500]
    assert f"Bundle.entry[{n}]" in outcome(r)
    assert {t: resource_count(sc, t) for t in before} == before
    assert resource_count(sc) == 0 and version_count(sc) == versions


def test_transaction_with_unresolvable_urn_reference_writes_nothing(client, sc):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": patient("t-1"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Observation", "status": "final",
                      "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:99999999-9999-9999-9999-999999999999"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 400
    text = outcome(r)
    assert "urn:uuid:99999999-9999-9999-9999-999999999999" in text and "Bundle.entry[1]" in text
    assert resource_count(sc) == 0


def test_transaction_resolves_urn_references_to_server_ids(client):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": patient("t-2"), "request": {"method": "POST", "url": "Patient"}}]}
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    locs = [e["response"]["location"] for e in r.json()["entry"]]
    assert locs[0].startswith("Observation/") and locs[1].startswith("Patient/")
    obs = client.get("/fhir/" + "/".join(locs[0].split("/")[:2])).json()
    assert obs["subject"]["reference"] == "/".join(locs[1].split("/")[:2])


def test_unauthenticated_request_is_401_operation_outcome(client):
    anon = {"Authorization": ""}
    for method, path in (("GET", "/fhir/Patient"), ("GET", "/fhir/Patient/x"),
                         ("POST", "/fhir/Patient"), ("GET", "/fhir/Patient/x/$everything")):
        r = client.request(method, path, headers=anon,
                           json=patient("a") if method == "POST" else None)
        assert r.status_code == 401, (method, path, r.status_code)
        outcome(r)


def test_token_signed_with_another_key_is_401(client, sc):
    from joserfc.jwk import ECKey

    from sharedcare.governance.auth import TokenService

    forged = TokenService(ECKey.generate_key("P-256", parameters={"kid": "forged"},
                                                           private=True)).issue(
        {"sub": "test-system", "client_id": "test-system", "ods": "RTEST", "role": "system",
         "scope": "system/*.cruds", "kind": "system"})
    r = client.get("/fhir/Patient", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    outcome(r)
    r = client.post("/fhir/Patient", json=patient("f"), headers={"Authorization":
                                                                  f"Bearer {forged}"})
    assert r.status_code == 401
    assert resource_count(sc) == 0
    expired = sc.governance.issue_system_token("test-system", "RTEST", lifetime=-10)
    assert client.get("/fhir/Patient", headers={"Authorization": f"Bearer {expired}"}
                      ).status_code == 401
    assert client.get("/fhir/Patient", headers={"Authorization": "Bearer not.a.jwt"}
                      ).status_code == 401


def test_content_type_is_fhir_json_everywhere(client):
    rid = create(client, patient("ct")).json()["id"]
    for path in (f"/fhir/Patient/{rid}", "/fhir/Patient", f"/fhir/Patient/{rid}/_history",
                 f"/fhir/Patient/{rid}/_history/1", "/fhir/metadata",
                 f"/fhir/Patient/{rid}/$everything", "/fhir/Patient/nope"):
        r = client.get(path)
        assert r.headers["content-type"].startswith(FHIR_JSON), path
