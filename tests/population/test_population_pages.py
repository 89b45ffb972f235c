"""The population health page on a small demo: panels for the programme lead, labelled with
purpose and agreement, suppressed, with CSV; refused for a clinician; a friendly message when no
planning agreement covers the organisation; figures cached."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from sharedcare.app import SharedCare, create_app
from sharedcare.demo import generate
from sharedcare.demo.load import load_demo
from sharedcare.population import pages


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    folder = tmp_path_factory.mktemp("popdemo")
    sc = SharedCare.open(f"sqlite:///{folder / 'demo.sqlite'}", folder)
    cs = generate(42, 120)
    load_demo(sc, cs)
    app = create_app(sc)
    app.router.routes[0:0] = pages.routes(sc)
    with TestClient(app, base_url="http://testserver") as c:
        c.sc, c.cs = sc, cs
        c.personas = {p.role: p for p in cs.personas}
        c.cache = next(r.endpoint for r in app.router.routes
                       if getattr(r, "path", "") == "/population").cache
        yield c
    sc.engine.dispose()


def as_(client, label, role=None):
    p = client.personas[label]
    held = [(o, r) for o, _n, r in client.sc.governance.roles_of(p.username) if o == p.org]
    ods, r = next((o, r) for o, r in held if role is None or r == role)
    client.cookies.set("sc_session", client.sc.governance.issue_token(p.username, ods, r))
    return p


def test_programme_lead_sees_every_panel_labelled_and_suppressed(web):
    as_(web, "Programme lead")
    r = web.get("/population")
    assert r.status_code == 200
    html = r.text
    for title in ("People with two or more long-term conditions",
                  "Emergency admissions per 1,000 registered",
                  "People with a crisis plan or an end of life care plan"):
        assert title in html
    assert html.count("Run under purpose planning and agreement(s) DSA-GM-002") == 3
    assert "means fewer than 5" in html and "rounded to the nearest 5" in html
    for i in (1, 2):
        assert f'href="/population/{i}.csv"' in html
    # The planning agreement shares no care plans: panel 3 says so -- no zeros, no empty chart
    panels = html.split('<section class="sc-section" id="panel-')[1:]
    assert all("<svg" in p for p in panels[:2])
    assert "Not covered by the agreements" in panels[2] and "<svg" not in panels[2]
    assert "<table" not in panels[2]
    assert "shares care plans or mental health records with" in panels[2]
    assert "Manchester University NHS Foundation Trust" in panels[2]  # the requester, by name


def test_panel_csv_and_json(web):
    as_(web, "Programme lead")
    r = web.get("/population/1.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0].startswith("# People with two or more long-term conditions")
    assert "DSA-GM-002" in lines[1]
    header = next(ln for ln in lines if not ln.startswith("#"))
    assert header.startswith("practice,0-17,") and header.endswith(",Total")
    # every published count is a multiple of 5, 0 or '*'
    for ln in lines[lines.index(header) + 1:]:
        for v in ln.split(",")[1:]:
            assert v == "*" or int(v) % 5 == 0, ln
    assert web.get("/population/9.csv").status_code == 404
    j = web.get("/api/population").json()
    assert [p["index"] for p in j["panels"]] == [1, 2, 3]
    assert j["panels"][1]["agreements"] == ["DSA-GM-002"]


def test_dashboard_is_cached_per_org_and_role(web, monkeypatch):
    as_(web, "Programme lead")
    web.get("/population")
    calls = []
    monkeypatch.setattr(pages, "population_dashboard",
                        lambda *a, **k: calls.append(a) or [])
    assert web.get("/population").status_code == 200
    assert calls == []  # served from the cache
    assert "Nothing" not in web.get("/population").text
    web.get("/population?refresh=1")
    assert len(calls) == 1
    web.cache.clear()


def test_figures_are_made_when_the_lead_arrives_not_when_they_open_the_page(web, monkeypatch):
    """The extract takes seconds: it starts in the background on the start page, so opening
    Population health afterwards does not wait for it."""
    import time

    web.cache.clear()
    lead = as_(web, "Programme lead")
    access = web.sc.governance.access_from_claims(web.sc.governance.tokens.verify(
        web.cookies.get("sc_session")))
    assert not web.cache.fresh(access)
    assert web.get("/").status_code == 200
    deadline = time.monotonic() + 60
    while not web.cache.fresh(access) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert web.cache.fresh(access), f"figures for {lead.username} were not made in the background"
    calls = []
    monkeypatch.setattr(pages, "population_dashboard", lambda *a, **k: calls.append(a) or [])
    assert "Emergency admissions per 1,000" in web.get("/population").text
    assert calls == []


def test_ig_lead_sees_it_too(web):
    as_(web, "IG lead")
    r = web.get("/population")
    assert r.status_code == 200 and "DSA-GM-002" in r.text


def test_clinician_is_refused(web):
    as_(web, "GP")
    r = web.get("/population")
    assert r.status_code == 403 and "You cannot use this page" in r.text
    assert web.get("/population/1.csv").status_code == 403


def test_no_planning_agreement_gives_a_friendly_message(web):
    sc = web.sc
    sc.governance.add_organisation("XNOAG", "Organisation Without Agreements", "hospice")
    sc.governance.add_staff("lonely.lead", "Lonely Lead", [("XNOAG", "programme-lead")])
    web.cookies.set("sc_session", sc.governance.issue_token("lonely.lead", "XNOAG",
                                                            "programme-lead"))
    r = web.get("/population")
    assert r.status_code == 403
    assert "These figures are not available to your organisation" in r.text
    assert "no active sharing agreement covers planning for" in r.text
    assert "Organisation Without Agreements" in r.text  # named, the code only in a tooltip
    assert "planning for XNOAG" not in r.text
    assert "error" in web.get("/api/population").json()


def test_panel_has_figures_once_an_agreement_shares_care_plans(web):
    """The same panel, once a planning agreement shares care plans and mental health records
    with the programme lead's trust: figures and a chart, not the 'not covered' message."""
    sc = web.sc
    lead = as_(web, "Programme lead")
    partners = sorted({o.ods for o in web.cs.organisations if o.ods != lead.org})
    sc.governance.add_agreement("DSA-TEST-PLANS", "Care plans for planning",
                                [lead.org, *partners], ["planning"],
                                ["demographics", "care-plans", "mental-health"],
                                status="active")
    r = web.get("/population?refresh=1")
    panel = r.text.split('<section class="sc-section" id="panel-3"')[1]
    assert "Not covered by the agreements" not in panel
    assert "<svg" in panel and "<table" in panel
    j = web.get("/api/population").json()
    assert j["panels"][2]["not_covered"] is None and j["panels"][2]["rows"]
