"""'Why can't I see this?': decide() reasons, withheld counts, break-glass and declarations."""

from __future__ import annotations

from datetime import datetime

import pytest
from small_world import access, build
from sqlalchemy import select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.schema import break_glass, care_relationship


@pytest.fixture
def world(sc):
    build(sc)
    return sc


def reasons(d) -> str:
    return " | ".join(d.reasons)


def test_reasons_read_sensibly(world):
    sc, gov = world, world.governance
    hos = access(sc, "hos.doc", "HOS", "clinician")
    gp = access(sc, "gp.doc", "GP1", "clinician")
    ch = access(sc, "ch.nurse", "CH1", "nurse")

    own = gov.decide(gp, "Observation", "o-sexual")
    assert own.permitted and "recorded by your organisation (GP1)" in reasons(own)
    assert "registered with GP1" in reasons(own)

    shared = gov.decide(hos, "Observation", "o-plain")
    assert shared.permitted
    assert "active sharing agreement with GP1 covers results" in reasons(shared)
    assert "open encounter at HOS (Encounter/e-1)" in reasons(shared)

    none = gov.decide(ch, "Observation", "o-plain")
    assert not none.permitted
    assert "no active sharing agreement lets GP1 share results data with CH1" in reasons(none)
    assert "CH1 has no legitimate relationship with this patient" in reasons(none)

    norel = gov.decide(hos, "Observation", "o-p2")
    assert not norel.permitted
    assert reasons(norel).startswith("HOS has no legitimate relationship with this patient")

    sens = gov.decide(hos, "Observation", "o-sexual")
    assert not sens.permitted
    assert "sensitive information" in reasons(sens)
    assert "break glass if this is an emergency" in reasons(sens)
    assert "sexual" not in reasons(sens)  # the refusal must not disclose what kind
    assert gov.decide(hos, "Observation", "o-mental").permitted  # clinicians may see MH

    cat = gov.decide(access(sc, "hos.admin", "HOS", "admin"), "Observation", "o-plain")
    assert "the admin role does not include results information" in reasons(cat)

    gov.record_choice("P1", "objection-from", "GP1")
    obj = gov.decide(hos, "Observation", "o-plain")
    assert not obj.permitted and "the patient has objected to this sharing" in reasons(obj)
    assert gov.decide(hos, "Observation", "o-hos").permitted  # HOS's own data stays visible
    gov.withdraw_choice("P1", "objection-from", "GP1")
    assert gov.decide(hos, "Observation", "o-plain").permitted

    gov.break_glass(hos, "P1", "anaphylaxis in ED, needs history")
    glass = gov.decide(hos, "Observation", "o-sexual")
    assert glass.permitted
    assert "you broke glass: anaphylaxis in ED, needs history" in reasons(glass)

    ig = gov.decide(access(sc, "hos.ig", "HOS", "ig-lead"), "Observation", "o-hos")
    assert not ig.permitted and "does not give access to care records" in reasons(ig)
    assert gov.decide(ch, "Organization", "org-GP1").permitted
    assert "is not known" in reasons(gov.decide(hos, "Observation", "nope"))


def test_decide_matches_read(world):
    """The explanation and the query agree, for every viewer and resource of the small world."""
    sc, gov = world, world.governance
    viewers = [access(sc, u, o, r) for u, o, r in (
        ("hos.doc", "HOS", "clinician"), ("gp.doc", "GP1", "clinician"),
        ("hos.admin", "HOS", "admin"), ("ch.nurse", "CH1", "nurse"), ("hos.ig", "HOS", "ig-lead"))]
    items = [("Observation", i) for i in ("o-plain", "o-sexual", "o-mental", "o-p2", "o-hos")] + \
        [("Patient", "P1"), ("Patient", "P2"), ("Encounter", "e-1"), ("Organization", "org-HOS")]
    for a in viewers:
        for t, i in items:
            try:
                gov.read(a, t, i)
                seen = True
            except FHIRError:
                seen = False
            assert gov.decide(a, t, i).permitted == seen, (a.username, t, i)


def test_everything_reports_withheld_counts_without_revealing_them(world):
    sc, gov = world, world.governance
    hos = access(sc, "hos.doc", "HOS", "clinician")
    view = gov.everything(hos, "P1")
    got = {f"{s.type}/{s.id}" for s in view.matches}
    assert "Observation/o-sexual" not in got
    assert {"Patient/P1", "Observation/o-plain", "Observation/o-mental", "Observation/o-hos",
            "Encounter/e-1"} <= got
    assert view.withheld_sensitive == 1
    note = view.withheld_notes[0].diagnostics if hasattr(view.withheld_notes[0], "diagnostics") \
        else str(view.withheld_notes[0])
    assert "1 item withheld" in note
    nurse_admin = access(sc, "hos.admin", "HOS", "admin")
    assert gov.everything(nurse_admin, "P1").withheld_sensitive == 0  # not hers to see anyway

    token = gov.issue_token("hos.doc", "HOS", "clinician")
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        r = c.get("/fhir/Patient/P1/$everything", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    text = r.text
    assert "o-sexual" not in text and "sexual-health" not in text
    outcome = [e["resource"] for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "1 item withheld" in outcome[0]["issue"][0]["diagnostics"]
    assert r.json()["total"] == len([e for e in r.json()["entry"]
                                     if e["search"]["mode"] == "match"])

    gov.break_glass(hos, "P1", "collapsed on the ward, consultant review")
    view = gov.everything(hos, "P1")
    assert "Observation/o-sexual" in {f"{s.type}/{s.id}" for s in view.matches}
    assert view.withheld_sensitive == 0 and not view.withheld_notes


@pytest.mark.parametrize("reason", ["", "   ", "urgent", "  too short  ", None])
def test_break_glass_needs_a_reason(world, reason):
    sc, gov = world, world.governance
    hos = access(sc, "hos.doc", "HOS", "clinician")
    with pytest.raises(FHIRError) as e:
        gov.break_glass(hos, "P2", reason)
    assert e.value.status == 400
    with pytest.raises(FHIRError):
        gov.read(hos, "Patient", "P2")


def test_break_glass_is_time_limited_and_role_limited(world):
    sc, gov = world, world.governance
    hos = access(sc, "hos.doc", "HOS", "clinician")
    with pytest.raises(FHIRError) as e:
        gov.break_glass(access(sc, "hos.admin", "HOS", "admin"), "P2", "a long enough reason")
    assert e.value.status == 403
    gov.break_glass(hos, "P2", "unconscious, arrived by ambulance")
    with sc.engine.connect() as c:
        started, expires = c.execute(select(break_glass.c.started, break_glass.c.expires)).one()
    span = datetime.fromisoformat(expires) - datetime.fromisoformat(started)
    assert span.total_seconds() == 240 * 60
    assert gov.read(hos, "Patient", "P2")
    # When it runs out, access goes with it.
    with sc.engine.begin() as c:
        c.execute(break_glass.update().values(expires="2000-01-01T00:00:00.000000"))
    with pytest.raises(FHIRError) as e:
        gov.read(hos, "Patient", "P2")
    assert e.value.status == 403
    assert not any(r.startswith("you broke glass")
                   for r in gov.decide(hos, "Patient", "P2").reasons)


def test_declared_relationship_is_pending_review(world):
    sc, gov = world, world.governance
    hos = access(sc, "hos.doc", "HOS", "clinician")
    with pytest.raises(FHIRError) as e:
        gov.declare_relationship(hos, "P2", "short")
    assert e.value.status == 400
    with pytest.raises(FHIRError) as e:
        gov.declare_relationship(access(sc, "hos.admin", "HOS", "admin"), "P2",
                                 "booking an outpatient slot")
    assert e.value.status == 403
    gov.declare_relationship(hos, "P2", "seeing in fracture clinic tomorrow")
    with sc.engine.connect() as c:
        row = c.execute(select(care_relationship).where(
            care_relationship.c.kind == "declared")).mappings().one()
    assert (row["patient_id"], row["ods"], row["username"], row["review_status"]) == \
        ("P2", "HOS", "hos.doc", "pending")
    assert row["expires"] is not None
    assert gov.read(hos, "Patient", "P2")
    assert "you declared a relationship: seeing in fracture clinic tomorrow" in \
        gov.decide(hos, "Patient", "P2").reasons
    # Only the person who declared it: a colleague at the same organisation gets nothing.
    colleague = access(sc, "dual", "HOS", "clinician")
    with pytest.raises(FHIRError) as e:
        gov.read(colleague, "Patient", "P2")
    assert e.value.status == 403
