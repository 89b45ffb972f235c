"""SMART App Launch 2.x: the authorization server in front of the FHIR API.

    GET  /.well-known/smart-configuration   (also under /fhir/)   what this server supports
    GET  /.well-known/openid-configuration                        the same, for OpenID clients
    GET  /auth/jwks                                                keys that sign our tokens
    GET|POST /auth/authorize                                       authorization code + PKCE
    POST /auth/authorize/sign-in, /auth/authorize/choose           the pages behind it
    POST /auth/token                                  code, refresh_token and client_credentials

Three ways in:

* An app acting for a person (standalone launch): authorization code with PKCE (S256 only).
  The person signs in with a local account (`Governance.sign_in`, with lock-out), chooses one of
  the roles they hold, and -- for `launch/patient` or `patient/` scopes -- the patient; the app
  exchanges the one-time code for `Governance.issue_token(...)` narrowed to the granted scopes.
* An app sharedcare launches (EHR launch, sharedcare as the EHR): from the patient view, "Open
  in <app>" (`start_launch`) makes a `launch` id bound to the patient, the person and their role
  (five minutes, single use) and sends the browser to the app's registered `launch_url` with
  `iss` and `launch`; the app's authorize request with the `launch` scope and that `launch`
  needs no second sign-in while the browser's sharedcare session is the same person in the same
  role, and the token response carries `patient` and `need_patient_banner`.
* A partner system (SMART Backend Services): client_credentials, the client authenticating with
  a JWT signed by a key registered in `api_client.jwks` (RS384 or ES384), for
  `Governance.issue_system_token(...)` with `system/` scopes.

Granted scopes are always the requested ones intersected with what the client is registered
for; the governance policy still decides what any token can see.

Refresh tokens (OAuth 2.0 Security BCP, RFC 9700 §4.14): an app granted `offline_access` or
`online_access` also gets a refresh token. Each use (`grant_type=refresh_token`) returns a new
access token and a *new* refresh token; the one used stops working. Every refresh token descends
from one authorisation (a family); presenting a refresh token that was already rotated away
means two parties hold it, so the whole family is revoked and the app must send the person
through sign-in again. A refresh token is bound to the client it was issued to (a confidential
client authenticates as it did for the code), may ask for the same scopes or fewer (never more:
invalid_scope), expires with its family (`online_access`: a working shift; `offline_access`:
30 days), and is refused once the person's account is disabled or the role removed.

Shared state: pending authorisations (15 minutes), one-time codes (60 s) and used assertion `jti`s
(until the assertion expires) live in the shared state (`sharedcare.store.shared_state`: the
database, or Redis), so any server behind a load balancer can take the next step: a code issued
by one is redeemed at another, once (taken atomically), and a replayed assertion is refused by
every server. Codes, refresh tokens and transaction ids are stored only as hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Engine, delete, insert, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ..fhir.outcome import FHIRError
from ..store.shared_state import shared_state_of
from .auth import ALG, Scope, parse_scopes
from .policy import DIRECT_CARE, PURPOSES, Access
from .schema import api_client, staff

PUBLIC_URL_ENV = "SHAREDCARE_PUBLIC_URL"  # e.g. https://shcr.example.nhs.uk behind a proxy
ACCESS_LIFETIME = 3600
CODE_LIFETIME = 60  # one-time authorization codes
PENDING_LIFETIME = 900  # from /auth/authorize to choosing a role
ASSERTION_MAX_LIFETIME = 300  # SMART Backend Services: exp at most five minutes ahead
CLOCK_SKEW = 30
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384")
BROWSER_COOKIE = "sc_auth_browser"  # binds a half-finished sign-in to the browser that began it
VERIFIER_RE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
# Non-resource scopes we understand; granted when the client is registered for them.
CONTEXT_SCOPES = ("openid", "launch", "launch/patient", "offline_access", "online_access")
REFRESH_SCOPES = ("offline_access", "online_access")
# How long a family of refresh tokens lives from the sign-in that started it.
REFRESH_LIFETIME = {"online_access": 8 * 3600, "offline_access": 30 * 24 * 3600}
CAPABILITIES = ["launch-ehr", "context-ehr-patient", "launch-standalone", "authorize-post", "client-public",
                "client-confidential-asymmetric", "context-standalone-patient",
                "permission-patient", "permission-user", "permission-v1", "permission-v2",
                "permission-offline", "permission-online", "sso-openid-connect"]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CORS = {"Access-Control-Allow-Origin": "*"}
# Kinds of shared state (sharedcare.store.shared_state)
PENDING, CODE, JTI = "smart-pending", "smart-code", "smart-jti"
# refresh token -> its grant; family id -> alive; a rotated refresh token -> its family
REFRESH, FAMILY, ROTATED = "smart-refresh", "smart-refresh-family", "smart-refresh-used"
LAUNCH_CTX = "smart-launch"  # launch id -> patient, person, role, client (EHR launch)
LAUNCH_LIFETIME = 300
WEB_SESSION_COOKIE = "sc_session"  # the web pages' session (web.core, oidc)

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


# ------------------------------------------------------------------ the client registry
@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    ods: str | None
    redirect_uris: tuple[str, ...]
    jwks: dict | None
    scopes: tuple[str, ...]
    purpose: str
    public: bool
    launch_url: str | None = None  # apps sharedcare launches from the patient view


def register_client(engine: Engine, client_id: str, name: str, *, ods: str | None,
                    redirect_uris: Iterable[str] = (), jwks: dict | str | None = None,
                    scopes: str | Iterable[str], purpose: str = DIRECT_CARE,
                    public: bool = True, launch_url: str | None = None) -> Client:
    """Add or replace a SMART client. `scopes` is the most it may ever be granted; `jwks` (a
    JWK Set, public keys only) is how a confidential client authenticates (private_key_jwt);
    `launch_url` makes it launchable from the patient view (it should hold `launch`)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose '{purpose}'")
    scope_list = scopes.split() if isinstance(scopes, str) else list(scopes)
    uris = list(redirect_uris)
    for uri in uris:
        parts = urlsplit(uri)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
            raise ValueError(f"redirect URI '{uri}' must be an absolute http(s) URL without a "
                             "fragment")
    if launch_url is not None:
        parts = urlsplit(launch_url)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
            raise ValueError(f"launch URL '{launch_url}' must be an absolute http(s) URL "
                             "without a fragment")
        if "launch" not in scope_list:
            raise ValueError("a launchable app must be registered for the 'launch' scope")
    if jwks is not None:
        keys = json.loads(jwks) if isinstance(jwks, str) else jwks
        if any(k.get(p) for k in keys.get("keys", []) for p in ("d", "p", "q", "k")):
            raise ValueError("register the client's public keys only")
        KeySet.import_key_set(keys)  # fails early on a malformed set
        jwks = json.dumps(keys)
    with engine.begin() as conn:
        conn.execute(delete(api_client).where(api_client.c.client_id == client_id))
        conn.execute(insert(api_client), [{
            "client_id": client_id, "name": name, "ods": ods, "redirect_uris": " ".join(uris),
            "jwks": jwks, "scopes": " ".join(scope_list), "purpose": purpose,
            "public": public, "launch_url": launch_url}])
    return get_client(engine, client_id)


def get_client(engine: Engine, client_id: str | None) -> Client | None:
    if not client_id:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(api_client).where(api_client.c.client_id == client_id)).first()
    return _client(row) if row is not None else None


def _client(row) -> Client:
    return Client(row.client_id, row.name, row.ods, tuple((row.redirect_uris or "").split()),
                  json.loads(row.jwks) if row.jwks else None, tuple(row.scopes.split()),
                  row.purpose or DIRECT_CARE, bool(row.public), row.launch_url)


def launchable_clients(engine: Engine) -> list[Client]:
    """Apps with a launch URL: offered as "Open in <app>" on the patient view (one query)."""
    with engine.connect() as conn:
        return [_client(row) for row in conn.execute(
            select(api_client).where(api_client.c.launch_url.is_not(None))
            .order_by(api_client.c.name))]


def start_launch(sc, request: Request, access: Access, client: Client,
                 patient_id: str) -> str:
    """EHR launch of `client` for `patient_id` by the person in `access` (who may see the
    patient: the caller checks): a single-use launch id in the shared state and the URL of the
    app's launch page with `iss` and `launch`. Audited once."""
    if not client.launch_url:
        raise ValueError(f"{client.client_id} has no launch URL")
    launch = secrets.token_urlsafe(24)
    shared_state_of(sc).put(LAUNCH_CTX, launch, {
        "client_id": client.client_id, "username": access.username, "ods": access.ods,
        "role": access.role, "patient": patient_id}, LAUNCH_LIFETIME)
    sc.governance.audit(access, "launch", "0", patient_id=patient_id,
                        entity=f"app {client.client_id}"[:400],
                        reason=f"opened {client.name} in this patient's context (EHR launch)")
    return _with_query(client.launch_url, {"iss": public_base(request) + "/fhir",
                                           "launch": launch})


def remove_client(engine: Engine, client_id: str) -> bool:
    with engine.begin() as conn:
        return conn.execute(delete(api_client)
                            .where(api_client.c.client_id == client_id)).rowcount > 0


# ------------------------------------------------------------------ scopes
def grant_scopes(requested: str, allowed: str | Iterable[str],
                 contexts: Collection[str]) -> list[str]:
    """Requested ∩ allowed, in SMART v2 form. v1 `.read`/`.write`/`.*` are understood; scopes in
    another context (`contexts`: patient/user for apps, system for backend services), unknown
    scopes and v2 query-narrowed scopes (`...rs?category=x`) are not granted."""
    allowed = allowed.split() if isinstance(allowed, str) else list(allowed)
    allowed_res = parse_scopes(" ".join(allowed))
    other: list[str] = []
    perms: dict[tuple[str, str], set[str]] = {}
    for text in requested.split():
        if text in CONTEXT_SCOPES:
            if text in allowed and text not in other:
                other.append(text)
            continue
        want = Scope.parse(text)
        if want is None or want.context not in contexts:
            continue
        for have in allowed_res:
            if have.context != want.context:
                continue
            if "*" not in (have.rtype, want.rtype) and have.rtype != want.rtype:
                continue
            rtype = want.rtype if want.rtype != "*" else have.rtype
            both = want.perms & have.perms
            if both:
                perms.setdefault((want.context, rtype), set()).update(both)
    out = []
    for (ctx, rtype), p in perms.items():
        wild = perms.get((ctx, "*"))
        if rtype != "*" and wild is not None and p <= wild:
            continue  # already covered by ctx/*
        out.append(f"{ctx}/{rtype}.{''.join(c for c in 'cruds' if c in p)}")
    return other + out


def _needs_patient(granted: Iterable[str]) -> bool:
    return any(s == "launch/patient" or s.startswith("patient/") for s in granted)


def narrow_scopes(requested: str, granted: list[str], contexts: Collection[str]) -> list[str]:
    """The scopes for a refreshed access token: `requested` when each of its scopes is covered
    by the original grant (RFC 6749 §6), else invalid_scope naming the first that is not."""
    for text in requested.split():
        if Scope.parse(text) is None and text not in CONTEXT_SCOPES:
            raise OAuthError("invalid_scope", f"scope '{text}' is not understood here")
        whole = grant_scopes(text, [text], contexts)  # the scope itself, normalised
        if not whole or grant_scopes(text, granted, contexts) != whole:
            raise OAuthError("invalid_scope", f"scope '{text}' was not granted to this refresh "
                             "token: ask for the same scopes or fewer")
    return grant_scopes(requested, granted, contexts)


# ------------------------------------------------------------------ helpers
def public_base(request: Request) -> str:
    """This server's external URL: $SHAREDCARE_PUBLIC_URL, else what the request says."""
    return (os.environ.get(PUBLIC_URL_ENV) or str(request.base_url)).rstrip("/")


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class OAuthError(Exception):
    """An OAuth 2.0 error response (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str, status: int | None = None):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status or (401 if error == "invalid_client" else 400)

    def response(self) -> JSONResponse:
        headers = {**NO_STORE, **CORS}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="sharedcare", error="invalid_client"'
        return JSONResponse({"error": self.error, "error_description": self.description},
                            self.status, headers=headers)


def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    resp = templates.TemplateResponse(request, name, context, status_code=status)
    resp.headers.update({**NO_STORE, "X-Frame-Options": "DENY",
                         "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                         "frame-ancestors 'none'"})
    return resp


def error_page(request: Request, title: str, message: str, status: int = 400) -> HTMLResponse:
    return page(request, "auth_error.html", status, title=title, message=message)


def browser_id(request: Request) -> tuple[str, bool]:
    """The browser's binding cookie value, and whether it is new (to be set)."""
    have = request.cookies.get(BROWSER_COOKIE)
    if have and re.fullmatch(r"[A-Za-z0-9_-]{20,64}", have):
        return have, False
    return secrets.token_urlsafe(24), True


def browser_hash(value: str) -> str:
    """What the shared state keeps of the browser-binding cookie: its hash, never the value."""
    return hashlib.sha256(value.encode()).hexdigest()


def same_browser(request: Request, stored: str | None) -> bool:
    """Is this request from the browser whose cookie hashes to `stored`?"""
    have = request.cookies.get(BROWSER_COOKIE)
    return bool(have and stored) and hmac.compare_digest(browser_hash(have), stored)


def set_browser_cookie(request: Request, resp: Response, value: str) -> None:
    resp.set_cookie(BROWSER_COOKIE, value, path="/auth", httponly=True, samesite="lax",
                    secure=request.url.scheme == "https")


def role_options(roles: list[tuple[str, str, str]]) -> list[dict]:
    return [{"value": f"{ods}|{role}", "ods": ods, "org": name or ods, "role": role}
            for ods, name, role in roles]


def chosen_role(form, roles: list[tuple[str, str, str]]) -> tuple[str, str] | None:
    """The (ods, role) picked on the role-choice page, if it is one the person holds."""
    if len(roles) == 1 and not form.get("role"):
        return roles[0][0], roles[0][2]
    ods, _, role = str(form.get("role") or "").partition("|")
    return (ods, role) if any(o == ods and r == role for o, _, r in roles) else None


def own_patient(engine: Engine, username: str) -> str | None:
    """The Patient id of a patient's own (citizen) account."""
    with engine.connect() as conn:
        return conn.execute(select(staff.c.patient_id)
                            .where(staff.c.username == username)).scalar()


def audit_sign_in(gov, username: str | None, ods: str | None, role: str, outcome: str,
                  reason: str, client_id: str | None = None, action: str = "sign-in",
                  kind: str = "user", purpose: str = DIRECT_CARE) -> None:
    access = Access(username=username, ods=ods, role=role, client_id=client_id, kind=kind,
                    purpose=purpose)
    gov.audit(access, action, outcome, reason=reason, entity=client_id)


def json_response(body: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status, headers={**NO_STORE, **CORS})


# ------------------------------------------------------------------ the server
class SmartServer:
    def __init__(self, sc):
        self.sc = sc
        self.gov = sc.governance
        self.engine = sc.engine
        # Shared by every server: txn -> authorisation in progress ("smart-pending"), code ->
        # what it grants ("smart-code"), client_id + jti of assertions used ("smart-jti").
        self.state = shared_state_of(sc)

    def routes(self) -> list[Route]:
        return [
            Route("/.well-known/smart-configuration", self.configuration, methods=["GET"]),
            Route("/fhir/.well-known/smart-configuration", self.configuration, methods=["GET"]),
            Route("/.well-known/openid-configuration", self.openid_configuration,
                  methods=["GET"]),
            Route("/auth/jwks", self.jwks, methods=["GET"]),
            Route("/auth/authorize", self.authorize, methods=["GET", "POST"]),
            Route("/auth/authorize/sign-in", self.sign_in, methods=["POST"]),
            Route("/auth/authorize/choose", self.choose, methods=["POST"]),
            Route("/auth/token", self.token, methods=["POST", "OPTIONS"]),
        ]

    # -------------------------------------------------------------- discovery
    def configuration_document(self, base: str) -> dict:
        return {
            "issuer": base,
            "jwks_uri": f"{base}/auth/jwks",
            "authorization_endpoint": f"{base}/auth/authorize",
            "token_endpoint": f"{base}/auth/token",
            "grant_types_supported": ["authorization_code", "refresh_token",
                                      "client_credentials"],
            "response_types_supported": ["code"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "launch", "launch/patient", "offline_access",
                                 "online_access", "patient/*.rs", "patient/*.read",
                                 "user/*.rs", "user/*.cruds", "user/*.read", "user/*.write",
                                 "system/*.rs", "system/*.cruds", "system/*.read"],
            "capabilities": CAPABILITIES,
        }

    async def configuration(self, request: Request) -> Response:
        return JSONResponse(self.configuration_document(public_base(request)), headers=CORS)

    async def openid_configuration(self, request: Request) -> Response:
        base = public_base(request)
        doc = self.configuration_document(base)
        doc.update({"subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": [ALG],
                    "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "name"]})
        return JSONResponse(doc, headers=CORS)

    async def jwks(self, request: Request) -> Response:
        return JSONResponse(self.gov.tokens.public_jwks(), headers=CORS)

    # -------------------------------------------------------------- authorize
    async def authorize(self, request: Request) -> Response:
        params = dict(request.query_params) if request.method == "GET" else \
            {k: str(v) for k, v in (await request.form()).items()}
        client = await run_in_threadpool(get_client, self.engine, params.get("client_id"))
        if client is None:
            return error_page(request, "Unknown application",
                              "This application is not registered with the shared care record.")
        redirect_uri = params.get("redirect_uri")
        if not redirect_uri or redirect_uri not in client.redirect_uris:
            # Never redirect to an address the client did not register.
            return error_page(request, "Wrong return address",
                              f"{client.name} asked to return to an address it has not "
                              "registered. Tell the application's supplier.")
        state = params.get("state")

        def fail(error: str, description: str) -> Response:
            q = {"error": error, "error_description": description}
            if state:
                q["state"] = state
            return RedirectResponse(_with_query(redirect_uri, q), 302)

        if params.get("response_type") != "code":
            return fail("unsupported_response_type", "only response_type=code is supported")
        if not params.get("code_challenge"):
            return fail("invalid_request", "PKCE is required: send code_challenge (S256)")
        if params.get("code_challenge_method") != "S256":
            return fail("invalid_request", "code_challenge_method must be S256")
        if not re.fullmatch(r"[A-Za-z0-9_-]{43}", params["code_challenge"]):
            return fail("invalid_request", "code_challenge is not a base64url SHA-256 digest")
        fhir_base = public_base(request) + "/fhir"
        if (params.get("aud") or "").rstrip("/") != fhir_base:
            return fail("invalid_request", f"aud must be this server's FHIR base, {fhir_base}")
        granted = grant_scopes(params.get("scope") or "", client.scopes, ("patient", "user"))
        ctx = None
        if "launch" in (params.get("scope") or "").split():
            if "launch" not in granted:
                return fail("invalid_scope", "this application is not registered for EHR "
                            "launch")
            if not params.get("launch"):
                return fail("invalid_request", "the launch scope needs the launch parameter "
                            "the EHR sent")
            # Single use: taken now, whatever happens next.
            ctx = await run_in_threadpool(self.state.take, LAUNCH_CTX, params["launch"])
            if ctx is None or ctx["client_id"] != client.client_id:
                return fail("invalid_request", "the launch is unknown, expired, already used or "
                            "for another application")
        if not any("/" in s and not s.startswith("launch") for s in granted):
            return fail("invalid_scope", "none of the requested scopes can be granted to this "
                        "application")
        browser, new = browser_id(request)
        txn = secrets.token_urlsafe(24)
        pending = {
            "client_id": client.client_id, "client_name": client.name,
            "redirect_uri": redirect_uri, "state": state, "scope": granted,
            "code_challenge": params["code_challenge"], "nonce": params.get("nonce"),
            "purpose": client.purpose, "browser": browser_hash(browser), "username": None,
        }
        if ctx is not None:
            pending.update(launch={k: ctx[k] for k in ("username", "ods", "role")},
                           patient=ctx["patient"], need_patient_banner=True)
        await run_in_threadpool(self.state.put, PENDING, txn, pending, PENDING_LIFETIME)
        if ctx is not None and self._session_is(request, ctx):
            # Launched from the session of this same person in this same role: no second
            # sign-in.
            pending["username"] = ctx["username"]
            return await self._finish(request, txn, pending, ctx["ods"], ctx["role"],
                                      ctx["patient"])
        resp = self._sign_in_page(request, txn, client.name, granted)
        if new:
            set_browser_cookie(request, resp, browser)
        return resp

    def _session_is(self, request: Request, ctx: dict) -> bool:
        """Is the browser's sharedcare session the person and role of the launch?"""
        cookie = request.cookies.get(WEB_SESSION_COOKIE)
        if not cookie:
            return False
        try:
            claims = self.gov.tokens.verify(cookie)
        except FHIRError:
            return False
        return claims.get("kind", "user") == "user" and \
            (claims.get("sub"), claims.get("ods"), claims.get("role")) == \
            (ctx["username"], ctx["ods"], ctx["role"])

    def _sign_in_page(self, request, txn, client_name, granted, message=None, status=200):
        return page(request, "auth_sign_in.html", status, txn=txn, client_name=client_name,
                    scopes=granted, message=message, action="/auth/authorize/sign-in")

    async def _txn(self, request: Request, form) -> tuple[str, dict] | None:
        txn = str(form.get("txn") or "")
        pending = await run_in_threadpool(self.state.get, PENDING, txn) if txn else None
        if pending is None or not same_browser(request, pending["browser"]):
            return None
        return txn, pending

    def _expired(self, request: Request) -> Response:
        return error_page(request, "Sign-in expired",
                          "This sign-in has expired or was started in another browser. Go "
                          "back to the application and start again.")

    async def _deny(self, txn: str, pending: dict) -> Response:
        await run_in_threadpool(self.state.delete, PENDING, txn)
        q = {"error": "access_denied", "error_description": "the user cancelled"}
        if pending["state"]:
            q["state"] = pending["state"]
        return RedirectResponse(_with_query(pending["redirect_uri"], q), 303)

    async def sign_in(self, request: Request) -> Response:
        form = await request.form()
        found = await self._txn(request, form)
        if found is None:
            return self._expired(request)
        txn, pending = found
        if form.get("cancel"):
            return await self._deny(txn, pending)
        username = str(form.get("username") or "").strip()
        password = str(form.get("password") or "")
        ok = bool(username and password) and await run_in_threadpool(
            self.gov.sign_in, username, password)
        if not ok:
            locked = bool(username) and await run_in_threadpool(self.gov.is_locked, username)
            await run_in_threadpool(audit_sign_in, self.gov, username or None, None, "", "4",
                                    "account locked" if locked else "wrong username or password",
                                    pending["client_id"])
            message = ("This account is locked after too many failed attempts. Try again in "
                       "15 minutes, or ask your organisation's administrator to unlock it."
                       if locked else "The username or password is not right.")
            return self._sign_in_page(request, txn, pending["client_name"], pending["scope"],
                                      message, 401 if not locked else 423)
        roles = await run_in_threadpool(self.gov.roles_of, username)
        if not roles:
            await run_in_threadpool(self.state.delete, PENDING, txn)
            return error_page(request, "No role", "Your account holds no role at any "
                              "organisation, so it cannot be used to open records.", 403)
        launch = pending.get("launch")
        if launch is not None:
            # An EHR launch was made by one person in one role: only they may finish it.
            if username != launch["username"] or not any(
                    o == launch["ods"] and r == launch["role"] for o, _, r in roles):
                await run_in_threadpool(self.state.delete, PENDING, txn)
                await run_in_threadpool(audit_sign_in, self.gov, username, None, "", "4",
                                        "EHR launch finished by another person",
                                        pending["client_id"])
                return error_page(request, "Launched by someone else", "This application "
                                  "was opened from another person's shared care record "
                                  "session. Open it again from your own.", 403)
            pending["username"] = username
            await run_in_threadpool(self.state.put, PENDING, txn, pending, PENDING_LIFETIME)
            return await self._finish(request, txn, pending, launch["ods"], launch["role"],
                                      pending["patient"])
        pending["username"] = username
        pending["patient"] = await run_in_threadpool(own_patient, self.engine, username)
        await run_in_threadpool(self.state.put, PENDING, txn, pending, PENDING_LIFETIME)
        if len(roles) == 1 and not (_needs_patient(pending["scope"]) and not pending["patient"]):
            return await self._finish(request, txn, pending, roles[0][0], roles[0][2],
                                      pending["patient"])
        return self._choose_page(request, txn, pending, roles)

    def _choose_page(self, request, txn, pending, roles, message=None, status=200):
        return page(request, "auth_choose.html", status, txn=txn, roles=role_options(roles),
                    client_name=pending.get("client_name"), scopes=pending.get("scope", []),
                    ask_patient=_needs_patient(pending.get("scope", []))
                    and not pending.get("patient"),
                    action="/auth/authorize/choose", message=message)

    async def choose(self, request: Request) -> Response:
        form = await request.form()
        found = await self._txn(request, form)
        if found is None or not found[1].get("username"):
            return self._expired(request)
        txn, pending = found
        if form.get("cancel"):
            return await self._deny(txn, pending)
        roles = await run_in_threadpool(self.gov.roles_of, pending["username"])
        picked = chosen_role(form, roles)
        if picked is None:
            return self._choose_page(request, txn, pending, roles, "Choose one of your roles.",
                                     400)
        patient = pending.get("patient")
        if _needs_patient(pending["scope"]) and not patient:
            patient = str(form.get("patient") or "").strip()
            if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", patient) or not await \
                    run_in_threadpool(self.sc.store.exists, "Patient", patient):
                return self._choose_page(request, txn, pending, roles,
                                         "Enter the id of a patient in the record.", 400)
        return await self._finish(request, txn, pending, picked[0], picked[1], patient)

    async def _finish(self, request, txn, pending, ods, role, patient) -> Response:
        # The sign-in is taken, not read: a form posted twice (or to two servers) makes one code.
        if await run_in_threadpool(self.state.take, PENDING, txn) is None:
            return self._expired(request)
        code = secrets.token_urlsafe(32)
        await run_in_threadpool(self.state.put, CODE, code,
                                {**pending, "ods": ods, "role": role, "patient": patient},
                                CODE_LIFETIME)
        q = {"code": code}
        if pending["state"]:
            q["state"] = pending["state"]
        return RedirectResponse(_with_query(pending["redirect_uri"], q), 303)

    # -------------------------------------------------------------- token
    async def token(self, request: Request) -> Response:
        if request.method == "OPTIONS":  # CORS preflight from browser-based apps
            return Response(status_code=204, headers={
                **CORS, "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type, Authorization, Accept",
                "Access-Control-Max-Age": "600"})
        try:
            form = {k: str(v) for k, v in (await request.form()).items()}
            grant = form.get("grant_type")
            token_url = public_base(request) + "/auth/token"
            if grant == "authorization_code":
                body = await run_in_threadpool(self._exchange_code, form, token_url,
                                               public_base(request))
            elif grant == "refresh_token":
                body = await run_in_threadpool(self._refresh, form, token_url)
            elif grant == "client_credentials":
                body = await run_in_threadpool(self._client_credentials, form, token_url)
            elif not grant:
                raise OAuthError("invalid_request", "grant_type is required")
            else:
                raise OAuthError("unsupported_grant_type", f"grant_type '{grant}' is not "
                                 "supported")
        except OAuthError as e:
            return e.response()
        return json_response(body)

    def _exchange_code(self, form: dict, token_url: str, issuer: str) -> dict:
        for name in ("code", "redirect_uri", "client_id", "code_verifier"):
            if not form.get(name):
                raise OAuthError("invalid_request", f"{name} is required")
        client = get_client(self.engine, form["client_id"])
        if client is None:
            raise OAuthError("invalid_client", "unknown client_id")
        if form.get("client_assertion") or not client.public:
            self._authenticate_client(form, token_url, client)
        # One use only, even if the rest fails; taken atomically, so of two servers redeeming
        # the same code at once exactly one gets it.
        granted = self.state.take(CODE, form["code"])
        if granted is None:
            raise OAuthError("invalid_grant", "the code is unknown, expired or already used")
        if granted["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if granted["redirect_uri"] != form["redirect_uri"]:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization "
                             "request")
        verifier = form["code_verifier"]
        if not VERIFIER_RE.match(verifier) or \
                not hmac.compare_digest(s256(verifier), granted["code_challenge"]):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        scope = " ".join(granted["scope"])
        try:
            token = self._issue(granted, client.client_id, scope)
        except FHIRError as e:
            raise OAuthError("invalid_grant", str(e) or "the account can no longer be used") \
                from None
        audit_sign_in(self.gov, granted["username"], granted["ods"], granted["role"], "0",
                      f"SMART app signed in with scopes {scope}", client.client_id,
                      action="token", purpose=granted["purpose"])
        body = _token_body(token, scope, granted)
        if "openid" in granted["scope"]:
            body["id_token"] = self._id_token(issuer, client.client_id, granted)
        lasting = [s for s in REFRESH_SCOPES if s in granted["scope"]]
        if lasting:
            # offline_access outlives online_access when both are granted
            lifetime = max(REFRESH_LIFETIME[s] for s in lasting)
            family = secrets.token_urlsafe(16)
            self.state.put(FAMILY, family, {"client_id": client.client_id,
                                            "issued": [self._token_id(token)]}, lifetime)
            body["refresh_token"] = self._new_refresh(family, time.time() + lifetime, granted)
        return body

    def _token_id(self, access_token: str) -> tuple[str, int]:
        claims = self.gov.tokens.verify(access_token)
        return claims["jti"], int(claims["exp"])

    def _issue(self, grant: dict, client_id: str, scope: str) -> str:
        """An access token for a grant (a code's or a refresh token's): the person, role,
        purpose and patient it was given for, refused if the account can no longer be used."""
        extra = {"client_id": client_id}
        if grant.get("patient"):
            extra["patient"] = grant["patient"]
        return self.gov.issue_token(grant["username"], grant["ods"], grant["role"],
                                    purpose=grant["purpose"], scope=scope,
                                    lifetime=ACCESS_LIFETIME, **extra)

    # -------------------------------------------------------------- refresh tokens
    def _new_refresh(self, family: str, family_expires: float, granted: dict) -> str:
        """A refresh token for `granted` (person, role, client, scopes, patient), stored as a
        hash, living as long as its family."""
        token = secrets.token_urlsafe(32)
        keep = {k: granted.get(k) for k in ("client_id", "username", "ods", "role", "purpose",
                                            "scope", "patient", "need_patient_banner")}
        self.state.put(REFRESH, token, {**keep, "family": family, "family_expires":
                                        family_expires}, max(1.0, family_expires - time.time()))
        return token

    def _revoke_family(self, family: str) -> None:
        """Revoke a sign-in: its refresh tokens, and the access tokens it issued (RFC 9700
        §4.14.2: whoever replayed a refresh token may hold one of them too)."""
        held = self.state.take(FAMILY, family)
        if held:
            self.gov.tokens.revoke_ids([tuple(t) for t in held.get("issued", [])])

    def _refresh(self, form: dict, token_url: str) -> dict:
        for name in ("refresh_token", "client_id"):
            if not form.get(name):
                raise OAuthError("invalid_request", f"{name} is required")
        client = get_client(self.engine, form["client_id"])
        if client is None:
            raise OAuthError("invalid_client", "unknown client_id")
        if form.get("client_assertion") or not client.public:
            self._authenticate_client(form, token_url, client)
        presented = form["refresh_token"]
        held = self.state.get(REFRESH, presented)
        if held is not None and held["client_id"] != client.client_id:
            # Bound to the client it was issued to; another client's attempt does not use it up.
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        contexts = ("patient", "user")
        # A scope refused (invalid_scope) does not use the token up: checked before taking it.
        scopes = narrow_scopes(form["scope"], held["scope"], contexts) \
            if held is not None and form.get("scope") else None
        # Rotation: taken atomically, so of two requests with one token exactly one succeeds.
        grant = self.state.take(REFRESH, presented) if held is not None else None
        if grant is None:
            rotated = self.state.get(ROTATED, presented)
            if rotated is not None and rotated["client_id"] == client.client_id:
                # RFC 9700 §4.14.2: a rotated token presented again -- the legitimate app and
                # an attacker both hold the family: revoke all of it.
                self._revoke_family(rotated["family"])
                audit_sign_in(self.gov, rotated.get("username"), rotated.get("ods"),
                              rotated.get("role") or "", "4", "a refresh token was used again "
                              "after rotation: every refresh token of this sign-in is revoked",
                              client.client_id, action="token")
                raise OAuthError("invalid_grant", "the refresh token was already used; this "
                                 "sign-in is revoked, sign in again")
            raise OAuthError("invalid_grant", "the refresh token is unknown, expired or revoked")
        remaining = grant["family_expires"] - time.time()
        self.state.put(ROTATED, presented, {
            "family": grant["family"], "client_id": client.client_id,
            "username": grant["username"], "ods": grant["ods"], "role": grant["role"]},
            max(1.0, remaining))
        if remaining <= 0 or self.state.get(FAMILY, grant["family"]) is None:
            raise OAuthError("invalid_grant", "the refresh token is expired or revoked")
        scope = " ".join(scopes if scopes is not None else grant["scope"])
        try:
            # Checks again that the account is active and still holds the role.
            token = self._issue(grant, client.client_id, scope)
        except FHIRError:
            self._revoke_family(grant["family"])
            audit_sign_in(self.gov, grant["username"], grant["ods"], grant["role"], "4",
                          "refresh refused: the account is disabled or no longer holds the "
                          "role", client.client_id, action="token", purpose=grant["purpose"])
            raise OAuthError("invalid_grant", "the account is disabled or no longer holds "
                             "this role") from None
        family = self.state.get(FAMILY, grant["family"])
        if family is not None:  # remember the access token, so revoking the family ends it too
            self.state.put(FAMILY, grant["family"], {
                **family, "issued": [*family.get("issued", []), self._token_id(token)]},
                max(1.0, remaining))
        audit_sign_in(self.gov, grant["username"], grant["ods"], grant["role"], "0",
                      f"SMART app refreshed its access with scopes {scope}", client.client_id,
                      action="token", purpose=grant["purpose"])
        body = _token_body(token, scope, grant)
        body["refresh_token"] = self._new_refresh(grant["family"], grant["family_expires"], grant)
        return body

    def _id_token(self, issuer: str, client_id: str, granted: dict) -> str:
        now = int(time.time())
        claims = {"iss": issuer, "sub": granted["username"], "aud": client_id, "iat": now,
                  "exp": now + ACCESS_LIFETIME}
        if granted.get("nonce"):
            claims["nonce"] = granted["nonce"]
        key = self.gov.tokens.key
        return jwt.encode({"alg": ALG, "kid": key.kid, "typ": "JWT"}, claims, key)

    def _authenticate_client(self, form: dict, token_url: str,
                             client: Client | None = None) -> Client:
        """private_key_jwt (RFC 7523, SMART Backend Services): the client's signed assertion."""
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            raise OAuthError("invalid_client", "authenticate with client_assertion_type="
                             f"{ASSERTION_TYPE} and a client_assertion")
        assertion = form["client_assertion"]
        try:
            unverified = json.loads(jws.extract_compact(assertion.encode()).payload)
        except (JoseError, ValueError):
            raise OAuthError("invalid_client", "client_assertion is not a signed JWT") from None
        if not isinstance(unverified, dict):
            raise OAuthError("invalid_client", "client_assertion is not a signed JWT")
        client_id = unverified.get("iss")
        if client is None:
            client = get_client(self.engine, client_id if isinstance(client_id, str) else None)
        if client is None or client.client_id != client_id:
            raise OAuthError("invalid_client", "the assertion's issuer is not a registered "
                             "client")
        if form.get("client_id") and form["client_id"] != client.client_id:
            raise OAuthError("invalid_client", "client_id and the assertion's issuer differ")
        if not client.jwks:
            raise OAuthError("invalid_client", "this client has no registered keys")
        now = int(time.time())
        try:
            tok = jwt.decode(assertion, KeySet.import_key_set(client.jwks),
                             algorithms=list(ASSERTION_ALGS))
            jwt.JWTClaimsRegistry(
                now=now, leeway=CLOCK_SKEW,
                iss={"essential": True, "value": client.client_id},
                sub={"essential": True, "value": client.client_id},
                aud={"essential": True, "value": token_url},
                exp={"essential": True}, jti={"essential": True},
            ).validate(tok.claims)
        except (JoseError, ValueError) as e:
            raise OAuthError("invalid_client", "the client assertion is not valid "
                             f"({type(e).__name__}: {e})") from None
        exp = int(tok.claims["exp"])
        if exp > now + ASSERTION_MAX_LIFETIME + CLOCK_SKEW:
            raise OAuthError("invalid_client", "the client assertion's exp is more than five "
                             "minutes ahead")
        if not self.state.add(JTI, f"{client.client_id}\0{tok.claims['jti']}",
                              exp - now + CLOCK_SKEW + 1):
            raise OAuthError("invalid_client", "this client assertion (jti) was already used")
        return client

    def _client_credentials(self, form: dict, token_url: str) -> dict:
        client = self._authenticate_client(form, token_url)
        if not client.ods:
            raise OAuthError("unauthorized_client", "this client does not act for an "
                             "organisation, so it cannot use client_credentials")
        if not form.get("scope"):
            raise OAuthError("invalid_scope", "scope is required (system/ scopes)")
        granted = grant_scopes(form["scope"], client.scopes, ("system",))
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes can be granted; "
                             "this grant gives system/ scopes only")
        scope = " ".join(granted)
        token = self.gov.issue_system_token(client.client_id, client.ods, scope=scope,
                                            purpose=client.purpose, lifetime=ACCESS_LIFETIME)
        audit_sign_in(self.gov, None, client.ods, "system", "0",
                      f"backend service token with scopes {scope}", client.client_id,
                      action="token", kind="system", purpose=client.purpose)
        return {"access_token": token, "token_type": "Bearer", "expires_in": ACCESS_LIFETIME,
                "scope": scope}


def _token_body(token: str, scope: str, grant: dict) -> dict:
    """The token response's common part, with the launch context the grant carries."""
    body = {"access_token": token, "token_type": "Bearer", "expires_in": ACCESS_LIFETIME,
            "scope": scope}
    if grant.get("patient"):
        body["patient"] = grant["patient"]
        if grant.get("need_patient_banner") is not None:
            body["need_patient_banner"] = grant["need_patient_banner"]
    return body


def _with_query(uri: str, params: dict) -> str:
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode(params)


def routes(sc) -> list[Route]:
    """Every /auth, /launch and .well-known route: SMART App Launch (sharedcare as the
    authorisation server, and as an app a partner EPR launches) and OpenID Connect sign-in."""
    from . import ehr_launch, oidc

    server = SmartServer(sc)
    return server.routes() + oidc.routes(sc) + ehr_launch.routes(sc)
