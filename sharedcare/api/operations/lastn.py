"""Observation/$lastn: the latest `max` Observations for each code, for one patient (the
person: every partner's record of them), what trend charts need.

    GET /fhir/Observation/$lastn?patient=123&category=laboratory&code=http://loinc.org|2339-0&max=3

Read through `Governance.everything` (the legitimate-relationship check, the policy inside the
query, one audit event), so nothing withheld is ever among them; how many were withheld for
sensitivity is announced in an OperationOutcome entry, as `$everything` does.
"""

from __future__ import annotations

from urllib.parse import urlencode

import orjson

from ...fhir.outcome import FHIRError, operation_outcome
from ...fhir.validation import ID_RE
from .http import fhir_response

# Everything the person has of one type, in one governed read (one audit event): far more
# Observations than any one person's record holds.
ALL = 1_000_000
PARAMS = ("patient", "subject", "category", "code", "max", "_count")


def patient_param(value: str | None, name: str) -> str:
    if not value:
        raise FHIRError.of(400, "required", "$lastn needs patient (or subject=Patient/id)",
                           "patient")
    pid = value.removeprefix("Patient/")
    if not ID_RE.match(pid):
        raise FHIRError.of(400, "invalid", f"{name} must be a Patient id or Patient/id", name)
    return pid


def tokens(values: list[str]) -> list[tuple[str | None, str | None]]:
    """token search values (system|code, |code, system|, code), comma-separated ORs."""
    out = []
    for v in values:
        for one in v.split(","):
            system, bar, code = one.partition("|")
            out.append((system, code or None) if bar else (None, system))
    return out


def concept_matches(concept: dict | None, wanted: list[tuple[str | None, str | None]]) -> bool:
    codings = (concept or {}).get("coding") or []
    for system, code in wanted:
        for c in codings:
            if (code is None or c.get("code") == code) and (
                    system is None or (c.get("system") or "") == system):
                return True
    return False


def categories(obs: dict) -> list[dict]:
    return obs.get("category") or []


def when(obs: dict) -> str:
    """When the observation was made, for ordering (newest first)."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        if obs.get(key):
            return str(obs[key])
    for key in ("effectivePeriod", "effectiveTiming"):
        v = obs.get(key) or {}
        if v.get("start") or v.get("end"):
            return str(v.get("start") or v.get("end"))
    return str(obs.get("issued") or (obs.get("meta") or {}).get("lastUpdated") or "")


def group_key(obs: dict) -> tuple:
    """Observations are grouped by their code: its first coding, or its text."""
    code = obs.get("code") or {}
    for c in code.get("coding") or []:
        if c.get("code"):
            return (c.get("system") or "", c["code"])
    return ("", (code.get("text") or "").strip().lower())


def latest(observations: list[dict], per_code: int) -> list[dict]:
    """The newest `per_code` of each code, codes in order of their newest observation."""
    groups: dict[tuple, list[dict]] = {}
    for obs in sorted(observations, key=lambda o: (when(o), o.get("id", "")), reverse=True):
        group = groups.setdefault(group_key(obs), [])
        if len(group) < per_code:
            group.append(obs)
    return [o for g in groups.values() for o in g]


def handle(api, request):
    q = request.query_params
    for name in q:
        if name not in PARAMS:
            raise FHIRError.of(400, "not-supported", f"$lastn takes patient, subject, category, "
                               f"code and max, not '{name[:60]}'", name[:60])
    if q.get("patient") and q.get("subject"):
        raise FHIRError.of(400, "invalid", "give patient or subject, not both", "subject")
    name = "patient" if q.get("patient") else "subject"
    pid = patient_param(q.get(name), name)
    raw_max = q.get("max", "1")
    if not raw_max.isdigit() or not 1 <= int(raw_max) <= 1000:
        raise FHIRError.of(400, "invalid", "max must be a whole number from 1 to 1000", "max")
    cats = tokens(q.getlist("category"))
    codes = tokens(q.getlist("code"))
    access = api.gov.authenticate(request)
    view = api.gov.everything(access, pid, ALL, None, None, ["Observation"])
    chosen = []
    for s in view.matches:
        obs = s.json()
        if obs.get("resourceType") != "Observation" or obs.get("status") == "entered-in-error":
            continue
        if cats and not any(concept_matches(c, cats) for c in categories(obs)):
            continue
        if codes and not concept_matches(obs.get("code"), codes):
            continue
        chosen.append((obs, s))
    by_id = {o["id"]: s for o, s in chosen}
    result = latest([o for o, _ in chosen], int(raw_max))
    base = api.base(request)
    entries = [{"fullUrl": f"{base}/Observation/{o['id']}",
                "resource": orjson.Fragment(by_id[o["id"]].content),
                "search": {"mode": "match"}} for o in result]
    if view.withheld_notes:
        entries.append({"resource": operation_outcome(view.withheld_notes),
                        "search": {"mode": "outcome"}})
    self_url = f"{base}/Observation/$lastn?{urlencode(list(q.multi_items()))}"
    return fhir_response({"resourceType": "Bundle", "type": "searchset", "total": len(result),
                          "link": [{"relation": "self", "url": self_url}], "entry": entries})
