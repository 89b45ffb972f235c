"""A patient's own access log: who looked at my record, when, and why.

This is the patient's own audit data (the `audit_event` rows about them), read here directly;
viewing it is itself recorded.
"""

from __future__ import annotations

from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response

from ..governance.policy import Access
from ..governance.schema import audit_event, organisation
from .core import ROLE_LABELS, page, render
from .patient import ago, nice_date

LIMIT = 100  # per page; older accesses page back with ?before=seq

ACTIONS = {
    "read": "Looked at part of your record",
    "vread": "Looked at an earlier version of part of your record",
    "search": "Searched for your record",
    "everything": "Looked at your whole record",
    "history": "Looked at the history of part of your record",
    "break-glass": "Emergency access (broke glass)",
    "declare-relationship": "Said they are caring for you",
    "declared-relationship": "Said they are caring for you",
    "create": "Added to your record",
    "update": "Changed your record",
    "delete": "Removed something from your record",
    "locate": "Looked up your NHS number",
}
PURPOSES = {"direct-care": "Your direct care", "planning": "Planning services",
            "research": "Research"}


def access_log(engine, patient_id: str, limit: int = LIMIT, before: int | None = None
               ) -> list[dict]:
    with engine.connect() as conn:
        names = {o: n for o, n in conn.execute(select(organisation.c.ods, organisation.c.name))}
        rows = conn.execute(
            select(audit_event.c.seq, audit_event.c.recorded, audit_event.c.username,
                   audit_event.c.client_id, audit_event.c.ods, audit_event.c.role,
                   audit_event.c.purpose, audit_event.c.action, audit_event.c.outcome,
                   audit_event.c.reason, audit_event.c.break_glass, audit_event.c.entity)
            .where(audit_event.c.patient_id == patient_id,
                   *([audit_event.c.seq < before] if before else []))
            .order_by(audit_event.c.seq.desc()).limit(limit)).mappings().all()
    out = []
    for r in rows:
        out.append({
            "seq": r["seq"], "when": r["recorded"], "date": nice_date(r["recorded"][:10]),
            "time": r["recorded"][11:16], "ago": ago(r["recorded"]),
            "org": names.get(r["ods"] or "", r["ods"] or ("You" if r["role"] == "patient"
                                                          else "sharedcare")),
            "role": "You" if r["role"] == "patient" else ROLE_LABELS.get(r["role"] or "",
                                                                         r["role"] or ""),
            "what": ACTIONS.get(r["action"], r["action"]),
            "purpose": PURPOSES.get(r["purpose"] or "", r["purpose"] or ""),
            "reason": r["reason"] or "",
            "glass": bool(r["break_glass"]) or r["action"] == "break-glass",
            "refused": r["outcome"] != "0",
            "system": bool(r["client_id"]) and not r["username"],
        })
    return out


def glass_count(engine, patient_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(audit_event).where(
            audit_event.c.patient_id == patient_id,
            audit_event.c.action == "break-glass")).scalar_one()


@page("patient")
def my_access_log(request: Request, access: Access) -> Response:
    sc = request.app.state.sc
    if not access.patient_id:
        return render(request, "error.html", 403, title="No record is linked to your account",
                      message="Ask your GP practice to link your account to your record.")
    before = request.query_params.get("before")
    before = int(before) if before and before.isdigit() else None
    rows = access_log(sc.engine, access.patient_id, LIMIT + 1, before)
    older = rows[LIMIT - 1]["seq"] if len(rows) > LIMIT else None
    rows = rows[:LIMIT]
    sc.governance.audit(access, "read", patient_id=access.patient_id, entity="access log")
    orgs = sorted({r["org"] for r in rows if r["role"] != "You"})
    return render(request, "accesslog.html", title="Who has looked at my record", rows=rows,
                  glass=glass_count(sc.engine, access.patient_id), orgs=orgs, older=older,
                  paged=before is not None)
