"""Staff sign-in through an external OpenID Connect provider (NHS CIS2 is one).

    GET  /auth/oidc/login?next=/path   -> the provider's authorization endpoint
    GET  /auth/oidc/callback           <- the provider; code exchanged, ID token checked
    POST /auth/oidc/role               the role chosen, when the person holds several
    GET|POST /auth/sign-out            forget the session cookie

Configured from the environment (nothing is offered when SHAREDCARE_OIDC_ISSUER is unset):

    SHAREDCARE_OIDC_ISSUER         the provider's issuer; its discovery document is read from
                                   {issuer}/.well-known/openid-configuration
    SHAREDCARE_OIDC_CLIENT_ID      this service's client id at the provider
    SHAREDCARE_OIDC_CLIENT_SECRET  its secret (client_secret_basic, or _post -- see below)
    SHAREDCARE_OIDC_SCOPE          default "openid"
    SHAREDCARE_OIDC_TOKEN_AUTH     client_secret_basic (default) | client_secret_post
    SHAREDCARE_OIDC_ACR_VALUES     sent as acr_values when set (CIS2: e.g. AAL3_ANY)
    SHAREDCARE_OIDC_REDIRECT_URI   default {public base}/auth/oidc/callback

The ID token's signature (the provider's JWKS), iss, aud (and azp), exp, iat and nonce are
checked; `sub` must be the `staff.oidc_subject` of an active account. The person then chooses a
role and gets an `sc_session` cookie (httponly, samesite=lax) holding a `Governance.issue_token`
token. Login state (state, nonce, PKCE verifier) is kept for ten minutes in the shared state (the
database, or Redis: `sharedcare.store.shared_state`), keyed by a hash of `state`, taken once, and
bound to the browser by a cookie (only its hash is stored) -- so the provider may send the
browser back to any server.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..store.shared_state import shared_state_of
from .schema import staff
from .smart import (
    audit_sign_in,
    browser_hash,
    browser_id,
    chosen_role,
    error_page,
    page,
    public_base,
    role_options,
    s256,
    same_browser,
    set_browser_cookie,
)

SESSION_COOKIE = "sc_session"
SESSION_LIFETIME = 8 * 3600  # a working shift
LOGIN_LIFETIME = 600
METADATA_TTL = 3600
CLOCK_SKEW = 60
LOGIN, CHOOSING = "oidc-login", "oidc-choose"  # kinds of shared state
ID_TOKEN_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str | None = None
    scope: str = "openid"
    token_auth: str = "client_secret_basic"
    acr_values: str | None = None
    redirect_uri: str | None = None

    @classmethod
    def from_env(cls) -> OidcConfig | None:
        env = os.environ.get
        issuer, client_id = env("SHAREDCARE_OIDC_ISSUER"), env("SHAREDCARE_OIDC_CLIENT_ID")
        if not issuer or not client_id:
            return None
        return cls(issuer.rstrip("/"), client_id, env("SHAREDCARE_OIDC_CLIENT_SECRET"),
                   env("SHAREDCARE_OIDC_SCOPE") or "openid",
                   env("SHAREDCARE_OIDC_TOKEN_AUTH") or "client_secret_basic",
                   env("SHAREDCARE_OIDC_ACR_VALUES"), env("SHAREDCARE_OIDC_REDIRECT_URI"))


class OidcError(Exception):
    pass


class Provider:
    """The provider's discovery document and keys, cached."""

    def __init__(self, config: OidcConfig):
        self.config = config
        self._metadata: tuple[float, dict] | None = None
        self._jwks: KeySet | None = None

    async def metadata(self) -> dict:
        if self._metadata and time.monotonic() - self._metadata[0] < METADATA_TTL:
            return self._metadata[1]
        url = f"{self.config.issuer}/.well-known/openid-configuration"
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(url)
        if r.status_code != 200:
            raise OidcError(f"the sign-in service's discovery document ({url}) answered "
                            f"{r.status_code}")
        doc = r.json()
        if doc.get("issuer", "").rstrip("/") != self.config.issuer:
            raise OidcError("the sign-in service's discovery document names another issuer")
        self._metadata = (time.monotonic(), doc)
        self._jwks = None
        return doc

    async def keys(self, refresh: bool = False) -> KeySet:
        if self._jwks is None or refresh:
            meta = await self.metadata()
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.get(meta["jwks_uri"])
            r.raise_for_status()
            self._jwks = KeySet.import_key_set(r.json())
        return self._jwks

    def authenticate(self, data: dict, token_url: str):
        """Put the client's authentication into a token request's form `data`; returns the
        HTTP basic credentials to send, if any (client_secret_basic)."""
        cfg = self.config
        if cfg.token_auth == "client_secret_post":
            data.update(client_id=cfg.client_id, client_secret=cfg.client_secret or "")
            return None
        if cfg.client_secret:
            return (cfg.client_id, cfg.client_secret)
        data["client_id"] = cfg.client_id  # a public client
        return None

    async def exchange(self, code: str, redirect_uri: str, verifier: str) -> dict:
        meta = await self.metadata()
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier}
        auth = self.authenticate(data, meta["token_endpoint"])
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(meta["token_endpoint"], data=data, auth=auth,
                                headers={"Accept": "application/json"})
        if r.status_code != 200:
            try:
                why = r.json().get("error_description") or r.json().get("error")
            except ValueError:
                why = r.text[:200]
            raise OidcError(f"the sign-in service refused the code ({r.status_code}: {why})")
        body = r.json()
        if not body.get("id_token"):
            raise OidcError("the sign-in service returned no ID token")
        return body

    async def validate_id_token(self, id_token: str, nonce: str) -> dict:
        """The ID token's claims after checking signature, iss, aud/azp, exp, iat, nonce."""
        try:
            try:
                tok = jwt.decode(id_token, await self.keys(), algorithms=ID_TOKEN_ALGS)
            except InvalidKeyIdError:  # the provider rotated its keys
                tok = jwt.decode(id_token, await self.keys(refresh=True),
                                 algorithms=ID_TOKEN_ALGS)
            claims = tok.claims
            jwt.JWTClaimsRegistry(
                leeway=CLOCK_SKEW,
                iss={"essential": True, "value": self.config.issuer},
                aud={"essential": True, "value": self.config.client_id},
                sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(claims)
        except (JoseError, ValueError) as e:
            raise OidcError(f"the ID token is not valid ({type(e).__name__}: {e})") from None
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.config.client_id:
            raise OidcError("the ID token is meant for several parties but not authorised "
                            "for this one (azp)")
        return claims


def safe_next(value: str | None) -> str:
    """Only paths on this site (no open redirects)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def subject_account(engine, subject: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(staff.c.username).where(
            staff.c.oidc_subject == subject, staff.c.active.is_(True))).scalar()


class OidcLogin:
    def __init__(self, sc, config: OidcConfig | None = None):
        self.sc = sc
        self.gov = sc.governance
        self._config = config
        self._provider: Provider | None = None
        # Shared by every server: state -> {nonce, verifier, next, browser, redirect_uri}
        # ("oidc-login"); txn -> {username, next, browser} ("oidc-choose").
        self.state = shared_state_of(sc)

    def routes(self) -> list[Route]:
        return [
            Route("/auth/oidc/login", self.login, methods=["GET"]),
            Route("/auth/oidc/callback", self.callback, methods=["GET"]),
            Route("/auth/oidc/role", self.role, methods=["POST"]),
            Route("/auth/sign-out", self.sign_out, methods=["GET", "POST"]),
        ]

    def provider(self) -> Provider | None:
        config = self._config or OidcConfig.from_env()
        if config is None:
            return None
        if self._provider is None or self._provider.config != config:
            self._provider = Provider(config)
        return self._provider

    def _unavailable(self, request, message) -> Response:
        return error_page(request, "Sign-in is not available", message, 503)

    async def login(self, request: Request) -> Response:
        provider = self.provider()
        if provider is None:
            return self._unavailable(request, "Sign-in with an external identity provider is "
                                     "not configured on this server.")
        try:
            meta = await provider.metadata()
        except (OidcError, httpx.HTTPError) as e:
            return self._unavailable(request, f"The sign-in service cannot be reached ({e}).")
        cfg = provider.config
        browser, new = browser_id(request)
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        redirect_uri = cfg.redirect_uri or public_base(request) + "/auth/oidc/callback"
        await run_in_threadpool(self.state.put, LOGIN, state, {
            "nonce": nonce, "verifier": verifier, "browser": browser_hash(browser),
            "next": safe_next(request.query_params.get("next")),
            "redirect_uri": redirect_uri}, LOGIN_LIFETIME)
        q = {"response_type": "code", "client_id": cfg.client_id, "redirect_uri": redirect_uri,
             "scope": cfg.scope, "state": state, "nonce": nonce,
             "code_challenge": s256(verifier), "code_challenge_method": "S256"}
        if cfg.acr_values:
            q["acr_values"] = cfg.acr_values
        endpoint = meta["authorization_endpoint"]
        resp = RedirectResponse(endpoint + ("&" if "?" in endpoint else "?") + urlencode(q),
                                302)
        if new:
            set_browser_cookie(request, resp, browser)
        return resp

    async def callback(self, request: Request) -> Response:
        provider = self.provider()
        if provider is None:
            return self._unavailable(request, "Sign-in is not configured on this server.")
        qp = request.query_params
        login = await run_in_threadpool(self.state.take, LOGIN, qp["state"]) \
            if qp.get("state") else None
        if login is None or not same_browser(request, login["browser"]):
            return error_page(request, "Sign-in expired", "This sign-in has expired or was "
                              "started in another browser. Please sign in again.")
        if qp.get("error"):
            return error_page(request, "Sign-in did not complete",
                              f"The sign-in service said: {qp.get('error_description') or qp['error']}",
                              401)
        if not qp.get("code"):
            return error_page(request, "Sign-in did not complete", "No code was returned.")
        try:
            tokens = await provider.exchange(qp["code"], login["redirect_uri"],
                                             login["verifier"])
            claims = await provider.validate_id_token(tokens["id_token"], login["nonce"])
        except (OidcError, httpx.HTTPError) as e:
            await run_in_threadpool(audit_sign_in, self.gov, None, None, "", "4",
                                    f"OpenID Connect sign-in failed: {e}"[:400])
            return error_page(request, "Sign-in failed", str(e), 401)
        username = await run_in_threadpool(subject_account, self.sc.engine, claims["sub"])
        if username is None:
            await run_in_threadpool(audit_sign_in, self.gov, None, None, "", "4",
                                    "OpenID Connect subject linked to no active account")
            return error_page(request, "No shared care record account",
                              "Your identity is not linked to an active account here. Ask "
                              "your organisation's administrator to link your smartcard "
                              "identity.", 403)
        roles = await run_in_threadpool(self.gov.roles_of, username)
        if not roles:
            return error_page(request, "No role", "Your account holds no role at any "
                              "organisation.", 403)
        if len(roles) == 1:
            return await self._session(request, username, roles[0][0], roles[0][2],
                                       login["next"])
        txn = secrets.token_urlsafe(24)
        await run_in_threadpool(self.state.put, CHOOSING, txn, {
            "username": username, "next": login["next"], "browser": login["browser"]},
            LOGIN_LIFETIME)
        return page(request, "auth_choose.html", txn=txn, roles=role_options(roles),
                    action="/auth/oidc/role", ask_patient=False, cancellable=False)

    async def role(self, request: Request) -> Response:
        form = await request.form()
        txn = str(form.get("txn") or "")
        pending = await run_in_threadpool(self.state.get, CHOOSING, txn) if txn else None
        if pending is None or not same_browser(request, pending["browser"]):
            return error_page(request, "Sign-in expired", "Please sign in again.")
        roles = await run_in_threadpool(self.gov.roles_of, pending["username"])
        picked = chosen_role(form, roles)
        if picked is None:
            return page(request, "auth_choose.html", 400, txn=txn, roles=role_options(roles),
                        action="/auth/oidc/role", ask_patient=False, cancellable=False,
                        message="Choose one of your roles.")
        if await run_in_threadpool(self.state.take, CHOOSING, txn) is None:
            return error_page(request, "Sign-in expired", "Please sign in again.")
        return await self._session(request, pending["username"], picked[0], picked[1],
                                   pending["next"])

    async def _session(self, request, username, ods, role, next_path) -> Response:
        token = await run_in_threadpool(self.gov.issue_token, username, ods, role,
                                        lifetime=SESSION_LIFETIME)
        await run_in_threadpool(audit_sign_in, self.gov, username, ods, role, "0",
                                "signed in with OpenID Connect")
        resp = RedirectResponse(next_path, 303)
        resp.set_cookie(SESSION_COOKIE, token, max_age=SESSION_LIFETIME, path="/",
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")
        return resp

    async def sign_out(self, request: Request) -> Response:
        if request.cookies.get(SESSION_COOKIE):  # withdrawn on the server, not just forgotten
            await run_in_threadpool(self.gov.tokens.revoke, request.cookies[SESSION_COOKIE])
        resp = RedirectResponse("/", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp


def routes(sc, config: OidcConfig | None = None) -> list[Route]:
    return OidcLogin(sc, config).routes()
