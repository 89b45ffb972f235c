"""The programme pages through HTTP: who may use them, forms with CSRF, CSV and JSON."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.programme import casestudies, engagement, pages


@pytest.fixture
def database_url(tmp_path):  # the web layer: SQLite is enough (the SQL is tested on both)
    return f"sqlite:///{tmp_path / 'pages.sqlite'}"


@pytest.fixture
def web(sc):
    g = sc.governance
    g.add_organisation("GP1", "Brookside Medical Centre", "gp-practice", postcode="M21 2FJ",
                       go_live="2026-01-01", registered_population=500)
    g.add_staff("lead", "Programme Lead", [("RTEST", "programme-lead")])
    g.add_staff("ig", "IG Lead", [("RTEST", "ig-lead")])
    g.add_staff("gpig", "GP IG Lead", [("GP1", "ig-lead")])
    g.add_staff("doc", "Doctor", [("GP1", "clinician")])
    app = create_app(sc)
    app.router.routes[0:0] = pages.routes(sc)
    with TestClient(app, base_url="http://testserver") as c:
        c.sc = sc
        yield c


def as_(client, username, ods, role):
    client.cookies.set("sc_session", client.sc.governance.issue_token(username, ods, role))
    client.get("/programme/you-said-we-did")  # collect the CSRF cookie
    return client.cookies.get("sc_csrf")


LEAD_PAGES = ["/programme", "/programme/adoption", "/programme/map", "/programme/feedback",
              "/programme/champions", "/programme/readiness", "/programme/readiness/new",
              "/programme/case-studies", "/programme/agreements", "/programme/agreements/new"]


def test_programme_lead_sees_every_page_and_others_get_403(web):
    engagement.seed_examples(web.sc.engine)
    as_(web, "lead", "RTEST", "programme-lead")
    for url in LEAD_PAGES + ["/programme/you-said-we-did"]:
        r = web.get(url)
        assert r.status_code == 200, url
    as_(web, "doc", "GP1", "clinician")
    for url in LEAD_PAGES:
        r = web.get(url)
        assert r.status_code == 403, url
        assert "You cannot use this page" in r.text
    assert web.get("/programme/you-said-we-did").status_code == 200
    as_(web, "ig", "RTEST", "ig-lead")
    assert web.get("/programme/agreements").status_code == 200
    assert web.get("/programme/adoption").status_code == 403
    web.cookies.clear()
    r = web.get("/programme/adoption", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")


def test_overview_answers_the_four_questions(web):
    engagement.seed_examples(web.sc.engine)
    as_(web, "lead", "RTEST", "programme-lead")
    html = web.get("/programme").text
    for q in ("Which partners have not signed?", "Which organisations' staff are not using it?",
              "What do users ask for most?", "How ready are we, by theme?"):
        assert q in html
    assert "Brookside Medical Centre" in html  # party to no active agreement; not using
    assert ">Medicines</a>: 3" in html  # the most asked-for theme in the examples
    assert "Leadership and management" in html


def test_csv_and_json_behind_the_pages(web):
    as_(web, "lead", "RTEST", "programme-lead")
    r = web.get("/programme/adoption.csv?table=views_by_week&weeks=4")
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == "week_starting,views,active_users"
    assert len(r.text.splitlines()) == 5
    assert web.get("/programme/adoption.csv?table=nope").status_code == 404
    j = web.get("/api/programme/adoption?weeks=4").json()
    assert set(j["tables"]) >= {"views_by_week", "users_by_org", "break_glass_declared"}
    assert web.get("/programme/map.csv").text.startswith("ods,organisation")
    for url in ("/api/programme/partners", "/api/programme/agreements",
                "/api/programme/feedback", "/api/programme/readiness",
                "/api/programme/case-studies"):
        assert web.get(url).status_code == 200, url
    web.cookies.clear()
    assert web.get("/api/programme/adoption").status_code == 401
    token = web.sc.governance.issue_token("doc", "GP1", "clinician")
    r = web.get("/api/programme/adoption", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403
    token = web.sc.governance.issue_token("lead", "RTEST", "programme-lead")
    r = web.get("/api/programme/adoption", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_agreement_workflow_through_the_forms(web):
    csrf = as_(web, "lead", "RTEST", "programme-lead")
    r = web.post("/programme/agreements/new", data={
        "csrf": csrf, "title": "Results to the practice", "parties": ["RTEST", "GP1"],
        "purposes": ["direct-care"], "categories": ["results"], "effective": "2026-01-01"},
        follow_redirects=False)
    assert r.status_code == 303
    url = r.headers["location"].split("?")[0]
    aid = url.rsplit("/", 1)[1]
    r = web.post(url, data={"csrf": csrf, "step": "activate"})
    assert r.status_code == 409 and "every party has signed" in r.text
    assert web.post(url, data={"csrf": csrf, "step": "circulate"}).status_code == 200
    r = web.post(url, data={"csrf": csrf, "step": "sign"})
    assert r.status_code == 403 and "Only an IG lead" in r.text
    csrf = as_(web, "gpig", "GP1", "ig-lead")
    assert "Waiting for your signature" in web.get("/programme/agreements").text
    r = web.post(url, data={"csrf": csrf, "step": "sign"})
    assert "1 of 2 parties have signed" in r.text and "gpig" in r.text
    csrf = as_(web, "ig", "RTEST", "ig-lead")
    web.post(url, data={"csrf": csrf, "step": "sign"})
    r = web.post(url, data={"csrf": csrf, "step": "activate"})
    assert "activated" in r.text
    web.cookies.clear()
    r = web.get("/transparency")
    assert r.status_code == 200 and "Results to the practice" in r.text
    assert "national data opt-out" in r.text and "object" in r.text
    assert web.post(url, data={"csrf": "x", "step": "withdraw"},
                    follow_redirects=False).status_code == 303  # not signed in
    assert aid.startswith("DSA-")


def test_bad_agreement_form_shows_the_errors(web):
    csrf = as_(web, "lead", "RTEST", "programme-lead")
    r = web.post("/programme/agreements/new", data={"csrf": csrf, "title": "",
                                                    "parties": ["GP1"]})
    assert r.status_code == 400
    assert "Give the agreement a title" in r.text and "at least two parties" in r.text
    r = web.post("/programme/agreements/new", data={"csrf": "wrong", "title": "x"})
    assert r.status_code == 400 and "Form expired" in r.text
    assert web.get("/programme/agreements/NOPE").status_code == 404


def test_feedback_triage_and_you_said_we_did(web):
    csrf = as_(web, "doc", "GP1", "clinician")
    web.post("/feedback", data={"csrf": csrf, "kind": "missing", "text": "Show allergies first",
                                "page": "/patients"})
    csrf = as_(web, "lead", "RTEST", "programme-lead")
    assert "Show allergies first" in web.get("/programme/feedback").text
    fid = engagement.inbox(web.sc.engine)[0]["id"]
    r = web.post(f"/programme/feedback/{fid}", data={"csrf": csrf, "status": "done",
                                                     "theme": "medicines", "ods": "GP1"})
    assert r.status_code == 400 and "Write a response" in r.text
    web.post(f"/programme/feedback/{fid}", data={"csrf": csrf, "status": "done",
                                                 "theme": "medicines", "ods": "GP1",
                                                 "response": "Allergies are now at the top."})
    as_(web, "doc", "GP1", "clinician")
    html = web.get("/programme/you-said-we-did").text
    assert "Show allergies first" in html and "Allergies are now at the top." in html


def test_readiness_form_saves_and_shows_levels(web):
    from sharedcare.programme import readiness

    csrf = as_(web, "lead", "RTEST", "programme-lead")
    lead = readiness.FRAMEWORK.theme("leadership")
    met = [e.id for lv in lead.levels[:2] for e in lv.elements]
    r = web.post("/programme/readiness/new", data={"csrf": csrf, "met": met,
                                                   "taken_on": "2026-03-01"})
    assert r.status_code == 200 and "Assessment saved" in r.text
    assert "<strong>2</strong> Developing" in r.text  # leadership reached level 2
    assert 'class="sc-radar' in r.text or "<svg" in r.text
    csv = web.get("/programme/readiness.csv").text.splitlines()
    assert any(line.startswith("2026-03-01,lead,Leadership and management,2,") for line in csv)


def test_champions_and_case_studies(web):
    csrf = as_(web, "lead", "RTEST", "programme-lead")
    r = web.post("/programme/champions", data={"csrf": csrf, "name": "Dr Asha Patel",
                                                "group_name": "clinical-champion", "ods": "GP1"})
    assert "Dr Asha Patel" in r.text and "Brookside Medical Centre" in r.text
    r = web.get("/programme/case-studies?q=care+home")
    assert "Care home digital notes" in r.text and "Illustrative" in r.text
    assert "Paramedic access" not in r.text
    r = web.get("/programme/case-studies?theme=information-governance")
    assert r.text.count('class="nhsuk-card" id="case-') == len(casestudies.search(
        web.sc.engine, theme="information-governance"))
