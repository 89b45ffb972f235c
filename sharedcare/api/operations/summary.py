"""Patient/$summary: an International Patient Summary-shaped document Bundle.

    GET /fhir/Patient/123/$summary

A `document` Bundle whose first entry is a `Composition` (LOINC 60591-5 Patient summary
Document) with the IPS sections for problems, medications, allergies, results and vital signs,
then the Patient record(s) and every resource the sections reference. It is built from one
governed read (`Governance.everything`: the legitimate-relationship check, the policy inside the
query, one audit event), so it holds only what the viewer may see; how many items were withheld
for sensitivity is said in the Composition (its narrative and a section of its own), never what.
"""

from __future__ import annotations

import html
import uuid
from datetime import UTC, datetime

from ...fhir.outcome import FHIRError
from ...fhir.validation import ID_RE
from .http import fhir_response
from .lastn import ALL, latest

LOINC = "http://loinc.org"
TYPES = ["Patient", "AllergyIntolerance", "Condition", "MedicationStatement",
         "MedicationRequest", "Observation", "DiagnosticReport"]
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"

# (key, title, LOINC code, display) in IPS order
SECTIONS = [
    ("allergies", "Allergies and intolerances", "48765-2", "Allergies and adverse reactions Document"),
    ("problems", "Problems", "11450-4", "Problem list - Reported"),
    ("medications", "Medications", "10160-0", "History of Medication use Narrative"),
    ("results", "Results", "30954-2", "Relevant diagnostic tests/laboratory data Narrative"),
    ("vitals", "Vital signs", "8716-3", "Vital signs"),
]
ENDED_MEDICATION = {"entered-in-error", "cancelled", "stopped", "completed", "revoked",
                    "not-taken"}


def _codes(concept: dict | None) -> set[str]:
    return {c.get("code") for c in (concept or {}).get("coding") or [] if c.get("code")}


def _current_condition(r: dict) -> bool:
    if "entered-in-error" in _codes(r.get("verificationStatus")) or \
            "refuted" in _codes(r.get("verificationStatus")):
        return False
    status = _codes(r.get("clinicalStatus"))
    return not status or bool(status & {"active", "recurrence", "relapse"})


def _current_allergy(r: dict) -> bool:
    if _codes(r.get("verificationStatus")) & {"entered-in-error", "refuted"}:
        return False
    status = _codes(r.get("clinicalStatus"))
    return not status or "active" in status


def _vital(r: dict) -> bool:
    return any(c.get("code") == "vital-signs" for cat in r.get("category") or []
               for c in cat.get("coding") or [])


def sections_of(resources: list[dict]) -> dict[str, list[dict]]:
    """Which resource goes in which section: current problems, allergies and medicines; the
    latest result and vital sign of each code; diagnostic reports."""
    out: dict[str, list[dict]] = {key: [] for key, *_ in SECTIONS}
    observations, vitals = [], []
    for r in resources:
        t = r.get("resourceType")
        if t == "Condition" and _current_condition(r):
            out["problems"].append(r)
        elif t == "AllergyIntolerance" and _current_allergy(r):
            out["allergies"].append(r)
        elif t in ("MedicationStatement", "MedicationRequest") and \
                r.get("status") not in ENDED_MEDICATION:
            out["medications"].append(r)
        elif t == "Observation" and r.get("status") != "entered-in-error":
            (vitals if _vital(r) else observations).append(r)
        elif t == "DiagnosticReport" and r.get("status") != "entered-in-error":
            out["results"].append(r)
    out["results"] = latest(observations, 1) + out["results"]
    out["vitals"] = latest(vitals, 1)
    return out


def _label(r: dict) -> str:
    for key in ("code", "medicationCodeableConcept"):
        concept = r.get(key) or {}
        if concept.get("text"):
            return concept["text"]
        for c in concept.get("coding") or []:
            if c.get("display") or c.get("code"):
                return c.get("display") or c["code"]
    return r.get("resourceType", "")


def _narrative(items: list[str]) -> dict:
    body = "".join(f"<li>{html.escape(i)}</li>" for i in items)
    return {"status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><ul>{body}</ul></div>'
            if items else '<div xmlns="http://www.w3.org/1999/xhtml"><p>None</p></div>'}


def document(pid: str, patients: list[dict], resources: list[dict], base: str,
             withheld: int) -> dict:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    grouped = sections_of(resources)
    sections = []
    included: dict[str, dict] = {}
    for key, title, code, display in SECTIONS:
        items = grouped[key]
        section = {"title": title,
                   "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                   "text": _narrative([_label(r) for r in items])}
        if items:
            section["entry"] = [{"reference": f"{r['resourceType']}/{r['id']}"} for r in items]
            for r in items:
                included[f"{r['resourceType']}/{r['id']}"] = r
        else:
            section["emptyReason"] = {"coding": [{"system": EMPTY_REASON, "code": "unavailable",
                                                  "display": "Unavailable"}]}
        sections.append(section)
    notes = []
    if withheld:
        note = (f"{withheld} item{'s' if withheld != 1 else ''} withheld: sensitive "
                "information your role may not see without breaking glass")
        notes.append(note)
        sections.append({"title": "Information withheld", "text": _narrative([note]),
                         "emptyReason": {"coding": [{"system": EMPTY_REASON,
                                                     "code": "withheld",
                                                     "display": "Information Withheld"}]}})
    composition = {
        "resourceType": "Composition",
        "id": str(uuid.uuid4()),
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5",
                             "display": "Patient summary Document"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "date": now,
        "author": [{"display": "sharedcare shared care record"}],
        "title": "Patient summary",
        "text": _narrative([f"{title}: {len(grouped[key])}" for key, title, *_ in SECTIONS]
                           + notes),
        "section": sections,
    }
    entries = [{"fullUrl": f"urn:uuid:{composition['id']}", "resource": composition}]
    entries += [{"fullUrl": f"{base}/Patient/{p['id']}", "resource": p} for p in patients]
    entries += [{"fullUrl": f"{base}/{ref}", "resource": r} for ref, r in included.items()]
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()),
            "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
            "type": "document", "timestamp": now, "entry": entries}


def handle(api, request):
    pid = request.path_params["id"]
    if not ID_RE.match(pid):
        raise FHIRError.of(400, "invalid", "not a valid Patient id", "id")
    for name in request.query_params:
        raise FHIRError.of(400, "not-supported", f"$summary takes no parameter '{name[:60]}' "
                           "(IPS profile and identifier are not supported)", name[:60])
    access = api.gov.authenticate(request)
    view = api.gov.everything(access, pid, ALL, None, None, TYPES)
    resources = [s.json() for s in view.matches]
    # The patient asked for first, then the person's other records of them.
    patients = sorted((r for r in resources if r.get("resourceType") == "Patient"),
                      key=lambda p: p.get("id") != pid)
    return fhir_response(document(pid, patients, resources, api.base(request),
                                  view.withheld_sensitive))
