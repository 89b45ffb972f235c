"""FHIR Bulk Data $export: async kick-off, polling, NDJSON files, governance per resource."""

from __future__ import annotations

import time

import orjson
import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from sharedcare.api import FhirApi
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SENSITIVITY_SYSTEM
from sharedcare.governance.schema import audit_event
from sharedcare.population import export
from sharedcare.store.repository import WriteOp

ORG = "RTEST"
OTHER = "ROTHR"
ASYNC = {"Prefer": "respond-async"}


def _patient(pid, nhs):
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1950-01-02",
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
            "name": [{"family": f"Fam{pid}", "given": ["Ann"]}]}


def _condition(cid, pid, code="44054006", security=None):
    res = {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{pid}"},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}}
    if security:
        res["meta"] = {"security": [{"system": SENSITIVITY_SYSTEM, "code": security}]}
    return res


def _encounter(eid, pid):
    return {"resourceType": "Encounter", "id": eid, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "EMER"},
            "subject": {"reference": f"Patient/{pid}"}}


def _write(sc, resources, org):
    sc.store.write([WriteOp("PUT", r["resourceType"], r["id"], r) for r in resources],
                   source_org=org)


@pytest.fixture
def data(sc):
    gov = sc.governance
    gov.add_organisation(OTHER, "Other Trust", "acute-trust")
    # OTHER shares demographics with ORG for direct care only: its Patients are visible to
    # ORG's system, its Conditions and Encounters are not.
    gov.add_agreement("DSA-T-1", "test", [ORG, OTHER], ["direct-care"], ["demographics"],
                      status="active")
    mine = []
    for i, nhs in enumerate(["9990000018", "9990000026", "9990000034", "9990000042",
                             "9990000050", "9990000069"]):  # valid modulus-11 check digits
        mine += [_patient(f"p{i}", nhs), _condition(f"c{i}", f"p{i}"),
                 _encounter(f"e{i}", f"p{i}")]
    _write(sc, mine, ORG)
    theirs = [_patient("q1", "9990001006"), _condition("qc1", "q1"), _encounter("qe1", "q1"),
              _condition("qc2", "p1"), _condition("qs1", "p2", security="sexual-health")]
    _write(sc, theirs, OTHER)
    _write(sc, [{"resourceType": "Organization", "id": "org1", "name": "Somewhere"}], ORG)
    return sc


def _app(sc):
    app = Starlette(routes=export.routes(sc) + FhirApi(sc.store, sc.governance).routes())
    app.state.sc = sc
    return app


@pytest.fixture
def api(data, system_token):
    with TestClient(_app(data), base_url="http://testserver") as c:
        c.headers["Authorization"] = f"Bearer {system_token}"
        yield c


def _kickoff(c, url, headers=ASYNC):
    r = c.get(url, headers=headers)
    assert r.status_code == 202, r.text
    return r.headers["Content-Location"]


def _wait(c, status_url, headers=None):
    deadline = time.time() + 30
    while time.time() < deadline:
        r = c.get(status_url, headers=headers or {})
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202, r.text
        assert "X-Progress" in r.headers
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def _download(c, manifest, headers=None):
    out = {}
    for item in manifest["output"]:
        r = c.get(item["url"], headers=headers or {})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [ln for ln in r.content.split(b"\n") if ln]
        assert len(lines) == item["count"]
        for ln in lines:
            res = orjson.loads(ln)
            assert res["resourceType"] == item["type"]
            out[(res["resourceType"], res["id"])] = res
    return out


def _api_read_all(c, rtype):
    out = {}
    url = f"/fhir/{rtype}?_count=2"
    while url:
        r = c.get(url)
        assert r.status_code == 200, r.text
        b = r.json()
        for e in b.get("entry") or []:
            if (e.get("search") or {}).get("mode", "match") == "match":
                res = e["resource"]
                out[(res["resourceType"], res["id"])] = res
        url = next((ln["url"] for ln in b.get("link") or [] if ln["relation"] == "next"), None)
    return out


def _export_count(sc):
    with sc.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(audit_event)
                            .where(audit_event.c.action == "export")).scalar_one()


def test_system_export_equals_what_the_client_reads(api, data, monkeypatch):
    monkeypatch.setattr(export, "WINDOW", 4)  # many row-key windows, small batches
    before = _export_count(data)
    status = _kickoff(api, "/fhir/$export")
    assert status.startswith("http://testserver/fhir/$export-poll/")
    manifest = _wait(api, status)
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    assert manifest["request"].endswith("/fhir/$export")
    assert manifest["transactionTime"].endswith("+00:00")
    exported = _download(api, manifest)
    via_api = {}
    for rtype in ("Patient", "Condition", "Encounter", "Organization"):
        via_api.update(_api_read_all(api, rtype))
    assert exported == via_api  # resource by resource, byte-equal JSON
    ids = {k[1] for k in exported}
    assert {"q1", "p0", "org1"} <= ids  # OTHER's shared demographics are in ...
    assert not ids & {"qc1", "qe1", "qc2", "qs1"}  # ... its unshared data is not
    assert _export_count(data) == before + 1  # one audit event per export


def test_type_and_since(api, data):
    status = _kickoff(api, "/fhir/$export?_type=Condition,Encounter&_outputFormat="
                           "application%2Ffhir%2Bndjson")
    got = _download(api, _wait(api, status))
    assert {t for t, _ in got} == {"Condition", "Encounter"}
    time.sleep(0.01)
    from datetime import UTC, datetime

    mark = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.01)
    _write(data, [_condition("c3", "p3", code="38341003"), _patient("p9", "9990000093")], ORG)
    status = _kickoff(api, f"/fhir/$export?_since={mark}")
    got = _download(api, _wait(api, status))
    assert set(got) == {("Condition", "c3"), ("Patient", "p9")}
    status = _kickoff(api, f"/fhir/$export?_type=Patient&_since={mark}")
    assert set(_download(api, _wait(api, status))) == {("Patient", "p9")}


def test_patient_and_group_level(api, data):
    got = _download(api, _wait(api, _kickoff(api, "/fhir/Patient/$export")))
    assert ("Organization", "org1") not in got
    assert {("Patient", "p0"), ("Condition", "c0"), ("Encounter", "e0")} <= set(got)
    r = api.put("/fhir/Group/g1", json={
        "resourceType": "Group", "id": "g1", "type": "person", "actual": True,
        "member": [{"entity": {"reference": "Patient/p1"}},
                   {"entity": {"reference": "Patient/p2"}},
                   {"entity": {"reference": "Patient/p3"}, "inactive": True}]})
    assert r.status_code in (200, 201), r.text
    got = _download(api, _wait(api, _kickoff(api, "/fhir/Group/g1/$export")))
    # R4's patient CompartmentDefinition puts a Group in its members' compartments
    assert set(got) == {("Patient", "p1"), ("Condition", "c1"), ("Encounter", "e1"),
                        ("Patient", "p2"), ("Condition", "c2"), ("Encounter", "e2"),
                        ("Group", "g1")}
    got = _download(api, _wait(api, _kickoff(api, "/fhir/Group/g1/$export?_type=Condition")))
    assert set(got) == {("Condition", "c1"), ("Condition", "c2")}
    assert api.get("/fhir/Group/nope/$export", headers=ASYNC).status_code == 404


def test_errors(api):
    r = api.get("/fhir/$export?_outputFormat=text/csv", headers=ASYNC)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    assert api.get("/fhir/$export").status_code == 400  # no Prefer: respond-async
    assert api.get("/fhir/$export?_type=Nonsense", headers=ASYNC).status_code == 400
    assert api.get("/fhir/$export?_typeFilter=x", headers=ASYNC).status_code == 400
    assert api.get("/fhir/$export?_typeFilter=x",
                   headers={"Prefer": "respond-async, handling=lenient"}).status_code == 202
    assert api.get("/fhir/$export?_since=yesterday", headers=ASYNC).status_code == 400
    assert api.get("/fhir/Patient/$export?_type=Organization", headers=ASYNC).status_code == 400
    assert api.get("/fhir/$export-poll/" + "0" * 32).status_code == 404
    del api.headers["Authorization"]
    assert api.get("/fhir/$export", headers=ASYNC).status_code == 401


def test_other_client_cannot_poll_fetch_or_cancel(api, data):
    status = _kickoff(api, "/fhir/$export")
    manifest = _wait(api, status)
    other = {"Authorization": "Bearer " + data.governance.issue_system_token("other-sys", ORG)}
    assert api.get(status, headers=other).status_code == 403
    for item in manifest["output"]:
        assert api.get(item["url"], headers=other).status_code == 403
        assert api.get(item["url"], headers={"Authorization": ""}).status_code == 401
    assert api.delete(status, headers=other).status_code == 403
    # the owner cancels/deletes: status and files are gone
    assert api.delete(status).status_code == 202
    assert api.get(status).status_code == 404
    assert api.get(manifest["output"][0]["url"]).status_code == 404


def test_scopes_narrow_the_export(api, data):
    token = data.governance.issue_system_token("narrow", ORG, scope="system/Patient.read")
    h = {"Authorization": f"Bearer {token}"}
    got = _download(api, _wait(api, _kickoff(api, "/fhir/$export", {**ASYNC, **h}), h), h)
    assert {t for t, _ in got} == {"Patient"}
    r = api.get("/fhir/$export?_type=Condition", headers={**ASYNC, **h})
    assert r.status_code == 403


def test_planning_purpose_exports_directory_only(api, data):
    token = data.governance.issue_system_token("planner", ORG, purpose="planning")
    h = {"Authorization": f"Bearer {token}"}
    got = _download(api, _wait(api, _kickoff(api, "/fhir/$export", {**ASYNC, **h}), h), h)
    assert set(got) == {("Organization", "org1")}
