"""The clinician's pages against a small demo: what each persona sees is exactly what governance
allows; refusals explain themselves; break glass; shared care plans; feedback; access log."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from sharedcare.fhir.codes import DATA_CATEGORY_SYSTEM, SENSITIVITY_SYSTEM, SOURCE_ORG_SYSTEM
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.schema import audit_event, feedback
from sharedcare.store.repository import WriteOp
from sharedcare.web.patient import ago, format_nhs

CLINICAL_PERSONAS = ["GP", "A&E doctor", "District nurse", "Mental health crisis team",
                     "Social worker", "Clinician with no relationship"]


def test_helpers():
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert ago("2026-11-25", now) == "today"
    assert ago("2026-11-24T10:00:00Z", now) == "yesterday"
    assert ago("2026-11-22", now) == "3 days ago"
    assert ago("2026-10-01", now) == "7 weeks ago"
    assert ago("2024-11-01", now) == "2 years ago"
    assert ago((now + timedelta(days=3)).isoformat(), now) == "in 3 days"
    assert ago(None) == ""
    assert format_nhs("9434765919") == "943 476 5919"


def test_sign_in_needed(web_app):
    from starlette.testclient import TestClient

    with TestClient(web_app) as c:
        r = c.get("/patients", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")


def test_find_by_nhs_number(demo, signed_in):
    c = signed_in(demo.personas["GP"].username)
    r = c.get("/patients")
    assert r.status_code == 200 and "Find a patient" in r.text
    spaced = format_nhs(demo.nhs)
    r = c.post("/patients", data={"csrf": c.csrf, "by": "nhs", "nhs": spaced})
    assert r.status_code == 200
    rows = re.findall(r'data-patient="([^"]+)"', r.text)
    assert rows == [demo.pid]
    patient = demo.gov.read(demo.access(demo.personas["GP"].username), "Patient", demo.pid).json()
    assert spaced in r.text
    assert patient["address"][0]["postalCode"] in r.text
    assert patient["generalPractitioner"][0]["display"] in r.text
    assert patient["name"][0]["family"].upper() in r.text


@pytest.mark.parametrize("value,message", [
    ("", "Enter an NHS number"),
    ("12345", "NHS number must be 10 digits"),
    ("9434765918", "check digit is wrong"),
])
def test_nhs_number_validation(demo, signed_in, value, message):
    c = signed_in(demo.personas["GP"].username)
    r = c.post("/patients", data={"csrf": c.csrf, "by": "nhs", "nhs": value})
    assert r.status_code == 400
    assert message in r.text and "There is a problem" in r.text
    assert 'href="#nhs"' in r.text


def test_find_by_name_and_birth_date(demo, signed_in):
    gp = demo.personas["GP"].username
    patient = demo.gov.read(demo.access(gp), "Patient", demo.pid).json()
    y, m, d = patient["birthDate"].split("-")
    c = signed_in(gp)
    r = c.post("/patients", data={"csrf": c.csrf, "by": "name",
                                  "family": patient["name"][0]["family"].lower(),
                                  "dob-day": d, "dob-month": m, "dob-year": y})
    assert r.status_code == 200
    assert demo.pid in re.findall(r'data-patient="([^"]+)"', r.text)
    r = c.post("/patients", data={"csrf": c.csrf, "by": "name", "family": "Wood",
                                  "dob-day": "31", "dob-month": "2", "dob-year": "1950"})
    assert r.status_code == 400 and "real date" in r.text


def test_search_is_governed(demo, signed_in):
    """A clinician with no relationship does not find the patient, and is told why."""
    c = signed_in(demo.outsider(0))
    r = c.post("/patients", data={"csrf": c.csrf, "by": "nhs", "nhs": demo.nhs})
    assert r.status_code == 200
    assert re.findall(r'data-patient="([^"]+)"', r.text) == []
    assert "No record you can open" in r.text and "legitimate relationship" in r.text
    assert "break glass" in r.text


@pytest.mark.parametrize("label", CLINICAL_PERSONAS)
def test_personas_see_exactly_what_governance_allows(demo, signed_in, items_of, label):
    persona = demo.personas[label]
    access = demo.access(persona.username)
    try:
        allowed = demo.governed_items(access)
    except FHIRError as e:
        allowed = e
    r = signed_in(persona.username).get(f"/patients/{demo.pid}")
    if isinstance(allowed, FHIRError):
        assert r.status_code == allowed.status == 403
        assert "Why can't I see this?" in r.text
        assert items_of(r.text) == set()
        return
    assert r.status_code == 200
    shown = items_of(r.text)
    assert shown == allowed, (sorted(shown - allowed)[:5], sorted(allowed - shown)[:5])
    if label == "Social worker":
        assert not any(i.startswith(("Observation/", "MedicationRequest/")) for i in shown)
        assert 'id="social-care"' in r.text
    if label == "GP":
        assert 'id="social-care"' in r.text  # the GP's role includes social care


def test_every_item_shows_source_and_recency(demo, signed_in, blocks_of):
    from sharedcare.web.patient import org_names

    r = signed_in(demo.personas["GP"].username).get(f"/patients/{demo.pid}")
    names = org_names(demo.sc)
    blocks = blocks_of(r.text)
    assert len(blocks) > 50
    for ref, body in blocks.items():
        if ref.startswith("Patient/"):
            continue
        assert "sc-source-tag" in body, ref
        assert "<time" in body, ref
        tag = re.search(r'sc-source-tag[^>]*>.*?Source: </span>([^<]+)<', body, re.DOTALL)
        assert "sc-ago" in body, ref
        assert tag and tag.group(1) in names.values(), ref
    assert "ago)" in r.text


def test_record_sections(demo, signed_in):
    r = signed_in(demo.personas["GP"].username).get(f"/patients/{demo.pid}")
    t = r.text
    for heading in ("Allergies and adverse reactions", "Current medicines", "Active problems",
                    "Care plans", "Care team and key contacts", "Timeline across settings",
                    "Documents and letters", "Results"):
        assert heading in t, heading
    assert "<svg" in t and 'role="img"' in t and "HbA1c over time" in t
    assert "Blood pressure values as a table" in t
    assert "DISCHARGE SUMMARY" in t  # the letter's text, readable in the page
    assert "Crisis" in t


def test_no_relationship_explained_then_declare(demo, signed_in, items_of):
    user = demo.outsider(1)
    c = signed_in(user)
    r = c.get(f"/patients/{demo.pid}")
    assert r.status_code == 403
    assert "no legitimate relationship" in r.text
    assert f'action="/patients/{demo.pid}/declare"' in r.text
    assert f'action="/patients/{demo.pid}/break-glass"' in r.text
    r = c.post(f"/patients/{demo.pid}/declare", data={"csrf": c.csrf, "reason": "too short"})
    assert r.status_code == 403 and "at least 10 characters" in r.text
    r = c.post(f"/patients/{demo.pid}/declare",
               data={"csrf": c.csrf, "reason": "Admitted under my team this morning"})
    assert r.status_code == 200 and "Relationship declared" in r.text
    assert items_of(r.text) == demo.governed_items(demo.access(user))


def test_break_glass_reveals_the_record(demo, signed_in, items_of):
    user = demo.outsider(2)
    c = signed_in(user)
    r = c.post(f"/patients/{demo.pid}/break-glass", data={"csrf": c.csrf, "reason": "urgent"})
    assert r.status_code == 403 and "at least 10 characters" in r.text
    r = c.post(f"/patients/{demo.pid}/break-glass",
               data={"csrf": c.csrf, "reason": "Collapsed in the department, no history"})
    assert r.status_code == 200
    assert "You broke glass" in r.text and "Emergency access" in r.text
    shown = items_of(r.text)
    assert shown and shown == demo.governed_items(demo.access(user))


def test_withheld_sensitive_items_announced_and_break_glass(demo, signed_in, items_of):
    gp = demo.personas["GP"]
    sensitive = {"resourceType": "Condition", "subject": {"reference": f"Patient/{demo.pid}"},
                 "meta": {"security": [{"system": SENSITIVITY_SYSTEM, "code": "sexual-health"}],
                          "tag": [{"system": DATA_CATEGORY_SYSTEM, "code": "gp-summary"}]},
                 "clinicalStatus": {"coding": [{
                     "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                     "code": "active"}]},
                 "code": {"text": "Test sensitive condition"}, "recordedDate": "2026-01-05"}
    demo.sc.store.write([WriteOp("PUT", "Condition", "web-test-sensitive", sensitive)],
                        source_org=gp.org)
    nurse = demo.staff_at(demo.personas["District nurse"].org, "nurse")
    access = demo.access(nurse)
    view = demo.gov.everything(access, demo.pid, 1000)
    assert view.withheld_sensitive >= 1
    c = signed_in(nurse)
    r = c.get(f"/patients/{demo.pid}")
    n = view.withheld_sensitive
    assert f"{n} item{'s' if n != 1 else ''} withheld — sensitive" in r.text
    assert "Condition/web-test-sensitive" not in items_of(r.text)
    assert "Break glass to see withheld items" in r.text
    r = c.post(f"/patients/{demo.pid}/break-glass", data={"csrf": c.csrf, "reason": "x"})
    assert r.status_code == 200 and "at least 10 characters" in r.text
    r = c.post(f"/patients/{demo.pid}/break-glass",
               data={"csrf": c.csrf, "reason": "Needs the full history for urgent treatment"})
    assert r.status_code == 200
    assert "Condition/web-test-sensitive" in items_of(r.text)
    assert "withheld — sensitive" not in r.text
    # the GP (the source) always saw it
    assert "Condition/web-test-sensitive" in items_of(signed_in(gp.username).get(
        f"/patients/{demo.pid}").text)


def _plan_form(csrf, **over):
    data = {"csrf": csrf, "kind": "end-of-life", "title": "",
            "what-matters": "Being at home with my cat; no more hospital stays",
            "cpr": "CPR attempts not recommended", "preferred-place": "Home",
            "other-recommendations": "Anticipatory medicines at home",
            "contacts": "Daughter Jane 07700 900123"}
    data.update(over)
    return data


def test_care_plan_create_update_history_conflict(demo, signed_in, items_of):
    gp = demo.personas["GP"]
    c = signed_in(gp.username)
    r = c.get(f"/patients/{demo.pid}/care-plans/new?kind=end-of-life")
    assert r.status_code == 200 and "CPR recommendation" in r.text
    # validation
    r = c.post(f"/patients/{demo.pid}/care-plans/new",
               data=_plan_form(c.csrf, **{"what-matters": "", "cpr": ""}))
    assert r.status_code == 400
    assert "Enter what matters to the person" in r.text and "Select the CPR recommendation" in r.text
    # create
    r = c.post(f"/patients/{demo.pid}/care-plans/new", data=_plan_form(c.csrf),
               follow_redirects=False)
    assert r.status_code == 303
    plan_id = r.headers["location"].split("/care-plans/")[1].split("?")[0]
    r = c.get(r.headers["location"])
    assert r.status_code == 200 and "Being at home with my cat" in r.text
    assert "Version 1" in r.text
    stored = demo.gov.read(demo.access(gp.username), "CarePlan", plan_id).json()
    tags = {t["system"]: t["code"] for t in stored["meta"]["tag"]}
    assert tags[SOURCE_ORG_SYSTEM] == gp.org and tags[DATA_CATEGORY_SYSTEM] == "care-plans"
    # visible to other authorised partners through the normal policy
    nurse = demo.personas["District nurse"].username
    assert f"CarePlan/{plan_id}" in demo.governed_items(demo.access(nurse))
    page = signed_in(nurse).get(f"/patients/{demo.pid}").text
    assert f"CarePlan/{plan_id}" in items_of(page)
    # update (by the district nurse, another organisation)
    cn = signed_in(nurse)
    r = cn.get(f"/care-plans/{plan_id}/edit")
    assert r.status_code == 200 and 'name="version" value="1"' in r.text
    r = cn.post(f"/care-plans/{plan_id}/edit",
                data=_plan_form(cn.csrf, version="1", **{"preferred-place": "Hospice",
                                                         "change-note": "Discussed with family"}))
    assert r.status_code == 200 and "Care plan updated (version 2)" in r.text
    # a stale edit is refused with a clear conflict message
    r = c.post(f"/care-plans/{plan_id}/edit",
               data=_plan_form(c.csrf, version="1", contacts="Son Peter 07700 900456"))
    assert r.status_code == 409
    assert "Someone else changed this plan while you were editing" in r.text
    assert "Your changes have not been saved" in r.text and "Hospice" in r.text
    assert 'name="version" value="2"' in r.text
    # history
    r = c.get(f"/care-plans/{plan_id}/history")
    assert r.status_code == 200
    assert re.findall(r'data-version="(\d+)"', r.text) == ["2", "1"]
    assert "Preferred place of care" in r.text and "Discussed with family" in r.text
    # the writes were audited
    with demo.sc.engine.connect() as conn:
        actions = [a for (a,) in conn.execute(select(audit_event.c.action).where(
            audit_event.c.entity == f"CarePlan/{plan_id}", audit_event.c.action.in_(
                ["create", "update"])))]
    assert sorted(actions) == ["create", "update"]


def test_crisis_plan_and_roles_that_cannot_write(demo, signed_in):
    mh = demo.personas["Mental health crisis team"]
    c = signed_in(mh.username)
    r = c.post(f"/patients/{demo.pid}/care-plans/new",
               data={"csrf": c.csrf, "kind": "crisis", "what-matters": "My dog and my garden",
                     "what-helps": "Quiet space, call my sister", "contacts": "Sister 0161 496 0000"},
               follow_redirects=True)
    assert r.status_code == 200 and "Crisis plan" in r.text
    c2 = signed_in(demo.outsider(3))
    r = c2.get(f"/patients/{demo.pid}/care-plans/new?kind=crisis")
    assert r.status_code == 403 and "no legitimate relationship" in r.text


def test_feedback_lands_in_inbox(demo, signed_in):
    c = signed_in(demo.personas["District nurse"].username)
    r = c.post("/feedback", data={"csrf": c.csrf, "kind": "missing",
                                  "text": "Wound care photos are missing", "page": "/patients"},
               follow_redirects=True)
    assert r.status_code == 200 and "Thank you" in r.text
    with demo.sc.engine.connect() as conn:
        row = conn.execute(select(feedback.c.kind, feedback.c.page, feedback.c.ods)
                           .where(feedback.c.text == "Wound care photos are missing")).first()
    assert row == ("missing", "/patients", demo.personas["District nurse"].org)


def test_patient_access_log(demo, web_app, signed_in):
    from starlette.testclient import TestClient

    gp = demo.personas["GP"]
    signed_in(gp.username).get(f"/patients/{demo.pid}")
    outsider = demo.personas["Clinician with no relationship"]
    # The outsider's attempt (refused, or permitted if an earlier test gave them a declared
    # relationship) is in the patient's log either way: every access is.
    assert signed_in(outsider.username).get(f"/patients/{demo.pid}").status_code in (200, 403)
    glass_user = demo.outsider(4)
    demo.gov.break_glass(demo.access(glass_user), demo.pid, "Test: emergency admission")
    patient = demo.personas["Patient"]
    with TestClient(web_app) as c:
        c.get("/sign-in")
        r = c.post("/sign-in", data={"username": patient.username, "password": patient.password,
                                     "csrf": c.cookies.get("sc_csrf"), "next": "/"},
                   follow_redirects=True)
        assert r.status_code == 200 and "Who has looked at your record" in r.text
        t = r.text
        from sharedcare.web.patient import org_names

        names = org_names(demo.sc)
        assert names[gp.org] in t and names[outsider.org] in t
        assert "Test: emergency admission" in t and "sc-glass-row" in t
        assert "Looked at your whole record" in t
        # staff pages are not for patients
        assert c.get("/patients").status_code == 403
    with demo.sc.engine.connect() as conn:
        viewed = conn.execute(select(audit_event.c.role).where(
            audit_event.c.patient_id == demo.pid, audit_event.c.entity == "access log")).all()
    assert viewed and viewed[-1][0] == "patient"


def test_roles_without_care_access(demo, signed_in):
    ig = demo.personas["IG lead"]
    r = signed_in(ig.username).get(f"/patients/{demo.pid}")
    assert r.status_code == 403
    r = signed_in(ig.username).get("/my-record/access-log")
    assert r.status_code == 403


def test_sign_in_form_needs_this_sites_csrf_token(web_app, demo):
    from starlette.testclient import TestClient

    gp = demo.personas["GP"]
    with TestClient(web_app) as c:
        # A form posted from elsewhere (no token from our page) does not sign anyone in.
        r = c.post("/sign-in", data={"username": gp.username, "password": gp.password,
                                     "next": "/"}, follow_redirects=False)
        assert r.status_code == 400 and "sc_session" not in c.cookies
