"""Every demo persona's pages in real Chromium, at 1280 px and on a 390 px phone: nothing wider
than the screen, the header menu inside the blue bar, no ODS code on screen where the
organisation's name is known, axe-core with no serious or critical violations, and a screenshot
of each page under test-artifacts/screenshots/."""

from __future__ import annotations

import re

import pytest
from .test_browser import ARGS, AXE, CHROMIUM, SHOTS, _need, check, sign_in, slug

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


def pages_of(label: str, demo) -> list[str]:
    pid, nhs = demo.pid, demo.nhs
    return {
        "GP": ["/", f"/patients/{pid}"],
        "A&E doctor": [f"/patients/{pid}"],
        "District nurse": [f"/patients/{pid}"],
        "Mental health crisis team": [f"/patients/{pid}"],
        "Social worker": [f"/patients/{pid}"],
        "Clinician with no relationship": [f"/patients/{pid}"],
        "IG lead": [f"/governance/audit?patient={nhs}", "/governance/break-glass"],
        "Programme lead": ["/programme", "/programme/adoption", "/population"],
        "System administrator": ["/admin", "/admin/staff", "/admin/feeds"],
        "Patient": ["/my-record/access-log"],
    }[label]


PERSONAS = ["GP", "A&E doctor", "District nurse", "Mental health crisis team", "Social worker",
            "Clinician with no relationship", "IG lead", "Programme lead",
            "System administrator", "Patient"]


@pytest.fixture(scope="module")
def chromium():
    _need(CHROMIUM, "Debian's chromium")
    _need(AXE, "axe-core (npm ci)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _codes_on_screen(page, demo) -> list[str]:
    text = page.evaluate("document.body.innerText")
    return sorted(o.ods for o in demo.cs.organisations
                  if re.search(rf"(?<![\w/-]){re.escape(o.ods)}(?![\w-])", text))


def _fits(page) -> dict:
    return page.evaluate("""() => {
        const doc = document.documentElement;
        const bar = document.querySelector('.nhsuk-header__navigation-container');
        const out = {page: doc.scrollWidth, viewport: window.innerWidth, menu: []};
        if (bar) {
            const right = bar.getBoundingClientRect().right + 1;
            for (const li of bar.querySelectorAll('.nhsuk-header__navigation-list > li')) {
                const r = li.getBoundingClientRect();
                if (r.width > 0 && r.right > right) out.menu.push(li.innerText.trim());
            }
        }
        return out;
    }""")


@pytest.mark.parametrize("label", PERSONAS)
def test_persona_pages_fit_name_organisations_and_pass_axe(chromium, live_demo, demo, label):
    persona = demo.personas[label]
    for width_name, (w, h) in WIDTHS.items():
        ctx = chromium.new_context(viewport={"width": w, "height": h}, locale="en-GB")
        page = ctx.new_page()
        page.set_default_timeout(30000)
        page.csp_violations = []
        page.on("console", lambda m, p=page: p.csp_violations.append(m.text)
                if "Content Security Policy" in m.text else None)
        try:
            sign_in(page, live_demo, persona, demo)
            for path in pages_of(label, demo):
                page.goto(f"{live_demo}{path}")
                page.wait_for_load_state()
                where = f"{label} {path} at {w}px"
                fits = _fits(page)
                assert fits["page"] <= fits["viewport"], f"{where}: {fits['page']}px wide"
                assert not fits["menu"], f"{where}: menu items off the bar: {fits['menu']}"
                assert not _codes_on_screen(page, demo), \
                    f"{where}: ODS codes on screen {_codes_on_screen(page, demo)}"
                body = page.evaluate("document.body.innerText")
                assert not re.search(r"\b[a-z]+_[a-z_]+\b", body), \
                    f"{where}: {re.findall(r'[a-z]+_[a-z_]+', body)[:5]}"
                assert "Encounter/" not in body, where
                shown = path.split("?")[0].replace(demo.pid, "record")
                name = f"persona-{slug(label)}-{slug(shown) or 'home'}-{width_name}"
                check(page, name)
        finally:
            ctx.close()
