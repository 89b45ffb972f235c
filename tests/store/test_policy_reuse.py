"""The read policy's SQL is built once per policy shape and reused across requests (issue 16):
reuse must never stretch what a viewer may see. Time is read when each query runs, and the
agreements are part of the shape."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.policy import Access, now_text
from sharedcare.governance.schema import care_relationship
from sharedcare.store.repository import WriteOp


def _setup(sc):
    gov = sc.governance
    gov.add_organisation("RAAA1", "Trust A", "acute-trust")
    gov.add_organisation("RBBB1", "Clinic B", "community")
    gov.add_agreement("DSA-R", "reuse", ["RAAA1", "RBBB1"], ["direct-care"],
                      ["demographics", "results"], "active")
    gov.add_staff("dr.a", "Dr A", [("RAAA1", "clinician")])
    sc.store.write([
        WriteOp("PUT", "Patient", "p-reuse", {"resourceType": "Patient",
                                               "name": [{"family": "Reuse"}]}),
        WriteOp("PUT", "Observation", "o-reuse", {
            "resourceType": "Observation", "status": "final", "code": {"text": "potassium"},
            "subject": {"reference": "Patient/p-reuse"}})], source_org="RBBB1")
    return gov


def _seen(gov, access) -> int:
    page = gov.search(access, "Observation", [("subject", "Patient/p-reuse")])
    return len(page.matches)


def test_an_expiring_relationship_stops_counting_while_the_predicate_is_reused(sc):
    gov = _setup(sc)
    access = gov.prepare(Access("dr.a", "RAAA1", "clinician"))
    assert _seen(gov, access) == 0  # no relationship yet: the predicate is built here
    gov.declare_relationship(access, "p-reuse", "seen in clinic this morning", days=1)
    assert _seen(gov, access) == 1
    # A later request with the same shape reuses the built predicate ...
    again = gov.prepare(Access("dr.a", "RAAA1", "clinician"))
    assert again.policy.resource_filter() is access.policy.resource_filter()
    # ... and the relationship, expiring after it was built, no longer counts.
    with sc.engine.begin() as conn:
        conn.execute(update(care_relationship).where(care_relationship.c.patient_id == "p-reuse")
                     .values(expires=now_text()))
    time.sleep(0.01)
    assert _seen(gov, again) == 0
    assert _seen(gov, access) == 0
    # $everything's patient-confined policy is refused for the same reason.
    with pytest.raises(FHIRError) as refused:
        gov.everything(again, "p-reuse")
    assert refused.value.status == 403


def test_a_withdrawn_agreement_is_a_different_shape(sc):
    gov = _setup(sc)
    gov.declare_relationship(gov.prepare(Access("dr.a", "RAAA1", "clinician")), "p-reuse",
                             "seen in clinic this morning", days=1)
    before = gov.prepare(Access("dr.a", "RAAA1", "clinician"))
    assert _seen(gov, before) == 1
    assert len(gov.everything(before, "p-reuse").matches) == 2
    gov.set_agreement_status("DSA-R", "suspended")
    after = gov.prepare(Access("dr.a", "RAAA1", "clinician"))
    assert after.policy.resource_filter() is not before.policy.resource_filter()
    assert _seen(gov, after) == 0
    # B's Patient and Observation are both B's data: nothing of the record is shared now.
    with pytest.raises(FHIRError) as nothing:
        gov.everything(after, "p-reuse")
    assert nothing.value.status == 404
