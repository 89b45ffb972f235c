"""The system administrator's pages: what a sysadmin looks after, read-only.

    /admin                  system status: the audit chain, counts, links
    /admin/organisations    the partners and their go-live dates
    /admin/staff            who can sign in, with which roles, and who is locked out
    /admin/feeds            partner feeds and their status
    /admin/agreements       sharing agreements and their state

Changes are made with the command line (`sharedcare admin ...`, `sharedcare feeds ...`), which
each page names. Nothing here shows patient data: directory and configuration only.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response

from ..governance.policy import Access
from ..governance.schema import (
    agreement,
    agreement_party,
    audit_event,
    organisation,
    staff,
    staff_role,
)
from .core import page, render

ADMIN = ("sysadmin",)
KIND_WORDS = {
    "gp-practice": "GP practice", "acute-trust": "Acute trust", "community": "Community services",
    "mental-health": "Mental health trust", "ambulance": "Ambulance service",
    "hospice": "Hospice", "social-care": "Adult social care", "care-home": "Care home",
}
FEED_STATUS_TAGS = {"live": "green", "onboarding": "blue", "paused": "red"}
AGREEMENT_TAGS = {"active": "green", "signed": "blue", "circulated": "yellow", "draft": "grey",
                  "suspended": "red", "expired": "grey", "withdrawn": "grey"}


def _sc(request: Request):
    return request.app.state.sc


@page(*ADMIN)
def status_page(request: Request, access: Access) -> Response:
    sc = _sc(request)
    report = sc.governance.audit_trail.report()
    with sc.engine.connect() as conn:
        counts = {
            "organisations": conn.execute(select(func.count()).select_from(organisation))
            .scalar_one(),
            "staff": conn.execute(select(func.count()).select_from(staff)
                                  .where(staff.c.patient_id.is_(None))).scalar_one(),
            "active agreements": conn.execute(select(func.count()).select_from(agreement)
                                              .where(agreement.c.status == "active"))
            .scalar_one(),
        }
        newest = conn.execute(select(func.max(audit_event.c.recorded))).scalar_one()
    from ..feeds.service import FeedService

    feeds = FeedService(sc).list_feeds()
    counts["live feeds"] = sum(1 for f in feeds if f.status == "live")
    counts["paused feeds"] = sum(1 for f in feeds if f.status == "paused")
    from ..governance.audit import key_warning

    key_file = getattr(sc.governance.audit_trail, "key_file", None)
    warning = key_warning(key_file, sc.data_dir) if key_file and sc.data_dir else None
    return render(request, "admin_status.html", title="System status", report=report,
                  counts=counts, newest=newest, key_warning=warning)


@page(*ADMIN)
def organisations_page(request: Request, access: Access) -> Response:
    with _sc(request).engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            select(organisation).order_by(organisation.c.name))]
        staff_counts = dict(conn.execute(select(staff_role.c.ods, func.count(
            staff_role.c.username.distinct())).group_by(staff_role.c.ods)).all())
    for r in rows:
        r["kind_label"] = KIND_WORDS.get(r["kind"], (r["kind"] or "").replace("-", " "))
        r["staff"] = staff_counts.get(r["ods"], 0)
    return render(request, "admin_organisations.html", title="Organisations", rows=rows)


@page(*ADMIN)
def staff_page(request: Request, access: Access) -> Response:
    q = (request.query_params.get("q") or "").strip().lower()
    now = datetime.now(UTC).isoformat()
    with _sc(request).engine.connect() as conn:
        people = conn.execute(select(staff.c.username, staff.c.display_name, staff.c.active,
                                     staff.c.locked_until, staff.c.oidc_subject,
                                     staff.c.password_hash.isnot(None).label("has_password"))
                              .where(staff.c.patient_id.is_(None))
                              .order_by(staff.c.display_name)).all()
        roles: dict[str, list[tuple[str, str]]] = {}
        for username, ods, role in conn.execute(select(staff_role.c.username, staff_role.c.ods,
                                                       staff_role.c.role)):
            roles.setdefault(username, []).append((ods, role))
    rows = []
    for p in people:
        if q and q not in p.username.lower() and q not in (p.display_name or "").lower():
            continue
        rows.append({"username": p.username, "name": p.display_name, "active": p.active,
                     "locked": bool(p.locked_until and p.locked_until > now),
                     "sign_in": "password" if p.has_password else (
                         "NHS CIS2 / OpenID Connect" if p.oidc_subject else "none set"),
                     "roles": sorted(roles.get(p.username, []))})
    shown = rows[:200]
    return render(request, "admin_staff.html", title="Staff", rows=shown, total=len(rows), q=q)


@page(*ADMIN)
def feeds_page(request: Request, access: Access) -> Response:
    from ..feeds.service import FeedService

    feeds = FeedService(_sc(request)).list_feeds()
    return render(request, "admin_feeds.html", title="Feeds", feeds=feeds,
                  tags=FEED_STATUS_TAGS)


@page(*ADMIN)
def agreements_page(request: Request, access: Access) -> Response:
    with _sc(request).engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(agreement).order_by(agreement.c.id))]
        parties: dict[str, list[dict]] = {}
        for r in conn.execute(select(agreement_party)):
            parties.setdefault(r.agreement_id, []).append(dict(r._mapping))
    for r in rows:
        r["parties"] = parties.get(r["id"], [])
        r["unsigned"] = [p for p in r["parties"] if not p.get("signed_by")]
    return render(request, "admin_agreements.html", title="Sharing agreements", rows=rows,
                  tags=AGREEMENT_TAGS)


def routes(sc) -> list:
    from starlette.routing import Route

    return [
        Route("/admin", status_page),
        Route("/admin/organisations", organisations_page),
        Route("/admin/staff", staff_page),
        Route("/admin/feeds", feeds_page),
        Route("/admin/agreements", agreements_page),
    ]
