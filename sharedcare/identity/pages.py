"""Identity work a person can do: the review queue of possible matches, and why a record belongs
to its person.

    /identity/review                      possible matches waiting, with the evidence and the two
                                          records side by side, 20 a page
    /identity/review/{task_id}            POST: confirm (same person) or reject (different people)
    /identity/patient/{patient_id}        which Person a record belongs to, and how and why each
                                          of the person's records joined it
    /identity/patient/{patient_id}/unlink POST: separate a record wrongly joined to a person
    /identity/patient/{patient_id}/link   POST: join another record to this one's person

Every decision goes through :class:`~sharedcare.identity.service.IdentityService` (audited in
the same transaction as the change, kept with its reason on the link, reversible). These roles
see identity evidence only -- the candidates' demographics and identifiers -- never clinical
data. Opening either page is itself audited.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..fhir.codes import LOCAL_ID_BASE, NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM
from ..fhir.outcome import FHIRError
from ..governance.policy import ROLES, Access
from ..store.persons import patients_of_person
from ..web.core import page, render
from ..web.patient import format_nhs, human_name, nice_date
from .links import read_current, valid_nhs_number
from .service import MIN_REASON, IdentityService

# The IG lead and the system administrator; a data-quality lead too, where that role exists.
REVIEW_ROLES = tuple(r for r in ("ig-lead", "sysadmin", "data-quality") if r in ROLES)
PER_PAGE = 20

FIELD_LABELS = {"given": "Given name", "family": "Family name", "birth_date": "Date of birth",
                "sex": "Sex", "postcode": "Postcode"}
LEVELS = {"agree": ("Agree", "green"), "partial": ("Partly agree", "yellow"),
          "disagree": ("Disagree", "red"), "missing": ("Missing", "grey")}
BASIS = {
    "nhs-number": "Same NHS number: the record carries a valid NHS number, which places it in "
                  "that number's person",
    "match": "The matching model was certain these records are one person",
    "review": "A person reviewed a possible match and confirmed it",
    "operator": "A person linked (or separated) this record by hand",
    "own": "No other record matched it with certainty: it is a person of its own",
}
ASSURANCE = {"level4": "Very high (NHS number)", "level3": "High", "level2": "Medium",
             "level1": "Low (no match)"}
DONE = {"confirmed": "Confirmed as the same person: the two records are now one person.",
        "rejected": "Recorded as different people: this pair will not be proposed again.",
        "unlinked": "The record was separated: it is now a person of its own.",
        "linked": "The records were linked: they are now one person."}


def _sc(request: Request):
    return request.app.state.sc


def _identity(request: Request) -> IdentityService:
    return IdentityService.of(_sc(request))


def _reason(form) -> str:
    reason = (form.get("reason") or "").strip()
    if len(reason) < MIN_REASON:
        raise FHIRError.of(400, "required", f"Give a reason (at least {MIN_REASON} characters): "
                           "it is kept with the decision and in the audit trail.")
    return reason[:1000]


def _identifier_label(ident: dict) -> str:
    text = (ident.get("type") or {}).get("text")
    if text:
        return text
    system = ident.get("system") or ""
    if system == NHS_NUMBER_SYSTEM:
        return "NHS number"
    if system.startswith(LOCAL_ID_BASE + "/"):
        kind = system[len(LOCAL_ID_BASE) + 1:].split("/")[-1]
        return kind.upper() if len(kind) <= 4 else kind.replace("-", " ").capitalize()
    return "Identifier"


def demographics(res: dict | None, pid: str) -> dict:
    """What identity work needs of a Patient, and nothing more: no clinical data."""
    if res is None:
        return {"id": pid, "missing": True}
    source = next((t.get("code") for t in (res.get("meta") or {}).get("tag") or ()
                   if t.get("system") == SOURCE_ORG_SYSTEM), None)
    nhs = next((i.get("value") for i in res.get("identifier") or []
                if i.get("system") == NHS_NUMBER_SYSTEM), None)
    postcodes = [a["postalCode"] for a in res.get("address") or [] if a.get("postalCode")]
    return {
        "id": pid, "missing": False, "name": human_name(res),
        "birth": nice_date(res.get("birthDate")) if res.get("birthDate") else "",
        "sex": (res.get("gender") or "").capitalize(),
        "postcode": ", ".join(dict.fromkeys(postcodes)),
        "nhs": format_nhs(nhs) if nhs else "",
        "nhs_valid": bool(valid_nhs_number(res)),
        "identifiers": [{"label": _identifier_label(i), "value": i.get("value")}
                        for i in res.get("identifier") or []
                        if i.get("value") and i.get("system") != NHS_NUMBER_SYSTEM],
        "source": source, "active": res.get("active", True) is not False,
    }


def _records(sc, ids) -> dict[str, dict]:
    """Patient id -> demographics, plus how many other records share its person."""
    ids = list(dict.fromkeys(i for i in ids if i))
    with sc.engine.connect() as conn:
        found = read_current(conn, "Patient", ids)
        out = {pid: demographics(found.get(pid), pid) for pid in ids}
        for pid, rec in out.items():
            rec["others"] = len(patients_of_person(conn, pid)) - 1
    return out


def _evidence(fields: dict[str, str]) -> list[dict]:
    """The review Task's per-field agreement ("agree: exact match (weight 3.1)") in words."""
    out = []
    for name, text in fields.items():
        level, _, rest = (text or "").partition(":")
        label, colour = LEVELS.get(level.strip(), (level.strip().capitalize() or "?", "grey"))
        out.append({"field": FIELD_LABELS.get(name, name.replace("_", " ").capitalize()),
                    "level": label, "colour": colour, "detail": rest.strip()})
    order = list(FIELD_LABELS.values())
    return sorted(out, key=lambda e: order.index(e["field"]) if e["field"] in order else 99)


def _page_no(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page") or 1))
    except ValueError:
        return 1


def _review_page(request: Request, access: Access, error: str | None = None,
                 status: int = 200, form: dict | None = None) -> Response:
    sc = _sc(request)
    service = _identity(request)
    total = service.review_count()
    pages = max(1, -(-total // PER_PAGE))
    page_no = min(_page_no(request), pages)
    shown = service.review_queue((page_no - 1) * PER_PAGE, PER_PAGE)
    records = _records(sc, [i for r in shown for i in (r.patient_id, r.candidate_id)])
    reviews = [{"task": r.task_id, "a": records[r.patient_id], "b": records[r.candidate_id],
                "probability": r.probability, "weight": r.match_weight, "grade": r.grade,
                "evidence": _evidence(r.fields), "authored": r.authored} for r in shown]
    sc.governance.audit(access, "search", entity="identity review queue")

    def link(n: int) -> str:
        return "/identity/review" + (f"?{urlencode({'page': n})}" if n > 1 else "")

    return render(request, "identity/review.html", status, title="Identity review",
                  reviews=reviews, total=total, page=page_no, pages=pages,
                  per_page=PER_PAGE, page_link=link, error=error, form=form or {},
                  done=DONE.get(request.query_params.get("done") or ""),
                  min_reason=MIN_REASON)


@page(*REVIEW_ROLES)
def review_page(request: Request, access: Access) -> Response:
    return _review_page(request, access)


@page(*REVIEW_ROLES)
def review_decision(request: Request, access: Access, form) -> Response:
    task_id = request.path_params["task_id"]
    decision = form.get("decision")
    try:
        if decision not in ("confirm", "reject"):
            raise FHIRError.of(400, "invalid", "Choose Confirm (same person) or Reject "
                               "(different people).")
        reason = _reason(form)
        service = _identity(request)
        if decision == "confirm":
            service.confirm(access, task_id, reason)
        else:
            service.reject(access, task_id, reason)
    except FHIRError as e:
        return _review_page(request, access, _message(e), e.status,
                            {"task": task_id, "reason": form.get("reason") or ""})
    done = "confirmed" if decision == "confirm" else "rejected"
    return RedirectResponse(f"/identity/review?done={done}", 303)


def _message(e: FHIRError) -> str:
    return e.issues[0].diagnostics if e.issues else str(e)


def _patient_page(request: Request, access: Access, patient_id: str, error: str | None = None,
                  status: int = 200) -> Response:
    sc = _sc(request)
    service = _identity(request)
    explained = service.explain_link(patient_id)
    with sc.engine.connect() as conn:
        if patient_id not in read_current(conn, "Patient", [patient_id]):
            raise FHIRError.of(404, "not-found", "There is no patient record with this id.")
    members = explained["members"] or [{"patient": patient_id, "assurance": None,
                                        "basis": None, "reason": None}]
    records = _records(sc, [m["patient"] for m in members])
    rows = [{**m, "record": records[m["patient"]],
             "how": BASIS.get(m["basis"] or "", "Not yet linked to a person: the identity "
                              "service will place it within seconds"),
             "assurance_words": ASSURANCE.get(m["assurance"] or "", m["assurance"] or "")}
            for m in members]
    rows.sort(key=lambda r: (r["patient"] != patient_id, r["record"].get("source") or ""))
    reviews = [r for r in service.review_queue() if patient_id in (r.patient_id, r.candidate_id)]
    sc.governance.audit(access, "read", patient_id=patient_id,
                        entity=f"identity of Patient/{patient_id}")
    return render(request, "identity/patient.html", status, title="Which person is this record",
                  patient_id=patient_id, person=explained["person"], rows=rows,
                  reviews=len(reviews), error=error,
                  done=DONE.get(request.query_params.get("done") or ""),
                  min_reason=MIN_REASON)


@page(*REVIEW_ROLES)
def patient_page(request: Request, access: Access) -> Response:
    return _patient_page(request, access, request.path_params["patient_id"])


def _back(form, patient_id: str, done: str) -> str:
    nxt = form.get("next") or ""
    if nxt == "/identity/review":
        return f"/identity/review?done={done}"
    return f"/identity/patient/{quote(patient_id, safe='')}?done={done}"


@page(*REVIEW_ROLES)
def unlink_record(request: Request, access: Access, form) -> Response:
    patient_id = request.path_params["patient_id"]
    try:
        _identity(request).unlink(access, patient_id, _reason(form))
    except FHIRError as e:
        if form.get("next") == "/identity/review":
            return _review_page(request, access, _message(e), e.status)
        return _patient_page(request, access, patient_id, _message(e), e.status)
    return RedirectResponse(_back(form, patient_id, "unlinked"), 303)


@page(*REVIEW_ROLES)
def link_record(request: Request, access: Access, form) -> Response:
    patient_id = request.path_params["patient_id"]
    other = (form.get("other") or "").strip()
    try:
        if not other:
            raise FHIRError.of(400, "required", "Give the id of the other patient record.")
        _identity(request).link(access, patient_id, other, _reason(form))
    except FHIRError as e:
        return _patient_page(request, access, patient_id, _message(e), e.status)
    return RedirectResponse(_back(form, patient_id, "linked"), 303)


def routes(sc) -> list[Route]:
    return [
        Route("/identity/review", review_page, methods=["GET"]),
        Route("/identity/review/{task_id}", review_decision, methods=["POST"]),
        Route("/identity/patient/{patient_id}", patient_page, methods=["GET"]),
        Route("/identity/patient/{patient_id}/unlink", unlink_record, methods=["POST"]),
        Route("/identity/patient/{patient_id}/link", link_record, methods=["POST"]),
    ]
