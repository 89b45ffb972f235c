"""SMART App Launch 2.x: discovery, authorization code + PKCE, backend services.

Real HTTP exchanges through Starlette's TestClient (redirects followed by hand, as a browser and
an app would), real signed tokens, real databases; the issued tokens then read the FHIR API.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from starlette.applications import Starlette
from starlette.testclient import TestClient

from sharedcare.api import FhirApi
from sharedcare.fhir.codes import ODS_SYSTEM
from sharedcare.governance import smart
from sharedcare.governance.smart import ASSERTION_TYPE, grant_scopes, register_client

ORG = "RTEST"
OTHER = "RGP01"
BASE = "http://testserver"
FHIR = f"{BASE}/fhir"
TOKEN_URL = f"{BASE}/auth/token"
REDIRECT = "https://app.example/callback"
PASSWORD = "correct horse battery staple"


def build_app(sc) -> Starlette:
    app = Starlette(routes=smart.routes(sc) + FhirApi(sc.store, sc.governance).routes())
    app.state.sc = sc
    return app


@pytest.fixture
def web(sc, system_token):
    gov = sc.governance
    gov.add_organisation(OTHER, "Riverside Surgery", "gp-practice")
    gov.add_staff("drsmith", "Dr Jo Smith", [(ORG, "clinician"), (OTHER, "clinician")],
                  password=PASSWORD)
    gov.add_staff("nurse1", "Sam Nurse", [(ORG, "nurse")], password=PASSWORD)
    register_client(sc.engine, "app1", "Test Viewer", ods=None, redirect_uris=[REDIRECT],
                    scopes="openid launch/patient patient/*.rs user/*.rs")
    with TestClient(build_app(sc), base_url=BASE, follow_redirects=False) as c:
        auth = {"Authorization": f"Bearer {system_token}"}
        c.put("/fhir/Organization/org1", headers=auth, json={
            "resourceType": "Organization", "id": "org1", "name": "Test Trust",
            "identifier": [{"system": ODS_SYSTEM, "value": ORG}]}).raise_for_status()
        for pid in ("p1", "p2"):
            c.put(f"/fhir/Patient/{pid}", headers=auth, json={
                "resourceType": "Patient", "id": pid, "name": [{"family": f"Test-{pid}"}],
                "generalPractitioner": [{"reference": "Organization/org1"}]}).raise_for_status()
        c.put("/fhir/Observation/o1", headers=auth, json={
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"text": "pulse"}, "subject": {"reference": "Patient/p1"}}).raise_for_status()
        yield c


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorize_params(challenge: str, scope: str, **over) -> dict:
    return {"response_type": "code", "client_id": "app1", "redirect_uri": REDIRECT,
            "scope": scope, "state": "st-123", "aud": FHIR, "code_challenge": challenge,
            "code_challenge_method": "S256", **over}


def txn_of(html: str) -> str:
    return re.search(r'name="txn" value="([^"]+)"', html).group(1)


def query_of(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def get_code(c: TestClient, scope: str, username="drsmith", role=f"{ORG}|clinician",
             patient=None) -> tuple[str, str]:
    """Drive the browser side of the flow; returns (code, verifier)."""
    verifier, challenge = pkce()
    r = c.get("/auth/authorize", params=authorize_params(challenge, scope))
    assert r.status_code == 200, r.text
    assert "Test Viewer" in r.text
    txn = txn_of(r.text)
    r = c.post("/auth/authorize/sign-in", data={"txn": txn, "username": username,
                                                "password": PASSWORD})
    if r.status_code == 200:  # several roles, or a patient to pick
        assert "Choose your role" in r.text
        form = {"txn": txn_of(r.text), "role": role}
        if patient:
            form["patient"] = patient
        r = c.post("/auth/authorize/choose", data=form)
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith(REDIRECT + "?")
    q = query_of(r.headers["location"])
    assert q["state"] == "st-123"
    return q["code"], verifier


def exchange(c: TestClient, code: str, verifier: str, **over):
    return c.post("/auth/token", data={"grant_type": "authorization_code", "code": code,
                                       "redirect_uri": REDIRECT, "client_id": "app1",
                                       "code_verifier": verifier, **over})


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ discovery
def test_grant_scopes_intersects_and_normalises():
    allowed = "openid launch/patient patient/*.rs user/Observation.cruds"
    assert grant_scopes("patient/Observation.read user/Observation.rs", allowed,
                        ("patient", "user")) == ["patient/Observation.rs", "user/Observation.rs"]
    assert grant_scopes("user/*.cruds", allowed, ("patient", "user")) == ["user/Observation.cruds"]
    assert grant_scopes("patient/*.cruds openid fhirUser", allowed, ("patient", "user")) == \
        ["openid", "patient/*.rs"]
    assert grant_scopes("system/*.rs patient/Observation.rs?category=laboratory", allowed,
                        ("patient", "user")) == []
    assert set(grant_scopes("system/*.rs", "system/Patient.rs system/*.r", ("system",))) == \
        {"system/*.r", "system/Patient.rs"}


def test_well_known_smart_configuration(sc):
    with TestClient(build_app(sc), base_url=BASE) as c:
        for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
            r = c.get(path)
            assert r.status_code == 200
            doc = r.json()
            assert doc["issuer"] == BASE
            assert doc["authorization_endpoint"] == f"{BASE}/auth/authorize"
            assert doc["token_endpoint"] == TOKEN_URL
            assert doc["jwks_uri"] == f"{BASE}/auth/jwks"
            assert doc["code_challenge_methods_supported"] == ["S256"]
            assert set(doc["grant_types_supported"]) == {"authorization_code",
                                                         "refresh_token", "client_credentials"}
            assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
            assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384",
                                                                                   "ES384"}
            for cap in ("launch-standalone", "client-public", "client-confidential-asymmetric",
                        "context-standalone-patient", "permission-v2", "sso-openid-connect"):
                assert cap in doc["capabilities"]
            assert "system/*.rs" in doc["scopes_supported"]
        jwks = c.get("/auth/jwks").json()
        assert jwks == sc.governance.tokens.public_jwks()
        assert all("d" not in k for k in jwks["keys"])
        assert c.get("/.well-known/openid-configuration").json()["issuer"] == BASE


# ------------------------------------------------------------------ authorization code
def test_auth_code_pkce_flow_reads_within_scope_only(web, sc):
    code, verifier = get_code(web, "openid user/Patient.rs")
    r = exchange(web, code, verifier)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert body["scope"].split() == ["openid", "user/Patient.rs"]
    claims = sc.governance.tokens.verify(body["access_token"])
    assert (claims["sub"], claims["ods"], claims["role"], claims["client_id"]) == \
        ("drsmith", ORG, "clinician", "app1")
    # The ID token verifies against the published keys and names the person.
    keys = KeySet.import_key_set(web.get("/auth/jwks").json())
    idt = jwt.decode(body["id_token"], keys).claims
    assert (idt["iss"], idt["aud"], idt["sub"]) == (BASE, "app1", "drsmith")

    token = body["access_token"]
    r = web.get("/fhir/Patient/p1", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "p1"
    # Beyond its scope: Observation was not granted, nor any write.
    assert web.get("/fhir/Observation/o1", headers=bearer(token)).status_code == 403
    assert web.get("/fhir/Observation", params={"patient": "p1"},
                   headers=bearer(token)).status_code == 403
    r = web.put("/fhir/Patient/p1", headers=bearer(token),
                json={"resourceType": "Patient", "id": "p1"})
    assert r.status_code == 403


def test_patient_launch_confines_token_to_the_chosen_patient(web, sc):
    # nurse1 holds one role, but launch/patient still needs the patient picked.
    code, verifier = get_code(web, "launch/patient patient/*.rs", username="nurse1",
                              role=f"{ORG}|nurse", patient="p1")
    body = exchange(web, code, verifier).json()
    assert body["patient"] == "p1"
    assert set(body["scope"].split()) == {"launch/patient", "patient/*.rs"}
    token = body["access_token"]
    assert web.get("/fhir/Patient/p1", headers=bearer(token)).status_code == 200
    assert web.get("/fhir/Observation/o1", headers=bearer(token)).status_code == 200
    assert web.get("/fhir/Patient/p2", headers=bearer(token)).status_code == 403


def test_single_role_goes_straight_back_to_the_app(web):
    verifier, challenge = pkce()
    r = web.get("/auth/authorize", params=authorize_params(challenge, "user/*.rs"))
    r = web.post("/auth/authorize/sign-in", data={"txn": txn_of(r.text), "username": "nurse1",
                                                  "password": PASSWORD})
    assert r.status_code == 303
    code = query_of(r.headers["location"])["code"]
    assert exchange(web, code, verifier).status_code == 200


def test_wrong_verifier_and_code_reuse_are_invalid_grant(web):
    code, verifier = get_code(web, "user/*.rs")
    r = exchange(web, code, pkce()[0])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # The failed attempt used the code up.
    assert exchange(web, code, verifier).json()["error"] == "invalid_grant"

    code, verifier = get_code(web, "user/*.rs")
    assert exchange(web, code, verifier).status_code == 200
    r = exchange(web, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_confidential_app_must_authenticate_with_its_key(web, sc):
    key = ECKey.generate_key("P-384", parameters={"kid": "app2-key"}, private=True)
    register_client(sc.engine, "app1", "Test Viewer", ods=None, redirect_uris=[REDIRECT],
                    scopes="user/*.rs", public=False, jwks={"keys": [key.as_dict(private=False)]})
    code, verifier = get_code(web, "user/*.rs")
    r = exchange(web, code, verifier)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    code, verifier = get_code(web, "user/*.rs")
    r = exchange(web, code, verifier, client_assertion_type=ASSERTION_TYPE,
                 client_assertion=assertion(key, "ES384", "app1"))
    assert r.status_code == 200, r.text
    assert web.options("/auth/token").headers["access-control-allow-origin"] == "*"


def test_token_request_errors(web):
    code, verifier = get_code(web, "user/*.rs")
    r = exchange(web, code, verifier, redirect_uri="https://app.example/other")
    assert r.json()["error"] == "invalid_grant"
    r = exchange(web, "x", verifier, client_id="nobody")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = web.post("/auth/token", data={"grant_type": "authorization_code", "code": "x"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = web.post("/auth/token", data={"grant_type": "password"})
    assert r.json()["error"] == "unsupported_grant_type"


def test_authorize_refuses_unregistered_redirect_without_redirecting(web):
    _, challenge = pkce()
    r = web.get("/auth/authorize", params=authorize_params(
        challenge, "user/*.rs", redirect_uri="https://evil.example/steal"))
    assert r.status_code == 400
    assert "location" not in r.headers
    assert "not registered" in r.text
    r = web.get("/auth/authorize", params=authorize_params(challenge, "user/*.rs",
                                                           client_id="nobody"))
    assert r.status_code == 400 and "location" not in r.headers


AUTHORIZE_ERRORS = [
    ({"aud": "https://elsewhere.example/fhir"}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": ""}, "invalid_request"),
    ({"scope": "system/*.rs"}, "invalid_scope"),
    ({"scope": "launch user/*.rs"}, "invalid_scope"),
    ({"response_type": "token"}, "unsupported_response_type"),
]


def test_authorize_errors_go_back_to_the_app(web):
    _, challenge = pkce()
    for over, error in AUTHORIZE_ERRORS:
        r = web.get("/auth/authorize", params={**authorize_params(challenge, "user/*.rs"), **over})
        assert r.status_code == 302, over
        q = query_of(r.headers["location"])
        assert r.headers["location"].startswith(REDIRECT)
        assert (q["error"], q["state"]) == (error, "st-123"), over


def test_sign_in_failures_and_lock_out(web):
    _, challenge = pkce()
    r = web.get("/auth/authorize", params=authorize_params(challenge, "user/*.rs"))
    txn = txn_of(r.text)
    for _ in range(5):
        r = web.post("/auth/authorize/sign-in", data={"txn": txn, "username": "nurse1",
                                                      "password": "wrong"})
    assert r.status_code == 423 and "locked" in r.text
    r = web.post("/auth/authorize/sign-in", data={"txn": txn, "username": "nurse1",
                                                  "password": PASSWORD})
    assert r.status_code == 423 and "locked" in r.text
    r = web.post("/auth/authorize/sign-in", data={"txn": txn, "username": "drsmith",
                                                  "password": "wrong"})
    assert r.status_code == 401 and "not right" in r.text
    # Cancelling tells the app.
    r = web.post("/auth/authorize/sign-in", data={"txn": txn, "cancel": "1"})
    assert r.status_code == 303 and query_of(r.headers["location"])["error"] == "access_denied"


def test_sign_in_is_bound_to_the_browser_that_started_it(web, sc):
    _, challenge = pkce()
    r = web.get("/auth/authorize", params=authorize_params(challenge, "user/*.rs"))
    txn = txn_of(r.text)
    with TestClient(build_app(sc), base_url=BASE, follow_redirects=False) as other:
        r = other.post("/auth/authorize/sign-in", data={"txn": txn, "username": "nurse1",
                                                        "password": PASSWORD})
    assert r.status_code == 400 and "expired" in r.text


# ------------------------------------------------------------------ backend services
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(6)}, private=True)


def register_system(sc, key, client_id="partner1", scopes="system/*.rs"):
    register_client(sc.engine, client_id, "Partner EPR", ods=ORG, public=False,
                    jwks={"keys": [key.as_dict(private=False)]}, scopes=scopes)


def assertion(key, alg="RS384", client_id="partner1", aud=TOKEN_URL, exp_in=240, jti=None,
              **over) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + exp_in,
              "jti": jti or secrets.token_hex(12), **over}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def client_credentials(c, signed: str, scope="system/*.rs"):
    return c.post("/auth/token", data={"grant_type": "client_credentials", "scope": scope,
                                       "client_assertion_type": ASSERTION_TYPE,
                                       "client_assertion": signed})


def test_client_credentials_token_reads_with_system_scopes(web, sc):
    key = rsa_key()
    register_system(sc, key)
    r = client_credentials(web, assertion(key), scope="system/*.rs system/*.cruds user/*.rs")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "system/*.rs" and body["token_type"] == "Bearer"
    claims = sc.governance.tokens.verify(body["access_token"])
    assert (claims["kind"], claims["client_id"], claims["ods"]) == ("system", "partner1", ORG)
    token = body["access_token"]
    assert web.get("/fhir/Patient/p1", headers=bearer(token)).status_code == 200
    assert web.get("/fhir/Observation", params={"patient": "p1"},
                   headers=bearer(token)).status_code == 200
    r = web.put("/fhir/Patient/p1", headers=bearer(token),
                json={"resourceType": "Patient", "id": "p1"})
    assert r.status_code == 403


def test_client_credentials_with_es384(web, sc):
    key = ECKey.generate_key("P-384", parameters={"kid": "ec1"}, private=True)
    register_system(sc, key, "partner-ec")
    r = client_credentials(web, assertion(key, "ES384", "partner-ec"))
    assert r.status_code == 200, r.text


def test_client_credentials_refusals(web, sc):
    key = rsa_key()
    register_system(sc, key)

    def refused(signed, scope="system/*.rs", error="invalid_client"):
        r = client_credentials(web, signed, scope)
        assert r.status_code == (401 if error == "invalid_client" else 400), r.text
        assert r.json()["error"] == error, r.text
        return r.json()["error_description"]

    # Signed with a key the client never registered (same kid, even).
    impostor = RSAKey.generate_key(2048, parameters={"kid": key.kid}, private=True)
    refused(assertion(impostor))
    # Replayed jti.
    signed = assertion(key, jti="once-only")
    assert client_credentials(web, signed).status_code == 200
    assert "already used" in refused(assertion(key, jti="once-only"))
    # Expired, or valid for too long.
    refused(assertion(key, exp_in=-120))
    assert "five minutes" in refused(assertion(key, exp_in=900))
    # Wrong audience, sub, algorithm, unknown client.
    refused(assertion(key, aud="https://other.example/token"))
    refused(assertion(key, sub="someone-else"))
    refused(assertion(key, alg="RS256"))
    refused(assertion(key, client_id="nobody"))
    # Not a JWT, or no assertion type.
    refused("not-a-jwt")
    r = web.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/*.rs",
                                      "client_assertion": assertion(key)})
    assert r.json()["error"] == "invalid_client"
    # Only system/ scopes this client is registered for.
    refused(assertion(key), scope="user/*.rs", error="invalid_scope")
    refused(assertion(key), scope="system/*.cud", error="invalid_scope")


def test_register_client_rejects_private_keys_and_bad_redirects(sc):
    key = rsa_key()
    with pytest.raises(ValueError):
        register_client(sc.engine, "x", "X", ods=ORG, jwks={"keys": [key.as_dict(private=True)]},
                        scopes="system/*.rs")
    with pytest.raises(ValueError):
        register_client(sc.engine, "x", "X", ods=None, redirect_uris=["app://cb#frag"],
                        scopes="user/*.rs")
    c = register_client(sc.engine, "x", "X", ods=None, redirect_uris=["https://a.example/cb"],
                        scopes=["user/*.rs", "openid"])
    assert c.redirect_uris == ("https://a.example/cb",) and c.public
    assert smart.get_client(sc.engine, "x").scopes == ("user/*.rs", "openid")
    assert smart.remove_client(sc.engine, "x")
    assert smart.get_client(sc.engine, "x") is None
