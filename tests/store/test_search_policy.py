"""The viewer's policy applies inside chained and _has searches too: a search must not reveal
that a resource the viewer may not see exists."""

from __future__ import annotations

from starlette.testclient import TestClient

from sharedcare.app import create_app

CODE = "http://snomed.info/sct|86406008"  # HIV infection


def _client(sc, ods):
    c = TestClient(create_app(sc))
    c.headers["Authorization"] = "Bearer " + sc.governance.issue_system_token(f"sys-{ods}", ods)
    return c


def test_has_and_chains_do_not_see_through_governance(sc):
    gov = sc.governance
    gov.add_organisation("RAAA1", "Trust A", "acute-trust")
    gov.add_organisation("RBBB1", "Clinic B", "community")
    a, b = _client(sc, "RAAA1"), _client(sc, "RBBB1")
    pid = a.post("/fhir/Patient", json={"resourceType": "Patient",
                                        "name": [{"family": "Shared"}]}).json()["id"]
    made = b.post("/fhir/Condition", json={
        "resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "86406008"}]}})
    assert made.status_code == 201

    def found():
        has = a.get("/fhir/Patient", params={"_has:Condition:subject:code": CODE})
        chain = a.get("/fhir/Condition", params={"subject:Patient.name": "Shared"})
        assert has.status_code == chain.status_code == 200
        return has.json()["total"], chain.json()["total"]

    # No agreement: A cannot see B's Condition, so neither search may reveal it.
    assert found() == (0, 0)
    # An active agreement sharing gp-summary for direct care: now both find it.
    gov.add_agreement("DSA-T", "test", ["RAAA1", "RBBB1"], ["direct-care"],
                      ["demographics", "gp-summary"], "active")
    assert found() == (1, 1)
    # ...and B, the controller, can chain through A's Patient only under the same agreement.
    assert b.get("/fhir/Condition", params={"subject:Patient.name": "Shared"}).json()["total"] == 1
