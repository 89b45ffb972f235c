"""Every write through one governed door (issue: writes as an existence oracle, self-granted
access, scopes that don't narrow, labels lost on edit, 500s, audit gaps).

The small world: GP1 registers P1 and P2; HOS has an open encounter with P1 only; CH1 (a care
home) has no agreement and no relationship with anyone.
"""

from __future__ import annotations

import orjson
import pytest
from small_world import bearer, build, obs
from sqlalchemy import func, select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import SENSITIVITY_SYSTEM
from sharedcare.governance.schema import audit_event, care_relationship
from sharedcare.store.repository import PermitAll, WriteOp

FHIR = "application/fhir+json"


@pytest.fixture
def world(sc):
    build(sc)
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        yield sc, c


def system_bearer(sc, ods, scope="system/*.cruds"):
    return {"Authorization": f"Bearer {sc.governance.issue_system_token(f'sys-{ods}', ods, scope)}"}


def events(sc) -> list[dict]:
    with sc.engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(select(audit_event).order_by(audit_event.c.seq))]


def audit_count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


def current(sc, rtype, rid):
    try:
        return sc.store.read(rtype, rid, PermitAll()).json()
    except Exception:  # noqa: BLE001 - gone or deleted
        return None


def shape(r):
    """What a client can observe of a response, less ids the server makes up."""
    body = r.json() if r.content else None
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("id", "meta", "subject")}
    return r.status_code, body


# ---------------------------------------------------------------- conditional writes: no oracle
def test_conditional_delete_answers_the_same_for_hidden_and_missing(world):
    sc, c = world
    h = bearer(sc, "hos.doc", "HOS")  # may not see P2's record
    before = audit_count(sc)
    hidden = c.delete("/fhir/Observation?_id=o-p2", headers=h)
    missing = c.delete("/fhir/Observation?_id=no-such", headers=h)
    assert (hidden.status_code, hidden.content) == (missing.status_code, missing.content) == (204, b"")
    assert current(sc, "Observation", "o-p2") is not None, "the hidden record was not deleted"
    new = events(sc)[before:]
    assert len(new) == 2
    assert all("o-p2" not in (e["entity"] or "") and "no-such" not in (e["entity"] or "")
               for e in new), "the audit records no search values"


def test_conditional_update_with_if_match_answers_the_same_for_hidden_and_missing(world):
    sc, c = world
    h = {**bearer(sc, "hos.doc", "HOS"), "If-Match": 'W/"1"'}
    body = obs(None, "P1")
    del body["id"]
    hidden = c.put("/fhir/Observation?_id=o-p2", json=body, headers=h)
    missing = c.put("/fhir/Observation?_id=no-such", json=body, headers=h)
    assert shape(hidden) == shape(missing)
    assert hidden.status_code == 412
    assert "o-p2" not in hidden.text and "GP1" not in hidden.text


def test_if_none_exist_never_names_or_returns_a_hidden_match(world):
    sc, c = world
    h = bearer(sc, "hos.doc", "HOS")
    body = obs("x", "P1")
    del body["id"]
    hidden = c.post("/fhir/Observation", json=body, headers={**h, "If-None-Exist": "_id=o-p2"})
    missing = c.post("/fhir/Observation", json=body, headers={**h, "If-None-Exist": "_id=no-such"})
    assert hidden.status_code == missing.status_code == 201
    assert "o-p2" not in hidden.text
    # A visible match is returned, and that access is audited like a read.
    before = audit_count(sc)
    seen = c.post("/fhir/Observation", json=body, headers={**h, "If-None-Exist": "_id=o-hos"})
    assert seen.status_code == 200 and seen.json()["id"] == "o-hos"
    assert [e["action"] for e in events(sc)[before:]] == ["read"]


def test_transaction_conditional_entries_match_only_what_the_caller_sees(world):
    sc, c = world
    h = bearer(sc, "hos.doc", "HOS")

    def bundle(query):
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": f"Observation?{query}"}}]}

    hidden = c.post("/fhir", json=bundle("_id=o-p2"), headers=h)
    missing = c.post("/fhir", json=bundle("_id=no-such"), headers=h)
    assert shape(hidden) == shape(missing)
    assert current(sc, "Observation", "o-p2") is not None


# ---------------------------------------------------------------- self-granted relationships
def test_a_person_cannot_write_into_a_record_they_have_no_relationship_with(world):
    sc, c = world
    h = bearer(sc, "ch.nurse", "CH1", "nurse")
    assert c.get("/fhir/Patient/P1/$everything", headers=h).status_code == 403
    before = audit_count(sc)
    r = c.post("/fhir/Encounter", headers=h, json={
        "resourceType": "Encounter", "status": "in-progress", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/P1"},
        "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                           "value": "CH1"}}})
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
    refused = events(sc)[before:]
    assert [(e["action"], e["outcome"]) for e in refused] == [("create", "4")]
    assert c.get("/fhir/Patient/P1/$everything", headers=h).status_code == 403


def test_relationships_a_person_derives_by_writing_wait_for_review(world):
    sc, c = world
    h = bearer(sc, "gp.doc", "GP1")
    r = c.post("/fhir/Encounter", headers=h, json={
        "resourceType": "Encounter", "status": "in-progress", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/P2"},
        "serviceProvider": {"reference": "Organization/org-GP1"}})
    assert r.status_code == 201, r.text
    with sc.engine.connect() as conn:
        row = conn.execute(select(care_relationship).where(
            care_relationship.c.source == f"Encounter/{r.json()['id']}")).one()
    assert (row.username, row.review_status, row.kind) == ("gp.doc", "pending", "encounter")
    # A partner system's feed describes care that happened: its relationships count at once.
    s = system_bearer(sc, "HOS")
    r = c.post("/fhir/Encounter", headers=s, json={
        "resourceType": "Encounter", "status": "in-progress", "class": {"code": "IMP"},
        "subject": {"reference": "Patient/P2"},
        "serviceProvider": {"reference": "Organization/org-HOS"}})
    with sc.engine.connect() as conn:
        row = conn.execute(select(care_relationship).where(
            care_relationship.c.source == f"Encounter/{r.json()['id']}")).one()
    assert (row.username, row.review_status) == (None, None)


# ---------------------------------------------------------------- scopes narrow everything
def test_a_type_scope_narrows_includes(world):
    sc, c = world
    h = bearer(sc, "gp.doc", "GP1", scope="user/Observation.rs")
    r = c.get("/fhir/Observation?subject=Patient/P1&_include=*&_revinclude=*", headers=h)
    assert r.status_code == 200
    types = {e["resource"]["resourceType"] for e in r.json()["entry"]
             if e["search"]["mode"] != "outcome"}
    assert types == {"Observation"}


def test_type_scopes_narrow_everything(world):
    sc, c = world
    h = system_bearer(sc, "GP1", "system/Patient.rs system/Observation.rs")
    r = c.get("/fhir/Patient/P1/$everything", headers=h)
    assert r.status_code == 200
    types = {e["resource"]["resourceType"] for e in r.json()["entry"]
             if e["search"]["mode"] != "outcome"}
    assert types == {"Patient", "Observation"}


def test_create_read_search_scopes_cannot_update_or_delete(world):
    sc, c = world
    h = bearer(sc, "hos.doc", "HOS", scope="user/*.crs")
    body = obs("o-hos", "P1", valueString="changed")
    assert c.put("/fhir/Observation/o-hos", json=body, headers=h).status_code == 403
    assert c.delete("/fhir/Observation/o-hos", headers=h).status_code == 403
    assert "valueString" not in current(sc, "Observation", "o-hos")
    created = obs("new", "P1")
    del created["id"]
    assert c.post("/fhir/Observation", json=created, headers=h).status_code == 201


# ---------------------------------------------------------------- labels survive edits
def test_an_update_without_labels_keeps_them(world):
    sc, c = world
    gp = system_bearer(sc, "GP1")
    plain = obs("o-sexual", "P1", valueString="edited")
    r = c.put("/fhir/Observation/o-sexual", json=plain, headers=gp)
    assert r.status_code == 200
    labels = {s["code"] for s in r.json()["meta"]["security"] if s["system"] == SENSITIVITY_SYSTEM}
    assert labels == {"sexual-health"}
    assert c.get("/fhir/Observation/o-sexual", headers=bearer(sc, "hos.doc", "HOS")
                 ).status_code in (403, 404)


# ---------------------------------------------------------------- old versions stay with theirs
def test_an_old_version_is_governed_by_the_patient_it_belonged_to(world):
    sc, c = world
    sc.store.write([WriteOp("PUT", "Observation", "o-move", obs("o-move", "P2"))], source_org="GP1")
    sc.store.write([WriteOp("PUT", "Observation", "o-move", obs("o-move", "P1"))], source_org="GP1")
    h = bearer(sc, "hos.doc", "HOS")  # may see P1, not P2
    assert c.get("/fhir/Observation/o-move", headers=h).status_code == 200
    assert c.get("/fhir/Observation/o-move/_history/1", headers=h).status_code == 403
    assert c.get("/fhir/Observation/o-move/_history/2", headers=h).status_code == 200
    for url in ("/fhir/Observation/o-move/_history", "/fhir/Observation/_history", "/fhir/_history"):
        versions = [(e["resource"]["id"], e["resource"]["meta"]["versionId"])
                    for e in c.get(url, headers=h).json()["entry"] if "resource" in e]
        assert ("o-move", "1") not in versions, url
        assert ("o-move", "2") in versions, url


# ---------------------------------------------------------------- no 500s, one audit event each
BAD = [
    ("POST", "/fhir/Observation", {"resourceType": "Observation", "status": "final",
                                   "code": {"text": "x"}, "meta": "x"}),
    ("POST", "/fhir/Observation", {"resourceType": "Observation", "status": "final",
                                   "code": {"text": "x"}, "meta": {"tag": ["x"]}}),
    ("GET", "/fhir/Patient?_has:NoSuchType:patient:code=x", None),
    ("POST", "/fhir/Patient/$match", {"resourceType": "Parameters", "parameter": [None]}),
    ("POST", "/fhir/Patient/$match", {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "identifier": "x"}}]}),
    ("POST", "/fhir/Patient/$match", {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "name": 5}}]}),
    ("POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": 5}),
    ("POST", "/fhir", {"resourceType": "Bundle", "type": "batch",
                       "entry": [{"request": {"method": "GET", "url": "/"}}]}),
    ("GET", f"/fhir/_history?_before_seq={2**64}", None),
    ("GET", f"/fhir/Observation/o-hos/_history/{2**64}", None),
    ("GET", f"/fhir/Observation?_cursor={2**64}", None),
    ("GET", "/fhir/Observation?code:text=" + "a" * 60_000, None),
    ("GET", "/fhir/Observation?code=a%00b", None),
    ("POST", "/fhir/Observation", {"resourceType": "Observation", "status": "final",
                                   "code": {"text": "a\u0000b"}}),
    ("GET", "/fhir/Patient/" + "x" * 65, None),
    ("GET", "/fhir/Patient/" + "x" * 65 + "/$everything", None),
    ("GET", "/fhir/Observation/o-hos/_history/1/extra/path", None),
    ("PATCH", "/fhir/Metadata", None),
]


@pytest.mark.parametrize("method,url,body", BAD, ids=range(len(BAD)))
def test_bad_requests_are_outcomes_with_one_audit_event(world, method, url, body):
    sc, c = world
    h = system_bearer(sc, "HOS")
    before = audit_count(sc)
    r = c.request(method, url, headers={**h, "Content-Type": FHIR},
                  content=orjson.dumps(body) if body is not None else None)
    out = r.json()
    if out["resourceType"] == "Bundle":  # a batch answers 200, and each entry on its own
        assert r.status_code == 200 and out["entry"][0]["response"]["status"].startswith("4")
    else:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
        assert out["resourceType"] == "OperationOutcome"
        assert out["issue"][0]["diagnostics"]
    assert audit_count(sc) == before + 1


def test_an_unexpected_failure_is_a_500_outcome_audited_once(world, monkeypatch):
    sc, c = world

    def boom(*a, **kw):
        raise RuntimeError("secret patient detail")

    monkeypatch.setattr(sc.store, "read", boom)
    before = audit_count(sc)
    r = c.get("/fhir/Observation/o-hos", headers=system_bearer(sc, "HOS"))
    assert r.status_code == 500 and r.json()["resourceType"] == "OperationOutcome"
    assert "secret" not in r.text
    new = events(sc)[before:]
    assert [(e["outcome"]) for e in new] == ["8"]


def test_requests_without_a_token_are_audited(world):
    sc, c = world
    before = audit_count(sc)
    assert c.get("/fhir/Patient/P1").status_code == 401
    new = events(sc)[before:]
    assert [(e["role"], e["outcome"]) for e in new] == [("anonymous", "4")]


# ---------------------------------------------------------------- small disclosures
def test_a_stranger_is_not_told_that_an_entry_is_sensitive(world):
    sc, c = world
    stranger = c.get("/fhir/Observation/o-sexual", headers=bearer(sc, "ch.nurse", "CH1", "nurse"))
    assert stranger.status_code == 403 and "sensitive" not in stranger.text
    related = c.get("/fhir/Observation/o-sexual", headers=bearer(sc, "hos.doc", "HOS"))
    assert related.status_code == 403 and "sensitive" in related.text


def test_bulk_export_needs_a_bearer_token_not_the_browser_cookie(world):
    sc, c = world
    token = sc.governance.issue_token("hos.doc", "HOS", "clinician")
    c.cookies.set("sc_session", token)
    r = c.get("/fhir/$export", headers={"Prefer": "respond-async"})
    assert r.status_code == 401


def test_a_planning_token_cannot_write(world):
    sc, c = world
    h = system_bearer(sc, "GP1")
    planning = {"Authorization": "Bearer " + sc.governance.issue_system_token(
        "sys-GP1", "GP1", "system/*.cruds", purpose="planning")}
    body = obs("o-plan", "P1")
    assert c.put("/fhir/Observation/o-plan", json=body, headers=planning).status_code == 403
    assert c.put("/fhir/Observation/o-plan", json=body, headers=h).status_code == 201
