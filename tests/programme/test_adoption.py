"""Adoption figures against a hand-written audit history, counted by hand and independently.

The care system (period 2026-01-05 Mon .. 2026-02-15 Sun, six weeks W1..W6):

    GP1   gp-practice, population 1000, live 2025-12-29
    GP2   gp-practice, population 1600, live 2026-01-05, LEFT 2026-01-31
    ACU   acute trust, live 2026-01-05
    alice nurse AND admin at GP1 (a user with two roles); erin clinician GP1 (never uses it)
    bob clinician ACU; dave nurse ACU (never uses it); ivy ig-lead ACU (not eligible)
    carol clinician GP2 (the organisation that left)

Week W4 (w/c 2026-01-26) has no use at all.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

import pytest

from sharedcare.governance.policy import Access
from sharedcare.programme import adoption
from sharedcare.store.repository import WriteOp

# (day, username, ods, role, action, outcome, patient)
HISTORY = [
    ("2025-12-30", "alice", "GP1", "nurse", "read", "0", "p1"),  # before the period
    ("2026-01-06", "alice", "GP1", "nurse", "read", "0", "p1"),
    ("2026-01-07", "bob", "ACU", "clinician", "search", "0", "p1"),
    ("2026-01-07", "bob", "ACU", "clinician", "read", "0", "p1"),
    ("2026-01-08", "carol", "GP2", "clinician", "read", "0", "p3"),
    ("2026-01-13", "alice", "GP1", "nurse", "read", "0", "p1"),
    ("2026-01-15", "carol", "GP2", "clinician", "everything", "0", "p3"),
    ("2026-01-20", "alice", "GP1", "admin", "read", "0", "p2"),
    ("2026-01-21", "bob", "ACU", "clinician", "read", "0", "p1"),
    ("2026-01-22", "carol", "GP2", "clinician", "read", "0", "p3"),
    # W4 (2026-01-26 .. 2026-02-01): nothing
    ("2026-02-03", "alice", "GP1", "nurse", "read", "0", "p1"),
    ("2026-02-04", "bob", "ACU", "clinician", "declare-relationship", "0", "p4"),
    ("2026-02-04", "bob", "ACU", "clinician", "read", "0", "p4"),
    ("2026-02-05", None, "ACU", "system", "read", "0", "p1"),  # a partner system: not a user
    ("2026-02-10", "alice", "GP1", "admin", "everything", "0", "p2"),
    ("2026-02-11", "bob", "ACU", "clinician", "break-glass", "0", "p5"),
    ("2026-02-11", "bob", "ACU", "clinician", "read", "0", "p5"),
    ("2026-02-12", "bob", "ACU", "clinician", "read", "4", "p6"),  # refused: not a view
    ("2026-02-12", "bob", "ACU", "clinician", "search", "0", None),  # no patient: not a view
    ("2026-02-16", "bob", "ACU", "clinician", "read", "0", "p1"),  # after the period
]
START, END = date(2026, 1, 5), date(2026, 2, 15)


@pytest.fixture
def world(sc):
    gov = sc.governance
    gov.add_organisation("GP1", "Brookside Medical Centre", "gp-practice", postcode="M21 2FJ",
                         go_live="2025-12-29", registered_population=1000)
    gov.add_organisation("GP2", "Old Mill Surgery", "gp-practice", postcode="M5 1ZF",
                         go_live="2026-01-05", left_on="2026-01-31", registered_population=1600)
    gov.add_organisation("ACU", "Manchester University NHS Foundation Trust", "acute-trust",
                         postcode="M13 9WL", go_live="2026-01-05")
    gov.add_staff("alice", "Alice", [("GP1", "nurse"), ("GP1", "admin")])
    gov.add_staff("erin", "Erin", [("GP1", "clinician")])
    gov.add_staff("bob", "Bob", [("ACU", "clinician")])
    gov.add_staff("dave", "Dave", [("ACU", "nurse")])
    gov.add_staff("ivy", "Ivy", [("ACU", "ig-lead")])
    gov.add_staff("carol", "Carol", [("GP2", "clinician")])
    for i, (day, user, ods, role, action, outcome, patient) in enumerate(HISTORY):
        access = Access(user, ods, role, kind="system" if user is None else "user",
                        client_id="feed" if user is None else None)
        gov.audit_trail.record(access, action, outcome, patient_id=patient,
                               glass=action == "break-glass",
                               recorded=f"{day}T10:{i:02d}:00.000000")
    sc.store.write([WriteOp("POST", "Patient", "", {"resourceType": "Patient",
                                                   "gender": "female"})], source_org="GP1")
    return sc


def views_of(rows):
    """The independent count: the definition of a record view, straight over HISTORY."""
    return [r for r in rows if r[5] == "0" and r[4] in ("read", "everything", "search")
            and r[6] and r[1] and START.isoformat() <= r[0] <= END.isoformat()]


def monday(d: str) -> date:
    x = date.fromisoformat(d)
    return x - timedelta(days=x.weekday())


def test_views_per_week_and_month_match_hand_counts(world):
    a = adoption.compute(world.engine, adoption.Filters(START, END))
    weekly = {r["week_starting"]: r["views"] for r in a.tables["views_by_week"].as_dicts()}
    # by hand: W1 4, W2 2, W3 3, W4 0 (no use: present, not missing), W5 2, W6 2
    assert weekly == {"2026-01-05": 4, "2026-01-12": 2, "2026-01-19": 3, "2026-01-26": 0,
                      "2026-02-02": 2, "2026-02-09": 2}
    independent = Counter(monday(r[0]).isoformat() for r in views_of(HISTORY))
    assert {k: v for k, v in weekly.items() if v} == dict(independent)
    users = {r["week_starting"]: r["active_users"] for r in a.tables["views_by_week"].as_dicts()}
    assert users["2026-01-05"] == 3 and users["2026-01-26"] == 0
    monthly = a.tables["views_by_month"].as_dicts()
    assert [(m["month"], m["views"], m["views_per_1000_population"]) for m in monthly] == [
        ("2026-01", 9, 3.5), ("2026-02", 4, 1.5)]  # 9000/2600, 4000/2600
    assert a.figures["views"] == 13 == len(views_of(HISTORY))
    assert a.figures["registered_population"] == 2600
    assert a.figures["views_per_1000_population"] == 5.0


def test_active_and_regular_users_two_roles_counted_once_per_org_role(world):
    a = adoption.compute(world.engine, adoption.Filters(START, END))
    assert a.figures["active_users"] == 3  # alice, bob, carol: alice once
    # regular = views in 3 of W3..W6: alice (W3 admin, W5 nurse, W6 admin) and bob (W3, W5, W6)
    assert a.figures["regular_users"] == 2
    rows = {(r["ods"], r["role"]): r for r in a.tables["users_by_org_role"].as_dicts()}
    assert set(rows) == {("GP1", "nurse"), ("GP1", "admin"), ("ACU", "clinician"),
                         ("GP2", "clinician")}
    assert rows[("GP1", "nurse")]["active_users"] == 1 and rows[("GP1", "admin")]["active_users"] == 1
    assert rows[("GP1", "nurse")]["views"] == 3 and rows[("GP1", "admin")]["views"] == 2
    # in neither role alone was alice regular (nurse: W5 only; admin: W3 and W6)
    assert rows[("GP1", "nurse")]["regular_users"] == 0
    assert rows[("GP1", "admin")]["regular_users"] == 0
    assert rows[("ACU", "clinician")]["regular_users"] == 1
    by_org = {r["ods"]: r for r in a.tables["users_by_org"].as_dicts()}
    assert by_org["GP1"]["active_users"] == 1 and by_org["GP1"]["regular_users"] == 1


def test_share_of_eligible_staff_this_month_and_the_organisation_that_left(world):
    a = adoption.compute(world.engine, adoption.Filters(START, END))
    by_org = {r["ods"]: r for r in a.tables["users_by_org"].as_dicts()}
    # GP1: eligible alice (two roles, one person) and erin; alice used it in February
    assert (by_org["GP1"]["eligible_staff"], by_org["GP1"]["used_this_month"]) == (2, 1)
    assert by_org["GP1"]["percent_used_this_month"] == 50.0
    # ACU: bob and dave eligible, ivy (IG lead) is not
    assert (by_org["ACU"]["eligible_staff"], by_org["ACU"]["used_this_month"]) == (2, 1)
    # GP2 left on 31 January: its January use still counts, but no share this month
    gp2 = by_org["GP2"]
    assert gp2["left_on"] == "2026-01-31" and gp2["status"] == "left"
    assert gp2["percent_used_this_month"] is None and gp2["views"] == 3
    assert "GP2" not in {r["ods"] for r in adoption.not_using(a)}
    assert by_org["RTEST"]["status"] == "not live"


def test_contributing_go_live_to_regular_and_rates(world):
    a = adoption.compute(world.engine, adoption.Filters(START, END))
    c = {r["ods"]: r["category"] for r in a.tables["contributing_viewing"].as_dicts()}
    assert c["GP1"] == "contributes and views" and c["ACU"] == "views only"
    assert c["RTEST"] == "neither"
    assert a.figures["contributing_organisations"] == 1
    assert a.figures["viewing_organisations"] == 3
    g = {r["ods"]: r for r in a.tables["go_live_to_regular_use"].as_dicts()}
    # alice: weeks of 29 Dec, 5 Jan, 12 Jan -> regular on 13 Jan, 15 days after go-live
    assert (g["GP1"]["regular_use_from"], g["GP1"]["days_from_go_live"]) == ("2026-01-13", 15)
    assert (g["GP2"]["regular_use_from"], g["GP2"]["days_from_go_live"]) == ("2026-01-22", 17)
    # bob: weeks of 5 Jan, 19 Jan, 2 Feb (window 12 Jan..2 Feb has 2) -> 11 Feb
    assert (g["ACU"]["regular_use_from"], g["ACU"]["days_from_go_live"]) == ("2026-02-11", 37)
    assert g["GP1"]["first_view"] == "2025-12-30"
    r = {x["ods"]: x for x in a.tables["break_glass_declared"].as_dicts()}
    assert (r["ACU"]["break_glass"], r["ACU"]["break_glass_per_1000_views"]) == (1, 200.0)
    assert r["ACU"]["declared_per_1000_views"] == 200.0
    assert a.figures["break_glass_per_1000_views"] == 76.9  # 1 / 13 views


def test_filters_by_role_organisation_and_period(world):
    nurse = adoption.compute(world.engine, adoption.Filters(START, END, role="nurse"))
    assert nurse.figures["views"] == 3 and nurse.figures["active_users"] == 1
    acu = adoption.compute(world.engine, adoption.Filters(START, END, ods="ACU"))
    assert acu.figures["views"] == 5
    assert [r["ods"] for r in acu.tables["users_by_org"].as_dicts()] == ["ACU"]
    f = adoption.filters_from({"from": "2026-02-02", "to": "2026-02-15"})
    feb = adoption.compute(world.engine, f)
    assert feb.figures["views"] == 4
    assert len(feb.tables["views_by_week"].rows) == 2
    # regular use looks back four weeks even when the period is shorter
    assert feb.figures["regular_users"] == 2


def test_filters_from_defaults_and_bad_input():
    f = adoption.filters_from({}, date(2026, 2, 15))
    assert f.end == date(2026, 2, 15) and f.start.weekday() == 0
    assert len(adoption.weeks_between(f.start, f.end)) == 26
    f = adoption.filters_from({"from": "nonsense", "to": "2026-01-01", "weeks": "4",
                               "org": "gp1 "}, date(2026, 2, 15))
    assert f.start == date(2025, 12, 8) and f.ods == "GP1"
    f = adoption.filters_from({"from": "2026-03-01", "to": "2026-01-01"})
    assert f.start < f.end


def test_every_table_exports_as_csv(world):
    a = adoption.compute(world.engine, adoption.Filters(START, END))
    for name, t in a.tables.items():
        text = t.csv()
        assert text.splitlines()[0].split(",") == t.columns, name
        assert len(text.splitlines()) == len(t.rows) + 1
