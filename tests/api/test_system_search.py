"""System-level search: `GET /fhir?_type=Patient,Practitioner&...` and `POST /fhir/_search`,
paged and governed like every search. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.governance.schema import audit_event
from tests.governance.small_world import build

from ..fhir._support import keys, outcome, pages, search


def audit_count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


@pytest.fixture
def loaded(client):
    made = []
    for res in ({"resourceType": "Patient", "name": [{"family": "Systema"}]},
                {"resourceType": "Patient", "name": [{"family": "Systemb"}]},
                {"resourceType": "Practitioner", "name": [{"family": "Doctor"}]},
                {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}):
        r = client.post(f"/fhir/{res['resourceType']}", json=res)
        assert r.status_code == 201
        made.append((res["resourceType"], r.json()["id"]))
    return made


def test_type_list_searches_across_types(client, loaded):
    body = search(client, "/fhir", {"_type": "Patient,Practitioner"})
    assert sorted(keys(body)) == sorted(k for k in loaded if k[0] != "Observation")
    assert body["total"] == 3
    for e in body["entry"]:
        r = e["resource"]
        assert e["fullUrl"] == f"http://testserver/fhir/{r['resourceType']}/{r['id']}"
    assert body["link"][0]["url"].startswith("http://testserver/fhir?")
    # without _type: every type
    assert sorted(keys(search(client, "/fhir", {}))) == sorted(loaded)
    # _id and _lastUpdated work across types
    pid = loaded[0][1]
    assert keys(search(client, "/fhir", {"_type": "Patient,Practitioner", "_id": pid})) == \
        [loaded[0]]


def test_a_parameter_the_types_share_applies_to_each(client, loaded):
    """family is a parameter of Patient and of Practitioner: across both it matches either."""
    both = {"_type": "Patient,Practitioner"}
    assert keys(search(client, "/fhir", {**both, "family": "Systema"})) == [loaded[0]]
    assert keys(search(client, "/fhir", {**both, "family": "Doctor"})) == [loaded[2]]
    got = search(client, "/fhir", {**both, "family": "Systema,Doctor", "_count": "10"})
    assert sorted(keys(got)) == sorted([loaded[0], loaded[2]])
    assert search(client, "/fhir", {**both, "family": "Nobody"}).get("entry", []) == []


def test_paging_and_post(client, loaded):
    got = pages(client, "/fhir", {"_type": "Patient,Practitioner,Observation", "_count": "1"})
    assert len(got) == 4
    assert sorted(keys(got)) == sorted(loaded)
    newest = search(client, "/fhir", {"_type": "Patient,Practitioner,Observation",
                                      "_sort": "-_lastUpdated", "_count": "2"})
    assert keys(newest) == [loaded[3], loaded[2]]
    assert search(client, "/fhir", {"_type": "Patient", "_summary": "count"})["total"] == 2
    r = client.post("/fhir/_search", content="_type=Patient",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert sorted(keys(r.json())) == sorted(k for k in loaded if k[0] == "Patient")


def test_refusals_name_the_parameter(client, loaded):
    bad_type = client.get("/fhir", params={"_type": "Patient,Nonsense"})
    assert bad_type.status_code == 400 and "_type" in outcome(bad_type)
    not_common = client.get("/fhir", params={"_type": "Patient,Practitioner",
                                             "birthdate": "1950"})
    assert not_common.status_code == 400 and "birthdate" in outcome(not_common)
    assert "Practitioner" in outcome(not_common), "says which type lacks it"
    # one type is that type's search, with its own parameters
    one = search(client, "/fhir", {"_type": "Patient", "family": "Systema"})
    assert keys(one) == [loaded[0]]


def test_system_search_is_governed_and_audited_once(sc):
    build(sc)
    token = sc.governance.issue_token("hos.doc", "HOS", "clinician")
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        c.headers["Authorization"] = f"Bearer {token}"
        before = audit_count(sc)
        body = search(c, "/fhir", {"_type": "Observation,Patient"})
        assert audit_count(sc) == before + 1
    found = set(keys(body))
    # HOS sees its own and GP1's results for P1 (agreement, open encounter; a clinician may
    # see mental-health entries) ...
    assert found == {("Observation", "o-hos"), ("Observation", "o-plain"),
                     ("Observation", "o-mental"), ("Patient", "P1")}
    # ... never P2's record (no relationship) nor GP1's sexual-health entry
    assert not found & {("Observation", "o-p2"), ("Observation", "o-sexual"), ("Patient", "P2")}
    assert body["total"] == len(found)
