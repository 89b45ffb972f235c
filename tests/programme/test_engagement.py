"""Feedback triage, "you said, we did", champions and readiness assessments over time."""

from __future__ import annotations

import pytest
from sqlalchemy import insert

from sharedcare.governance.schema import feedback
from sharedcare.programme import engagement, readiness


def add_feedback(sc, kind="missing", text="Please show results first", ods="RTEST"):
    with sc.engine.begin() as conn:
        return conn.execute(insert(feedback).values(
            created="2026-01-01T10:00:00.000000", username="u", ods=ods, role="nurse",
            page="/patients", kind=kind, text=text, status="new")).inserted_primary_key[0]


def test_triage_new_planned_done_with_response(sc):
    fid = add_feedback(sc)
    engagement.triage(sc.engine, fid, "planned", theme="results")
    assert engagement.inbox(sc.engine, status="planned")[0]["theme"] == "results"
    with pytest.raises(engagement.EngagementError, match="Write a response"):
        engagement.triage(sc.engine, fid, "done", theme="results")
    engagement.triage(sc.engine, fid, "done", theme="results", ods="RTEST",
                      response="Results now come first.")
    done = engagement.you_said_we_did(sc.engine)
    assert [(r["text"], r["response"], r["organisation"]) for r in done] == [
        ("Please show results first", "Results now come first.", "Test Partner System Trust")]
    with pytest.raises(engagement.EngagementError, match="cannot be moved to new"):
        engagement.triage(sc.engine, fid, "new")
    with pytest.raises(engagement.EngagementError, match="Status must be"):
        engagement.triage(sc.engine, fid, "archived")
    with pytest.raises(engagement.EngagementError, match="no feedback item"):
        engagement.triage(sc.engine, 999, "planned")


def test_wont_do_is_not_on_you_said_we_did_and_counts_by_theme(sc):
    a, b, c = add_feedback(sc), add_feedback(sc, "idea", "Dark mode"), add_feedback(sc, "wrong")
    engagement.triage(sc.engine, a, "planned", theme="results")
    engagement.triage(sc.engine, b, "wont-do", theme="look and feel", response="Not now.")
    engagement.triage(sc.engine, c, "new", theme="results")
    assert engagement.you_said_we_did(sc.engine) == []
    counts = engagement.feedback_counts(sc.engine)
    assert counts["theme"][0] == ("results", 2)
    assert counts["open_theme"] == [("results", 2)]
    assert dict(counts["kind"]) == {"Something is missing": 1, "An idea": 1,
                                    "Something is wrong": 1}


def test_champions_register(sc):
    engagement.add_champion(sc.engine, "Dr Asha Patel", "clinical-champion", "rtest", "GP",
                            since="2026-03-01")
    engagement.add_champion(sc.engine, "Sam Lee", "design-group")
    rows = engagement.champions(sc.engine)
    assert [(r["name"], r["group_name"], r["ods"]) for r in rows] == [
        ("Dr Asha Patel", "clinical-champion", "RTEST"), ("Sam Lee", "design-group", None)]
    with pytest.raises(engagement.EngagementError):
        engagement.add_champion(sc.engine, "", "design-group")
    with pytest.raises(engagement.EngagementError):
        engagement.add_champion(sc.engine, "X", "fan-club")


def test_readiness_assessments_over_time(sc):
    fw = readiness.FRAMEWORK
    lead = fw.theme("leadership")
    first = {e.id: True for e in lead.level(1).elements}
    # level 2 is partly met and one level-3 statement is met: neither counts yet
    second = first | {lead.level(2).elements[0].id: True, lead.level(3).elements[0].id: True}
    engagement.save_assessment(sc.engine, first, "callum", "2026-01-10")
    engagement.save_assessment(sc.engine, second, "callum", "2026-04-10")
    rows = engagement.assessments(sc.engine)
    assert [r["taken_on"] for r in rows] == ["2026-01-10", "2026-04-10"]
    assert rows[0]["results"]["leadership"].level == 1
    assert rows[1]["results"]["leadership"].level == 1
    assert rows[1]["results"]["leadership"].met_above == (lead.level(3).elements[0].id,)
    assert rows[1]["results"]["partnerships"].level == 0
    with pytest.raises(ValueError, match="unknown readiness element"):
        engagement.save_assessment(sc.engine, {"leadership.9z": True}, "callum")


def test_seed_examples_fill_empty_tables_once(sc):
    sc.governance.add_staff("n1", "N", [("RTEST", "nurse")])
    first = engagement.seed_examples(sc.engine)
    assert first["feedback"] == len(engagement.EXAMPLE_FEEDBACK) and first["assessments"] == 2
    assert engagement.seed_examples(sc.engine) == {"feedback": 0, "assessments": 0,
                                                   "champions": 0}
