"""The IG lead's pages: the audit trail and the review of break-glass and declared relationships.

    /governance/audit                 search the audit trail     .csv   /api/governance/audit
    /governance/break-glass           break-glass events and declared relationships to review
                                                                 .csv   /api/governance/break-glass
    /governance/break-glass/{id}      POST: mark a break-glass event reviewed, with a note
    /governance/relationships/{id}    POST: accept or reject a declared relationship

Viewing the audit trail is itself audited (action ``search``, entity ``audit trail``); every
review decision is audited in the same transaction as the change it records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import urlencode

from sqlalchemy import false, func, select, true, update
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..governance.policy import Access, now_text
from ..governance.schema import audit_event, break_glass, care_relationship, organisation
from ..programme.pages import api, csv_response
from .core import ROLE_LABELS, page, render
from .csvsafe import csv_text

AUDIT_ROLES = ("ig-lead", "sysadmin")
IG = ("ig-lead",)
PER_PAGE = 100
GLASS_PER_PAGE = 20
MAX_PATIENT_IDS = 200  # Patient records that may carry one NHS number (one per partner)
OUTCOMES = {"permitted": "Permitted", "refused": "Refused"}
AUDIT_COLUMNS = ["seq", "recorded", "username", "client_id", "role", "ods", "organisation",
                 "purpose", "action", "outcome", "patient_id", "entity", "reason", "break_glass"]
GLASS_COLUMNS = ["id", "username", "role", "ods", "organisation", "patient_id", "reason",
                 "started", "expires", "reviewed_by", "review_note"]
RELATIONSHIP_COLUMNS = ["id", "username", "ods", "organisation", "patient_id", "reason",
                        "created", "expires", "review_status"]


def _sc(request: Request):
    return request.app.state.sc


# --------------------------------------------------------------------------- audit search


class FilterError(ValueError):
    pass


@dataclass
class AuditFilters:
    patient: str = ""
    user: str = ""
    org: str = ""
    action: str = ""
    outcome: str = ""  # permitted | refused | ""
    glass: bool = False
    since: str = ""  # YYYY-MM-DD, inclusive
    until: str = ""  # YYYY-MM-DD, inclusive
    page: int = 1
    # The Patient ids the patient filter stands for: an NHS number is looked up (there may be
    # a record per partner); anything else is taken as a record id. None: no patient filter.
    patient_ids: list[str] | None = None

    @classmethod
    def parse(cls, q) -> AuditFilters:
        f = cls(patient=(q.get("patient") or "").strip(), user=(q.get("user") or "").strip(),
                org=(q.get("org") or "").strip(), action=(q.get("action") or "").strip(),
                outcome=(q.get("outcome") or "").strip(),
                glass=(q.get("glass") or "") in ("1", "true", "on", "yes"),
                since=(q.get("from") or "").strip(), until=(q.get("to") or "").strip())
        try:
            f.page = max(1, int(q.get("page") or 1))
        except ValueError:
            f.page = 1
        return f

    def check(self) -> None:
        if self.outcome and self.outcome not in OUTCOMES:
            raise FilterError("Outcome must be permitted or refused.")
        for label, value in (("From", self.since), ("To", self.until)):
            if value:
                try:
                    date.fromisoformat(value)
                except ValueError:
                    raise FilterError(f"{label} date must be a real date, like 31 March 2026 "
                                      "(written 2026-03-31 in a link or the API).") from None
        if self.since and self.until and self.since > self.until:
            raise FilterError("The from date must be on or before the to date.")

    def params(self, page: int | None = None) -> dict:
        out = {k: v for k, v in (("patient", self.patient), ("user", self.user),
                                 ("org", self.org), ("action", self.action),
                                 ("outcome", self.outcome), ("from", self.since),
                                 ("to", self.until)) if v}
        if self.glass:
            out["glass"] = "1"
        if page and page > 1:
            out["page"] = str(page)
        return out

    def query(self, page: int | None = None) -> str:
        return urlencode(self.params(page))

    def resolve(self, store) -> None:
        """Turn the patient filter into Patient ids: an NHS number (spaces allowed) finds every
        Patient record carrying it; anything else is a record id."""
        from ..fhir.codes import NHS_NUMBER_SYSTEM
        from ..identity import nhs_number as nhs
        from ..store.persons import patients_of_person
        from ..store.repository import PermitAll

        if not self.patient:
            self.patient_ids = None
            return
        digits = nhs.normalise(self.patient)
        if digits is None:
            found = [self.patient]
        elif not nhs.is_valid(digits):
            raise FilterError(f"{self.patient} is not a valid NHS number: its check digit is "
                              "wrong. Check each digit, or search by the patient's record id.")
        else:
            found = store.match_ids(
                "Patient", f"identifier={NHS_NUMBER_SYSTEM}|{digits}", limit=MAX_PATIENT_IDS,
                policy=PermitAll())  # ids only: to find the person's events in the audit trail
        # The person, not one partner's record: records joined without an NHS number too.
        with store.engine.connect() as conn:
            ids = {p for pid in found for p in patients_of_person(conn, pid)}
        self.patient_ids = sorted(ids)[:MAX_PATIENT_IDS]

    def where(self) -> list:
        a = audit_event.c
        out = []
        if self.patient_ids is not None:
            out.append(a.patient_id.in_(self.patient_ids) if self.patient_ids else false())
        elif self.patient:
            out.append(a.patient_id == self.patient)
        if self.user:
            out.append(a.username == self.user)
        if self.org:
            out.append(a.ods == self.org)
        if self.action:
            out.append(a.action == self.action)
        if self.outcome == "permitted":
            out.append(a.outcome == "0")
        elif self.outcome == "refused":
            out.append(a.outcome != "0")
        if self.glass:
            out.append(a.break_glass == true())
        if self.since:
            out.append(a.recorded >= self.since)
        if self.until:
            out.append(a.recorded < (date.fromisoformat(self.until) + timedelta(days=1))
                       .isoformat())
        return out


def _audit_select(f: AuditFilters):
    a = audit_event.c
    return (select(a.seq, a.recorded, a.username, a.client_id, a.role, a.ods,
                   organisation.c.name.label("organisation"), a.purpose, a.action, a.outcome,
                   a.patient_id, a.entity, a.reason, a.break_glass)
            .select_from(audit_event.outerjoin(organisation, organisation.c.ods == a.ods))
            .where(*f.where()).order_by(a.seq.desc()))


def _event(row) -> dict:
    d = dict(row._mapping)
    d["outcome"] = "permitted" if d["outcome"] == "0" else "refused"
    d["break_glass"] = bool(d["break_glass"])
    return d


def search_audit(engine, f: AuditFilters, limit: int | None = PER_PAGE,
                 store=None) -> tuple[list[dict], int]:
    """One page of matching events (newest first) and how many match in all. With the store, a
    patient filter that is an NHS number finds that person's events under every record id."""
    f.check()
    if store is not None and f.patient_ids is None:
        f.resolve(store)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(audit_event)
                             .where(*f.where())).scalar_one()
        q = _audit_select(f)
        if limit is not None:
            q = q.limit(limit).offset((f.page - 1) * limit)
        rows = [_event(r) for r in conn.execute(q)]
    return rows, total


def patient_labels(store, ids) -> dict[str, dict]:
    """Patient id -> {"name", "nhs"} for the IG lead's review pages: who an event was about, in
    the words the IG lead searches by. Read as the system's own bookkeeping: only the name and
    NHS number leave, and only for ids already on the page."""
    from ..fhir.codes import NHS_NUMBER_SYSTEM
    from ..fhir.outcome import FHIRError
    from ..store.repository import PermitAll
    from ..web.patient import format_nhs, human_name

    out: dict[str, dict] = {}
    wanted = sorted({i for i in ids if i})
    if not wanted:
        return out
    with store.engine.connect() as conn:
        for pid in wanted:
            try:
                res = store.read("Patient", pid, PermitAll(), conn=conn).json()
            except FHIRError:
                continue  # deleted, or never was: the page shows the id
            nhs = next((i.get("value") for i in res.get("identifier") or []
                        if i.get("system") == NHS_NUMBER_SYSTEM), None)
            out[pid] = {"name": human_name(res), "nhs": format_nhs(nhs) if nhs else "",
                        "nhs_digits": nhs or ""}
    return out


def _audit_choices(engine) -> tuple[list, list]:
    with engine.connect() as conn:
        actions = [a for (a,) in conn.execute(select(audit_event.c.action).distinct()
                                              .order_by(audit_event.c.action))]
        orgs = conn.execute(select(organisation.c.ods, organisation.c.name)
                            .order_by(organisation.c.name)).all()
    return actions, orgs


def _audit_viewed(request: Request, access: Access) -> None:
    _sc(request).governance.audit(access, "search", entity="audit trail")


@page(*AUDIT_ROLES)
def audit_page(request: Request, access: Access) -> Response:
    sc = _sc(request)
    f = AuditFilters.parse(request.query_params)
    error, rows, total = None, [], 0
    try:
        rows, total = search_audit(sc.engine, f, store=sc.store)
    except FilterError as e:
        error = str(e)
    _audit_viewed(request, access)
    problems = sc.governance.audit_trail.verify()
    actions, orgs = _audit_choices(sc.engine)
    pages = max(1, -(-total // PER_PAGE))
    return render(request, "ig_audit.html", 400 if error else 200, title="Audit trail",
                  f=f, rows=rows, total=total, pages=pages, error=error, problems=problems,
                  actions=actions, orgs=orgs, outcomes=OUTCOMES, per_page=PER_PAGE,
                  role_labels=ROLE_LABELS,
                  patients=patient_labels(sc.store, [r["patient_id"] for r in rows]))


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    return csv_text(columns, rows, lineterminator="\n")  # formula-safe (web/csvsafe.py)


@page(*AUDIT_ROLES)
def audit_csv(request: Request, access: Access) -> Response:
    sc = _sc(request)
    f = AuditFilters.parse(request.query_params)
    try:
        rows, _total = search_audit(sc.engine, f, limit=None, store=sc.store)
    except FilterError as e:
        return render(request, "error.html", 400, title="Check the filters", message=str(e))
    _audit_viewed(request, access)
    return csv_response(_csv_text(AUDIT_COLUMNS, rows), "audit")


@api(*AUDIT_ROLES)
def audit_api(request: Request, access: Access) -> dict:
    sc = _sc(request)
    f = AuditFilters.parse(request.query_params)
    try:
        rows, total = search_audit(sc.engine, f, store=sc.store)
    except FilterError as e:
        return {"error": str(e)}
    _audit_viewed(request, access)
    return {"filters": f.params(), "patient_ids": f.patient_ids, "page": f.page,
            "per_page": PER_PAGE, "total": total, "events": rows}


# --------------------------------------------------------------------------- break-glass review


def break_glass_events(engine, org: str | None = None) -> list[dict]:
    """Every break-glass event, those not yet reviewed first, newest first within each."""
    b = break_glass.c
    q = (select(b.id, b.username, b.role, b.ods, organisation.c.name.label("organisation"),
                b.patient_id, b.reason, b.started, b.expires, b.reviewed_by, b.review_note)
         .select_from(break_glass.outerjoin(organisation, organisation.c.ods == b.ods)))
    if org:
        q = q.where(b.ods == org)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
    now = now_text()
    for r in rows:
        r["pending"] = not r["reviewed_by"]
        r["active"] = (r["expires"] or "") > now
    rows.sort(key=lambda r: r["started"] or "", reverse=True)
    rows.sort(key=lambda r: not r["pending"])  # stable: pending first, each newest first
    return rows


def declared_relationships(engine, status: str | None = "pending",
                           org: str | None = None) -> list[dict]:
    c = care_relationship.c
    q = (select(c.id, c.username, c.ods, organisation.c.name.label("organisation"),
                c.patient_id, c.reason, c.created, c.expires, c.review_status)
         .select_from(care_relationship.outerjoin(organisation, organisation.c.ods == c.ods))
         .where(c.username.isnot(None)).order_by(c.created.desc()))
    if status:
        q = q.where(c.review_status == status)
    if org:
        q = q.where(c.ods == org)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


class ReviewError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def review_break_glass(gov, access: Access, glass_id: int, note: str) -> None:
    note = (note or "").strip()
    if not note:
        raise ReviewError("Write a review note: what you checked and what you found.")
    with gov.engine.connect().execution_options(write=True) as conn, conn.begin():
        row = conn.execute(select(break_glass.c.patient_id, break_glass.c.username)
                           .where(break_glass.c.id == glass_id)).first()
        if row is None:
            raise ReviewError(f"There is no break-glass event {glass_id}.", 404)
        conn.execute(update(break_glass).where(break_glass.c.id == glass_id)
                     .values(reviewed_by=access.username, review_note=note[:4000]))
        gov.audit_trail.record(access, "update", "0", patient_id=row.patient_id,
                               entity=f"break-glass/{glass_id}",
                               reason=f"reviewed break-glass by {row.username}: {note}"[:1000],
                               conn=conn)


def review_relationship(gov, access: Access, rel_id: int, decision: str,
                        note: str | None = None) -> None:
    if decision not in ("accept", "reject"):
        raise ReviewError("Choose accept or reject.")
    with gov.engine.connect().execution_options(write=True) as conn, conn.begin():
        row = conn.execute(select(care_relationship.c.patient_id, care_relationship.c.username,
                                  care_relationship.c.kind)
                           .where(care_relationship.c.id == rel_id)).first()
        if row is None or row.kind != "declared":
            raise ReviewError(f"There is no declared relationship {rel_id}.", 404)
        values = {"review_status": "accepted" if decision == "accept" else "rejected"}
        if decision == "reject":
            values["expires"] = now_text()  # ends the access it gave, now
        conn.execute(update(care_relationship).where(care_relationship.c.id == rel_id)
                     .values(**values))
        why = f"{values['review_status']} relationship declared by {row.username}"
        if note and note.strip():
            why += f": {note.strip()}"
        gov.audit_trail.record(access, "update", "0", patient_id=row.patient_id,
                               entity=f"care-relationship/{rel_id}", reason=why[:1000],
                               conn=conn)


def _review(request: Request, access: Access, error: str | None = None,
            status: int = 200) -> Response:
    sc = _sc(request)
    org = request.query_params.get("org") or None
    try:
        page_no = max(1, int(request.query_params.get("page") or 1))
    except ValueError:
        page_no = 1
    events = break_glass_events(sc.engine, org)
    pages = max(1, -(-len(events) // GLASS_PER_PAGE))
    page_no = min(page_no, pages)
    shown = events[(page_no - 1) * GLASS_PER_PAGE: page_no * GLASS_PER_PAGE]
    declared = declared_relationships(sc.engine, "pending", org)
    _actions, orgs = _audit_choices(sc.engine)

    def link(n: int) -> str:
        return "/governance/break-glass?" + urlencode(
            {k: v for k, v in (("org", org), ("page", str(n) if n > 1 else None)) if v})

    return render(request, "ig_break_glass.html", status, title="Break-glass review",
                  events=shown, total=len(events), pending=sum(e["pending"] for e in events),
                  page=page_no, pages=pages, per_page=GLASS_PER_PAGE, page_link=link,
                  declared=declared, org=org or "", orgs=orgs, error=error,
                  done=request.query_params.get("done"), role_labels=ROLE_LABELS,
                  patients=patient_labels(sc.store, [e["patient_id"] for e in shown]
                                          + [r["patient_id"] for r in declared]))


@page(*IG)
def break_glass_page(request: Request, access: Access) -> Response:
    return _review(request, access)


@page(*IG)
def break_glass_review(request: Request, access: Access, form) -> Response:
    try:
        review_break_glass(_sc(request).governance, access, request.path_params["id"],
                           form.get("note") or "")
    except ReviewError as e:
        return _review(request, access, str(e), e.status)
    return RedirectResponse("/governance/break-glass?done=reviewed", 303)


@page(*IG)
def relationship_review(request: Request, access: Access, form) -> Response:
    try:
        review_relationship(_sc(request).governance, access, request.path_params["id"],
                            form.get("decision") or "", form.get("note"))
    except ReviewError as e:
        return _review(request, access, str(e), e.status)
    done = {"accept": "accepted", "reject": "rejected"}[form.get("decision")]
    return RedirectResponse(f"/governance/break-glass?done={done}", 303)


@page(*IG)
def break_glass_csv(request: Request, access: Access) -> Response:
    rows = break_glass_events(_sc(request).engine, request.query_params.get("org") or None)
    return csv_response(_csv_text(GLASS_COLUMNS, rows), "break-glass")


@api(*IG)
def break_glass_api(request: Request, access: Access) -> dict:
    engine = _sc(request).engine
    org = request.query_params.get("org") or None
    return {"break_glass": break_glass_events(engine, org),
            "declared_relationships": declared_relationships(engine, None, org)}


# --------------------------------------------------------------------------- routes


def routes(sc) -> list[Route]:
    get = ["GET"]
    return [
        Route("/governance/audit", audit_page, methods=get),
        Route("/governance/audit.csv", audit_csv, methods=get),
        Route("/api/governance/audit", audit_api, methods=get),
        Route("/governance/break-glass", break_glass_page, methods=get),
        Route("/governance/break-glass.csv", break_glass_csv, methods=get),
        Route("/api/governance/break-glass", break_glass_api, methods=get),
        Route("/governance/break-glass/{id:int}", break_glass_review, methods=["POST"]),
        Route("/governance/relationships/{id:int}", relationship_review, methods=["POST"]),
    ]
