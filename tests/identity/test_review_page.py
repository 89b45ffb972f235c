"""The identity review pages: the IG lead (or system administrator) sees each possible match
with its evidence and the two records side by side, confirms, rejects or unlinks with a reason,
and every decision is audited and takes effect on the person at once (SQLite and PostgreSQL);
the review page fits a desktop and a phone screen and passes axe-core (Chromium)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM, local_identifier_system
from sharedcare.identity.hook import dequeue
from sharedcare.identity.service import IdentityService, review_task
from sharedcare.store.persons import patients_of_person
from sharedcare.store.repository import PermitAll, WriteOp
from sharedcare.web.accesslog import access_log

from ._support import audit_rows

ORG = "RTEST"
PASSWORD = "correct horse battery staple"
NHS = "9434765919"
REASON = "Checked with the ward: same date of birth, moved house in March"


def _patient(pid, ods, postcode, nhs=None, mrn=None, given="Margaret", birth="1948-05-17"):
    res = {"resourceType": "Patient", "id": pid,
           "meta": {"tag": [{"system": SOURCE_ORG_SYSTEM, "code": ods}]},
           "name": [{"family": "Thistlewood", "given": [given]}], "birthDate": birth,
           "gender": "female", "address": [{"postalCode": postcode}], "identifier": []}
    if nhs:
        res["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    if mrn:
        res["identifier"].append({"system": local_identifier_system(ods), "value": mrn})
    return res


@pytest.fixture
def queued(sc):
    """A council record without an NHS number that the model could only call a possible match
    for the hospital's record (birth dates disagree: a typing slip?): one review waiting."""
    gov = sc.governance
    gov.add_organisation("RCOUNCIL", "Manchester City Council Adult Social Care", "social-care")
    gov.add_organisation("RHOSP", "Manchester Royal Infirmary", "acute-trust")
    gov.add_staff("ig.lead", "Iris Lead", [(ORG, "ig-lead")], PASSWORD)
    gov.add_staff("sys.admin", "Sam Admin", [(ORG, "sysadmin")], PASSWORD)
    gov.add_staff("dr.one", "Dr One", [(ORG, "clinician")], PASSWORD)
    hosp = _patient("hosp-1", "RHOSP", "M13 9WL", nhs=NHS, mrn="MRI0042")
    council = _patient("council-1", "RCOUNCIL", "M13 9WL", mrn="SC-7781", birth="1948-05-07")
    potassium = {"resourceType": "Observation", "id": "k-1", "status": "final",
                 "meta": {"tag": [{"system": SOURCE_ORG_SYSTEM, "code": "RHOSP"}]},
                 "code": {"text": "Serum potassium level"}, "subject": {"reference":
                                                                      "Patient/hosp-1"},
                 "valueQuantity": {"value": 5.9, "unit": "mmol/L"}}
    sc.store.write([WriteOp("PUT", "Patient", "hosp-1", hosp),
                    WriteOp("PUT", "Patient", "council-1", council),
                    WriteOp("PUT", "Observation", "k-1", potassium)])
    service = IdentityService(sc)  # too few patients to train: the exact-agreement rule
    IdentityService._instances[id(sc)] = service
    done = service.resolve("council-1")
    assert done.outcome == "review" and done.candidate == "hosp-1"
    return sc, service, done.task_id


def client_for(sc, username, role, ods=ORG):
    c = TestClient(create_app(sc), base_url="http://testserver")
    c.cookies.set("sc_session", sc.governance.issue_token(username, ods, role))
    c.get("/")  # picks up the CSRF cookie
    c.csrf = c.cookies.get("sc_csrf")
    return c


def person_of(sc, pid):
    with sc.engine.connect() as conn:
        return patients_of_person(conn, pid)


def card(html: str, task_id: str) -> str:
    start = html.index(f'data-task="{task_id}"')
    end = html.find('data-task="', start + 10)
    return html[start: end if end > 0 else len(html)]


def test_the_queue_shows_the_possible_match_with_its_evidence(queued):
    sc, service, task_id = queued
    review = service.review_queue()[0]
    for username, role in (("ig.lead", "ig-lead"), ("sys.admin", "sysadmin")):
        r = client_for(sc, username, role).get("/identity/review")
        assert r.status_code == 200, r.text
        assert "Identity review" in r.text and "Possible matches waiting (1)" in r.text
        assert "Every action on this page is audited" in r.text
        block = card(r.text, task_id)
        # The two records side by side: names of the organisations, not codes.
        assert "Manchester Royal Infirmary" in block
        assert "Manchester City Council Adult Social Care" in block
        assert "M13 9WL" in block and "17 May 1948" in block and "7 May 1948" in block
        assert "943 476 5919" in block and "MRI0042" in block and "SC-7781" in block
        assert "Margaret THISTLEWOOD" in block
        # The evidence: which fields agreed, and the match weight the review was made with.
        fields = dict(re.findall(r'data-field="([^"]+)">.*?nhsuk-tag--\w+">([^<]+)<', block,
                                 re.DOTALL))
        assert fields["Date of birth"] == "Disagree"
        assert fields["Family name"] == fields["Postcode"] == fields["Sex"] == "Agree"
        assert f"{review.match_weight:.2f}" in block
        # Identity evidence only: never the clinical record.
        assert "potassium" not in r.text.lower()
        assert 'name="decision" value="confirm"' in block
        assert 'name="decision" value="reject"' in block
    assert audit_rows(sc, "search")[-1]["entity"] == "identity review queue"


def test_confirm_joins_the_two_records_and_unlink_separates_them(queued):
    sc, service, task_id = queued
    c = client_for(sc, "ig.lead", "ig-lead")
    assert person_of(sc, "council-1") == ["council-1"]
    r = c.post(f"/identity/review/{task_id}", data={"csrf": c.csrf, "decision": "confirm",
                                                    "reason": REASON}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/identity/review?done=confirmed"
    assert person_of(sc, "council-1") == ["council-1", "hosp-1"]
    assert service.review_queue() == []
    confirm = audit_rows(sc, "identity-confirm")
    assert len(confirm) == 1 and confirm[0]["username"] == "ig.lead"
    assert REASON in confirm[0]["reason"]
    # The page explains which person the record belongs to, and how and why each joined.
    page = c.get("/identity/patient/council-1")
    assert page.status_code == 200
    assert "A person reviewed a possible match and confirmed it" in page.text
    assert "Same NHS number" in page.text and REASON in page.text
    assert 'data-member="hosp-1"' in page.text and 'data-member="council-1"' in page.text
    assert "potassium" not in page.text.lower()
    # The patient sees both in "who looked at my record", in words.
    seen = [r["what"] for r in access_log(sc.engine, "council-1")]
    assert "Checked which services' records are yours" in seen
    assert "Confirmed that two records are both yours" in seen
    # From the queue page, the linked record (no NHS number of its own) can be unlinked.
    r = c.post("/identity/patient/council-1/unlink",
               data={"csrf": c.csrf, "reason": "Different middle name on the council's file",
                     "next": "/identity/review"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/identity/review?done=unlinked"
    assert person_of(sc, "council-1") == ["council-1"]
    assert person_of(sc, "hosp-1") == ["hosp-1"]
    assert len(audit_rows(sc, "identity-unlink")) == 1
    # Reversible: a person can link them again, with a reason.
    r = c.post("/identity/patient/hosp-1/link",
               data={"csrf": c.csrf, "other": "council-1", "reason": REASON},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    assert person_of(sc, "hosp-1") == ["hosp-1", "council-1"]
    assert len(audit_rows(sc, "identity-link")) == 1


def test_a_record_placed_by_its_nhs_number_cannot_be_unlinked_here(queued):
    sc, _service, task_id = queued
    c = client_for(sc, "ig.lead", "ig-lead")
    c.post(f"/identity/review/{task_id}", data={"csrf": c.csrf, "decision": "confirm",
                                                "reason": REASON})
    r = c.post("/identity/patient/hosp-1/unlink", data={"csrf": c.csrf, "reason": REASON})
    assert r.status_code == 409 and "valid NHS number" in r.text
    assert person_of(sc, "hosp-1") == ["hosp-1", "council-1"]


def test_reject_closes_the_review_and_it_is_not_proposed_again(queued):
    sc, service, task_id = queued
    c = client_for(sc, "ig.lead", "ig-lead")
    r = c.post(f"/identity/review/{task_id}", data={"csrf": c.csrf, "decision": "reject",
                                                    "reason": "Different people: twins"},
               follow_redirects=True)
    assert r.status_code == 200 and "this pair will not be proposed again" in r.text
    assert "No possible matches are waiting for review" in r.text
    assert person_of(sc, "council-1") == ["council-1"]
    task = sc.store.read("Task", task_id, PermitAll()).json()
    assert task["status"] == "completed"
    assert task["businessStatus"]["text"] == "different people"
    assert len(audit_rows(sc, "identity-reject")) == 1
    # The model looks again (the record resolved afresh): the pair does not come back.
    for pid in ("council-1", "hosp-1"):
        service.resolve(pid)
    assert service.review_queue() == []
    assert person_of(sc, "council-1") == ["council-1"]


def test_every_decision_needs_a_reason(queued):
    sc, service, task_id = queued
    c = client_for(sc, "ig.lead", "ig-lead")
    r = c.post(f"/identity/review/{task_id}", data={"csrf": c.csrf, "decision": "confirm",
                                                    "reason": "ok"})
    assert r.status_code == 400 and "Give a reason" in r.text
    assert [q.task_id for q in service.review_queue()] == [task_id]
    assert person_of(sc, "council-1") == ["council-1"]
    assert audit_rows(sc, "identity-confirm") == []


def test_a_form_without_the_csrf_token_is_refused(queued):
    sc, service, task_id = queued
    c = client_for(sc, "ig.lead", "ig-lead")
    for data in ({"decision": "confirm", "reason": REASON},
                 {"decision": "confirm", "reason": REASON, "csrf": "forged-token"}):
        r = c.post(f"/identity/review/{task_id}", data=data)
        assert r.status_code == 400 and "Form expired" in r.text
    assert [q.task_id for q in service.review_queue()] == [task_id]
    assert person_of(sc, "council-1") == ["council-1"]
    assert audit_rows(sc, "identity-confirm") == []


def test_a_clinician_cannot_use_the_identity_pages(queued):
    sc, service, task_id = queued
    c = client_for(sc, "dr.one", "clinician")
    assert c.get("/identity/review").status_code == 403
    assert c.get("/identity/patient/council-1").status_code == 403
    r = c.post(f"/identity/review/{task_id}", data={"csrf": c.csrf, "decision": "confirm",
                                                    "reason": REASON})
    assert r.status_code == 403
    r = c.post("/identity/patient/council-1/link",
               data={"csrf": c.csrf, "other": "hosp-1", "reason": REASON})
    assert r.status_code == 403
    assert person_of(sc, "council-1") == ["council-1"]
    assert [q.task_id for q in service.review_queue()] == [task_id]


def test_the_queue_is_twenty_a_page(sc):
    sc.governance.add_staff("ig.lead", "Iris Lead", [(ORG, "ig-lead")], PASSWORD)
    ops = []
    for i in range(21):
        a = _patient(f"a-{i}", ORG, "M1 1AA", given=f"Ann{i}", birth=f"19{50 + i}-01-02")
        b = _patient(f"b-{i}", ORG, "M2 2BB", given=f"Ann{i}", birth=f"19{50 + i}-01-02")
        task = review_task(f"task-{i:02d}", a, b, 0.9, "probable")
        task["authoredOn"] = f"2024-01-{i + 1:02d}T09:00:00Z"
        ops += [WriteOp("PUT", "Patient", a["id"], a), WriteOp("PUT", "Patient", b["id"], b),
                WriteOp("PUT", "Task", task["id"], task)]
    sc.store.write(ops)
    c = client_for(sc, "ig.lead", "ig-lead")
    first = c.get("/identity/review").text
    second = c.get("/identity/review?page=2").text
    tasks = re.findall(r'data-task="([^"]+)"', first)
    assert tasks == [f"task-{i:02d}" for i in range(20)]  # oldest first
    assert re.findall(r'data-task="([^"]+)"', second) == ["task-20"]
    assert "page 1 of 2" in first and "Possible matches waiting (21)" in first


# --------------------------------------------------------------------------- in Chromium

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "test-artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _fits(page, name: str) -> None:
    """Nothing wider than the screen; no serious or critical axe-core violations."""
    sizes = page.evaluate("""() => ({page: document.documentElement.scrollWidth,
                                     viewport: window.innerWidth})""")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert sizes["page"] <= sizes["viewport"], (name, sizes)
    if AXE.exists():
        page.evaluate(AXE.read_text())
        bad = page.evaluate("""async () => (await axe.run(document,
            {resultTypes: ['violations']})).violations
            .filter(v => ['serious', 'critical'].includes(v.impact))
            .map(v => v.id + ': ' + v.nodes[0].target.join(' '))""")
        assert not bad, (name, bad)


@pytest.mark.browser
def test_the_review_page_fits_a_desktop_and_a_phone(queued, live_server):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Debian's chromium is missing in CI: {CHROMIUM}")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    _sc, _service, task_id = queued
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for width, height in ((1280, 900), (390, 844)):
                ctx = browser.new_context(viewport={"width": width, "height": height})
                page = ctx.new_page()
                page.set_default_timeout(15000)
                page.goto(f"{live_server}/sign-in?next=/identity/review")
                page.fill("input[name=username]", "ig.lead")
                page.fill("input[name=password]", PASSWORD)
                page.locator("form button[type=submit]").first.click()
                page.wait_for_url(re.compile(r".*/identity/review$"))
                assert page.locator(f'[data-task="{task_id}"]').is_visible()
                _fits(page, f"identity-review-{width}")
                page.click("a[href='/identity/patient/council-1']")
                page.wait_for_url(re.compile(r".*/identity/patient/council-1$"))
                assert page.locator('[data-member="council-1"]').is_visible()
                _fits(page, f"identity-patient-{width}")
                ctx.close()
        finally:
            browser.close()


def test_a_long_queue_is_paged_oldest_first(queued):
    """45 possible matches: page 1 shows the oldest 20, page 3 the last 5, and the total."""
    sc, service, first = queued
    hosp = sc.store.read("Patient", "hosp-1", PermitAll()).json()
    ops, ids = [], [first]
    for i in range(44):
        pid = f"council-x{i:02d}"
        rec = _patient(pid, "RCOUNCIL", "M13 9WL", mrn=f"SC-{i}", birth="1948-05-07")
        ops += [WriteOp("PUT", "Patient", pid, rec),
                WriteOp("PUT", "Task", f"review-{i:02d}",
                        review_task(f"review-{i:02d}", rec, hosp, 0.9, "possible"))]
        ids.append(f"review-{i:02d}")
    with sc.store.begin_write() as conn, conn.begin():
        sc.store.write(ops, conn)
        # These Tasks stand for the worker's work: it must not add more while the test reads.
        dequeue(conn, [op.rid for op in ops if op.rtype == "Patient"])
    assert service.review_count() == 45
    assert [r.task_id for r in service.review_queue()] == ids
    assert [r.task_id for r in service.review_queue(40, 20)] == ids[40:]
    c = client_for(sc, "ig.lead", "ig-lead")
    shown = lambda html: re.findall(r'data-task="([^"]+)"', html)
    page1, page3 = c.get("/identity/review"), c.get("/identity/review?page=3")
    assert page1.status_code == page3.status_code == 200
    assert shown(page1.text) == ids[:20] and shown(page3.text) == ids[40:]
    assert "45" in page1.text
