"""A small SMART EHR (a partner's EPR) that launches sharedcare, run by the tests themselves.

A Starlette app on a real local port (uvicorn in a thread), answering as a SMART App Launch 2.x
EHR would:

    GET  /fhir/.well-known/smart-configuration
    GET  /auth/authorize   checks the request (client, launch, aud, PKCE S256, scopes) and
                           approves at once: back to redirect_uri with code and state
    POST /auth/token       checks client_secret_basic, the code, redirect_uri and the PKCE
                           verifier; answers with the launch's patient and an RS256 ID token
                           (fhirUser, nonce)
    GET  /auth/jwks
    GET  /fhir/Patient/{id}, /fhir/Practitioner/{id}   with the access token it issued

`launches` maps a launch id to (patient id, practitioner id); `overrides` bends the next ID
tokens, `sign_with` signs them with another key, `token_extra` adds to the token response.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from urllib.parse import urlencode

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SDS = "https://fhir.nhs.uk/Id/sds-user-id"


class EhrSimulator:
    def __init__(self, client_id: str, secret: str):
        self.client_id, self.secret = client_id, secret
        self.key = RSAKey.generate_key(2048, parameters={"kid": "ehr-1"}, private=True)
        self.base = ""  # http://127.0.0.1:port
        self.codes: dict[str, dict] = {}
        self.tokens: set[str] = set()
        self.launches: dict[str, tuple[str, str]] = {}
        self.patients: dict[str, dict] = {}
        self.practitioners: dict[str, dict] = {}
        self.overrides: dict = {}
        self.sign_with: RSAKey | None = None
        self.token_extra: dict = {}
        self.requests: list[str] = []  # paths asked for, in order
        # When set: the client authenticates with private_key_jwt signed by one of these keys
        # (the public JWK Set sharedcare's admin gave the EPR), not client_secret_basic.
        self.client_keys: KeySet | None = None

    @property
    def fhir(self) -> str:
        return f"{self.base}/fhir"

    def add_patient(self, pid: str, nhs: str | None, family: str = "Simulated"):
        res = {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}
        if nhs:
            res["identifier"] = [{"system": NHS, "value": nhs}]
        self.patients[pid] = res

    def add_practitioner(self, prid: str, sds: str | None):
        res = {"resourceType": "Practitioner", "id": prid, "name": [{"family": "Doctor"}]}
        if sds:
            res["identifier"] = [{"system": SDS, "value": sds}]
        self.practitioners[prid] = res

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/fhir/.well-known/smart-configuration", self.configuration),
            Route("/auth/jwks", self.jwks),
            Route("/auth/authorize", self.authorize),
            Route("/auth/token", self.token, methods=["POST"]),
            Route("/fhir/{rtype}/{rid}", self.read),
        ])

    async def configuration(self, request: Request):
        self.requests.append(request.url.path)
        return JSONResponse({
            "issuer": self.base, "jwks_uri": f"{self.base}/auth/jwks",
            "authorization_endpoint": f"{self.base}/auth/authorize",
            "token_endpoint": f"{self.base}/auth/token",
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-ehr", "context-ehr-patient", "sso-openid-connect",
                             "client-confidential-symmetric"]})

    async def jwks(self, request: Request):
        return JSONResponse(KeySet([self.key]).as_dict(private=False))

    async def authorize(self, request: Request):
        self.requests.append(request.url.path)
        q = request.query_params
        scope = q.get("scope", "").split()
        if q.get("client_id") != self.client_id or q.get("response_type") != "code" or \
                q.get("code_challenge_method") != "S256" or not q.get("code_challenge") or \
                "launch" not in scope or "openid" not in scope or q.get("aud") != self.fhir \
                or q.get("launch") not in self.launches or not q.get("state"):
            return JSONResponse({"error": "invalid_request"}, 400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q.get("nonce"), "redirect_uri": q["redirect_uri"],
                            "challenge": q["code_challenge"], "launch": q["launch"]}
        return RedirectResponse(f"{q['redirect_uri']}?"
                                + urlencode({"code": code, "state": q["state"]}), 302)

    async def token(self, request: Request):
        form = await request.form()
        if self.client_keys is not None:
            try:
                tok = jwt.decode(str(form.get("client_assertion")), self.client_keys,
                                 algorithms=["RS384", "ES384"])
                jwt.JWTClaimsRegistry(
                    iss={"essential": True, "value": self.client_id},
                    sub={"essential": True, "value": self.client_id},
                    aud={"essential": True, "value": f"{self.base}/auth/token"},
                    exp={"essential": True}, jti={"essential": True}).validate(tok.claims)
            except Exception:  # noqa: BLE001 - any failure is an unauthenticated client
                return JSONResponse({"error": "invalid_client"}, 401)
            if form.get("client_assertion_type") != \
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return JSONResponse({"error": "invalid_client"}, 401)
        else:
            expected = "Basic " + base64.b64encode(
                f"{self.client_id}:{self.secret}".encode()).decode()
            if request.headers.get("authorization") != expected:
                return JSONResponse({"error": "invalid_client"}, 401)
        grant = self.codes.pop(str(form.get("code")), None)
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"] or \
                form.get("grant_type") != "authorization_code":
            return JSONResponse({"error": "invalid_grant"}, 400)
        digest = hashlib.sha256(str(form.get("code_verifier")).encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant",
                                 "error_description": "PKCE verification failed"}, 400)
        patient, practitioner = self.launches[grant["launch"]]
        now = int(time.time())
        claims = {"iss": self.base, "sub": f"user-{practitioner}", "aud": self.client_id,
                  "iat": now, "exp": now + 300, "nonce": grant["nonce"],
                  "fhirUser": f"{self.fhir}/Practitioner/{practitioner}",
                  "preferred_username": practitioner, **self.overrides}
        id_token = jwt.encode({"alg": "RS256", "kid": "ehr-1"}, claims,
                              self.sign_with or self.key)
        access = secrets.token_hex(16)
        self.tokens.add(access)
        return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": 300,
                             "scope": "launch openid fhirUser patient/Patient.read",
                             "patient": patient, "id_token": id_token, **self.token_extra})

    async def read(self, request: Request):
        self.requests.append(request.url.path)
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return JSONResponse({"resourceType": "OperationOutcome"}, 401)
        rtype, rid = request.path_params["rtype"], request.path_params["rid"]
        found = {"Patient": self.patients, "Practitioner": self.practitioners}.get(rtype, {})
        if rid not in found:
            return JSONResponse({"resourceType": "OperationOutcome"}, 404)
        return JSONResponse(found[rid], media_type="application/fhir+json")


def start(sim: EhrSimulator):
    """Run the simulator on a free port; returns (uvicorn server, thread): set should_exit."""
    from tests.conftest import free_port, serve_in_thread

    port = free_port()
    sim.base = f"http://127.0.0.1:{port}"  # its documents name it: known before it serves
    server, thread, _ = serve_in_thread(sim.app(), port)
    return server, thread
