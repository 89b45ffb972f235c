"""Every programme page in Chromium against a live server on a small demo, with screenshots in
test-artifacts/screenshots/programme-*.png. The partner map must render with no network:
every request to anywhere but the local server is aborted and recorded."""

from __future__ import annotations

import threading
import time
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    pytest.importorskip("playwright")
    import uvicorn

    from sharedcare.app import SharedCare, create_app
    from sharedcare.demo import generate
    from sharedcare.demo.load import load_demo
    from sharedcare.programme import engagement, pages
    from tests.conftest import free_port

    folder = tmp_path_factory.mktemp("programme-browser")
    sc = SharedCare.open(f"sqlite:///{folder / 'demo.sqlite'}", folder / "data")
    load_demo(sc, generate(42, 60))
    engagement.seed_examples(sc.engine)
    app = create_app(sc)
    app.router.routes[0:0] = pages.routes(sc)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", sc
    srv.should_exit = True
    thread.join(5)
    sc.engine.dispose()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_context(browser, server, username=None, ods=None, role=None):
    base, sc = server
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    blocked: list[str] = []

    def guard(route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    ctx.route("**/*", guard)
    if username:
        token = sc.governance.issue_token(username, ods, role)
        ctx.add_cookies([{"name": "sc_session", "value": token, "url": base}])
    return ctx, blocked


def outside(blocked: list[str]) -> list[str]:
    """Requests that tried to leave the machine: there must be none (scripts/setup strips the
    NHS.UK stylesheet's remote web-font rules)."""
    return list(blocked)


def see(page, text):
    from playwright.sync_api import expect

    # in the page's content: the header menu may tuck a same-named link under "More"
    expect(page.locator("main").get_by_text(text).first).to_be_visible()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"programme-{name}.png"), full_page=True)


LEAD_PAGES = [
    ("overview", "/programme", "Which partners have not signed?"),
    ("adoption", "/programme/adoption", "Record views per week"),
    ("agreements", "/programme/agreements", "Partners that have not signed"),
    ("agreement", "/programme/agreements/DSA-GM-004", "Parties and signatures"),
    ("agreement-new", "/programme/agreements/new", "Draft a sharing agreement"),
    ("feedback", "/programme/feedback", "Feedback inbox"),
    ("you-said-we-did", "/programme/you-said-we-did", "We did"),
    ("champions", "/programme/champions", "Clinical champions"),
    ("readiness", "/programme/readiness", "Work on these first"),
    ("readiness-new", "/programme/readiness/new", "Level 1: Initial"),
    ("case-studies", "/programme/case-studies", "Illustrative examples"),
]


def test_every_programme_page_renders_offline(browser, server):
    base, _sc = server
    ctx, blocked = open_context(browser, server, "callum.shaw", "R0A", "programme-lead")
    page = ctx.new_page()
    for name, url, text in LEAD_PAGES:
        resp = page.goto(base + url)
        assert resp.status == 200, url
        see(page, text)
        shot(page, name)
    assert page.locator("svg.sc-map").count() == 1  # the case-study map
    ctx.close()
    assert outside(blocked) == []


def test_partner_map_renders_with_no_network(browser, server):
    base, _sc = server
    ctx, blocked = open_context(browser, server, "callum.shaw", "R0A", "programme-lead")
    page = ctx.new_page()
    assert page.goto(base + "/programme/map").status == 200
    svg = page.locator("svg.sc-map")
    box = svg.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 300
    assert page.locator("svg.sc-map path[data-icb]").count() >= 3
    markers = page.locator("svg.sc-map .sc-point")
    assert markers.count() >= 10
    assert "Contains OS data" in page.locator("svg.sc-map .sc-attribution").text_content()
    see(page, "Partner details")
    assert page.locator("table caption", has_text="Partners on the map").count() == 1
    shot(page, "map")
    ctx.close()
    assert outside(blocked) == []


def test_readiness_form_and_agreement_signing_in_the_browser(browser, server):
    base, _sc = server
    ctx, blocked = open_context(browser, server, "callum.shaw", "R0A", "programme-lead")
    page = ctx.new_page()
    page.goto(base + "/programme/readiness/new")
    page.locator("label", has_text="executive-level senior responsible owner").click()
    page.get_by_role("button", name="Save the assessment").click()
    page.wait_for_url("**/programme/readiness?done=saved")
    see(page, "Assessment saved")
    # draft, circulate: the IG lead of the trust then sees it waiting for signature
    page.goto(base + "/programme/agreements/new")
    page.fill("#title", "Hospice records to the trust")
    page.check("#party-R0A")
    page.check("#party-NZH01")
    page.check("#category-care-plans")
    page.get_by_role("button", name="Save draft").click()
    page.get_by_role("button", name="Circulate to the parties").click()
    see(page, "circulated to the parties")
    url = page.url.split("?")[0]
    ctx.close()
    ctx, blocked2 = open_context(browser, server, "robert.scott", "R0A", "ig-lead")
    page = ctx.new_page()
    page.goto(base + "/programme/agreements")
    see(page, "Waiting for your signature")
    page.goto(url)
    # the button names the organisation, not its ODS code
    page.get_by_role("button", name="Sign for Manchester University NHS Foundation Trust").click()
    see(page, "1 of 2 parties have signed")
    shot(page, "agreement-signed-by-ig-lead")
    ctx.close()
    assert outside(blocked) == [] and outside(blocked2) == []


def test_transparency_notice_is_public(browser, server):
    base, _sc = server
    ctx, blocked = open_context(browser, server)
    page = ctx.new_page()
    assert page.goto(base + "/transparency").status == 200
    see(page, "Greater Manchester Shared Care Record: direct care")
    see(page, "national data opt-out")
    shot(page, "transparency")
    ctx.close()
    assert outside(blocked) == []


def test_other_roles_are_refused(browser, server):
    base, _sc = server
    ctx, _ = open_context(browser, server, "robert.scott", "R0A", "ig-lead")
    page = ctx.new_page()
    assert page.goto(base + "/programme/adoption").status == 403
    see(page, "You cannot use this page")
    shot(page, "refused")
    ctx.close()
