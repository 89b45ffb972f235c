"""Staff sign-in through OpenID Connect, against a small but real provider.

The provider is a Starlette app on a real local port (uvicorn in a thread): discovery, JWKS, an
authorize endpoint that approves at once, and a token endpoint that checks the client secret,
the code, the redirect URI and PKCE and signs ID tokens with its own RSA key. sharedcare talks
to it over HTTP exactly as it would to NHS CIS2.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import socket
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sharedcare.api import FhirApi
from sharedcare.fhir.codes import ODS_SYSTEM
from sharedcare.governance import smart

ORG = "RTEST"
OTHER = "RGP01"
BASE = "http://testserver"
CLIENT_ID = "sharedcare-test"
SECRET = "s3cret-for-tests"


class FakeProvider:
    """An OpenID provider that approves everyone; `overrides` bends the next ID tokens."""

    def __init__(self):
        self.key = RSAKey.generate_key(2048, parameters={"kid": "op-1"}, private=True)
        self.codes: dict[str, dict] = {}
        self.subject = "cis2-uid-555"
        self.overrides: dict = {}
        self.sign_with: RSAKey | None = None
        self.issuer = ""

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/jwks", self.jwks),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
        ])

    async def discovery(self, request: Request):
        return JSONResponse({
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"]})

    async def jwks(self, request: Request):
        return JSONResponse(KeySet([self.key]).as_dict(private=False))

    async def authorize(self, request: Request):
        q = request.query_params
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code" or \
                q.get("code_challenge_method") != "S256" or "openid" not in q.get("scope", ""):
            return JSONResponse({"error": "invalid_request"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q.get("nonce"), "redirect_uri": q["redirect_uri"],
                            "challenge": q["code_challenge"]}
        return RedirectResponse(f"{q['redirect_uri']}?"
                                + urlencode({"code": code, "state": q["state"]}), 302)

    async def token(self, request: Request):
        form = await request.form()
        auth = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
        if auth != expected:
            return JSONResponse({"error": "invalid_client"}, 401)
        grant = self.codes.pop(form.get("code"), None)
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, 400)
        digest = hashlib.sha256(str(form.get("code_verifier")).encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant",
                                 "error_description": "PKCE verification failed"}, 400)
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": self.subject, "aud": CLIENT_ID, "iat": now,
                  "exp": now + 300, "nonce": grant["nonce"], **self.overrides}
        key = self.sign_with or self.key
        id_token = jwt.encode({"alg": "RS256", "kid": "op-1"}, claims, key)
        return JSONResponse({"access_token": secrets.token_hex(8), "token_type": "Bearer",
                             "expires_in": 300, "id_token": id_token})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def provider():
    op = FakeProvider()
    port = _free_port()
    op.issuer = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(op.app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    yield op
    server.should_exit = True
    thread.join(5)


@pytest.fixture
def web(sc, system_token, provider, monkeypatch):
    monkeypatch.setenv("SHAREDCARE_OIDC_ISSUER", provider.issuer)
    monkeypatch.setenv("SHAREDCARE_OIDC_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SHAREDCARE_OIDC_CLIENT_SECRET", SECRET)
    provider.overrides, provider.sign_with, provider.subject = {}, None, "cis2-uid-555"
    gov = sc.governance
    gov.add_organisation(OTHER, "Riverside Surgery", "gp-practice")
    gov.add_staff("drjones", "Dr Alex Jones", [(ORG, "clinician"), (OTHER, "admin")],
                  oidc_subject="cis2-uid-555")
    gov.add_staff("nurse2", "Kim Nurse", [(ORG, "nurse")], oidc_subject="cis2-uid-777")
    gov.add_staff("gone", "Left Already", [(ORG, "nurse")], oidc_subject="cis2-uid-999",
                  active=False)
    app = Starlette(routes=smart.routes(sc) + FhirApi(sc.store, sc.governance).routes())
    app.state.sc = sc
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        auth = {"Authorization": f"Bearer {system_token}"}
        c.put("/fhir/Organization/org1", headers=auth, json={
            "resourceType": "Organization", "id": "org1",
            "identifier": [{"system": ODS_SYSTEM, "value": ORG}]}).raise_for_status()
        c.put("/fhir/Patient/p1", headers=auth, json={
            "resourceType": "Patient", "id": "p1",
            "generalPractitioner": [{"reference": "Organization/org1"}]}).raise_for_status()
        yield c


def start_login(c: TestClient, provider: FakeProvider, next_path="/patients/p1"):
    """Our login redirect, then the provider's approval (over real HTTP): the callback URL."""
    r = c.get("/auth/oidc/login", params={"next": next_path})
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(f"{provider.issuer}/authorize?")
    q = parse_qs(urlsplit(location).query)
    assert q["redirect_uri"] == [f"{BASE}/auth/oidc/callback"]
    assert q["nonce"][0] and q["state"][0] and q["code_challenge_method"] == ["S256"]
    r = httpx.get(location, follow_redirects=False)
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["location"])
    assert f"{back.scheme}://{back.netloc}" == BASE
    return f"{back.path}?{back.query}"


def test_login_single_role_sets_session_cookie(web, provider, sc):
    provider.subject = "cis2-uid-777"
    r = web.get(start_login(web, provider))
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/patients/p1"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("sc_session=")
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    claims = sc.governance.tokens.verify(web.cookies["sc_session"])
    assert (claims["sub"], claims["ods"], claims["role"]) == ("nurse2", ORG, "nurse")
    # The session cookie opens the record (cookie auth, no bearer header).
    assert web.get("/fhir/Patient/p1").status_code == 200
    web.get("/auth/sign-out")
    assert "sc_session" not in web.cookies
    assert web.get("/fhir/Patient/p1").status_code == 401


def test_login_with_several_roles_asks_which(web, provider, sc):
    r = web.get(start_login(web, provider, next_path="//evil.example/x"))
    assert r.status_code == 200 and "Choose your role" in r.text
    assert "sc_session" not in web.cookies
    assert f"{OTHER}|admin" in r.text and f"{ORG}|clinician" in r.text
    txn = re.search(r'name="txn" value="([^"]+)"', r.text).group(1)
    r = web.post("/auth/oidc/role", data={"txn": txn, "role": f"{ORG}|sysadmin"})
    assert r.status_code == 400  # not a role this person holds
    r = web.post("/auth/oidc/role", data={"txn": txn, "role": f"{ORG}|clinician"})
    assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect
    claims = sc.governance.tokens.verify(web.cookies["sc_session"])
    assert (claims["sub"], claims["role"]) == ("drjones", "clinician")
    # The choice is spent.
    assert web.post("/auth/oidc/role", data={"txn": txn, "role": f"{ORG}|clinician"}
                    ).status_code == 400


def test_bad_id_tokens_are_refused(web, provider):
    other_key = RSAKey.generate_key(2048, parameters={"kid": "op-1"}, private=True)
    for overrides, sign_with in [
        ({"nonce": "not-the-one-we-sent"}, None),
        ({"aud": "some-other-client"}, None),
        ({"aud": [CLIENT_ID, "another"], "azp": "another"}, None),
        ({"iss": "https://impostor.example"}, None),
        ({"exp": int(time.time()) - 600}, None),
        ({}, other_key),  # right kid, wrong signature
    ]:
        provider.overrides, provider.sign_with = overrides, sign_with
        r = web.get(start_login(web, provider))
        assert r.status_code == 401, (overrides, r.text)
        assert "ID token" in r.text, overrides
        assert "sc_session" not in web.cookies


def test_unknown_or_inactive_subject_and_bad_state(web, provider):
    for subject in ("cis2-uid-nobody", "cis2-uid-999"):
        provider.subject = subject
        r = web.get(start_login(web, provider))
        assert r.status_code == 403 and "not linked" in r.text
        assert "sc_session" not in web.cookies
    # A callback this browser never started (forged or replayed state).
    provider.subject = "cis2-uid-777"
    callback = start_login(web, provider)
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    assert web.get(forged).status_code == 400
    assert web.get(callback).status_code == 303
    assert web.get(callback).status_code == 400  # state is single use


def test_not_configured(sc, monkeypatch):
    monkeypatch.delenv("SHAREDCARE_OIDC_ISSUER", raising=False)
    app = Starlette(routes=smart.routes(sc))
    app.state.sc = sc
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        assert c.get("/auth/oidc/login").status_code == 503
