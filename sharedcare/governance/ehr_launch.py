"""SMART EHR launch into sharedcare: a partner's EPR opens the shared record in its patient's
context, its user signed in by the EPR.

    GET  /launch?iss=<EPR FHIR base>&launch=<opaque>   -> the EPR's authorize endpoint
    GET  /launch/callback                              <- the EPR; code exchanged, checked
    POST /launch/role                                  the role chosen, when several

sharedcare is a SMART app here (SMART App Launch 2.x, EHR launch). Only EPRs a sysadmin
registered (`sharedcare admin epr add`, the `partner_epr` table) are contacted: any other `iss`
gets a refusal page and no request leaves this server, so nobody can send a user's browser
through sharedcare to a server of their choosing. For a registered EPR:

1. its `{iss}/.well-known/smart-configuration` is read (cached for an hour);
2. the browser goes to its authorization endpoint with `launch`, the EPR's scopes (default
   `launch openid fhirUser patient/Patient.read`), `state`, `nonce`, PKCE S256 and `aud=iss`;
3. on the way back the code is exchanged -- sharedcare authenticating with its secret
   (client_secret_basic) or its private key (private_key_jwt, RFC 7523: a key file made by
   `sharedcare admin keygen`, whose public JWK Set the EPR registers) -- and the ID token checked -- the
   signature against the EPR's JWKS, iss (the configuration's `issuer`), aud, exp, iat, nonce
   (`oidc.Provider`, the same checks as staff sign-in through OpenID Connect);
4. the person is matched to a staff account by the EPR's `user_match`:
   `sds-user-id` (default) -- the `fhirUser` Practitioner, read from the EPR's FHIR API, carries
   an identifier `https://fhir.nhs.uk/Id/sds-user-id` equal to the account's `sds_id` (the
   national smartcard identity: one person, the same in every EPR); `preferred-username` -- the
   ID token's `preferred_username` is the account's username;
5. the role is the one the person holds at the EPR's organisation (several: the role chooser);
6. the launch's `patient` is read from the EPR's FHIR API for its NHS number; a normal web
   session starts (the `sc_session` cookie) and the browser opens that person's record in the
   clinician view, found by NHS number across partners through `Governance.search` (governed
   and audited; `Governance.locate_patient` when not yet visible, so the patient view offers
   declare / break glass).

Every outcome is audited as a sign-in naming the EPR; tokens, codes and secrets never go into
logs, pages or the audit trail. Login state (state, nonce, PKCE verifier) lives ten minutes in
the shared state, taken once, bound to the browser by a cookie.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import import_key
from sqlalchemy import Engine, delete, insert, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..fhir.codes import NHS_NUMBER_SYSTEM, SDS_USER_SYSTEM
from ..fhir.outcome import FHIRError
from ..identity import nhs_number as nhs
from ..store.shared_state import shared_state_of
from .oidc import SESSION_COOKIE, SESSION_LIFETIME, OidcConfig, OidcError, Provider
from .policy import Access
from .schema import partner_epr, staff
from .sealed import Sealer
from .smart import (
    BROWSER_COOKIE,
    browser_hash,
    browser_id,
    chosen_role,
    error_page,
    page,
    public_base,
    role_options,
    s256,
    same_browser,
)

DEFAULT_SCOPE = "launch openid fhirUser patient/Patient.read"
USER_MATCHES = ("sds-user-id", "preferred-username")
LOGIN_LIFETIME = 600
METADATA_TTL = 3600
LAUNCH, CHOOSING = "ehr-launch", "ehr-choose"  # kinds of shared state
COOKIE_PATH = "/launch"


# ------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Epr:
    iss: str
    name: str
    ods: str
    client_id: str
    client_secret: str | None
    user_match: str
    scope: str
    active: bool
    private_key_file: str | None = None


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEY_ALGS = {"RSA": "RS384", "EC": "ES384"}


def load_private_key(path: str):
    """sharedcare's private key for private_key_jwt (a private JWK file) and its algorithm."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("kty") not in KEY_ALGS or "d" not in data:
        raise ValueError(f"{path} is not a private RSA or EC key (JWK)")
    key = import_key(data)
    return key, data.get("alg") or KEY_ALGS[data["kty"]]


def normalise_iss(iss: str) -> str:
    return (iss or "").strip().rstrip("/")


def register_epr(engine: Engine, iss: str, name: str, *, ods: str, client_id: str,
                 client_secret: str | None = None, user_match: str = "sds-user-id",
                 scope: str = DEFAULT_SCOPE, active: bool = True,
                 private_key_file: str | None = None, sealer: Sealer | None = None) -> Epr:
    """Allow the EPR whose FHIR base is `iss` to launch sharedcare (add or replace).
    sharedcare authenticates to it with `client_secret`, or `private_key_file` (private_key_jwt),
    or neither (a public client)."""
    iss = normalise_iss(iss)
    parts = urlsplit(iss)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or \
            parts.fragment:
        raise ValueError(f"iss '{iss}' must be the EPR's FHIR base: an absolute http(s) URL "
                         "without query or fragment")
    if user_match not in USER_MATCHES:
        raise ValueError(f"user_match must be one of {', '.join(USER_MATCHES)}")
    words = scope.split()
    if "launch" not in words or "openid" not in words:
        raise ValueError("scope must include 'launch' and 'openid'")
    if user_match == "sds-user-id" and "fhirUser" not in words:
        raise ValueError("matching users by SDS user id needs the 'fhirUser' scope")
    if not client_id:
        raise ValueError("client_id is required")
    if client_secret and private_key_file:
        raise ValueError("give a client secret or a private key, not both")
    if client_secret and sealer is None:
        raise ValueError("a client secret is stored sealed: pass the server's sealer")
    if private_key_file:
        try:
            load_private_key(private_key_file)
        except (OSError, ValueError) as e:
            raise ValueError(f"private key {private_key_file}: {e}") from None
        private_key_file = str(Path(private_key_file).resolve())
    with engine.begin() as conn:
        conn.execute(delete(partner_epr).where(partner_epr.c.iss == iss))
        conn.execute(insert(partner_epr), [{
            "iss": iss, "name": name, "ods": ods, "client_id": client_id,
            "client_secret": sealer.seal(client_secret) if client_secret else None,
            "user_match": user_match,
            "scope": " ".join(words), "active": active,
            "private_key_file": private_key_file or None}])
    return get_epr(engine, iss)


def get_epr(engine: Engine, iss: str | None) -> Epr | None:
    if not iss:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(partner_epr)
                           .where(partner_epr.c.iss == normalise_iss(iss))).first()
    if row is None:
        return None
    return Epr(row.iss, row.name, row.ods, row.client_id, row.client_secret, row.user_match,
               row.scope, bool(row.active), row.private_key_file)


def list_eprs(engine: Engine) -> list[Epr]:
    with engine.connect() as conn:
        isses = conn.execute(select(partner_epr.c.iss).order_by(partner_epr.c.iss)).scalars()
        isses = list(isses)
    return [get_epr(engine, i) for i in isses]


def remove_epr(engine: Engine, iss: str) -> bool:
    with engine.begin() as conn:
        return conn.execute(delete(partner_epr)
                            .where(partner_epr.c.iss == normalise_iss(iss))).rowcount > 0


# ------------------------------------------------------------------ talking to the EPR
class LaunchError(Exception):
    """A refusal: `title` and `message` for the page, `status` for the response."""

    def __init__(self, title: str, message: str, status: int = 400):
        super().__init__(message)
        self.title, self.message, self.status = title, message, status


class EprServer(Provider):
    """The EPR's SMART configuration (not OpenID discovery) with `oidc.Provider`'s code
    exchange and ID-token checks."""

    def __init__(self, epr: Epr, doc: dict, client_secret: str | None):
        super().__init__(OidcConfig(str(doc["issuer"]).rstrip("/"), epr.client_id,
                                    client_secret))
        self.epr = epr
        self.doc = doc
        self.fetched = time.monotonic()

    async def metadata(self) -> dict:
        return self.doc

    def authenticate(self, data: dict, token_url: str):
        if not self.epr.private_key_file:
            return super().authenticate(data, token_url)
        # private_key_jwt (RFC 7523, as SMART's asymmetric client authentication)
        try:
            key, alg = load_private_key(self.epr.private_key_file)
        except (OSError, ValueError) as e:
            raise OidcError(f"sharedcare's private key for this EPR cannot be read ({e})") \
                from None
        now = int(time.time())
        assertion = jwt.encode(
            {"alg": alg, "kid": key.kid, "typ": "JWT"},
            {"iss": self.epr.client_id, "sub": self.epr.client_id, "aud": token_url,
             "iat": now, "exp": now + 240, "jti": secrets.token_hex(16)}, key, algorithms=[alg])
        data.update(client_id=self.epr.client_id, client_assertion_type=ASSERTION_TYPE,
                    client_assertion=assertion)
        return None


async def discover(epr: Epr) -> dict:
    url = f"{epr.iss}/.well-known/smart-configuration"
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(url, headers={"Accept": "application/json"})
    if r.status_code != 200:
        raise OidcError(f"its SMART configuration answered {r.status_code}")
    doc = r.json()
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri", "issuer")
               if not isinstance(doc.get(k), str) or not doc.get(k)]
    if missing:
        raise OidcError(f"its SMART configuration lacks {', '.join(missing)}")
    return doc


async def fhir_read(epr: Epr, access_token: str, url: str) -> dict:
    """A resource from the EPR's FHIR API, only ever under its registered base (the access
    token goes nowhere else)."""
    if not url.startswith(epr.iss + "/"):
        raise OidcError("it pointed outside its own FHIR server")
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(url, headers={"Authorization": f"Bearer {access_token}",
                                         "Accept": "application/fhir+json"})
    if r.status_code != 200:
        raise OidcError(f"its FHIR server answered {r.status_code} for "
                        f"{url[len(epr.iss) + 1:][:80]}")
    return r.json()


def resource_url(epr: Epr, ref: str) -> str:
    """The EPR's URL for a reference; an absolute one must be on the EPR's own FHIR base, since
    the EPR's access token goes with the request."""
    if ref.startswith(("http://", "https://")):
        if not ref.startswith(epr.iss.rstrip("/") + "/"):
            raise ValueError("a reference outside the EPR's FHIR base")
        return ref
    return f"{epr.iss}/{ref.lstrip('/')}"


def identifier(res: dict, system: str) -> str | None:
    for ident in res.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == system and ident.get("value"):
            return str(ident["value"]).strip()
    return None


# ------------------------------------------------------------------ the routes
class EhrLaunch:
    def __init__(self, sc):
        self.sc = sc
        self.gov = sc.governance
        self.engine = sc.engine
        self.state = shared_state_of(sc)
        self._servers: dict[str, EprServer] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/launch", self.launch, methods=["GET"]),
            Route("/launch/callback", self.callback, methods=["GET"]),
            Route("/launch/role", self.role, methods=["POST"]),
        ]

    async def server(self, epr: Epr) -> EprServer:
        have = self._servers.get(epr.iss)
        if have is None or have.epr != epr or time.monotonic() - have.fetched > METADATA_TTL:
            have = EprServer(epr, await discover(epr), self.sc.sealer.open(epr.client_secret))
            self._servers[epr.iss] = have
        return have

    def _audit(self, epr: Epr | None, outcome: str, reason: str, username=None, ods=None,
               role="") -> None:
        where = f"{epr.name} ({epr.ods})" if epr else "an unregistered EPR"
        self.gov.audit(Access(username=username, ods=ods or (epr.ods if epr else None),
                              role=role), "sign-in", outcome,
                       reason=f"SMART EHR launch from {where}: {reason}"[:400],
                       entity=f"EPR {epr.ods}" if epr else None)

    async def _refuse(self, request, epr, e: LaunchError, username=None) -> Response:
        await run_in_threadpool(self._audit, epr, "4", e.message, username)
        return error_page(request, e.title, e.message, e.status)

    async def launch(self, request: Request) -> Response:
        qp = request.query_params
        iss, launch = qp.get("iss"), qp.get("launch")
        if not iss or not launch:
            return error_page(request, "Cannot open the shared care record",
                              "The launch needs iss and launch: start again from your "
                              "patient record system.")
        epr = await run_in_threadpool(get_epr, self.engine, iss)
        if epr is None or not epr.active:
            # Never contact (or send the browser to) a server nobody registered.
            await run_in_threadpool(self._audit, None, "4", "refused: the issuer is not "
                                    "registered")
            return error_page(request, "This system is not registered",
                              "The system you came from is not registered to open the shared "
                              "care record. Ask the shared care record's administrators to "
                              "register it.", 403)
        try:
            server = await self.server(epr)
        except (OidcError, httpx.HTTPError, ValueError) as e:
            return await self._refuse(request, epr, LaunchError(
                "Your patient record system did not answer",
                f"{epr.name} could not be reached ({type(e).__name__}"
                f"{': ' + str(e) if isinstance(e, OidcError) else ''}). Try again.", 502))
        browser, new = browser_id(request)
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        redirect_uri = public_base(request) + "/launch/callback"
        await run_in_threadpool(self.state.put, LAUNCH, state, {
            "iss": epr.iss, "nonce": nonce, "verifier": verifier,
            "browser": browser_hash(browser), "redirect_uri": redirect_uri}, LOGIN_LIFETIME)
        q = {"response_type": "code", "client_id": epr.client_id, "redirect_uri": redirect_uri,
             "launch": launch, "scope": epr.scope, "state": state, "nonce": nonce,
             "aud": epr.iss, "code_challenge": s256(verifier),
             "code_challenge_method": "S256"}
        endpoint = server.doc["authorization_endpoint"]
        resp = RedirectResponse(endpoint + ("&" if "?" in endpoint else "?") + urlencode(q), 302)
        if new:
            resp.set_cookie(BROWSER_COOKIE, browser, path=COOKIE_PATH, httponly=True,
                            samesite="lax", secure=request.url.scheme == "https")
        return resp

    async def callback(self, request: Request) -> Response:
        qp = request.query_params
        login = await run_in_threadpool(self.state.take, LAUNCH, qp["state"]) \
            if qp.get("state") else None
        if login is None or not same_browser(request, login["browser"]):
            await run_in_threadpool(self._audit, None, "4", "refused: unknown or expired state")
            return error_page(request, "Launch expired", "This launch has expired or was "
                              "started in another browser. Open the shared care record again "
                              "from your patient record system.")
        epr = await run_in_threadpool(get_epr, self.engine, login["iss"])
        if epr is None or not epr.active:
            return error_page(request, "This system is not registered", "The system you came "
                              "from is no longer registered.", 403)
        try:
            if qp.get("error"):
                raise LaunchError("Your patient record system refused",
                                  f"{epr.name} said: {qp.get('error')}"[:200], 401)
            if not qp.get("code"):
                raise LaunchError("Launch did not complete", "No code was returned.")
            server = await self.server(epr)
            found = await self._sign_in(epr, server, qp["code"], login)
        except LaunchError as e:
            return await self._refuse(request, epr, e)
        username, nhs_number = found
        roles = [r for r in await run_in_threadpool(self.gov.roles_of, username)
                 if r[0] == epr.ods]
        if not roles:
            return await self._refuse(request, epr, LaunchError(
                "No role at your organisation",
                f"Your account holds no role at {epr.name}'s organisation ({epr.ods}), so it "
                "cannot open records from there.", 403), username)
        if len(roles) == 1:
            return await self._session(request, epr, username, roles[0][2], nhs_number)
        txn = secrets.token_urlsafe(24)
        await run_in_threadpool(self.state.put, CHOOSING, txn, {
            "iss": epr.iss, "username": username, "nhs": nhs_number,
            "browser": login["browser"]}, LOGIN_LIFETIME)
        return page(request, "auth_choose.html", txn=txn, roles=role_options(roles),
                    action="/launch/role", ask_patient=False, cancellable=False)

    async def _sign_in(self, epr: Epr, server: EprServer, code: str,
                       login: dict) -> tuple[str, str]:
        """(username, NHS number) of the launch, or LaunchError."""
        try:
            tokens = await server.exchange(code, login["redirect_uri"], login["verifier"])
        except (OidcError, httpx.HTTPError, ValueError) as e:
            raise LaunchError("Your patient record system did not sign you in",
                              f"{epr.name} did not complete the sign-in ("
                              f"{e if isinstance(e, OidcError) else type(e).__name__}).",
                              502) from None
        try:
            claims = await server.validate_id_token(tokens["id_token"], login["nonce"])
        except (OidcError, httpx.HTTPError) as e:
            raise LaunchError("Sign-in failed", f"The identity {epr.name} sent cannot be "
                              f"trusted: {e}", 401) from None
        access_token = tokens.get("access_token")
        patient = tokens.get("patient")
        if not isinstance(access_token, str) or not access_token:
            raise LaunchError("Sign-in failed", f"{epr.name} sent no access token.", 502)
        if not isinstance(patient, str) or not patient:
            raise LaunchError("No patient", f"{epr.name} did not say which patient to open.")
        try:
            username = await self._user(epr, claims, access_token)
            res = await fhir_read(epr, access_token, f"{epr.iss}/Patient/{quote(patient)}")
        except (OidcError, httpx.HTTPError, ValueError) as e:
            raise LaunchError("Your patient record system did not answer",
                              f"{epr.name}'s record could not be read ("
                              f"{e if isinstance(e, OidcError) else type(e).__name__}).",
                              502) from None
        number = identifier(res, NHS_NUMBER_SYSTEM) if res.get("resourceType") == "Patient" \
            else None
        digits = nhs.normalise(number) if number else None
        if not digits or not nhs.is_valid(digits):
            raise LaunchError("No NHS number", f"The patient open in {epr.name} has no valid "
                              "NHS number, so their shared record cannot be found. Find them "
                              "in the shared care record by name instead.", 404)
        return username, digits

    async def _user(self, epr: Epr, claims: dict, access_token: str) -> str:
        if epr.user_match == "preferred-username":
            key, column = claims.get("preferred_username"), staff.c.username
        else:
            fhir_user = claims.get("fhirUser")
            if not isinstance(fhir_user, str) or \
                    urlsplit(fhir_user).path.rstrip("/").split("/")[-2:-1] != ["Practitioner"]:
                raise LaunchError("Unknown user", f"{epr.name} did not say which practitioner "
                                  "you are (fhirUser).", 403)
            res = await fhir_read(epr, access_token, resource_url(epr, fhir_user))
            key, column = identifier(res, SDS_USER_SYSTEM), staff.c.sds_id
        username = None
        if isinstance(key, str) and key:
            username = await run_in_threadpool(self._account, column, key)
        if username is None:
            raise LaunchError("Unknown user", f"Your {epr.name} identity is not linked to an "
                              "active shared care record account. Ask your organisation's "
                              "administrator to record your SDS user id on your account."
                              if epr.user_match == "sds-user-id" else
                              f"Your {epr.name} username is not an active shared care record "
                              "account.", 403)
        return username

    def _account(self, column, key: str) -> str | None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(staff.c.username).where(
                column == key, staff.c.active.is_(True))).scalars().all()
        return rows[0] if len(rows) == 1 else None  # an ambiguous identifier matches nobody

    async def role(self, request: Request) -> Response:
        form = await request.form()
        txn = str(form.get("txn") or "")
        pending = await run_in_threadpool(self.state.get, CHOOSING, txn) if txn else None
        if pending is None or not same_browser(request, pending["browser"]):
            return error_page(request, "Launch expired", "Open the shared care record again "
                              "from your patient record system.")
        epr = await run_in_threadpool(get_epr, self.engine, pending["iss"])
        if epr is None or not epr.active:
            return error_page(request, "This system is not registered", "The system you came "
                              "from is no longer registered.", 403)
        roles = [r for r in await run_in_threadpool(self.gov.roles_of, pending["username"])
                 if r[0] == epr.ods]
        picked = chosen_role(form, roles)
        if picked is None:
            return page(request, "auth_choose.html", 400, txn=txn, roles=role_options(roles),
                        action="/launch/role", ask_patient=False, cancellable=False,
                        message="Choose one of your roles.")
        if await run_in_threadpool(self.state.take, CHOOSING, txn) is None:
            return error_page(request, "Launch expired", "Open the shared care record again.")
        return await self._session(request, epr, pending["username"], picked[1],
                                   pending["nhs"])

    async def _session(self, request, epr: Epr, username: str, role: str,
                       nhs_number: str) -> Response:
        try:
            token = await run_in_threadpool(self.gov.issue_token, username, epr.ods, role,
                                            lifetime=SESSION_LIFETIME)
        except FHIRError as e:
            return await self._refuse(request, epr, LaunchError("Cannot sign you in", str(e),
                                                                403), username)
        await run_in_threadpool(self._audit, epr, "0", "signed in", username, epr.ods, role)
        access = self.gov.access_from_claims(self.gov.tokens.verify(token))
        pid = await run_in_threadpool(self._find_patient, access, nhs_number)
        if pid is None:
            resp = error_page(request, "Patient not found", "The shared care record holds no "
                              "record with this patient's NHS number that you may open. You "
                              "are signed in: find the patient by name instead.", 404)
        else:
            resp = RedirectResponse(f"/patients/{quote(pid)}", 303)
        resp.set_cookie(SESSION_COOKIE, token, max_age=SESSION_LIFETIME, path="/",
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")
        return resp

    def _find_patient(self, access: Access, nhs_number: str) -> str | None:
        """The person's record across partners, by NHS number: governed and audited (the GP
        registration's record first, as the patient search page does)."""
        found = self.gov.search(access, "Patient", [
            ("identifier", f"{NHS_NUMBER_SYSTEM}|{nhs_number}"), ("_count", "50")])
        matches = list(found.matches)
        if matches:
            main = next((s for s in matches if s.json().get("generalPractitioner")), matches[0])
            return main.id
        return self.gov.locate_patient(access, nhs_number)


def routes(sc) -> list[Route]:
    return EhrLaunch(sc).routes()
