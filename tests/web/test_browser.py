"""Real Chromium (Playwright) against a live server on the demo: each persona signs in, finds
the featured patient by NHS number, opens the record and sees exactly what governance allows;
break glass, a shared care plan, feedback; axe-core on every page; screenshots as artefacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
CLINICAL = ["GP", "A&E doctor", "District nurse", "Mental health crisis team", "Social worker",
            "Clinician with no relationship"]


KNOWN_BASE_ISSUES: set = set()  # none: every page must pass axe's serious/critical rules


def _need(path: Path | str, what: str):
    if not Path(path).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing in CI: {path}")
        pytest.skip(f"{what} is not installed ({path})")


@pytest.fixture(scope="module")
def browser():
    _need(CHROMIUM, "Debian's chromium")
    _need(AXE, "axe-core (npm ci)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(15000)
    # Anything the Content-Security-Policy blocks is reported on the console: collected here,
    # and check() fails on it, so the policy can never silently break a page.
    pg.csp_violations = []
    pg.on("console", lambda m: pg.csp_violations.append(m.text)
          if "Content Security Policy" in m.text else None)
    yield pg
    ctx.close()


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def check(page, name: str) -> None:
    """Nothing blocked by the Content-Security-Policy and the page's scripts ran; screenshot,
    then axe-core: no serious or critical violations."""
    page.evaluate("document.fonts.ready.then(() => true)")
    assert not page.csp_violations, f"{name}: {page.csp_violations}"
    body = page.evaluate("document.body.className")
    assert "js-enabled" in body and "nhsuk-frontend-supported" in body, f"{name}: {body}"
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    # Evaluated through the DevTools protocol, not added as an inline <script>, which the
    # page's policy (scripts from the server only) rightly refuses.
    page.evaluate(AXE.read_text())
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    bad = [v for v in result if v["impact"] in ("serious", "critical")
           and not (v["id"], tuple(v["nodes"])) in KNOWN_BASE_ISSUES]
    assert not bad, f"{name}: " + json.dumps(bad, indent=1)


def follow(page, selector: str) -> None:
    """Click something that loads a new page and wait for that page: the next check must see
    the new document, not the old one or one whose body has not been parsed yet."""
    with page.expect_navigation():
        page.click(selector)


def sign_in(page, base: str, persona, demo) -> None:
    page.goto(f"{base}/sign-in")
    page.fill("#username", persona.username)
    page.fill("#password", persona.password)
    follow(page, "button[type=submit]")
    if "/choose-role" in page.url:  # the persona's role at the persona's organisation
        role = next(r for o, r in demo.cs.staff_member(persona.username).roles if o == persona.org)
        page.check(f'input[name=role][value="{persona.org}:{role}"]')
        follow(page, "button[type=submit]")
    page.wait_for_load_state()


def session_access(page, demo):
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "sc_session")
    return demo.gov.access_from_claims(demo.gov.tokens.verify(token))


def shown_items(page) -> set[str]:
    return set(page.eval_on_selector_all("[data-item]",
                                         "els => els.map(e => e.dataset.item)"))


@pytest.mark.parametrize("label", CLINICAL)
def test_persona_finds_and_views_the_patient(page, live_demo, demo, label):
    from sharedcare.fhir.outcome import FHIRError
    from sharedcare.web.patient import format_nhs

    persona = demo.personas[label]
    name = slug(label)
    sign_in(page, live_demo, persona, demo)
    access = session_access(page, demo)
    check(page, f"{name}-01-home")
    follow(page, "text=Find a patient")
    page.fill("#nhs", format_nhs(demo.nhs))
    follow(page, "#search-nhs")
    check(page, f"{name}-02-search")
    try:
        allowed = demo.governed_items(access)
    except FHIRError:
        allowed = None
    if page.locator(f'[data-patient="{demo.pid}"]').count():
        assert format_nhs(demo.nhs) in page.inner_text("#results")
        follow(page, f'[data-patient="{demo.pid}"] a')
    else:
        assert "No record you can open" in page.inner_text("main")
        page.goto(f"{live_demo}/patients/{demo.pid}")  # e.g. from a referral letter's link
    page.wait_for_load_state()
    if allowed is None:
        assert "Why can't I see this?" in page.inner_text("main")
        assert shown_items(page) == set()
        check(page, f"{name}-03-refused")
        if label == "Clinician with no relationship":
            page.click("#glass-reason")
            page.keyboard.type("Collapsed in the emergency department; no history available")
            follow(page, "text=Break glass and open the record")
            page.wait_for_load_state()
            assert "You broke glass" in page.inner_text("main")
            allowed = demo.governed_items(access)
            assert allowed and shown_items(page) == allowed
            check(page, f"{name}-04-after-break-glass")
        return
    assert shown_items(page) == allowed
    assert format_nhs(demo.nhs) in page.inner_text("#banner-nhs")
    check(page, f"{name}-03-record")
    if label == "GP":
        # feedback from the record page, in two clicks and a sentence
        page.click("#feedback summary")
        page.check("#fb-missing")
        page.fill("#fb-text", "Browser test: please show the next appointment")
        follow(page, "text=Send feedback")
        page.wait_for_load_state()
        assert "Thank you" in page.inner_text("#feedback")
        from sqlalchemy import select

        from sharedcare.governance.schema import feedback

        with demo.sc.engine.connect() as conn:
            row = conn.execute(select(feedback.c.kind, feedback.c.page).where(
                feedback.c.text == "Browser test: please show the next appointment")).first()
        assert row == ("missing", f"/patients/{demo.pid}")


def test_care_plan_written_in_the_browser(page, live_demo, demo):
    gp = demo.personas["GP"]
    sign_in(page, live_demo, gp, demo)
    page.goto(f"{live_demo}/patients/{demo.pid}")
    follow(page, "#new-eol-plan")
    follow(page, "#save-plan")  # nothing filled in: errors
    assert "There is a problem" in page.inner_text("main")
    check(page, "care-plan-01-errors")
    page.fill("#what-matters", "Staying at home with my husband; my garden")
    page.get_by_label("CPR attempts not recommended", exact=True).check()
    page.get_by_label("Hospice", exact=True).check()
    page.fill("#contacts", "Husband Tom 07700 900321")
    follow(page, "#save-plan")
    page.wait_for_load_state()
    assert "saved and shared" in page.inner_text("main")
    check(page, "care-plan-02-saved")
    follow(page, "#edit-plan")
    page.get_by_label("Home", exact=True).check()
    page.fill("#change-note", "Changed her mind after talking to family")
    check(page, "care-plan-03-edit")
    follow(page, "#save-plan")
    page.wait_for_load_state()
    assert "version 2" in page.inner_text("main")
    follow(page, "#plan-history")
    assert page.locator("[data-version]").count() == 2
    check(page, "care-plan-04-history")
    plan_id = page.url.split("/care-plans/")[1].split("/")[0]
    # the district nurse (another organisation) sees it in the record
    nurse_page = page.context.browser.new_context().new_page()
    sign_in(nurse_page, live_demo, demo.personas["District nurse"], demo)
    nurse_page.goto(f"{live_demo}/patients/{demo.pid}#care-plans")
    assert f"CarePlan/{plan_id}" in shown_items(nurse_page)
    nurse_page.context.close()


def test_search_error_is_accessible(page, live_demo, demo):
    sign_in(page, live_demo, demo.personas["District nurse"], demo)
    page.goto(f"{live_demo}/patients")
    page.fill("#nhs", "943 476 5918")
    follow(page, "#search-nhs")
    assert "check digit is wrong" in page.inner_text(".nhsuk-error-summary")
    check(page, "search-invalid-nhs-number")
    follow(page, "#search-name")  # empty name search
    check(page, "search-name-errors")


def test_patient_sees_who_looked(page, live_demo, demo):
    patient = demo.personas["Patient"]
    sign_in(page, live_demo, patient, demo)
    assert "/my-record/access-log" in page.url
    text = page.inner_text("main")
    assert "Who has looked at your record" in text
    assert page.locator("#access-log tbody tr").count() > 0
    assert "Emergency access" in page.inner_text("#glass-summary")  # the demo's break glass
    check(page, "patient-access-log")
