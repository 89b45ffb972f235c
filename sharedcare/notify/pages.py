"""Notification pages for staff.

    /notifications                      the organisation's inbox (newest first); opening it
                                        marks everything shown as read for you
    /notifications/subscriptions        your organisation's subscriptions (the sysadmin sees
                                        all), their state and counts, and a form to subscribe
    /notifications/subscriptions/{id}   POST: turn one off or on again
    /notifications/dead-letters         deliveries that failed every attempt, with "Retry"

An inbox item says what happened and links to the record; whether the record opens is decided,
as always, when it is opened.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import FileSystemLoader
from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..fhir.outcome import FHIRError
from ..governance.policy import Access
from ..web.core import env, page, render
from .events import GOVERNANCE_EVENTS, TOPICS
from .schema import (
    notify_delivery,
    notify_event,
    notify_inbox,
    notify_inbox_seen,
    notify_subscription,
)
from .subscriptions import CHANNELS, set_status, subscribe
from .worker import retry_dead

STAFF = ("clinician", "nurse", "allied-health", "social-worker", "admin", "ig-lead",
         "programme-lead", "sysadmin")
SUBSCRIBERS = ("clinician", "nurse", "allied-health", "social-worker", "admin", "ig-lead",
               "sysadmin")
TEMPLATES = Path(__file__).parent / "templates"
PER_PAGE = 50


def _visible(access: Access):
    return [notify_inbox.c.ods == access.ods,
            or_(notify_inbox.c.role.is_(None), notify_inbox.c.role == access.role)]


def unread(request, access) -> int:
    """The header's count: this person's unread notifications (0 when none or unknown)."""
    if access is None or not getattr(access, "ods", None) or access.role == "patient":
        return 0
    sc = getattr(request.app.state, "sc", None)
    if sc is None:
        return 0
    try:
        with sc.store.reads.connect() as conn:
            seen = conn.execute(select(notify_inbox_seen.c.last_id).where(
                notify_inbox_seen.c.username == (access.username or ""),
                notify_inbox_seen.c.ods == access.ods)).scalar() or 0
            return conn.execute(select(func.count()).select_from(notify_inbox).where(
                *_visible(access), notify_inbox.c.id > seen)).scalar_one()
    except Exception:  # noqa: BLE001 - a header count must never break a page
        return 0


def _setup() -> None:
    e = env()
    loaders = getattr(e.loader, "loaders", None)
    if loaders is not None and not any(getattr(x, "searchpath", None) == [str(TEMPLATES)]
                                       for x in loaders):
        loaders.append(FileSystemLoader(str(TEMPLATES)))
    e.globals["notify_unread"] = unread


def _sc(request: Request):
    return request.app.state.sc


@page(*STAFF)
def inbox(request: Request, access: Access) -> Response:
    sc = _sc(request)
    with sc.engine.connect() as conn:
        seen = conn.execute(select(notify_inbox_seen.c.last_id).where(
            notify_inbox_seen.c.username == (access.username or ""),
            notify_inbox_seen.c.ods == access.ods)).scalar() or 0
        rows = conn.execute(select(notify_inbox).where(*_visible(access))
                            .order_by(notify_inbox.c.id.desc()).limit(PER_PAGE)).all()
    items = [{"id": r.id, "what": TOPICS.get(r.kind, "a record was updated").capitalize(),
              "when": r.created, "new": r.id > seen,
              "link": "/governance/break-glass" if r.kind in GOVERNANCE_EVENTS
              else (f"/patients/{r.patient_id}" if r.patient_id else None)} for r in rows]
    if rows and access.username:
        top = rows[0].id
        with sc.store.begin_write() as conn, conn.begin():
            ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = ins(notify_inbox_seen).values(username=access.username, ods=access.ods,
                                                 last_id=top)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[notify_inbox_seen.c.username, notify_inbox_seen.c.ods],
                set_={"last_id": top}))
    sc.governance.audit(access, "search", entity="notifications inbox")
    return render(request, "notify/inbox.html", title="Notifications", items=items)


def _subscriptions_page(request: Request, access: Access, error: str | None = None,
                        status: int = 200, form: dict | None = None) -> Response:
    sc = _sc(request)
    with sc.engine.connect() as conn:
        q = select(notify_subscription).order_by(notify_subscription.c.created)
        if access.role != "sysadmin":
            q = q.where(notify_subscription.c.ods == access.ods)
        subs = [dict(r._mapping) for r in conn.execute(q)]
    for s in subs:
        s["topic_words"] = ", ".join(TOPICS.get(t, t) for t in (s["topics"] or "").split()) \
            or s["criteria"] or ""
    topics = [(c, TOPICS[c]) for c in TOPICS if access.role != "ig-lead"
              or c in GOVERNANCE_EVENTS]
    return render(request, "notify/subscriptions.html", status, title="Notification subscriptions",
                  subs=subs, topics=topics, channels=CHANNELS, error=error, form=form or {},
                  done=request.query_params.get("done"))


@page(*SUBSCRIBERS)
def subscriptions(request: Request, access: Access) -> Response:
    return _subscriptions_page(request, access)


@page(*SUBSCRIBERS)
def subscribe_form(request: Request, access: Access, form) -> Response:
    topics = form.getlist("topic")
    channel = form.get("channel") or "inbox"
    endpoint = (form.get("endpoint") or "").strip() or None
    scope = form.get("scope") or "registered"
    try:
        sid = subscribe(_sc(request), ods=access.ods, topics=topics, channel=channel,
                        endpoint=endpoint, role=access.role, scope=scope,
                        username=access.username)
    except FHIRError as e:
        return _subscriptions_page(request, access, e.issues[0].diagnostics, 400,
                                   {"topics": topics, "channel": channel,
                                    "endpoint": endpoint or "", "scope": scope})
    _sc(request).governance.audit(access, "create", entity=f"notification subscription {sid}")
    return RedirectResponse("/notifications/subscriptions?done=created", 303)


@page(*SUBSCRIBERS)
def subscription_status(request: Request, access: Access, form) -> Response:
    sid = request.path_params["sid"]
    sc = _sc(request)
    with sc.engine.connect() as conn:
        owner = conn.execute(select(notify_subscription.c.ods, notify_subscription.c.kind)
                             .where(notify_subscription.c.id == sid)).first()
    if owner is None or (owner.ods != access.ods and access.role != "sysadmin"):
        raise FHIRError.of(404, "not-found", "no such subscription at your organisation")
    if owner.kind in ("criteria", "topic"):
        raise FHIRError.of(400, "invalid", "a FHIR Subscription is changed through the FHIR API")
    status = "off" if form.get("status") == "off" else "active"
    set_status(sc, sid, status)
    sc.governance.audit(access, "update", entity=f"notification subscription {sid}",
                        reason=f"turned {status}")
    return RedirectResponse("/notifications/subscriptions?done=" + status, 303)


@page(*SUBSCRIBERS)
def dead_letters(request: Request, access: Access) -> Response:
    sc = _sc(request)
    with sc.engine.connect() as conn:
        q = (select(notify_delivery.c.id, notify_delivery.c.subscription_id,
                    notify_delivery.c.attempts, notify_delivery.c.last_error,
                    notify_delivery.c.done, notify_event.c.kinds, notify_event.c.rtype,
                    notify_subscription.c.channel, notify_subscription.c.ods)
             .join(notify_event, notify_event.c.id == notify_delivery.c.event_id)
             .join(notify_subscription,
                   notify_subscription.c.id == notify_delivery.c.subscription_id)
             .where(notify_delivery.c.status == "dead").order_by(notify_delivery.c.id.desc())
             .limit(200))
        if access.role != "sysadmin":
            q = q.where(notify_subscription.c.ods == access.ods)
        rows = [dict(r._mapping) for r in conn.execute(q)]
    for r in rows:
        r["what"] = ", ".join(TOPICS.get(k, k) for k in (r["kinds"] or "").split()) or r["rtype"]
    return render(request, "notify/dead_letters.html", title="Undelivered notifications",
                  rows=rows, done=request.query_params.get("done"))


@page(*SUBSCRIBERS)
def retry(request: Request, access: Access, form) -> Response:
    sc = _sc(request)
    try:
        wanted = [int(x) for x in form.getlist("delivery")]
    except ValueError:
        raise FHIRError.of(400, "invalid", "choose the notifications to retry") from None
    with sc.engine.connect() as conn:
        q = (select(notify_delivery.c.id)
             .join(notify_subscription,
                   notify_subscription.c.id == notify_delivery.c.subscription_id)
             .where(notify_delivery.c.id.in_(wanted), notify_delivery.c.status == "dead"))
        if access.role != "sysadmin":
            q = q.where(notify_subscription.c.ods == access.ods)
        mine = list(conn.execute(q).scalars())
    n = retry_dead(sc, mine) if mine else 0
    sc.governance.audit(access, "update", entity="notification dead letters",
                        reason=f"{n} queued again")
    return RedirectResponse(f"/notifications/dead-letters?done={n}", 303)


def routes(sc) -> list[Route]:
    _setup()
    return [
        Route("/notifications", inbox, methods=["GET"]),
        Route("/notifications/subscriptions", subscriptions, methods=["GET"]),
        Route("/notifications/subscriptions", subscribe_form, methods=["POST"]),
        Route("/notifications/subscriptions/{sid:path}/status", subscription_status,
              methods=["POST"]),
        Route("/notifications/dead-letters", dead_letters, methods=["GET"]),
        Route("/notifications/dead-letters/retry", retry, methods=["POST"]),
    ]
