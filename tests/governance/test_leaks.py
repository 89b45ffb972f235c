"""Targeted disclosure probes: edges the random worlds keep clear of, one test each.

Every test states the rule it checks; the ones that expose a product bug are strict xfails whose
reason names the cause (see the report for the fix)."""

from __future__ import annotations

import pytest
from small_world import access, build, obs, system
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import DATA_CATEGORY_SYSTEM, SENSITIVITY_SYSTEM
from sharedcare.fhir.outcome import FHIRError
from sharedcare.store.repository import WriteOp


@pytest.fixture
def world(sc):
    build(sc)
    return sc


def visible(gov, a, rtype, rid) -> bool:
    try:
        gov.read(a, rtype, rid)
        return True
    except FHIRError as e:
        assert e.status == 403
        return False


def test_unknown_sensitivity_label_fails_closed(world):
    sc, gov = world, world.governance
    body = obs("o-hiv", "P1")
    body["meta"] = {"security": [{"system": SENSITIVITY_SYSTEM, "code": "hiv"}]}
    sc.store.write([WriteOp("PUT", "Observation", "o-hiv", body)], source_org="GP1")
    hos = access(sc, "hos.doc", "HOS", "clinician")
    assert not gov.decide(hos, "Observation", "o-hiv").permitted
    assert not visible(gov, hos, "Observation", "o-hiv")


def test_unknown_category_is_not_in_any_role(world):
    sc, gov = world, world.governance
    gov.add_agreement("isa-2", "odd category", ["GP1", "HOS"], ["direct-care"],
                      ["genomics"], status="active")
    body = obs("o-genomics", "P1")
    body["meta"] = {"tag": [{"system": DATA_CATEGORY_SYSTEM, "code": "genomics"}]}
    sc.store.write([WriteOp("PUT", "Observation", "o-genomics", body)], source_org="GP1")
    hos = access(sc, "hos.doc", "HOS", "clinician")
    assert not gov.decide(hos, "Observation", "o-genomics").permitted
    assert not visible(gov, hos, "Observation", "o-genomics")


def test_agreement_for_another_purpose_or_in_another_state_shares_nothing(world):
    sc, gov = world, world.governance
    ch = access(sc, "ch.nurse", "CH1", "nurse")
    gov.declare_relationship(ch, "P1", "resident moving in to the care home")
    assert visible(gov, access(sc, "ch.nurse", "CH1", "nurse"), "Organization", "org-GP1")
    for status, purposes, eff, end in (
            ("active", ["planning", "research"], None, None),
            ("signed", ["direct-care"], None, None),
            ("suspended", ["direct-care"], None, None),
            ("active", ["direct-care"], "2999-01-01", None),
            ("active", ["direct-care"], None, "2000-01-01")):
        gov.add_agreement("isa-ch", "GP and care home", ["GP1", "CH1"], purposes, ["results"],
                          status=status, effective=eff, end=end)
        assert not visible(gov, access(sc, "ch.nurse", "CH1", "nurse"), "Observation",
                           "o-plain"), (status, purposes, eff, end)
    gov.add_agreement("isa-ch", "GP and care home", ["GP1", "CH1"], ["direct-care"],
                      ["results"], status="active")
    assert visible(gov, access(sc, "ch.nurse", "CH1", "nurse"), "Observation", "o-plain")
    gov.set_agreement_status("isa-ch", "withdrawn")
    assert not visible(gov, access(sc, "ch.nurse", "CH1", "nurse"), "Observation", "o-plain")


def test_sorted_search_cursor_cannot_be_replayed_by_another_viewer(world):
    sc, gov = world, world.governance
    first = gov.search(system(sc, "GP1"), "Observation", [("_sort", "_id"), ("_count", "1")])
    assert first.next_cursor
    admin = access(sc, "hos.admin", "HOS", "admin")  # may see no Observation at all
    page = gov.search(admin, "Observation", [("_sort", "_id"), ("_count", "1"),
                                             ("_cursor", first.next_cursor)])
    assert page.matches == []


def test_sorted_search_pages_match_the_policy(world):
    sc, gov = world, world.governance
    hos = access(sc, "hos.doc", "HOS", "clinician")
    got, cursor = [], None
    while True:
        params = [("_sort", "-_id"), ("_count", "1")] + ([("_cursor", cursor)] if cursor else [])
        page = gov.search(hos, "Observation", params)
        got += [s.id for s in page.matches]
        cursor = page.next_cursor
        if not cursor:
            break
    assert got == ["o-plain", "o-mental", "o-hos"]


def test_patient_scoped_token_include_stays_in_the_patient(world):
    sc, gov = world, world.governance
    # An Observation about P2 performed by P1 is in both compartments.
    sc.store.write([WriteOp("PUT", "Observation", "o-both", obs(
        "o-both", "P2", performer=[{"reference": "Patient/P1"}]))], source_org="GP1")
    p1 = access(sc, "gp.doc", "GP1", "clinician", scope="patient/*.rs", patient_id="P1")
    page = gov.search(p1, "Observation", [("_include", "Observation:subject")])
    assert "o-both" in {s.id for s in page.matches}
    assert {f"{s.type}/{s.id}" for s in page.includes} <= {"Patient/P1"}


def test_break_glass_belongs_to_the_role_and_organisation_it_was_broken_in(world):
    sc, gov = world, world.governance
    gov.add_staff("locum", "Dr Locum", [("HOS", "clinician"), ("CH1", "allied-health")])
    gov.add_agreement("isa-ch", "GP and care home", ["GP1", "CH1"], ["direct-care"],
                      ["results", "demographics"], status="active")
    gov.break_glass(access(sc, "locum", "HOS", "clinician"), "P1", "cardiac arrest in ED bay 3")
    elsewhere = access(sc, "locum", "CH1", "allied-health")
    assert not visible(gov, elsewhere, "Observation", "o-sexual")


def test_overwriting_a_withheld_resource_does_not_reveal_its_history(world):
    sc, gov = world, world.governance
    token = gov.issue_token("hos.doc", "HOS", "clinician")
    h = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        assert c.get("/fhir/Observation/o-sexual", headers=h).status_code == 403
        c.put("/fhir/Observation/o-sexual", headers=h, json=obs("o-sexual", "P1"))
        r = c.get("/fhir/Observation/o-sexual/_history/1", headers=h)
        assert "sexual-health" not in r.text
        hist = c.get("/fhir/Observation/o-sexual/_history", headers=h)
        assert "sexual-health" not in hist.text


def test_cannot_delete_what_you_cannot_see(world):
    sc, gov = world, world.governance
    token = gov.issue_token("ch.nurse", "CH1", "nurse")
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        r = c.delete("/fhir/Observation/o-plain", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (403, 404)
    assert visible(gov, access(sc, "gp.doc", "GP1", "clinician"), "Observation", "o-plain")
