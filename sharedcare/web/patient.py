"""Find a patient and the single patient view.

Every read of patient data goes through Governance (`gov.search`, `gov.everything`,
`gov.check_patient`); the only other table read here is the `organisation` directory (names of
the source organisations, fetched once per request).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from urllib.parse import quote

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..fhir.categories import category_of
from ..fhir.codes import (
    DATA_CATEGORY_SYSTEM,
    NHS_NUMBER_SYSTEM,
    SENSITIVITY_SYSTEM,
    SOURCE_ORG_SYSTEM,
)
from ..fhir.outcome import FHIRError, Issue
from ..governance.policy import BREAK_GLASS_ROLES, Access
from ..governance.schema import organisation
from ..identity import nhs_number as nhs
from ..identity.matching import normalise_name, normalise_postcode
from ..identity.nicknames import canonical
from .core import CLINICAL_ROLES, page, render

# gov.everything page; the view pages through all of them in one request. Large enough that a
# record of Synthea depth with thousands of results is one governed query and one audit event.
PAGE_SIZE = 5000
MIN_REASON = 10

# ----------------------------------------------------------------------------- small helpers


def org_names(sc) -> dict[str, str]:
    """ODS code -> organisation name: directory data, one query per request."""
    with sc.store.reads.connect() as conn:
        return {o: n for o, n in conn.execute(select(organisation.c.ods, organisation.c.name))}


def format_nhs(number: str | None) -> str:
    d = nhs.normalise(number) if number else None
    return f"{d[:3]} {d[3:6]} {d[6:]}" if d else (number or "")


def today() -> date:
    return datetime.now(UTC).date()


def parse_when(value: str | None) -> datetime | None:
    if not value:
        return None
    v = value.strip()
    try:
        if len(v) == 4:
            return datetime(int(v), 1, 1, tzinfo=UTC)
        if len(v) == 7:
            return datetime(int(v[:4]), int(v[5:7]), 1, tzinfo=UTC)
        if len(v) == 10:
            return datetime.fromisoformat(v).replace(tzinfo=UTC)
        dt = datetime.fromisoformat(v)
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    except ValueError:
        return None


def ago(value: str | None, now: datetime | None = None) -> str:
    """'today', 'yesterday', '3 days ago', '2 months ago', '4 years ago' (or 'in 3 days')."""
    when = parse_when(value)
    if when is None:
        return ""
    now = now or datetime.now(UTC)
    days = (now.date() - when.date()).days
    future = days < 0
    days = abs(days)
    if days == 0:
        return "today"
    if days == 1:
        return "tomorrow" if future else "yesterday"
    if days < 14:
        n, unit = days, "day"
    elif days < 61:
        n, unit = days // 7, "week"
    elif days < 730:
        n, unit = days // 30, "month"
    else:
        n, unit = days // 365, "year"
    text = f"{n} {unit}{'s' if n != 1 else ''}"
    return f"in {text}" if future else f"{text} ago"


def nice_date(value: str | None) -> str:
    when = parse_when(value)
    if when is None:
        return value or ""
    if value and len(value.strip()) == 4:
        return value.strip()
    if value and len(value.strip()) == 7:
        return when.strftime("%B %Y")
    return f"{when.day} {when.strftime('%B %Y')}"


def age_of(birth: str | None) -> int | None:
    b = parse_when(birth)
    if b is None:
        return None
    t = today()
    return t.year - b.year - ((t.month, t.day) < (b.month, b.day))


def cc_text(cc: dict | None) -> str:
    """Text of a CodeableConcept."""
    if not cc:
        return ""
    if cc.get("text"):
        return cc["text"]
    for c in cc.get("coding") or []:
        if c.get("display") or c.get("code"):
            return c.get("display") or c.get("code")
    return ""


def cc_code(cc: dict | None, system: str | None = None) -> str | None:
    for c in (cc or {}).get("coding") or []:
        if system is None or c.get("system") == system:
            return c.get("code")
    return None


def first_cc(items) -> str:
    for cc in items or []:
        t = cc_text(cc)
        if t:
            return t
    return ""


def human_name(res: dict) -> str:
    for n in res.get("name") or []:
        if n.get("use") in (None, "official", "usual"):
            given = " ".join(n.get("given") or [])
            return " ".join(x for x in (given, (n.get("family") or "").upper()) if x) or n.get(
                "text", "")
    return ""


def nhs_number_of(res: dict) -> str | None:
    for i in res.get("identifier") or []:
        if i.get("system") == NHS_NUMBER_SYSTEM:
            return i.get("value")
    return None


def address_of(res: dict) -> tuple[str, str]:
    for a in res.get("address") or []:
        if a.get("use") in (None, "home"):
            parts = [*(a.get("line") or []), a.get("city"), a.get("postalCode")]
            return ", ".join(p for p in parts if p), a.get("postalCode") or ""
    return "", ""


def tag(res: dict, system: str) -> str | None:
    for t in (res.get("meta") or {}).get("tag") or []:
        if t.get("system") == system:
            return t.get("code")
    return None


def sensitivity(res: dict) -> list[str]:
    return [s.get("code") for s in (res.get("meta") or {}).get("security") or []
            if s.get("system") == SENSITIVITY_SYSTEM]


def quantity(q: dict | None) -> tuple[float | None, str]:
    if not q or q.get("value") is None:
        return None, ""
    return float(q["value"]), q.get("unit") or q.get("code") or ""


def ref_display(ref: dict | None) -> str:
    return (ref or {}).get("display") or ""


# ----------------------------------------------------------------------------- items


@dataclass
class Item:
    """One resource as the page shows it: what, when, from whom."""

    type: str
    id: str
    res: dict
    title: str
    when: str | None
    source: str | None
    source_name: str
    category: str
    labels: list[str] = field(default_factory=list)
    detail: str = ""
    status: str = ""

    @property
    def ref(self) -> str:
        return f"{self.type}/{self.id}"

    # Each is asked for several times per item (sorting, sections, the template) and a record
    # holds thousands of items: worked out once per item, within the request that made it.
    @cached_property
    def ago(self) -> str:
        return ago(self.when)

    @cached_property
    def date(self) -> str:
        return nice_date(self.when)

    @cached_property
    def sort_key(self) -> str:
        w = parse_when(self.when)
        return w.isoformat() if w else ""


def _period(res: dict, key: str) -> str | None:
    return (res.get(key) or {}).get("start")


def _document_dates(res: dict) -> list:
    return [res.get("date"), *[(c.get("attachment") or {}).get("creation")
                               for c in res.get("content") or []]]


# Where each type keeps the date the page shows, first found wins (looked up per type, so an
# item costs only its own type's candidates).
_WHEN = {
    "Encounter": lambda r: [_period(r, "period")],
    "Observation": lambda r: [r.get("effectiveDateTime"), _period(r, "effectivePeriod"),
                              r.get("issued")],
    "DiagnosticReport": lambda r: [r.get("effectiveDateTime"), _period(r, "effectivePeriod"),
                                   r.get("issued")],
    "Condition": lambda r: [r.get("onsetDateTime"), r.get("recordedDate")],
    "MedicationRequest": lambda r: [r.get("authoredOn")],
    "MedicationStatement": lambda r: [r.get("effectiveDateTime"), _period(r, "effectivePeriod"),
                                      r.get("dateAsserted")],
    "AllergyIntolerance": lambda r: [r.get("recordedDate"), r.get("onsetDateTime")],
    "CarePlan": lambda r: [r.get("created"), _period(r, "period")],
    "CareTeam": lambda r: [_period(r, "period")],
    "EpisodeOfCare": lambda r: [_period(r, "period")],
    "DocumentReference": _document_dates,
    "QuestionnaireResponse": lambda r: [r.get("authored")],
    "ServiceRequest": lambda r: [r.get("authoredOn"), _period(r, "occurrencePeriod")],
    "Flag": lambda r: [_period(r, "period")],
    "Procedure": lambda r: [r.get("performedDateTime"), _period(r, "performedPeriod")],
    "Immunization": lambda r: [r.get("occurrenceDateTime")],
}


def _when(res: dict, last_updated: str | None) -> str | None:
    candidates = _WHEN.get(res.get("resourceType"))
    for c in candidates(res) if candidates else ():
        if c:
            return c
    lu = (res.get("meta") or {}).get("lastUpdated") or last_updated
    return lu


def _title(res: dict) -> tuple[str, str, str]:
    """(title, detail, status) for any resource."""
    t = res.get("resourceType")
    if t == "Patient":
        return human_name(res), "", ""
    if t == "Condition":
        return (cc_text(res.get("code")), first_cc(res.get("category")),
                cc_code(res.get("clinicalStatus")) or "")
    if t == "AllergyIntolerance":
        reactions = ", ".join(cc_text(m) for r in res.get("reaction") or []
                              for m in r.get("manifestation") or [])
        crit = res.get("criticality")
        detail = "; ".join(x for x in (reactions, f"criticality {crit}" if crit else "") if x)
        return cc_text(res.get("code")), detail, cc_code(res.get("clinicalStatus")) or ""
    if t in ("MedicationRequest", "MedicationStatement"):
        med = cc_text(res.get("medicationCodeableConcept")) or ref_display(
            res.get("medicationReference"))
        dose = "; ".join(d.get("text") for d in (res.get("dosageInstruction") or res.get("dosage")
                                                 or []) if d.get("text"))
        return med, dose, res.get("status") or ""
    if t == "Encounter":
        cls = (res.get("class") or {}).get("display") or (res.get("class") or {}).get("code", "")
        what = first_cc(res.get("type")) or cls
        reason = first_cc(res.get("reasonCode"))
        where = ref_display(res.get("serviceProvider"))
        return what, "; ".join(x for x in (cls if what != cls else "", reason, where) if x), \
            res.get("status") or ""
    if t == "Observation":
        return cc_text(res.get("code")), _obs_value(res), res.get("status") or ""
    if t == "DiagnosticReport":
        return cc_text(res.get("code")), res.get("conclusion") or "", res.get("status") or ""
    if t == "CarePlan":
        return (res.get("title") or first_cc(res.get("category")) or "Care plan",
                res.get("description") or "", res.get("status") or "")
    if t == "CareTeam":
        return res.get("name") or "Care team", "", res.get("status") or ""
    if t == "EpisodeOfCare":
        return (first_cc(res.get("type")) or "Episode of care",
                ref_display(res.get("managingOrganization")), res.get("status") or "")
    if t == "DocumentReference":
        return (res.get("description") or cc_text(res.get("type")) or "Document",
                cc_text(res.get("type")), res.get("docStatus") or res.get("status") or "")
    if t == "QuestionnaireResponse":
        first = next((a for i in res.get("item") or [] for a in i.get("answer") or []), {})
        title = first.get("valueString") or "Assessment"
        return title, "", res.get("status") or ""
    if t == "ServiceRequest":
        return (cc_text(res.get("code")) or "Request", res.get("patientInstruction") or "",
                res.get("status") or "")
    if t == "Flag":
        return cc_text(res.get("code")), first_cc(res.get("category")), res.get("status") or ""
    if t == "Procedure":
        return cc_text(res.get("code")), "", res.get("status") or ""
    if t == "Immunization":
        return cc_text(res.get("vaccineCode")), "", res.get("status") or ""
    text = (res.get("text") or {}).get("div") or ""
    return res.get("title") or cc_text(res.get("code")) or t, re.sub("<[^>]+>", "", text)[:200], \
        res.get("status") or ""


def _obs_value(res: dict) -> str:
    if res.get("valueQuantity"):
        v, u = quantity(res["valueQuantity"])
        return f"{_num(v)} {u}".strip()
    if res.get("valueString"):
        return res["valueString"]
    if res.get("valueCodeableConcept"):
        return cc_text(res["valueCodeableConcept"])
    parts = []
    for c in res.get("component") or []:
        v, u = quantity(c.get("valueQuantity"))
        if v is not None:
            parts.append((cc_code(c.get("code")), _num(v), u))
    codes = {c: v for c, v, _ in parts}
    if "8480-6" in codes and "8462-4" in codes:
        return f"{codes['8480-6']}/{codes['8462-4']} mmHg"
    return ", ".join(f"{v} {u}".strip() for _, v, u in parts)


def _num(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


# Types whose whole resource the page reads after the item is made (sections, the banner, care
# plans, documents, assessments, contacts); an Observation keeps what the trend charts read.
# Every other item keeps only its type: a Synthea-depth record is thousands of parsed JSON
# trees (claims and explanations of benefit are the largest), and keeping them all alive to
# the end of the request made the interpreter's full garbage collections -- 100-250 ms pauses
# -- land on about one view in ten.
KEEP_WHOLE = frozenset({"Patient", "CarePlan", "DocumentReference", "QuestionnaireResponse",
                        "CareTeam", "EpisodeOfCare", "MedicationRequest", "MedicationStatement",
                        "Condition", "AllergyIntolerance", "Flag"})
KEEP_OBSERVATION = ("resourceType", "code", "valueQuantity", "component")


def make_item(stored, names: dict[str, str]) -> Item:
    res = stored.json()
    src = tag(res, SOURCE_ORG_SYSTEM)
    title, detail, status = _title(res)
    item = Item(type=stored.type, id=stored.id, res=res, title=title or stored.type,
                when=_when(res, stored.last_updated), source=src,
                source_name=names.get(src or "", src or "unknown source"),
                category=category_of(stored.type, tag(res, DATA_CATEGORY_SYSTEM)),
                labels=sensitivity(res), detail=detail, status=status)
    if stored.type == "Observation":
        item.res = {k: res[k] for k in KEEP_OBSERVATION if k in res}
    elif stored.type not in KEEP_WHOLE:
        item.res = {"resourceType": stored.type}
    return item


# ----------------------------------------------------------------------------- results / trends

TRENDS = [  # (LOINC codes, short name, unit hint)
    (("59261-8", "4548-4"), "HbA1c"),
    (("62238-1", "33914-3", "98979-8", "69405-9"), "eGFR"),
    (("85354-9", "55284-4"), "Blood pressure"),
    (("29463-7",), "Weight"),
    (("2093-3", "14647-2"), "Total cholesterol"),
    (("2160-0", "14682-9"), "Creatinine"),
]


def trend_charts(observations: list[Item], limit: int = 4) -> list[dict]:
    """Line charts (SVG + accessible table) for the tests with at least two numeric values."""
    from ..programme.charts import as_table, line_chart

    groups: dict[str, dict] = {}
    for it in sorted(observations, key=lambda i: i.sort_key):
        res = it.res
        code = cc_code(res.get("code"), "http://loinc.org") or cc_code(res.get("code"))
        name = next((n for codes, n in TRENDS if code in codes), None)
        if name is None:
            continue
        label = it.sort_key[:10] or it.when or ""
        g = groups.setdefault(name, {"series": {}, "unit": "", "order": next(
            i for i, (codes, n) in enumerate(TRENDS) if n == name)})
        if name == "Blood pressure":
            for comp in res.get("component") or []:
                c = cc_code(comp.get("code"))
                v, u = quantity(comp.get("valueQuantity"))
                if v is None:
                    continue
                s = {"8480-6": "Systolic", "8462-4": "Diastolic"}.get(c)
                if s:
                    g["series"].setdefault(s, []).append((label, v))
                    g["unit"] = u or "mmHg"
        else:
            v, u = quantity(res.get("valueQuantity"))
            if v is not None:
                g["series"].setdefault(name, []).append((label, v))
                g["unit"] = g["unit"] or u
    out = []
    for name, g in sorted(groups.items(), key=lambda kv: kv[1]["order"]):
        series = {k: v for k, v in g["series"].items() if len(v) >= 2}
        if not series:
            continue
        unit = g["unit"]
        values = [v for pts in series.values() for _, v in pts]
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.15 or 1
        svg = line_chart(series, title=f"{name} over time", y_label=unit or name,
                         width=600, height=260, y_min=max(0.0, lo - pad), y_max=hi + pad,
                         id_prefix=f"trend-{len(out)}")
        table = as_table(series, caption=f"{name} values ({unit})", x_label="Date",
                         visually_hidden=False)
        latest = max((pts[-1] for pts in series.values()), key=lambda p: p[0])
        out.append({"name": name, "svg": svg, "table": table, "unit": unit,
                    "count": max(len(p) for p in series.values()), "latest": latest})
        if len(out) >= limit:
            break
    return out


# ----------------------------------------------------------------------------- the record


def document_text(res: dict) -> str | None:
    """The text of a DocumentReference's plain-text attachment, if it has one."""
    for c in res.get("content") or []:
        a = c.get("attachment") or {}
        ctype = (a.get("contentType") or "").lower()
        if a.get("data") and (ctype.startswith("text/plain") or not ctype):
            try:
                return base64.b64decode(a["data"]).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                return None
    return None


CRISIS_WORDS = ("crisis",)
EOL_WORDS = ("end of life", "end-of-life", "respect", "advance care", "palliative")


def plan_kind(res: dict) -> str:
    from .careplans import KIND_SYSTEM

    for cc in res.get("category") or []:
        code = cc_code(cc, KIND_SYSTEM)
        if code:
            return code
    text = " ".join([res.get("title") or "", *[cc_text(c) for c in res.get("category") or []]]
                    ).lower()
    if any(w in text for w in CRISIS_WORDS):
        return "crisis"
    if any(w in text for w in EOL_WORDS):
        return "end-of-life"
    return "other"


@dataclass
class Record:
    patient: Item | None
    items: list[Item]
    withheld: int
    sections: dict[str, list[Item]]
    trends: list[dict]
    timeline: list[Item]
    contacts: list[dict]
    latest: list[dict] = field(default_factory=list)
    # The person's other partners' Patient records (identity joined them): their identifiers.
    joined: list[Item] = field(default_factory=list)
    # The banner: the person's best current demographics across every partner's record.
    person: Person | None = None


def _older_than(it: Item, days: int) -> bool:
    w = parse_when(it.when)
    return w is not None and (datetime.now(UTC) - w).days > days


def latest_results(observations: list[Item]) -> list[dict]:
    """One row per test: the latest value, the one before, how many."""
    groups: dict[str, list[Item]] = {}
    for it in sorted(observations, key=lambda i: i.sort_key, reverse=True):
        groups.setdefault(it.title, []).append(it)
    return [{"latest": g[0], "previous": g[1] if len(g) > 1 else None, "count": len(g)}
            for g in groups.values()]


def build_record(view_matches, names: dict[str, str], patient_id: str | None = None) -> Record:
    items = [make_item(s, names) for s in view_matches]
    patients = [i for i in items if i.type == "Patient"]
    patient = next((i for i in patients if i.id == patient_id), patients[0] if patients else None)
    joined = [i for i in patients if i is not patient]
    for it in joined:
        it.detail = "; ".join(
            f"{(ident.get('type') or {}).get('text') or 'NHS number'} {ident.get('value')}"
            for ident in it.res.get("identifier") or [] if ident.get("value"))
    sec: dict[str, list[Item]] = {k: [] for k in (
        "flags", "allergies", "medications", "past_medications", "problems", "past_problems",
        "care_plans", "care_team", "encounters", "observations", "reports", "documents",
        "social_care", "other")}
    for it in items:
        t, r = it.type, it.res
        if t == "Patient":
            continue
        if it.category == "social-care" and t not in ("CarePlan", "CareTeam", "Flag",
                                                      "DocumentReference", "Encounter"):
            sec["social_care"].append(it)
        elif t == "Flag":
            sec["flags"].append(it)
        elif t == "AllergyIntolerance":
            sec["allergies"].append(it)
        elif t in ("MedicationRequest", "MedicationStatement"):
            active = (r.get("status") or "active") in ("active", "on-hold", "intended")
            # a medication statement (e.g. discharge medicines) is a snapshot: current for a year
            if t == "MedicationStatement" and _older_than(it, 365):
                active = False
            sec["medications" if active else "past_medications"].append(it)
        elif t == "Condition":
            status = cc_code(r.get("clinicalStatus")) or "active"
            active = status in ("active", "recurrence", "relapse")
            # an encounter's diagnosis is current for that episode, not a lifelong problem
            if "encounter-diagnosis" in {cc_code(c) for c in r.get("category") or []} and \
                    _older_than(it, 365):
                active = False
            sec["problems" if active else "past_problems"].append(it)
        elif t == "CarePlan":
            sec["care_plans"].append(it)
        elif t in ("CareTeam", "EpisodeOfCare"):
            sec["care_team"].append(it)
        elif t == "Encounter":
            sec["encounters"].append(it)
        elif t == "Observation":
            sec["observations"].append(it)
        elif t == "DiagnosticReport":
            sec["reports"].append(it)
        elif t == "DocumentReference":
            it.detail = it.detail if it.detail != it.title else ""
            sec["documents"].append(it)
        else:
            sec["other"].append(it)
    for lst in sec.values():
        lst.sort(key=lambda i: i.sort_key, reverse=True)
    # care plans: crisis and end-of-life first
    order = {"crisis": 0, "end-of-life": 1}
    sec["care_plans"].sort(key=lambda i: order.get(plan_kind(i.res), 2))
    timeline = sorted([*sec["encounters"], *sec["documents"], *sec["care_plans"],
                       *sec["social_care"], *sec["reports"]],
                      key=lambda i: i.sort_key, reverse=True)
    contacts = []
    for it in sec["care_team"]:
        r = it.res
        if it.type == "CareTeam":
            for p in r.get("participant") or []:
                contacts.append({"name": ref_display(p.get("member")),
                                 "role": first_cc(p.get("role")),
                                 "org": ref_display(p.get("onBehalfOf")) or it.source_name,
                                 "item": it})
        else:
            contacts.append({"name": ref_display(r.get("careManager")) or "",
                             "role": (first_cc(r.get("type")) or "Episode of care")
                             + (" (care manager)" if r.get("careManager") else ""),
                             "org": ref_display(r.get("managingOrganization")) or it.source_name,
                             "item": it})
    record = Record(patient, items, 0, sec, trend_charts(sec["observations"]), timeline, contacts)
    record.latest = latest_results(sec["observations"])
    record.joined = sorted(joined, key=lambda i: i.source_name)
    record.person = merge_person(patients, patient_id)
    return record


def fetch_everything(gov, access: Access, patient_id: str):
    """Every page of the governed record, in one request (no cap)."""
    view = gov.everything(access, patient_id, PAGE_SIZE)
    matches = list(view.matches)
    cursor = view.next_cursor
    while cursor:
        more = gov.everything(access, patient_id, PAGE_SIZE, cursor)
        matches.extend(more.matches)
        cursor = more.next_cursor
    return view, matches


def patient_summary(item: Item | None, names: dict[str, str]) -> dict:
    if item is None:
        return {}
    r = item.res
    address, postcode = address_of(r)
    gp = ", ".join(ref_display(g) for g in r.get("generalPractitioner") or [] if ref_display(g))
    phones = [t.get("value") for t in r.get("telecom") or [] if t.get("system") == "phone"]
    return {"name": human_name(r), "nhs": format_nhs(nhs_number_of(r)),
            "birth": nice_date(r.get("birthDate")), "age": age_of(r.get("birthDate")),
            "gender": (r.get("gender") or "").capitalize(), "address": address,
            "postcode": postcode, "gp": gp, "phone": ", ".join(p for p in phones if p),
            "deceased": r.get("deceasedBoolean") or bool(r.get("deceasedDateTime"))}


# ----------------------------------------------------------------------------- the person

# The person's banner is built from every partner's Patient record that the governed
# `$everything` returned (never from the store): for each fact, the value of the most recently
# updated record that has one (on a tie: the value most records agree on, then the GP's
# registration record, then the record opened); disagreements on the facts a clinician acts on
# are flagged with the organisations that hold each value, never silently picked.

IDENTIFIER_TYPES = {  # HL7 v2 table 0203 codes a partner may send without a display
    "MR": "Medical record number", "PI": "Patient identifier", "PT": "Patient identifier",
    "NH": "NHS number", "NHS": "NHS number", "AN": "Account number", "VN": "Visit number",
    "HC": "Health card number", "SS": "Social security number",
}
LOCAL_KINDS = {  # the last part of a partner's local identifier system
    "mrn": "Record number", "social-care-id": "Social care person ID",
    "resident-id": "Care home resident number", "epcr": "Ambulance patient record",
}
ADDRESS_WORDS = {"rd": "road", "st": "street", "ave": "avenue", "av": "avenue", "ln": "lane",
                 "dr": "drive", "cl": "close", "ct": "court", "cres": "crescent", "pl": "place",
                 "gdns": "gardens", "sq": "square", "tce": "terrace", "gr": "grove"}


def identifier_label(ident: dict) -> str:
    """What a person calls this identifier ('Hospital number'), never a raw code or URL."""
    if ident.get("system") == NHS_NUMBER_SYSTEM:
        return "NHS number"
    typ = ident.get("type") or {}
    if typ.get("text"):
        return typ["text"]
    for c in typ.get("coding") or []:
        if c.get("display"):
            return c["display"]
        if (c.get("code") or "").upper() in IDENTIFIER_TYPES:
            return IDENTIFIER_TYPES[c["code"].upper()]
    kind = (ident.get("system") or "").rstrip("/").rsplit("/", 1)[-1]
    return LOCAL_KINDS.get(kind, "Record number")


def _official_name(res: dict) -> dict:
    names = [n for n in res.get("name") or [] if not (n.get("period") or {}).get("end")]
    for use in ("official", "usual", None):
        for n in names:
            if use is None or n.get("use") == use:
                return n
    return {}


def _given(res: dict) -> str:
    return ((_official_name(res).get("given") or [""])[0] or "").strip()


def _address(res: dict) -> dict:
    current = [a for a in res.get("address") or []
               if a.get("use") != "old" and not (a.get("period") or {}).get("end")]
    for use in ("home", None):
        for a in current:
            if (use is None or a.get("use") == use) and (a.get("line") or a.get("postalCode")):
                return a
    return {}


def _first_line_key(line: str) -> str:
    words = re.sub(r"[^a-z0-9 ]", " ", line.lower()).split()
    return " ".join(ADDRESS_WORDS.get(w, w) for w in words)


def _gp(res: dict) -> tuple[str, str] | None:
    refs = [g for g in res.get("generalPractitioner") or [] if g.get("reference") or
            ref_display(g)]
    if not refs:
        return None
    key = "|".join(sorted((g.get("reference") or "").strip() or
                          (normalise_name(ref_display(g)) or "") for g in refs))
    return key, ", ".join(ref_display(g) for g in refs if ref_display(g)) or "Not named"


def _fact(name: str, res: dict) -> tuple[str, str] | None:
    """(comparison key, what the banner shows) of one fact of one Patient, or None if absent."""
    if name == "name":
        n = _official_name(res)
        if not (n.get("family") or n.get("given") or n.get("text")):
            return None
        given = normalise_name(_given(res)) or ""
        key = f"{canonical(given.split(' ')[0]) if given else ''}|{normalise_name(n.get('family'))}"
        return key, human_name(res) or n.get("text") or ""
    if name == "birth":
        b = (res.get("birthDate") or "").strip()
        return (b, nice_date(b)) if b else None
    if name == "gender":
        g = (res.get("gender") or "").lower()
        return (g, g.capitalize()) if g and g != "unknown" else None
    if name == "address":
        a = _address(res)
        if not a:
            return None
        postcode = normalise_postcode(a.get("postalCode")) or ""
        first = _first_line_key((a.get("line") or [""])[0] or "")
        parts = [*(a.get("line") or []), a.get("city"), a.get("postalCode")]
        return f"{postcode}|{first}", ", ".join(p for p in parts if p)
    if name == "gp":
        return _gp(res)
    if name == "phone":
        phones = [t.get("value") for t in res.get("telecom") or []
                  if t.get("system") == "phone" and t.get("value")
                  and not (t.get("period") or {}).get("end")]
        return (re.sub(r"\D", "", phones[0]), ", ".join(phones)) if phones else None
    if name == "nhs":
        number = nhs_number_of(res)
        d = nhs.normalise(number) if number else None
        return (d, format_nhs(d)) if d else None
    raise ValueError(name)


FACTS = ("name", "nhs", "birth", "gender", "address", "gp", "phone")
# the facts whose disagreement a clinician must see, as the warning names them
FLAGGED = {"nhs": "NHS number", "birth": "date of birth", "gender": "gender",
           "address": "address", "gp": "registered GP practice"}
FACT_LABELS = {"name": "name", "nhs": "NHS number", "birth": "date of birth",
               "gender": "gender", "address": "address", "gp": "GP practice", "phone": "phone"}


def _updated(it: Item) -> datetime:
    return parse_when(it.when) or datetime.min.replace(tzinfo=UTC)


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


@dataclass
class Disagreement:
    """Partners' records hold different values of one fact: each value with who holds it."""

    fact: str  # as the warning names it: "date of birth"
    values: list[tuple[str, list[str]]]  # (value, organisation names), the banner's value first

    @property
    def label(self) -> str:
        return self.fact[0].upper() + self.fact[1:]

    @property
    def text(self) -> str:
        sep = "; " if any("," in v for v, _ in self.values) else ", "
        return sep.join(f"{_and(orgs)} {'says' if len(orgs) == 1 else 'say'} {v}"
                        for v, orgs in self.values)


@dataclass
class PartnerRecord:
    """One partner's own Patient record of the person, as the 'Records of this person' list
    shows it."""

    item: Item
    identifiers: list[tuple[str, str]]  # (label, value), NHS number first
    notes: list[str]
    opened: bool = False


@dataclass
class Person:
    """The banner: the person's best current demographics across the partners' records."""

    values: dict[str, str]  # fact -> what the banner shows
    sources: dict[str, Item]  # fact -> the record it came from
    records: list[PartnerRecord]
    disagreements: list[Disagreement]
    deceased: bool = False
    birth_date: str | None = None

    @property
    def age(self) -> int | None:
        return age_of(self.birth_date)

    @property
    def disputed(self) -> set[str]:
        back = {v: k for k, v in FLAGGED.items()}
        return {back[d.fact] for d in self.disagreements}

    def source_lines(self) -> list[str]:
        """'Name, date of birth and address from Brookside Medical Centre, updated today'."""
        by: dict[str, list[str]] = {}
        order: list[Item] = []
        for fact in FACTS:
            it = self.sources.get(fact)
            if it is None:
                continue
            if it.ref not in by:
                order.append(it)
            by.setdefault(it.ref, []).append(FACT_LABELS[fact])
        out = []
        for it in order:
            facts = _and(by[it.ref])
            when = f", updated {it.ago}" if it.ago else ""
            out.append(f"{facts[0].upper()}{facts[1:]} from {it.source_name}{when}")
        return out


def merge_person(patients: list[Item], opened_id: str | None = None) -> Person:
    """The person's banner from their partners' Patient records (already governed: only what
    the viewer may see). Newest record wins each fact; disagreements on NHS number, date of
    birth, gender, address and registered GP are found and named; a nickname is not one."""
    values: dict[str, str] = {}
    sources: dict[str, Item] = {}
    disagreements: list[Disagreement] = []
    facts = {f: [(it, _fact(f, it.res)) for it in patients] for f in FACTS}
    for f in FACTS:
        have = [(it, kv) for it, kv in facts[f] if kv is not None]
        if not have:
            continue
        count: dict[str, int] = {}
        for _, (k, _v) in have:
            count[k] = count.get(k, 0) + 1

        ranked = sorted(have, key=lambda p: (p[0].source_name, p[0].id))
        ranked.sort(key=lambda p, count=count: (
            _updated(p[0]), count[p[1][0]], bool(p[0].res.get("generalPractitioner")),
            p[0].id == opened_id), reverse=True)
        best_it, (best_k, best_v) = ranked[0]
        if f == "name":  # a nickname never replaces the full given name another record has
            given = normalise_name(_given(best_it.res)) or ""
            full = next((p for p in ranked if normalise_name(_given(p[0].res)) and
                         normalise_name(_given(p[0].res)) != given and
                         p[1][0] == best_k and
                         normalise_name(_given(p[0].res)) == canonical(given)), None)
            if full is not None:
                best_it, (best_k, best_v) = full
        values[f], sources[f] = best_v, best_it
        if f in FLAGGED and len(count) > 1:
            groups: dict[str, tuple[str, list[str]]] = {best_k: (best_v, [])}
            for it, (k, v) in ranked:
                orgs = groups.setdefault(k, (v, []))[1]
                if it.source_name not in orgs:
                    orgs.append(it.source_name)
            disagreements.append(Disagreement(FLAGGED[f], list(groups.values())))
    records = []
    best_given = normalise_name(_given(sources["name"].res)) if "name" in sources else None
    best_address = _fact("address", sources["address"].res)[0] if "address" in sources else None
    for it in patients:
        ids = [(identifier_label(i), format_nhs(i.get("value"))
                if i.get("system") == NHS_NUMBER_SYSTEM else i.get("value"))
               for i in it.res.get("identifier") or [] if i.get("value")]
        ids.sort(key=lambda lv: lv[0] != "NHS number")
        notes = []
        if not any(label == "NHS number" for label, _ in ids):
            notes.append("No NHS number on this record")
        given = normalise_name(_given(it.res))
        if given and best_given and given != best_given:
            if canonical(given) == canonical(best_given):
                notes.append(f"Known as {_given(it.res)}")
            else:
                notes.append(f"Name recorded as {human_name(it.res)}")
        addr = _fact("address", it.res)
        if addr and best_address and addr[0] != best_address:
            notes.append(f"Address recorded as {addr[1]}")
        records.append(PartnerRecord(it, ids, notes, it.id == opened_id))
    records.sort(key=lambda r: (not r.opened, r.item.source_name))
    deceased = any(p.res.get("deceasedBoolean") or p.res.get("deceasedDateTime")
                   for p in patients)
    birth = sources["birth"].res.get("birthDate") if "birth" in sources else None
    return Person(values, sources, records, disagreements, bool(deceased), birth)


# ----------------------------------------------------------------------------- locating


def locate_patient(gov, access: Access, number: str) -> str | None:
    """The id of the patient with this NHS number, for the declare / break-glass paths when the
    viewer may not (yet) see them. Needs Governance.locate_patient (audited, returns only an
    id); without it the paths are offered from the patient view's refusal page instead."""
    fn = getattr(gov, "locate_patient", None)
    if fn is None:
        return None
    return fn(access, number)


# ----------------------------------------------------------------------------- pages


def _search_params(form) -> tuple[dict, dict, list | None]:
    """Validate the search form -> (values, errors, FHIR params)."""
    values = {k: (form.get(k) or "").strip() for k in (
        "nhs", "family", "dob-day", "dob-month", "dob-year", "by")}
    errors: dict[str, str] = {}
    by = values["by"] or ("nhs" if values["nhs"] else "name")
    values["by"] = by
    if by == "nhs":
        if not values["nhs"]:
            errors["nhs"] = "Enter an NHS number"
        elif nhs.normalise(values["nhs"]) is None:
            errors["nhs"] = "NHS number must be 10 digits, like 943 476 5919"
        elif not nhs.is_valid(values["nhs"]):
            errors["nhs"] = ("This is not a valid NHS number: its check digit is wrong. "
                             "Check each digit and try again")
        if errors:
            return values, errors, None
        n = nhs.normalise(values["nhs"])
        values["nhs_digits"] = n
        return values, errors, [("identifier", f"{NHS_NUMBER_SYSTEM}|{n}")]
    if not values["family"]:
        errors["family"] = "Enter the patient's last name"
    elif not re.fullmatch(r"[A-Za-zÀ-ÿ' \-]{1,60}", values["family"]):
        errors["family"] = "Last name must only include letters, spaces, hyphens and apostrophes"
    d, m, y = values["dob-day"], values["dob-month"], values["dob-year"]
    birth = None
    if not (d and m and y):
        errors["dob"] = "Enter the patient's date of birth, including a day, month and year"
    else:
        try:
            birth = date(int(y), int(m), int(d))
            if birth > today() or birth.year < 1880:
                errors["dob"] = "Date of birth must be a real date in the past"
        except ValueError:
            errors["dob"] = "Date of birth must be a real date, like 17 8 1947"
    if errors:
        return values, errors, None
    return values, errors, [("family", values["family"]), ("birthdate", birth.isoformat())]


@page(*CLINICAL_ROLES)
def find_patient(request: Request, access: Access, form=None) -> Response:
    sc = request.app.state.sc
    if form is None:
        return render(request, "patient_search.html", title="Find a patient", values={"by": "nhs"},
                      errors={}, results=None)
    values, errors, params = _search_params(form)
    if errors:
        return render(request, "patient_search.html", 400, title="Error: Find a patient",
                      values=values, errors=errors, results=None)
    page_ = sc.governance.search(access, "Patient", params + [("_count", "50")])
    names = org_names(sc)
    results = []
    # One row per person: partners' records that identity joined are one person, shown by
    # the registration (the GP's record) when it is among them, with the sources joined.
    from sqlalchemy import select as _select

    from ..store.schema import person_link
    ids = [s.id for s in page_.matches]
    with sc.engine.connect() as conn:
        keys = dict(conn.execute(_select(person_link.c.patient_id, person_link.c.person_key)
                                 .where(person_link.c.patient_id.in_(ids))).all()) if ids else {}
    people: dict[str, list] = {}
    for s in page_.matches:
        people.setdefault(keys.get(s.id, s.id), []).append(s)
    for members in people.values():
        main = next((s for s in members if s.json().get("generalPractitioner")), members[0])
        it = make_item(main, names)
        summ = patient_summary(it, names)
        sources = sorted({make_item(s, names).source_name for s in members})
        results.append({"id": main.id, "item": it, **summ, "sources": sources})
    located = None
    if not results and values["by"] == "nhs":
        located = locate_patient(sc.governance, access, values["nhs_digits"])
    return render(request, "patient_search.html", title="Find a patient", values=values,
                  errors={}, results=results, located=located,
                  may_break_glass=access.role in BREAK_GLASS_ROLES, min_reason=MIN_REASON)


def _denied(request: Request, access: Access, patient_id: str, e: FHIRError, **extra
            ) -> Response:
    reasons = [i.diagnostics for i in e.issues[1:]] or [i.diagnostics for i in e.issues]
    return render(request, "patient_denied.html", e.status, access=access,
                  title="You cannot see this record yet", patient_id=patient_id,
                  message=e.issues[0].diagnostics if e.issues else str(e), reasons=reasons,
                  may_break_glass=access.role in BREAK_GLASS_ROLES, min_reason=MIN_REASON,
                  **extra)


@page(*CLINICAL_ROLES)
def patient_view(request: Request, access: Access) -> Response:
    sc = request.app.state.sc
    gov = sc.governance
    pid = request.path_params["patient_id"]
    try:
        view, matches = fetch_everything(gov, access, pid)
    except FHIRError as e:
        if e.status == 403:
            return _denied(request, access, pid, e)
        if e.status == 404:
            decision = gov.decide(access, "Patient", pid)
            if decision.permitted or decision.reasons[0].endswith("is not known"):
                return render(request, "error.html", 404, title="Patient not found",
                              message="There is no patient record at this address. Find the "
                                      "patient by NHS number instead.")
            # the patient exists, but nothing about them is shared with this organisation
            return _denied(request, access, pid, FHIRError(403, [
                Issue("forbidden", "no information about this patient is shared with your "
                      "organisation"), *[Issue("forbidden", r) for r in decision.reasons]]))
        raise
    why, glass = view.reasons, view.glass  # the relationship check everything() made
    names = org_names(sc)
    record = build_record(matches, names, pid)
    record.withheld = view.withheld_sensitive
    person = record.person
    return render(request, "patient.html", title=person.values.get("name") or "Patient record",
                  record=record, patient_id=pid, person=person, why=why, glass=glass,
                  may_break_glass=access.role in BREAK_GLASS_ROLES and not glass,
                  may_write=access.role in ("clinician", "nurse", "allied-health",
                                            "social-worker"),
                  min_reason=MIN_REASON, document_text=document_text, plan_kind=plan_kind,
                  notice=request.query_params.get("notice"), apps=_launchable(sc))


def _launchable(sc) -> list:
    from ..governance.smart import launchable_clients

    return launchable_clients(sc.store.reads)


@page(*CLINICAL_ROLES)
def open_app(request: Request, access: Access, form) -> Response:
    """"Open in <app>": SMART EHR launch of a registered app in this patient's context, as the
    person and role of this session (governance.smart.start_launch)."""
    from ..governance.smart import get_client, start_launch

    sc = request.app.state.sc
    pid = request.path_params["patient_id"]
    client = get_client(sc.engine, request.path_params["client_id"])
    if client is None or not client.launch_url:
        return render(request, "error.html", 404, title="Application not found",
                      message="This application cannot be opened from the shared care record.")
    sc.governance.check_patient(access, pid, "launch")  # 403 page when they may not see them
    return RedirectResponse(start_launch(sc, request, access, client, pid), 303)


def _reason_error(reason: str) -> str | None:
    if len(reason) < MIN_REASON:
        return f"Enter a reason of at least {MIN_REASON} characters: the IG lead reviews it"
    return None


@page(*CLINICAL_ROLES)
def break_glass(request: Request, access: Access, form) -> Response:
    sc = request.app.state.sc
    pid = request.path_params["patient_id"]
    reason = (form.get("reason") or "").strip()
    err = _reason_error(reason)
    if err:
        try:
            sc.governance.check_patient(access, pid, "break-glass-form")
            return RedirectResponse(f"/patients/{quote(pid)}?notice=reason#break-glass", 303)
        except FHIRError as e:
            return _denied(request, access, pid, e, glass_error=err, glass_reason=reason)
    sc.governance.break_glass(access, pid, reason)
    return RedirectResponse(f"/patients/{quote(pid)}?notice=glass", 303)


@page(*CLINICAL_ROLES)
def declare(request: Request, access: Access, form) -> Response:
    sc = request.app.state.sc
    pid = request.path_params["patient_id"]
    reason = (form.get("reason") or "").strip()
    err = _reason_error(reason)
    if err:
        e = FHIRError.of(403, "forbidden", "you have no legitimate relationship with this patient")
        return _denied(request, access, pid, e, declare_error=err, declare_reason=reason)
    sc.governance.declare_relationship(access, pid, reason)
    return RedirectResponse(f"/patients/{quote(pid)}?notice=declared", 303)
