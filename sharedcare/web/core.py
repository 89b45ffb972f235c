"""Shared web machinery: templates, sessions, sign-in and role choice, feedback."""

from __future__ import annotations

import hmac
import os
import secrets
from functools import wraps
from pathlib import Path
from urllib.parse import quote, urlparse

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..fhir.outcome import FHIRError
from ..governance.policy import Access, now_text
from ..governance.schema import feedback
from .names import column_label, entity_words, humanise, nice_time, org_html, org_names, sentence

HERE = Path(__file__).parent
STATIC = HERE / "static"
SESSION_COOKIE = "sc_session"
PENDING_COOKIE = "sc_pending"  # signed-in person who has not yet chosen a role
CSRF_COOKIE = "sc_csrf"
SESSION_SECONDS = 8 * 3600
# One answer for every failed sign-in -- unknown username, wrong password, locked account --
# so the page never tells anyone which usernames exist.
SIGN_IN_FAILED = ("The username or password is not right. After 5 failed attempts an account "
                  "is locked for 15 minutes.")
ROLE_LABELS = {
    "clinician": "Clinician", "nurse": "Nurse", "allied-health": "Allied health professional",
    "social-worker": "Social worker", "admin": "Admin and clerical", "ig-lead": "IG lead",
    "programme-lead": "Programme lead", "sysadmin": "System administrator",
    "patient": "Patient", "system": "Partner system",
}

_env: Environment | None = None


def template_dirs() -> list[Path]:
    """Each capability keeps its templates beside its code."""
    root = HERE.parent
    return [p for p in (HERE / "templates", root / "programme" / "templates",
                        root / "population" / "templates", root / "governance" / "templates")
            if p.exists()]


def env() -> Environment:
    global _env
    if _env is None:
        _env = Environment(loader=ChoiceLoader([FileSystemLoader(str(d)) for d in template_dirs()]),
                           autoescape=select_autoescape(["html", "svg"]), trim_blocks=True,
                           lstrip_blocks=True)
        _env.globals["role_label"] = lambda r: ROLE_LABELS.get(r, r)
        _env.globals["nav_links"] = nav_links
        _env.globals["current_link"] = current_link
        _env.globals["column_label"] = column_label
        _env.globals["nice_time"] = nice_time
        _env.globals["entity_words"] = entity_words
        _env.filters["sentence"] = sentence
    return _env


CLINICAL_ROLES = ("clinician", "nurse", "allied-health", "social-worker", "admin")


def current_link(path: str, links: list[tuple[str, str]]) -> str | None:
    """The menu item this page belongs to: the longest link that is the path or a parent."""
    hits = [h for h, _ in links if path == h or path.startswith(h.rstrip("/") + "/")]
    return max(hits, key=len) if hits else None


def nav_links(access: Access) -> list[tuple[str, str]]:
    """The menu: what this role comes here to do. One menu (the header's); what does not fit
    the bar goes under the design system's "More"."""
    role = access.role
    links: list[tuple[str, str]] = []
    if role in CLINICAL_ROLES:
        links.append(("/patients", "Find a patient"))
    if role == "ig-lead":
        links += [("/governance/audit", "Audit trail"),
                  ("/governance/break-glass", "Break-glass review"),
                  ("/programme/agreements", "Sharing agreements"),
                  ("/population", "Population health")]
    if role == "programme-lead":
        links += [("/programme", "Overview"), ("/programme/adoption", "Adoption"),
                  ("/programme/map", "Partner map"), ("/programme/agreements", "Agreements"),
                  ("/programme/feedback", "Feedback"), ("/programme/readiness", "Readiness"),
                  ("/population", "Population health"), ("/programme/champions", "Champions"),
                  ("/programme/case-studies", "Case studies"),
                  ("/transparency", "Transparency notice")]
    if role == "sysadmin":
        links += [("/admin", "System status"), ("/admin/organisations", "Organisations"),
                  ("/admin/staff", "Staff"), ("/admin/feeds", "Feeds"),
                  ("/admin/agreements", "Agreements"), ("/governance/audit", "Audit trail")]
    if role in ("ig-lead", "sysadmin", "data-quality"):
        links.append(("/identity/review", "Identity review"))
    from ..notify.pages import STAFF

    if role in STAFF:
        links.append(("/notifications", "Notifications"))
    if role == "patient":
        links.append(("/my-record/access-log", "Who looked at my record"))
    else:
        links.append(("/programme/you-said-we-did", "You said, we did"))
    return links


def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    access = context.pop("access", None) or getattr(request.state, "access", None)
    names = _names(request)
    html = env().get_template(template).render(
        request=request, access=access, path=request.url.path, org_names=names,
        orgname=lambda code: org_html(code, names), humane=lambda text: humanise(text, names),
        **context)
    response = HTMLResponse(html, status)
    if request.cookies.get(CSRF_COOKIE) != request.state.csrf:
        response.set_cookie(CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict")
    return response


def _names(request: Request) -> dict[str, str]:
    sc = getattr(request.app.state, "sc", None)
    if sc is None:
        return {}
    try:
        return org_names(sc.store.reads)
    except SQLAlchemyError:  # a page about a broken database must still render
        return {}


def csrf_ok(request: Request, form) -> bool:
    """The double-submit check: the form's token is this browser's CSRF cookie. Both must be
    there -- a browser restarted mid-session has a session cookie but no CSRF cookie, and
    "missing equals missing" must never pass."""
    sent = form.get("csrf") if form is not None else None
    cookie = request.cookies.get(CSRF_COOKIE)
    if not isinstance(sent, str) or not sent or not cookie:
        return False
    return hmac.compare_digest(sent.encode(), cookie.encode())


def signed_in(request: Request) -> Access | None:
    sc = request.app.state.sc
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return sc.governance.access_from_claims(sc.governance.tokens.verify(token))
    except FHIRError:
        return None


def page(*roles: str):
    """Decorator for a page handler `fn(request, access) -> Response` run in the thread pool:
    redirects to sign-in when nobody is signed in, 403 page for other roles."""

    def wrap(fn):
        @wraps(fn)
        async def endpoint(request: Request) -> Response:
            access = signed_in(request)
            if access is None:
                return RedirectResponse(f"/sign-in?next={quote(str(request.url.path))}", 303)
            if roles and access.role not in roles:
                return render(request, "error.html", 403, access=access,
                              title="You cannot use this page",
                              message=f"This page is for {', '.join(ROLE_LABELS.get(r, r) for r in roles)}.")
            request.state.access = access
            form = None
            if request.method == "POST":
                form = await request.form()
                if not csrf_ok(request, form):
                    return render(request, "error.html", 400, access=access,
                                  title="Form expired", message="Please go back and try again.")
            try:
                if form is not None:
                    return await run_in_threadpool(fn, request, access, form)
                return await run_in_threadpool(fn, request, access)
            except FHIRError as e:
                return render(request, "error.html", e.status, access=access,
                              title="You cannot see this" if e.status == 403 else "Something is wrong",
                              message=e.issues[0].diagnostics if e.issues else str(e),
                              reasons=[i.diagnostics for i in e.issues[1:]])

        return endpoint

    return wrap


def _safe_next(url: str | None) -> str:
    parsed = urlparse(url or "/")
    return parsed.path if not parsed.netloc and parsed.path.startswith("/") else "/"


def _session(response: Response, token: str) -> Response:
    # HttpOnly: no script can read it; SameSite=Lax: no cross-site form posts it; Secure is
    # added behind HTTPS by web.security for every cookie.
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                        max_age=SESSION_SECONDS)
    response.delete_cookie(PENDING_COOKIE)
    return response


async def sign_in_page(request: Request) -> Response:
    sc = request.app.state.sc
    nxt = _safe_next(request.query_params.get("next"))
    if request.method == "GET":
        return render(request, "signin.html", next=nxt,
                      oidc_enabled=bool(os.environ.get("SHAREDCARE_OIDC_ISSUER")))
    form = await request.form()
    if not csrf_ok(request, form):
        # Login CSRF: a sign-in form must come from this site's own page.
        return render(request, "signin.html", 400, next=nxt,
                      error="The sign-in form expired. Please try again.")
    username = (form.get("username") or "").strip()
    password = form.get("password") or ""
    nxt = _safe_next(form.get("next"))
    ok = await run_in_threadpool(sc.governance.sign_in, username, password)
    if not ok:
        return render(request, "signin.html", 401, next=nxt, error=SIGN_IN_FAILED,
                      username=username)
    roles = await run_in_threadpool(sc.governance.roles_of, username)
    pending = sc.governance.tokens.issue({"sub": username, "kind": "pending"}, 600)
    if not roles:  # a patient's own account
        token = await run_in_threadpool(_patient_token, sc, username)
        if token is None:
            return render(request, "signin.html", 403, next=nxt,
                          error="This account has no role in the care system.")
        return _session(RedirectResponse("/my-record/access-log", 303), token)
    if len(roles) == 1:
        ods, _, role = roles[0]
        token = sc.governance.issue_token(username, ods, role)
        return _session(RedirectResponse(nxt if nxt != "/" else "/", 303), token)
    resp = RedirectResponse(f"/choose-role?next={quote(nxt)}", 303)
    resp.set_cookie(PENDING_COOKIE, pending, httponly=True, samesite="lax", max_age=600)
    return resp


def _patient_token(sc, username: str) -> str | None:
    from sqlalchemy import select

    from ..governance.schema import staff

    with sc.engine.connect() as conn:
        row = conn.execute(select(staff.c.patient_id, staff.c.display_name)
                           .where(staff.c.username == username)).first()
    if row is None or not row.patient_id:
        return None
    return sc.governance.tokens.issue({"sub": username, "role": "patient", "kind": "user",
                                       "patient": row.patient_id, "name": row.display_name,
                                       "scope": "patient/AuditEvent.rs"}, 3600)


LAST_ROLE_COOKIE = "sc_last_role"  # "ODS:role" this browser chose last; not a credential
# A person's home organisation comes first among their roles. Without a record of which one
# employs them, the kind of organisation decides: a GP's practice before the hospice where they
# do sessions, a trust before a care home. The role chosen last time on this browser goes first.
KIND_ORDER = ("gp-practice", "acute-trust", "mental-health", "community", "social-care",
              "ambulance", "care-home", "hospice")


def home_first(roles: list[tuple[str, str, str]], kinds: dict[str, str],
               last: str | None = None) -> list[tuple[str, str, str]]:
    """(ods, name, role) ordered for the role chooser: the last choice, then the organisation
    where the person holds most roles, by kind (KIND_ORDER), then by name."""
    held: dict[str, int] = {}
    for ods, _name, _role in roles:
        held[ods] = held.get(ods, 0) + 1

    def rank(r: tuple[str, str, str]):
        ods, name, role = r
        kind = kinds.get(ods, "")
        return (f"{ods}:{role}" != last, -held[ods],
                KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER),
                name or ods, role)

    return sorted(roles, key=rank)


def _roles_for_chooser(sc, username: str, last: str | None) -> list[tuple[str, str, str]]:
    from sqlalchemy import select

    from ..governance.schema import organisation

    roles = sc.governance.roles_of(username)
    with sc.engine.connect() as conn:
        kinds = dict(conn.execute(select(organisation.c.ods, organisation.c.kind)).all())
    return home_first(roles, kinds, last)


async def choose_role_page(request: Request) -> Response:
    sc = request.app.state.sc
    try:
        claims = sc.governance.tokens.verify(request.cookies.get(PENDING_COOKIE) or "")
    except FHIRError:
        return RedirectResponse("/sign-in", 303)
    username = claims["sub"]
    roles = await run_in_threadpool(_roles_for_chooser, sc, username,
                                    request.cookies.get(LAST_ROLE_COOKIE))
    nxt = _safe_next(request.query_params.get("next"))
    if request.method == "GET":
        return render(request, "roles.html", roles=roles, next=nxt, username=username)
    form = await request.form()
    if not csrf_ok(request, form):
        return RedirectResponse("/sign-in", 303)
    choice = form.get("role") or ""
    picked = next(((o, r) for o, _, r in roles if f"{o}:{r}" == choice), None)
    if picked is None:
        return render(request, "roles.html", 400, roles=roles, next=nxt, username=username,
                      error="Choose one of your roles.")
    token = sc.governance.issue_token(username, picked[0], picked[1])
    resp = _session(RedirectResponse(_safe_next(form.get("next")), 303), token)
    resp.set_cookie(LAST_ROLE_COOKIE, choice, httponly=True, samesite="lax",
                    max_age=180 * 24 * 3600)
    return resp


async def sign_out(request: Request) -> Response:
    """Signing out withdraws the session token on the server (every server, the FHIR API
    too), not just the browser's copy of it."""
    tokens = request.app.state.sc.governance.tokens
    for name in (SESSION_COOKIE, PENDING_COOKIE):
        if request.cookies.get(name):
            await run_in_threadpool(tokens.revoke, request.cookies[name])
    resp = RedirectResponse("/sign-in", 303)
    resp.delete_cookie(SESSION_COOKIE)
    resp.delete_cookie(PENDING_COOKIE)
    return resp


@page()
def home(request: Request, access: Access) -> Response:
    if access.role in ("programme-lead", "ig-lead"):
        # the population figures take seconds to make: start now, ready when they are opened
        from ..population.pages import warm

        warm(request.app.state.sc, access)
    return render(request, "home.html")


@page()
def send_feedback(request: Request, access: Access, form) -> Response:
    text = (form.get("text") or "").strip()
    kind = form.get("kind") or "idea"
    back = _safe_next(form.get("page"))
    if not text:
        return RedirectResponse(f"{back}?feedback=empty#feedback", 303)
    sc = request.app.state.sc
    with sc.engine.begin() as conn:
        conn.execute(insert(feedback), [{
            "created": now_text(), "username": access.username, "ods": access.ods,
            "role": access.role, "page": back[:400], "kind": kind[:32], "text": text[:4000],
            "status": "new"}])
    return RedirectResponse(f"{back}?feedback=thanks#feedback", 303)


class CsrfMiddleware:
    """Gives every browser a random CSRF token (double-submit cookie) for its forms."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from http.cookies import SimpleCookie

            cookies = SimpleCookie()
            for k, v in scope.get("headers", []):
                if k == b"cookie":
                    cookies.load(v.decode("latin-1"))
            token = cookies[CSRF_COOKIE].value if CSRF_COOKIE in cookies and \
                cookies[CSRF_COOKIE].value else secrets.token_urlsafe(24)
            scope.setdefault("state", {})["csrf"] = token
        await self.app(scope, receive, send)


def routes(sc) -> list:
    from . import pages

    out = [
        Mount("/static", StaticFiles(directory=str(STATIC), check_dir=False), name="static"),
        Route("/sign-in", sign_in_page, methods=["GET", "POST"]),
        Route("/choose-role", choose_role_page, methods=["GET", "POST"]),
        Route("/sign-out", sign_out, methods=["GET", "POST"]),
        Route("/feedback", send_feedback, methods=["POST"]),
        Route("/", home),
    ]
    return out + pages.routes(sc)
