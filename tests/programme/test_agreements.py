"""The sharing agreements workflow: lifecycle rules, signatures, and what viewers see."""

from __future__ import annotations

import pytest

from sharedcare.governance.policy import Access
from sharedcare.programme import agreements as agr

LEAD = Access("callum", "ACU", "programme-lead")
IG_ACU = Access("robert", "ACU", "ig-lead")
IG_GP = Access("gina", "GP1", "ig-lead")
IG_OTHER = Access("oscar", "OTH", "ig-lead")
GP_DOCTOR = Access("greg", "GP1", "clinician")


@pytest.fixture
def gov(sc):
    g = sc.governance
    g.add_organisation("ACU", "Manchester University NHS Foundation Trust", "acute-trust")
    g.add_organisation("GP1", "Brookside Medical Centre", "gp-practice")
    g.add_organisation("OTH", "Elsewhere Hospice", "hospice")
    return g


def draft(gov, **kw) -> str:
    args = {"title": "GP summary to the acute trust", "parties": ["ACU", "GP1"],
            "purposes": ["direct-care"], "categories": ["gp-summary", "results"],
            "effective": "2020-01-01", "end": None} | kw
    return agr.create_draft(gov, LEAD, **args)


def viewer_sees(gov) -> dict:
    """What a clinician at the acute trust may see from other organisations, right now."""
    return gov.prepare(Access("doc", "ACU", "clinician")).shared_with


def test_full_lifecycle_and_what_the_viewer_sees(gov):
    aid = draft(gov)
    assert agr.get(gov.engine, aid).status == "draft"
    assert viewer_sees(gov) == {}
    with pytest.raises(agr.AgreementError, match="every party has signed"):
        agr.activate(gov, LEAD, aid)
    with pytest.raises(agr.AgreementError, match="circulated"):
        agr.sign(gov, IG_ACU, aid)  # not circulated yet
    agr.circulate(gov, LEAD, aid)
    assert agr.sign(gov, IG_ACU, aid) is False
    with pytest.raises(agr.AgreementError, match="Still to sign: Brookside Medical Centre"):
        agr.activate(gov, LEAD, aid)
    assert agr.sign(gov, IG_GP, aid) is True  # the last signature
    a = agr.get(gov.engine, aid)
    assert a.status == "signed" and a.all_signed
    assert {p.ods: p.signed_by for p in a.parties} == {"ACU": "robert", "GP1": "gina"}
    assert all(p.signed_at for p in a.parties)
    assert viewer_sees(gov) == {}  # signed is not active
    agr.activate(gov, LEAD, aid)
    assert viewer_sees(gov)["GP1"] == frozenset({"gp-summary", "results"})
    agr.suspend(gov, LEAD, aid, "incident review")
    assert "GP1" not in viewer_sees(gov)  # at once: the cache was cleared
    agr.reinstate(gov, IG_ACU, aid)
    assert "GP1" in viewer_sees(gov)
    agr.review(gov, LEAD, aid, "2020-06-30", "annual review")
    assert agr.get(gov.engine, aid).end == "2020-06-30"
    assert "GP1" not in viewer_sees(gov)  # the new end date is in the past
    agr.expire(gov, LEAD, aid)
    assert agr.get(gov.engine, aid).status == "expired"
    with pytest.raises(agr.AgreementError, match="already expired"):
        agr.withdraw(gov, LEAD, aid)
    steps = [h["action"] for h in agr.history(gov.engine, aid)]
    assert steps == ["agreement-draft", "agreement-circulate", "agreement-sign",
                     "agreement-sign", "agreement-activate", "agreement-suspend",
                     "agreement-reinstate", "agreement-review", "agreement-expire"]


def test_only_that_partys_ig_lead_signs(gov):
    aid = draft(gov)
    agr.circulate(gov, LEAD, aid)
    with pytest.raises(agr.AgreementError, match="not a party") as e:
        agr.sign(gov, IG_OTHER, aid)
    assert e.value.status == 403
    with pytest.raises(agr.AgreementError, match="Only an IG lead"):
        agr.sign(gov, GP_DOCTOR, aid)
    with pytest.raises(agr.AgreementError, match="Only an IG lead"):
        agr.sign(gov, LEAD, aid)
    agr.sign(gov, IG_GP, aid)
    with pytest.raises(agr.AgreementError, match="already signed"):
        agr.sign(gov, IG_GP, aid)
    a = agr.get(gov.engine, aid)
    assert [p.ods for p in a.unsigned] == ["ACU"]
    assert {"ods": "ACU", "organisation": "Manchester University NHS Foundation Trust",
            "agreement": aid, "title": a.title, "status": "circulated"} in agr.not_signed(
        gov.engine)


def test_rules_and_clear_errors(gov):
    with pytest.raises(agr.AgreementError, match="at least two parties"):
        draft(gov, parties=["ACU"])
    with pytest.raises(agr.AgreementError, match="Unknown organisations: NOPE"):
        draft(gov, parties=["ACU", "NOPE"])
    with pytest.raises(agr.AgreementError, match="end date must be after"):
        draft(gov, effective="2026-06-01", end="2026-01-01")
    with pytest.raises(agr.AgreementError, match="programme lead or an IG lead"):
        agr.create_draft(gov, GP_DOCTOR, "x", ["ACU", "GP1"], ["direct-care"], ["results"])
    aid = draft(gov)
    with pytest.raises(agr.AgreementError, match="Only an active agreement can be suspended"):
        agr.suspend(gov, LEAD, aid)
    agr.withdraw(gov, LEAD, aid)
    assert agr.get(gov.engine, aid).status == "withdrawn"
    with pytest.raises(agr.AgreementError) as e:
        agr.get(gov.engine, "DSA-NOPE")
    assert e.value.status == 404


def test_plain_english_summary():
    a = agr.Agreement("X", "t", ["direct-care"], ["gp-summary", "results"], "active",
                      "2026-06-01", "2027-05-31", None, "", "",
                      [agr.Party("R0A", "Manchester University NHS Foundation Trust", None, None),
                       agr.Party("P1", "Brookside Medical Centre", None, None)])
    assert a.plain == ("Manchester University NHS FT and Brookside Medical Centre share GP "
                       "summary and results for direct care, from 1 June 2026 to 31 May 2027")
    many = agr.Agreement("Y", "t", ["direct-care", "planning"], ["results"], "active", None, None,
                         None, "", "", [agr.Party(f"O{i}", f"Org {i}", None, None)
                                        for i in range(6)])
    assert many.plain.startswith("Org 0, Org 1, Org 2 and 3 other organisations share results "
                                 "for direct care and planning")


def test_transparency_lists_only_active_agreements_in_force(gov):
    live = draft(gov, title="Live one")
    agr.circulate(gov, LEAD, live)
    agr.sign(gov, IG_ACU, live)
    agr.sign(gov, IG_GP, live)
    agr.activate(gov, LEAD, live)
    draft(gov, title="Still a draft")
    assert [a.title for a in agr.transparency(gov.engine)] == ["Live one"]
