"""A patient's own access log: who looked at my record, when, and why.

This is the patient's own audit data (the `audit_event` rows about them), read here directly;
viewing it is itself recorded. It follows the person: every partner keeps its own Patient record
of them, and an access through any of those records is an access to the patient's record, so the
log covers every Patient identity joined to theirs (`store.persons.patients_of_person`) -- and
only those: unlinking a record takes its accesses off the list at once.
"""

from __future__ import annotations

from sqlalchemy import false, func, select
from starlette.requests import Request
from starlette.responses import Response

from ..governance.policy import Access
from ..governance.schema import audit_event, organisation
from ..store.persons import patients_of_person
from ..store.schema import resource
from .core import ROLE_LABELS, page, render
from .patient import ago, nice_date

LIMIT = 100  # per page; older accesses page back with ?before=seq

# What happened, in words a patient understands: (when it was allowed, when it was refused).
ACTIONS = {
    "read": ("Looked at part of your record", "Tried to look at part of your record"),
    "vread": ("Looked at an earlier version of part of your record",
              "Tried to look at an earlier version of part of your record"),
    "search": ("Searched for your record", "Tried to search for your record"),
    "everything": ("Looked at your whole record", "Tried to look at your whole record"),
    "history": ("Looked at the history of part of your record",
                "Tried to look at the history of part of your record"),
    "break-glass": ("Broke glass: opened your record in an emergency",
                    "Tried to open your record in an emergency"),
    "declare-relationship": ("Said they are caring for you, so they can see your record",
                             "Tried to say they are caring for you"),
    "declared-relationship": ("Said they are caring for you, so they can see your record",
                              "Tried to say they are caring for you"),
    "create": ("Added to your record", "Tried to add to your record"),
    "update": ("Changed part of your record", "Tried to change part of your record"),
    "delete": ("Removed something from your record", "Tried to remove something from your record"),
    "locate": ("Looked up your NHS number", "Tried to look up your NHS number"),
    "match": ("Checked who you are against your record", "Tried to check who you are"),
    "export": ("Included your record in a data export", "Tried to include your record in a data export"),
    "notify": ("Was told that something happened in your care (a notification they asked for)",
               "Was not told about something in your care: they may not see it"),
    "identity-link": ("Joined records from different services as yours",
                      "Tried to join records from different services as yours"),
    "identity-unlink": ("Separated a record that was wrongly joined to yours",
                        "Tried to separate a record from yours"),
    "identity-confirm": ("Confirmed that two records are both yours",
                         "Tried to confirm that two records are both yours"),
    "identity-reject": ("Confirmed that a similar record is not yours",
                        "Tried to confirm that a similar record is not yours"),
}
# Governance bookkeeping recorded against the patient: the entity says what it was about.
REVIEWS = {
    "break-glass/": "Reviewed an emergency (break glass) access to your record",
    "care-relationship/": "Reviewed someone's claim to be caring for you",
    "identity of Patient/": "Checked which services' records are yours",
}


def describe(action: str, outcome: str, entity: str | None, role: str | None,
             glass: bool) -> str:
    """What someone did, as the patient should read it -- never a write when it was a
    review, never a look when they were refused."""
    entity = entity or ""
    if role == "patient" and entity == "access log":
        return "You looked at this list"
    refused = outcome != "0"
    for prefix, words in REVIEWS.items():
        if entity.startswith(prefix):
            return words if not refused else "Tried to review an access to your record"
    allowed, tried = ACTIONS.get(action, (f"Did something with your record ({action})",
                                          f"Tried to do something with your record ({action})"))
    if refused:
        return f"{tried} and was refused"
    if glass and action != "break-glass":
        return f"{allowed}, using emergency (break glass) access"
    return allowed


PURPOSES = {"direct-care": "Your direct care", "planning": "Planning services",
            "research": "Research"}


def _records_of(conn, patient_id: str) -> dict[str, str | None]:
    """Every Patient record of the person -> the organisation that keeps it (ODS code)."""
    ids = patients_of_person(conn, patient_id)
    kept = dict(conn.execute(select(resource.c.id, resource.c.source_org).where(
        resource.c.type == "Patient", resource.c.id.in_(ids), resource.c.deleted == false())).all())
    return {pid: kept.get(pid) for pid in ids}


def access_log(engine, patient_id: str, limit: int = LIMIT, before: int | None = None
               ) -> list[dict]:
    """The accesses to the person's record through any partner's Patient record of them,
    newest first; each names the organisation that acted and, when the person has several
    records, whose record of them it went through."""
    with engine.connect() as conn:
        names = {o: n for o, n in conn.execute(select(organisation.c.ods, organisation.c.name))}
        records = _records_of(conn, patient_id)
        rows = conn.execute(
            select(audit_event.c.seq, audit_event.c.recorded, audit_event.c.username,
                   audit_event.c.client_id, audit_event.c.ods, audit_event.c.role,
                   audit_event.c.purpose, audit_event.c.action, audit_event.c.outcome,
                   audit_event.c.reason, audit_event.c.break_glass, audit_event.c.entity,
                   audit_event.c.patient_id)
            .where(audit_event.c.patient_id.in_(list(records)),
                   *([audit_event.c.seq < before] if before else []))
            .order_by(audit_event.c.seq.desc()).limit(limit)).mappings().all()
    several = len(records) > 1
    out = []
    for r in rows:
        keeper = records.get(r["patient_id"])
        out.append({
            "seq": r["seq"], "when": r["recorded"], "date": nice_date(r["recorded"][:10]),
            "time": r["recorded"][11:16], "ago": ago(r["recorded"]),
            "org": names.get(r["ods"] or "", r["ods"] or ("You" if r["role"] == "patient"
                                                          else "sharedcare")),
            "role": "You" if r["role"] == "patient" else ROLE_LABELS.get(r["role"] or "",
                                                                         r["role"] or ""),
            "what": describe(r["action"], r["outcome"], r["entity"], r["role"],
                             bool(r["break_glass"])),
            "purpose": PURPOSES.get(r["purpose"] or "", r["purpose"] or ""),
            "reason": r["reason"] or "",
            "glass": bool(r["break_glass"]) or r["action"] == "break-glass",
            "refused": r["outcome"] != "0",
            "system": bool(r["client_id"]) and not r["username"],
            # Whose record of you it went through (only worth saying when there are several).
            "record": (names.get(keeper, keeper) if keeper else None) if several else None,
        })
    return out


def glass_count(engine, patient_id: str) -> int:
    with engine.connect() as conn:
        ids = patients_of_person(conn, patient_id)
        return conn.execute(select(func.count()).select_from(audit_event).where(
            audit_event.c.patient_id.in_(ids),
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
