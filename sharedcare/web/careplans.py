"""Shared care plans authored in sharedcare: crisis plans and end-of-life / ReSPECT-style
preferences. The one place where sharedcare is the record, not a copy.

Writes go through the store with the author's organisation as source (after
`gov.require_write` and a relationship check), each followed by one audit event; reads go
through Governance like every other page.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..fhir.codes import BASE, DATA_CATEGORY_SYSTEM, SOURCE_ORG_SYSTEM
from ..fhir.outcome import FHIRError
from ..governance.policy import BREAK_GLASS_ROLES, Access
from ..store.repository import WriteOp
from .core import CLINICAL_ROLES, page, render
from .patient import (
    ago,
    cc_code,
    human_name,
    nice_date,
    org_names,
    tag,
)

KIND_SYSTEM = f"{BASE}/CodeSystem/shared-care-plan"
FIELD_SYSTEM = f"{BASE}/CodeSystem/shared-care-plan-field"
WEB_SOURCE = f"{BASE}/web/care-plans"
WRITER_ROLES = ("clinician", "nurse", "allied-health", "social-worker")

KINDS = {
    "crisis": "Crisis plan",
    "end-of-life": "End of life and ReSPECT preferences",
}
CPR_OPTIONS = ("CPR attempts recommended", "For modified CPR",
               "CPR attempts not recommended")
PLACE_OPTIONS = ("Home", "Care home", "Hospice", "Hospital", "No preference expressed")

# (key, label, required, widget, options, hint)
FIELDS = {
    "crisis": [
        ("what-matters", "What matters to the person", True, "textarea", (),
         "In their own words where possible."),
        ("warning-signs", "Early warning signs", False, "textarea", (),
         "What family, carers and staff may notice first."),
        ("what-helps", "What helps in a crisis", True, "textarea", (), ""),
        ("what-to-avoid", "What to avoid", False, "textarea", (), ""),
        ("contacts", "Who to contact in a crisis", True, "textarea", (),
         "Names, relationship and phone numbers, including out of hours."),
    ],
    "end-of-life": [
        ("what-matters", "What matters to the person", True, "textarea", (),
         "Their priorities for care and what they would want to avoid."),
        ("cpr", "CPR recommendation", True, "radio", CPR_OPTIONS,
         "Agreed with the person or, if they lack capacity, in their best interests."),
        ("preferred-place", "Preferred place of care", True, "radio", PLACE_OPTIONS, ""),
        ("other-recommendations", "Other recommendations for emergency care and treatment", False,
         "textarea", (), "For example: hospital admission, antibiotics, anticipatory medicines."),
        ("contacts", "Key contacts", True, "textarea", (),
         "Family, lasting power of attorney, GP, key worker: names and phone numbers."),
    ],
}


def plan_kind_of(res: dict) -> str | None:
    for cc in res.get("category") or []:
        code = cc_code(cc, KIND_SYSTEM)
        if code in KINDS:
            return code
    return None


def values_of(res: dict) -> dict[str, str]:
    out = {"what-matters": res.get("description") or "", "title": res.get("title") or ""}
    for a in res.get("activity") or []:
        d = a.get("detail") or {}
        key = cc_code(d.get("code"), FIELD_SYSTEM)
        if key:
            out[key] = d.get("description") or ""
    return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan_meta(prior: dict | None, access: Access) -> dict:
    """An edit keeps what governs the plan: its sensitivity labels (meta.security), its tags
    (controller, data category, any other) and profiles stay exactly as they were; only what
    the server manages (versionId, lastUpdated) is left to the server. A new plan is the
    author's organisation's, in the care-plans category."""
    old = {k: v for k, v in ((prior or {}).get("meta") or {}).items()
           if k not in ("versionId", "lastUpdated")}
    tags = [dict(t) for t in old.get("tag") or []]
    systems = {t.get("system") for t in tags}
    if DATA_CATEGORY_SYSTEM not in systems:
        tags.insert(0, {"system": DATA_CATEGORY_SYSTEM, "code": "care-plans"})
    if SOURCE_ORG_SYSTEM not in systems:
        tags.append({"system": SOURCE_ORG_SYSTEM, "code": access.ods})
    return {**old, "source": WEB_SOURCE, "tag": tags}


def build_resource(kind: str, values: dict, patient_id: str, patient_name: str, access: Access,
                   org_name: str, prior: dict | None = None) -> dict:
    label = KINDS[kind]
    who = {"display": f"{access.display_name or access.username}, {org_name}"}
    res = {
        "resourceType": "CarePlan",
        "meta": plan_meta(prior, access),
        "status": "active",
        "intent": "plan",
        "category": [{"coding": [{"system": KIND_SYSTEM, "code": kind, "display": label}],
                      "text": label}],
        "title": values.get("title") or label,
        "description": values["what-matters"],
        "subject": {"reference": f"Patient/{patient_id}", "display": patient_name},
        "created": (prior or {}).get("created") or _now(),
        "period": (prior or {}).get("period") or {"start": _now()[:10]},
        "author": (prior or {}).get("author") or who,
        "activity": [
            {"detail": {"code": {"coding": [{"system": FIELD_SYSTEM, "code": key}],
                                 "text": label_},
                        "status": "in-progress", "description": values[key]}}
            for key, label_, *_ in FIELDS[kind] if key != "what-matters" and values.get(key)
        ],
    }
    contributors = list((prior or {}).get("contributor") or [])
    if who not in contributors:
        contributors.append(who)
    res["contributor"] = contributors
    notes = list((prior or {}).get("note") or [])
    change = (values.get("change-note") or "").strip()
    if change:
        notes.append({"authorString": who["display"], "time": _now(), "text": change})
    if notes:
        res["note"] = notes
    return res


def in_sentence(label: str) -> str:
    """A label inside a sentence: 'Preferred place of care' -> 'preferred place of care', but
    acronyms and names keep their capitals ('CPR recommendation', '... ReSPECT preferences')."""
    first, _, rest = label.partition(" ")
    if len(first) > 1 and any(c.isupper() for c in first[1:]):
        return label
    return label[:1].lower() + label[1:]


def validate(kind: str, form) -> tuple[dict, dict]:
    values = {k: (form.get(k) or "").strip() for k, *_ in FIELDS[kind]}
    values["title"] = (form.get("title") or "").strip()[:200]
    values["change-note"] = (form.get("change-note") or "").strip()[:1000]
    errors = {}
    for key, label, required, widget, options, _ in FIELDS[kind]:
        v = values[key]
        if required and not v:
            errors[key] = (f"Select the {in_sentence(label)}" if widget == "radio"
                           else f"Enter {in_sentence(label)}")
        elif options and v and v not in options:
            errors[key] = f"Select one of the options for {in_sentence(label)}"
        elif len(v) > 4000:
            errors[key] = f"{label} must be 4,000 characters or fewer"
    return values, errors


def _patient(gov, access: Access, patient_id: str) -> dict:
    """The patient, through governance (raises 403 without a relationship)."""
    gov.check_patient(access, patient_id, "care-plan")
    return gov.read(access, "Patient", patient_id).json()


def _form(request, access, *, kind, values, errors, patient_id, patient_name, plan_id=None,
          version=None, status=200, conflict=None, latest=None):
    return render(request, "careplan_form.html", status, access=access,
                  title=("Error: " if errors or conflict else "") + (
                      f"Edit {in_sentence(KINDS[kind])}" if plan_id
                      else f"New {in_sentence(KINDS[kind])}"),
                  kind=kind, kind_label=KINDS[kind], fields=FIELDS[kind], values=values,
                  errors=errors, patient_id=patient_id, patient_name=patient_name,
                  plan_id=plan_id, version=version, conflict=conflict, latest=latest)


def _denied(request, access, patient_id, e: FHIRError):
    from .patient import _denied as denied

    return denied(request, access, patient_id, e)


@page(*CLINICAL_ROLES)
def new_plan(request: Request, access: Access, form=None) -> Response:
    sc = request.app.state.sc
    gov = sc.governance
    pid = request.path_params["patient_id"]
    kind = (form.get("kind") if form is not None else request.query_params.get("kind")) or ""
    if kind not in KINDS:
        kind = "crisis"
    try:
        gov.require_write(access, "CarePlan")
        patient = _patient(gov, access, pid)
    except FHIRError as e:
        if e.status == 403 and access.role in BREAK_GLASS_ROLES and "relationship" in str(e):
            return _denied(request, access, pid, e)
        raise
    name = human_name(patient)
    if form is None:
        return _form(request, access, kind=kind, values={}, errors={}, patient_id=pid,
                     patient_name=name)
    values, errors = validate(kind, form)
    if errors:
        return _form(request, access, kind=kind, values=values, errors=errors, patient_id=pid,
                     patient_name=name, status=400)
    org = org_names(sc).get(access.ods or "", access.ods or "")
    res = build_resource(kind, values, pid, name, access, org)
    rid = str(uuid.uuid4())
    gov.write(access, [WriteOp("POST", "CarePlan", rid, res)])
    return RedirectResponse(f"/care-plans/{quote(rid)}?notice=created", 303)


def _read_plan(gov, access, plan_id):
    stored = gov.read(access, "CarePlan", plan_id)
    res = stored.json()
    pid = ((res.get("subject") or {}).get("reference") or "").removeprefix("Patient/")
    return stored, res, pid


@page(*CLINICAL_ROLES)
def show_plan(request: Request, access: Access) -> Response:
    sc = request.app.state.sc
    plan_id = request.path_params["plan_id"]
    stored, res, pid = _read_plan(sc.governance, access, plan_id)
    kind = plan_kind_of(res)
    names = org_names(sc)
    src = tag(res, SOURCE_ORG_SYSTEM)
    return render(request, "careplan.html", title=res.get("title") or "Care plan", plan=res,
                  plan_id=plan_id, version=stored.version, updated=stored.last_updated,
                  ago=ago, nice_date=nice_date, kind=kind,
                  kind_label=KINDS.get(kind or "", res.get("title") or "Care plan"),
                  fields=FIELDS.get(kind or "", []), values=values_of(res), patient_id=pid,
                  source=src, source_name=names.get(src or "", src or ""),
                  editable=kind is not None and access.role in WRITER_ROLES,
                  notice=request.query_params.get("notice"))


@page(*CLINICAL_ROLES)
def edit_plan(request: Request, access: Access, form=None) -> Response:
    sc = request.app.state.sc
    gov = sc.governance
    plan_id = request.path_params["plan_id"]
    stored, res, pid = _read_plan(gov, access, plan_id)
    kind = plan_kind_of(res)
    if kind is None:
        return render(request, "error.html", 400, title="This plan cannot be edited here",
                      message="This care plan came from a partner's own system; change it there. "
                              "Only plans written in sharedcare can be edited in sharedcare.")
    gov.require_write(access, "CarePlan")
    patient = _patient(gov, access, pid)
    name = human_name(patient)
    if form is None:
        return _form(request, access, kind=kind, values=values_of(res), errors={},
                     patient_id=pid, patient_name=name, plan_id=plan_id, version=stored.version)
    values, errors = validate(kind, form)
    try:
        version = int(form.get("version") or "")
    except ValueError:
        version = stored.version
    if errors:
        return _form(request, access, kind=kind, values=values, errors=errors, patient_id=pid,
                     patient_name=name, plan_id=plan_id, version=version, status=400)
    org = org_names(sc).get(access.ods or "", access.ods or "")
    new = build_resource(kind, values, pid, name, access, org, prior=res)
    try:
        # Plans written in sharedcare are maintained jointly: any partner who may see the plan
        # (the governed read above) and write care plans may update it, and it stays under the
        # authoring organisation's agreements (build_resource keeps its source tag). So this is
        # not the controller-only write path that partners' own records take.
        gov.write(access, [WriteOp("PUT", "CarePlan", plan_id, new, if_match=version)],
                  joint=True)
    except FHIRError as e:
        if e.status != 412:
            raise
        return _form(request, access, kind=kind, values=values, errors={}, patient_id=pid,
                     patient_name=name, plan_id=plan_id, version=stored.version, status=409,
                     conflict={"yours": version, "current": stored.version},
                     latest=values_of(res))
    return RedirectResponse(f"/care-plans/{quote(plan_id)}?notice=updated", 303)


@page(*CLINICAL_ROLES)
def plan_history(request: Request, access: Access) -> Response:
    sc = request.app.state.sc
    gov = sc.governance
    plan_id = request.path_params["plan_id"]
    _stored, res, pid = _read_plan(gov, access, plan_id)
    kind = plan_kind_of(res)
    rows, _ = gov.history(access, "CarePlan", plan_id, None, 100, None)
    versions = []
    fields = FIELDS.get(kind or "", [])
    labels = {"title": "Title", **{k: label for k, label, *_ in fields}}
    for method, s, _t in reversed(rows):  # oldest first to diff
        body = s.json()
        vals = values_of(body)
        prev = versions[-1]["values"] if versions else {}
        changed = [labels.get(k, k) for k in labels if vals.get(k, "") != prev.get(k, "")]
        contributors = body.get("contributor") or [body.get("author") or {}]
        notes = body.get("note") or []
        versions.append({"version": s.version, "when": s.last_updated, "method": method,
                         "deleted": s.deleted, "values": vals, "changed": changed,
                         "by": (contributors[-1] or {}).get("display", ""),
                         "note": notes[-1]["text"] if notes and (
                             len(notes) > len((versions[-1]["body"].get("note") or [])
                                              if versions else [])) else "",
                         "body": body})
    versions.reverse()
    return render(request, "careplan_history.html", title=f"History: {res.get('title')}",
                  plan=res, plan_id=plan_id, patient_id=pid, versions=versions, fields=fields,
                  labels=labels, ago=ago, nice_date=nice_date)
