"""Editing a shared care plan in the pages keeps its sensitivity labels and tags: a plan
labelled sensitive stays withheld from another organisation's A&E clinician after the edit
(SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import ODS_SYSTEM, SENSITIVITY_SYSTEM
from sharedcare.store.repository import PermitAll, WriteOp

EXTRA_TAG = {"system": "https://example.org/CodeSystem/local-tag", "code": "keep-me"}


@pytest.fixture
def world(sc):
    gov = sc.governance
    for ods in ("HOS", "ED2"):
        gov.add_organisation(ods, f"Trust {ods}", "acute-trust")
        sc.store.write([WriteOp("PUT", "Organization", f"org-{ods}", {
            "resourceType": "Organization", "name": f"Trust {ods}",
            "identifier": [{"system": ODS_SYSTEM, "value": ods}]})], source_org=ods)
    gov.add_agreement("isa-1", "Acute trusts", ["HOS", "ED2"], ["direct-care"],
                      ["demographics", "encounters", "care-plans"], status="active")
    gov.add_staff("hos.doc", "Dr Writer", [("HOS", "clinician")])
    gov.add_staff("ed.doc", "Dr Emergency", [("ED2", "clinician")])
    sc.store.write([WriteOp("PUT", "Patient", "P1", {
        "resourceType": "Patient", "name": [{"family": "Example", "given": ["Edna"]}]})],
        source_org="HOS")
    for ods in ("HOS", "ED2"):  # both trusts have her in front of them now
        sc.store.write([WriteOp("PUT", "Encounter", f"enc-{ods}", {
            "resourceType": "Encounter", "status": "in-progress", "class": {"code": "EMER"},
            "subject": {"reference": "Patient/P1"},
            "serviceProvider": {"reference": f"Organization/org-{ods}"}})], source_org=ods)
    return sc


def client(sc, user, ods) -> TestClient:
    c = TestClient(create_app(sc), follow_redirects=False)
    c.cookies.set("sc_session", sc.governance.issue_token(user, ods, "clinician"))
    c.get("/")
    return c


def form(c, **over):
    data = {"csrf": c.cookies.get("sc_csrf"), "kind": "crisis",
            "what-matters": "My dog and my garden", "what-helps": "Quiet space",
            "contacts": "Sister 0161 496 0000"}
    data.update(over)
    return data


def ed_can_see(sc, plan_id) -> bool:
    gov = sc.governance
    ed = gov.access_from_claims(gov.tokens.verify(gov.issue_token("ed.doc", "ED2", "clinician")))
    return gov.decide(ed, "CarePlan", plan_id).permitted


def test_editing_a_sensitive_plan_keeps_it_withheld(world):
    sc = world
    writer = client(sc, "hos.doc", "HOS")
    r = writer.post("/patients/P1/care-plans/new", data=form(writer))
    assert r.status_code == 303, r.text[:300]
    plan_id = r.headers["location"].split("/care-plans/")[1].split("?")[0]
    assert ed_can_see(sc, plan_id)  # an ordinary shared plan
    # The author's organisation labels it sensitive (and tags it for its own use).
    plan = sc.store.read("CarePlan", plan_id, PermitAll()).json()
    plan["meta"]["security"] = [{"system": SENSITIVITY_SYSTEM, "code": "sexual-health"}]
    plan["meta"]["tag"].append(EXTRA_TAG)
    sc.store.write([WriteOp("PUT", "CarePlan", plan_id, plan)])
    assert not ed_can_see(sc, plan_id)
    # Edited in the pages by its author.
    page = writer.get(f"/care-plans/{plan_id}/edit")
    assert page.status_code == 200 and 'name="version" value="2"' in page.text
    r = writer.post(f"/care-plans/{plan_id}/edit",
                    data=form(writer, version="2", **{"what-helps": "Quiet space, call my sister",
                                                      "change-note": "Added her sister"}))
    assert r.status_code == 303, r.text[:300]
    stored = sc.store.read("CarePlan", plan_id, PermitAll())
    body = stored.json()
    assert stored.version == 3 and "call my sister" in str(body["activity"])
    assert {(s["system"], s["code"]) for s in body["meta"]["security"]} == {
        (SENSITIVITY_SYSTEM, "sexual-health")}
    assert EXTRA_TAG in body["meta"]["tag"]
    # Still withheld from the other trust's A&E clinician: by governance and on the pages.
    assert not ed_can_see(sc, plan_id)
    ed = client(sc, "ed.doc", "ED2")
    assert ed.get(f"/care-plans/{plan_id}").status_code == 403
    view = ed.get("/patients/P1")
    assert view.status_code == 200 and f"CarePlan/{plan_id}" not in view.text
    assert "withheld" in view.text
    writer.close()
    ed.close()
