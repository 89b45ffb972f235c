"""SMART EHR launch of apps from sharedcare (sharedcare as the EHR): "Open in <app>" on the
patient view, the app's authorize request with the launch scope, the token with the patient.

The whole application (web pages, SMART server, FHIR API) through Starlette's TestClient, the
redirects followed by hand as a browser and an app would; SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from test_smart import BASE, FHIR, PASSWORD, REDIRECT, bearer, exchange, pkce, query_of, txn_of

from sharedcare.app import create_app
from sharedcare.fhir.codes import ODS_SYSTEM
from sharedcare.governance.schema import audit_event
from sharedcare.governance.smart import register_client

ORG = "RTEST"
LAUNCH_URL = "https://app.example/launch"


@pytest.fixture
def app(sc, system_token):
    gov = sc.governance
    gov.add_organisation("RGP01", "Riverside Surgery", "gp-practice")
    gov.add_staff("drsmith", "Dr Jo Smith", [(ORG, "clinician")], password=PASSWORD)
    gov.add_staff("nurse1", "Sam Nurse", [(ORG, "nurse")], password=PASSWORD)
    gov.add_staff("gpdoc", "Dr Far Away", [("RGP01", "clinician")], password=PASSWORD)
    register_client(sc.engine, "app1", "Test Viewer", ods=None, redirect_uris=[REDIRECT],
                    scopes="launch openid patient/*.rs user/*.rs offline_access",
                    launch_url=LAUNCH_URL)
    register_client(sc.engine, "plain", "Standalone App", ods=None, redirect_uris=[REDIRECT],
                    scopes="patient/*.rs")
    application = create_app(sc)
    with TestClient(application, base_url=BASE) as c:
        auth = bearer(system_token)
        c.put("/fhir/Organization/org1", headers=auth, json={
            "resourceType": "Organization", "id": "org1", "name": "Test Trust",
            "identifier": [{"system": ODS_SYSTEM, "value": ORG}]}).raise_for_status()
        for pid in ("p1", "p2"):
            c.put(f"/fhir/Patient/{pid}", headers=auth, json={
                "resourceType": "Patient", "id": pid, "name": [{"family": f"Test-{pid}"}],
                "generalPractitioner": [{"reference": "Organization/org1"}]}).raise_for_status()
    return application


def browser(app, username="drsmith") -> TestClient:
    """A browser signed in to sharedcare's web pages (the real sign-in form)."""
    c = TestClient(app, base_url=BASE, follow_redirects=False)
    c.get("/sign-in")
    r = c.post("/sign-in", data={"username": username, "password": PASSWORD, "next": "/",
                                 "csrf": c.cookies.get("sc_csrf")})
    assert r.status_code == 303 and c.cookies.get("sc_session"), r.text
    return c


def open_app(c: TestClient, patient="p1", client_id="app1"):
    return c.post(f"/patients/{patient}/open/{client_id}", data={"csrf": c.cookies.get("sc_csrf")})


def launch_of(r) -> str:
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    assert location.startswith(LAUNCH_URL + "?")
    q = query_of(location)
    assert q["iss"] == FHIR
    return q["launch"]


def authorize(c: TestClient, launch: str, scope="launch patient/*.rs offline_access openid",
              client_id="app1"):
    verifier, challenge = pkce()
    r = c.get("/auth/authorize", params={
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
        "scope": scope, "state": "st-9", "aud": FHIR, "code_challenge": challenge,
        "code_challenge_method": "S256", "launch": launch})
    return r, verifier


def test_open_in_app_launches_it_in_the_patients_context_without_a_second_sign_in(app, sc):
    c = browser(app)
    page = c.get("/patients/p1")
    assert page.status_code == 200
    assert "Open in Test Viewer" in page.text and "Standalone App" not in page.text
    launch = launch_of(open_app(c))
    # The app (in the same browser) asks to be authorised with that launch: straight back.
    r, verifier = authorize(c, launch)
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith(REDIRECT + "?")
    q = query_of(r.headers["location"])
    assert q["state"] == "st-9"
    body = exchange(c, q["code"], verifier).json()
    assert body["patient"] == "p1" and body["need_patient_banner"] is True
    assert set(body["scope"].split()) == {"launch", "patient/*.rs", "offline_access", "openid"}
    assert body["refresh_token"]
    claims = sc.governance.tokens.verify(body["access_token"])
    assert (claims["sub"], claims["ods"], claims["role"], claims["patient"]) == \
        ("drsmith", ORG, "clinician", "p1")
    token = body["access_token"]
    assert c.get("/fhir/Patient/p1", headers=bearer(token)).status_code == 200
    assert c.get("/fhir/Patient/p2", headers=bearer(token)).status_code == 403
    # The refreshed token keeps the patient context.
    again = c.post("/auth/token", data={"grant_type": "refresh_token", "client_id": "app1",
                                        "refresh_token": body["refresh_token"]}).json()
    assert again["patient"] == "p1" and again["need_patient_banner"] is True
    # The launch is audited once, naming the app and the patient.
    with sc.engine.connect() as conn:
        rows = conn.execute(select(audit_event).where(audit_event.c.action == "launch")).all()
    assert len(rows) == 1
    assert (rows[0].username, rows[0].patient_id, rows[0].entity) == ("drsmith", "p1",
                                                                       "app app1")
    assert launch not in " ".join(str(v) for v in rows[0])


def test_a_launch_is_single_use_and_for_its_app_only(app, sc):
    c = browser(app)
    launch = launch_of(open_app(c))
    r, _ = authorize(c, launch, client_id="plain", scope="launch patient/*.rs")
    assert query_of(r.headers["location"])["error"] == "invalid_scope"  # not registered for it
    r, _ = authorize(c, launch)
    assert r.status_code == 303 and "code" in query_of(r.headers["location"])
    r, _ = authorize(c, launch)
    q = query_of(r.headers["location"])
    assert q["error"] == "invalid_request" and "already used" in q["error_description"]
    r, _ = authorize(c, "made-up")
    assert query_of(r.headers["location"])["error"] == "invalid_request"
    r, _ = authorize(c, "")
    assert query_of(r.headers["location"])["error"] == "invalid_request"


def test_another_browser_must_sign_in_as_the_person_who_launched(app, sc):
    c = browser(app)
    launch = launch_of(open_app(c))
    other = TestClient(app, base_url=BASE, follow_redirects=False)
    r, verifier = authorize(other, launch)
    assert r.status_code == 200 and "Sign in" in r.text  # no session here: sign in
    txn = txn_of(r.text)
    r = other.post("/auth/authorize/sign-in", data={"txn": txn, "username": "nurse1",
                                                    "password": PASSWORD})
    assert r.status_code == 403 and "someone else" in r.text.lower()
    # The same person signing in finishes it.
    launch = launch_of(open_app(c))
    r, verifier = authorize(other, launch)
    r = other.post("/auth/authorize/sign-in", data={"txn": txn_of(r.text),
                                                    "username": "drsmith", "password": PASSWORD})
    assert r.status_code == 303
    body = exchange(other, query_of(r.headers["location"])["code"], verifier).json()
    assert body["patient"] == "p1"
    # A session of someone else in this browser does not count either.
    nurse = browser(app, "nurse1")
    launch = launch_of(open_app(c))
    r, _ = authorize(nurse, launch)
    assert r.status_code == 200 and txn_of(r.text)


def test_no_launch_for_a_patient_one_may_not_see_or_an_app_not_launchable(app, sc):
    gp = browser(app, "gpdoc")  # RGP01 has no relationship with p1
    r = open_app(gp)
    assert r.status_code == 403 and "location" not in r.headers
    c = browser(app)
    assert open_app(c, client_id="plain").status_code == 404
    assert open_app(c, client_id="nobody").status_code == 404
    # A form without the CSRF token launches nothing.
    r = c.post("/patients/p1/open/app1", data={})
    assert r.status_code == 400 and "location" not in r.headers
    with sc.engine.connect() as conn:
        assert conn.execute(select(audit_event).where(audit_event.c.action == "launch",
                                                      audit_event.c.outcome == "0")).first() \
            is None


def test_launch_url_needs_the_launch_scope(sc):
    with pytest.raises(ValueError):
        register_client(sc.engine, "x", "X", ods=None, redirect_uris=[REDIRECT],
                        scopes="patient/*.rs", launch_url=LAUNCH_URL)
    with pytest.raises(ValueError):
        register_client(sc.engine, "x", "X", ods=None, redirect_uris=[REDIRECT],
                        scopes="launch patient/*.rs", launch_url="javascript:alert(1)")


def test_smart_configuration_offers_ehr_launch(app):
    with TestClient(app, base_url=BASE) as c:
        doc = c.get("/.well-known/smart-configuration").json()
    assert {"launch-ehr", "context-ehr-patient", "launch-standalone"} <= set(doc["capabilities"])
    assert "launch" in doc["scopes_supported"]


def test_launch_page_link_targets(app):
    c = browser(app)
    html = c.get("/patients/p1").text
    action = re.search(r'action="(/patients/p1/open/[^"]+)"', html).group(1)
    assert urlsplit(action).path == "/patients/p1/open/app1"


def test_admin_client_launch_url(sc, database_url, tmp_path):
    from typer.testing import CliRunner

    from sharedcare.cli import app as cli
    from sharedcare.governance.smart import get_client

    r = CliRunner().invoke(cli, [
        "admin", "client", "viewer", "Viewer", "--scope", "launch patient/*.rs",
        "--redirect-uri", REDIRECT, "--launch-url", LAUNCH_URL, "--database", database_url,
        "--data-dir", str(tmp_path / "data")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert get_client(sc.engine, "viewer").launch_url == LAUNCH_URL
    r = CliRunner().invoke(cli, [
        "admin", "client", "viewer", "Viewer", "--scope", "patient/*.rs",
        "--redirect-uri", REDIRECT, "--launch-url", LAUNCH_URL, "--database", database_url,
        "--data-dir", str(tmp_path / "data")], catch_exceptions=False)
    assert r.exit_code != 0 and "launch" in r.output


def test_smart_python_client_ehr_launch_and_refresh(app, live_server, sc):
    """SMART's own Python client (fhirclient) as the launched app, against a real server:
    it finds the endpoints in the CapabilityStatement, sends launch and PKCE, reads the
    patient in context and refreshes (rotation: the first refresh token then fails)."""
    import httpx
    from fhirclient import client as fhirclient

    with httpx.Client(base_url=live_server, follow_redirects=False) as b:
        b.get("/sign-in")
        assert b.post("/sign-in", data={"username": "drsmith", "password": PASSWORD,
                                        "next": "/", "csrf": b.cookies.get("sc_csrf")}
                      ).status_code == 303
        r = b.post("/patients/p1/open/app1", data={"csrf": b.cookies.get("sc_csrf")})
        assert r.status_code == 303
        q = query_of(r.headers["location"])
        assert q["iss"] == f"{live_server}/fhir"
        smart = fhirclient.FHIRClient(settings={
            "app_id": "app1", "api_base": q["iss"], "redirect_uri": REDIRECT,
            "scope": "launch patient/*.rs offline_access", "launch_token": q["launch"]})
        r = b.get(smart.authorize_url)
        assert r.status_code == 303 and r.headers["location"].startswith(REDIRECT)
    smart.handle_callback(r.headers["location"])
    assert smart.patient_id == "p1"
    assert smart.patient.name[0].family == "Test-p1"
    first = smart.server.auth.refresh_token
    assert first
    assert smart.reauthorize()
    assert smart.server.auth.refresh_token not in (None, first)
    assert smart.patient_id == "p1"
    r = httpx.post(f"{live_server}/auth/token", data={
        "grant_type": "refresh_token", "client_id": "app1", "refresh_token": first})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
