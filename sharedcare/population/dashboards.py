"""Population health dashboards for the programme, computed from a governed extract.

    panels = population_dashboard(sc, access)      # access.purpose: planning (or research)
    for p in panels:
        p.title, p.purpose, p.agreements, p.table, p.svg, p.csv

Each panel runs a governed, pseudonymised extract (``extract.run_extract``: agreements covering
the purpose, national data opt-out, objections, dates coarsened to the month) into a temporary
folder, aggregates it in DuckDB, and publishes only small-number-suppressed counts
(``suppression``: 1-4 suppressed, others rounded to 5, secondary suppression against row,
column and grand totals). The row-level extract is deleted when the figures are made.

Panels:

1. **Multiple long-term conditions** -- people with two or more of ``LTC_CODES`` (active
   Conditions, SNOMED CT) by registered GP practice and age band.
2. **Emergency admissions per 1,000 registered** by neighbourhood (postcode district): inpatient
   stays begun in the last ``months`` months that were emergency admissions -- an Encounter
   typed ``ADMISSION_TYPE``, or an inpatient Encounter ``partOf`` an A&E attendance (class
   ``EMER`` or type ``ED_VISIT_TYPE``); an attendance that went home is not an admission. Rates are computed from the *published* (rounded) numerator and denominator, so they
   cannot reveal an exact count; a rate with a suppressed part is not shown.
3. **Crisis and end-of-life care plans** -- people with an active crisis plan or end-of-life /
   advance care plan by GP practice (SNOMED codes in ``CRISIS_PLAN_CODES`` /
   ``END_OF_LIFE_PLAN_CODES``, or the plan's category text / title).

A panel only counts data its controllers' agreements share for the purpose. When no partner's
agreement shares the data a panel is made from (``PANEL_NEEDS``: e.g. no planning agreement
shares ``care-plans`` or ``mental-health``), the panel says so and names what is missing
instead of showing zeros and an empty chart (``Panel.not_covered``); its data is not extracted.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ..governance.policy import Access
from ..programme.charts import bar_chart
from ..web.csvsafe import csv_text
from . import viewdef
from .extract import ExtractResult, run_extract
from .pseudonym import postcode_district
from .suppression import SuppressedTable, suppress_counts, suppress_table

# SNOMED CT long-term conditions counted for multimorbidity (QOF-style register conditions).
LTC_CODES: dict[str, str] = {
    "44054006": "Diabetes mellitus type 2",
    "46635009": "Diabetes mellitus type 1",
    "73211009": "Diabetes mellitus",
    "38341003": "Hypertension",
    "195967001": "Asthma",
    "13645005": "COPD",
    "35489007": "Depression",
    "52448006": "Dementia",
    "49601007": "Cardiovascular disorder",
    "53741008": "Coronary heart disease",
    "84114007": "Heart failure",
    "49436004": "Atrial fibrillation",
    "709044004": "Chronic kidney disease",
    "230690007": "Stroke",
    "58214004": "Schizophrenia",
    "13746004": "Bipolar disorder",
    "396275006": "Osteoarthritis",
    "69896004": "Rheumatoid arthritis",
    "84757009": "Epilepsy",
    "40930008": "Hypothyroidism",
    "363346000": "Cancer",
}
ACTIVE_CLINICAL = ("active", "recurrence", "relapse")
EMERGENCY_CLASSES = ("EMER",)
INPATIENT_CLASSES = ("IMP", "ACUTE", "NONAC")
ADMISSION_TYPE = "183452005"  # SNOMED CT emergency hospital admission
ED_VISIT_TYPE = "4525004"  # SNOMED CT emergency department patient visit
CRISIS_PLAN_CODES = ("736253002",)  # mental health crisis plan
END_OF_LIFE_PLAN_CODES = ("736373009", "736366004", "713603004")  # EoL, advance, ACP
CRISIS_WORDS = ("crisis",)
END_OF_LIFE_WORDS = ("end of life", "end-of-life", "palliative", "advance care plan", "respect")
AGE_BANDS = ((0, 17), (18, 44), (45, 64), (65, 74), (75, 84), (85, None))
PROJECT = "population-dashboard"

ORGANISATION_VIEW = {
    "resourceType": "ViewDefinition", "name": "dash_organisations", "resource": "Organization",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()", "type": "id"},
        {"name": "ods", "path": "identifier.where(system = "
                                "'https://fhir.nhs.uk/Id/ods-organization-code').value.first()",
         "type": "string"},
        {"name": "name", "path": "name", "type": "string"}]}],
}
ENCOUNTER_VIEW = {
    "resourceType": "ViewDefinition", "name": "dash_encounters", "resource": "Encounter",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()", "type": "id"},
        {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "string"},
        {"name": "class", "path": "class.code", "type": "code"},
        {"name": "type_codes", "path": "type.coding.code", "type": "code", "collection": True},
        {"name": "part_of", "path": "partOf.getReferenceKey(Encounter)", "type": "string"},
        {"name": "period_start", "path": "period.start", "type": "dateTime"}]}],
}
CARE_PLAN_VIEW = {
    "resourceType": "ViewDefinition", "name": "dash_care_plans", "resource": "CarePlan",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()", "type": "id"},
        {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "string"},
        {"name": "status", "path": "status", "type": "code"},
        {"name": "codes", "path": "category.coding.code", "type": "code", "collection": True},
        {"name": "texts", "path": "category.text | category.coding.display | title",
         "type": "string", "collection": True}]}],
}


# The data categories each panel is made from: at least one must be shared for the purpose.
PANEL_NEEDS = {
    "mltc": ("gp-summary",),
    "emergency": ("encounters",),
    "care-plans": ("care-plans", "mental-health"),
}
PANEL_TITLES = {
    "mltc": "People with two or more long-term conditions, by GP practice and age band",
    "emergency": "Emergency admissions per 1,000 registered patients by neighbourhood",
    "care-plans": "People with a crisis plan or an end of life care plan, by GP practice",
}
CATEGORY_WORDS = {"gp-summary": "GP summaries (conditions)", "encounters": "encounters",
                  "care-plans": "care plans", "mental-health": "mental health records"}


@dataclass
class Panel:
    title: str
    purpose: str
    agreements: list[str]
    table: SuppressedTable | None
    svg: str
    csv: str
    notes: str = ""
    # Why this panel has no figures: no agreement shares the data it is made from.
    not_covered: str = ""

    @property
    def label(self) -> str:
        return f"Purpose: {self.purpose}; agreement(s): {', '.join(self.agreements)}"


def age_band(birth: date | None, as_of: date) -> str:
    if birth is None:
        return "Unknown"
    age = as_of.year - birth.year - ((as_of.month, as_of.day) < (birth.month, birth.day))
    for lo, hi in AGE_BANDS:
        if (hi is None or age <= hi) and age >= lo:
            return f"{lo}+" if hi is None else f"{lo}-{hi}"
    return "Unknown"


BAND_LABELS = [f"{lo}+" if hi is None else f"{lo}-{hi}" for lo, hi in AGE_BANDS]


def population_dashboard(sc, access: Access, *, as_of: date | None = None, months: int = 12,
                         threshold: int = 5, rounding: int = 5) -> list[Panel]:
    """The programme's population health panels for `access` (purpose planning/research)."""
    import duckdb

    as_of = as_of or date.today()
    covered = shared_categories(access)
    missing = {k: needs for k, needs in PANEL_NEEDS.items() if not covered & set(needs)}
    views = [viewdef.load_view("patient_demographics"), ORGANISATION_VIEW]
    if "mltc" not in missing:
        views.append(viewdef.load_view("conditions"))
    if "emergency" not in missing:
        views.append(ENCOUNTER_VIEW)
    if "care-plans" not in missing:
        views.append(CARE_PLAN_VIEW)
    folder = Path(tempfile.mkdtemp(prefix="sc-dashboard-", dir=_tmp_root(sc)))
    try:
        result = run_extract(sc, access, views, project=PROJECT, coarsen_dates="month",
                             out_dir=folder)
        con = duckdb.connect(str(result.duckdb_path), read_only=True)
        try:
            people = _people(con, as_of)
            opts = {"threshold": threshold, "rounding": rounding}
            made = {
                "mltc": lambda: mltc_panel(con, people, result, **opts),
                "emergency": lambda: emergency_panel(con, people, result, as_of, months, **opts),
                "care-plans": lambda: care_plan_panel(con, people, result, **opts),
            }
            return [uncovered_panel(k, result, missing[k]) if k in missing else make()
                    for k, make in made.items()]
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def shared_categories(access: Access) -> set[str]:
    """The data categories some partner's active agreement shares with the viewer's
    organisation for the purpose (what the governed extract may read beyond its own data)."""
    out: set[str] = set()
    for src, cats in (access.shared_with or {}).items():
        if src != access.ods:
            out |= set(cats)
    return out


def uncovered_panel(key: str, result: ExtractResult, needs: tuple[str, ...]) -> Panel:
    """A panel that cannot be made: it says which data no agreement shares, and with whom."""
    what = " or ".join(CATEGORY_WORDS.get(c, c) for c in needs)
    agreements = ", ".join(result.agreements) or "none"
    message = (f"No {result.purpose} agreement shares {what} with {result.requester}, so these "
               f"figures cannot be made: they would count only {result.requester}'s own "
               f"records, not the population. The {result.purpose} agreement(s) in force "
               f"({agreements}) would need to add {what}.")
    csv = csv_text(["not_covered"], [{"not_covered": message}], lineterminator="\n",
                   preamble=f"# {PANEL_TITLES[key]}\n# Purpose: {result.purpose}; "
                            f"agreement(s): {agreements}\n")
    return Panel(PANEL_TITLES[key], result.purpose, list(result.agreements), None, "", csv,
                 "", not_covered=message)


def _tmp_root(sc) -> Path:
    root = Path(sc.data_dir) / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _people(con, as_of: date) -> dict[str, dict]:
    """pseudonymous id -> practice label, age band, district, registered?"""
    orgs = {i: (ods, name) for i, ods, name in
            con.execute("select id, ods, name from dash_organisations").fetchall()}
    out = {}
    for pid, birth, postcode, gp_id, gp_ods in con.execute(
            "select id, birth_date, postcode, gp_practice_id, gp_practice_ods_code "
            "from patient_demographics where not coalesce(deceased, false)").fetchall():
        ods, name = orgs.get(gp_id, (gp_ods, None))
        practice = name or ods or "No registered GP"  # a name people read; the code if unknown
        out[pid] = {"practice": practice, "band": age_band(birth, as_of),
                    "district": postcode_district(postcode) or "Unknown",
                    "registered": bool(gp_id or gp_ods)}
    return out


def _label(result: ExtractResult) -> str:
    return f"purpose: {result.purpose}; agreement(s): {', '.join(result.agreements)}"


def _csv(title: str, result: ExtractResult, fieldnames: list, rows: list[dict],
         note: str) -> str:
    # formula-safe (web/csvsafe.py)
    return csv_text(fieldnames, rows, lineterminator="\n",
                    preamble=f"# {title}\n# Purpose: {result.purpose}; agreement(s): "
                             f"{', '.join(result.agreements)}\n# {note}\n")


def _num(v) -> float | None:
    return None if isinstance(v, str) else float(v)


def _suppression_note(threshold: int, rounding: int) -> str:
    return (f"Counts of 1-{threshold - 1} are shown as *; other counts are rounded to the "
            f"nearest {rounding}; further cells are hidden where a total would reveal a "
            "hidden one.")


def mltc_panel(con, people: dict, result: ExtractResult, *, threshold=5, rounding=5) -> Panel:
    codes = sorted(LTC_CODES)
    marks = ",".join("?" for _ in codes)
    counts = dict(con.execute(
        f"select patient_id, count(distinct code) from conditions where code in ({marks}) "
        "and coalesce(clinical_status, 'active') in ('active', 'recurrence', 'relapse') "
        "group by patient_id", codes).fetchall())
    practices = sorted({p["practice"] for p in people.values()})
    cells = {(pr, b): 0 for pr in practices for b in BAND_LABELS}
    for pid, person in people.items():
        if counts.get(pid, 0) >= 2 and person["band"] in BAND_LABELS:
            cells[(person["practice"], person["band"])] += 1
    table = suppress_table(
        [{"practice": pr, "age_band": b, "n": n} for (pr, b), n in cells.items()],
        row_key="practice", col_key="age_band", value_key="n",
        threshold=threshold, rounding=rounding)
    title = "People with two or more long-term conditions, by GP practice and age band"
    series = {b: [(pr, _num(table.cells[(pr, b)])) for pr in table.rows] for b in table.cols}
    desc = (f"{_label(result)}. People with at least two of {len(LTC_CODES)} long-term "
            "conditions. " + _suppression_note(threshold, rounding))
    svg = bar_chart(series or {"People": []}, title=f"{title} ({_label(result)})",
                    y_label="People", horizontal=True, desc=desc)
    return Panel(title, result.purpose, list(result.agreements), table, svg,
                 _csv(title, result, table.fieldnames(), table.to_rows(),
                      _suppression_note(threshold, rounding)), desc)


def emergency_panel(con, people: dict, result: ExtractResult, as_of: date, months: int, *,
                    threshold=5, rounding=5) -> Panel:
    y, m = as_of.year, as_of.month - months
    while m <= 0:
        y, m = y - 1, m + 12
    start = date(y, m, 1)
    rows = con.execute("select id, patient_id, class, type_codes, part_of, period_start "
                       "from dash_encounters").fetchall()
    # An emergency admission is the inpatient stay, not the A&E attendance (most attendances
    # go home): an encounter typed "emergency hospital admission", or an inpatient encounter
    # that is part of an A&E attendance.
    attendances = {eid for eid, _pid, cls, types, _po, _s in rows
                   if cls in EMERGENCY_CLASSES or ED_VISIT_TYPE in (types or ())}
    admissions: dict[str, int] = {}
    for _eid, pid, cls, types, part_of, started in rows:
        admitted = ADMISSION_TYPE in (types or ()) or (
            cls in INPATIENT_CLASSES and part_of in attendances)
        if admitted and started is not None and started.date() >= start and pid in people:
            d = people[pid]["district"]
            admissions[d] = admissions.get(d, 0) + 1
    registered: dict[str, int] = {}
    for person in people.values():
        if person["registered"]:
            registered[person["district"]] = registered.get(person["district"], 0) + 1
    districts = sorted(set(registered) | set(admissions))
    col = "Emergency admissions"
    table = suppress_table([{"neighbourhood": d, "measure": col, "n": admissions.get(d, 0)}
                            for d in districts],
                           row_key="neighbourhood", col_key="measure", value_key="n",
                           threshold=threshold, rounding=rounding)
    reg = suppress_counts({d: registered.get(d, 0) for d in districts}, total=True,
                          threshold=threshold, rounding=rounding)
    out_rows, series = [], []
    for d in districts:
        a, r = table.cells[(d, col)], reg[d]
        rate = None
        if not isinstance(a, str) and not isinstance(r, str) and r > 0:
            rate = round(a / r * 1000, 1)
        out_rows.append({"neighbourhood": d, "emergency_admissions": a, "registered": r,
                         "per_1000": "" if rate is None else rate})
        series.append((d, rate))
    total_a, total_r = table.grand_total, reg["Total"]
    total_rate = (round(total_a / total_r * 1000, 1)
                  if not isinstance(total_a, str) and not isinstance(total_r, str) and total_r
                  else "")
    out_rows.append({"neighbourhood": "Total", "emergency_admissions": total_a,
                     "registered": total_r, "per_1000": total_rate})
    title = (f"Emergency admissions per 1,000 registered patients by neighbourhood "
             f"({start.isoformat()} to {as_of.isoformat()})")
    note = (_suppression_note(threshold, rounding) + " Rates use the published (rounded) "
            "counts; a rate is blank where either count is hidden. Emergency: Encounter class "
            "EMER or an emergency admission type; an admission from A&E counts once.")
    desc = f"{_label(result)}. {note}"
    svg = bar_chart({"Per 1,000 registered": series}, title=f"{title} ({_label(result)})",
                    y_label="Emergency admissions per 1,000", desc=desc)
    return Panel(title, result.purpose, list(result.agreements), table, svg,
                 _csv(title, result, ["neighbourhood", "emergency_admissions", "registered",
                                      "per_1000"], out_rows, note), desc)


def _plan_kind(codes, texts) -> set[str]:
    kinds = set()
    codes = set(codes or ())
    words = " ".join(t.lower() for t in texts or ())
    if codes & set(CRISIS_PLAN_CODES) or any(w in words for w in CRISIS_WORDS):
        kinds.add("Crisis plan")
    if codes & set(END_OF_LIFE_PLAN_CODES) or any(w in words for w in END_OF_LIFE_WORDS):
        kinds.add("End of life care plan")
    return kinds


def care_plan_panel(con, people: dict, result: ExtractResult, *, threshold=5,
                    rounding=5) -> Panel:
    kinds = ("Crisis plan", "End of life care plan")
    have: dict[str, set[str]] = {k: set() for k in kinds}
    for pid, status, codes, texts in con.execute(
            "select patient_id, status, codes, texts from dash_care_plans").fetchall():
        if status in ("active", "on-hold") and pid in people:
            for k in _plan_kind(codes, texts):
                have[k].add(pid)
    practices = sorted({p["practice"] for p in people.values()})
    cells = {(pr, k): 0 for pr in practices for k in kinds}
    for k, pids in have.items():
        for pid in pids:
            cells[(people[pid]["practice"], k)] += 1
    table = suppress_table([{"practice": pr, "plan": k, "n": n} for (pr, k), n in cells.items()],
                           row_key="practice", col_key="plan", value_key="n",
                           threshold=threshold, rounding=rounding)
    title = "People with a crisis plan or an end of life care plan, by GP practice"
    note = (_suppression_note(threshold, rounding) + " A person with both plans is counted in "
            "each column. Only plans whose controllers share care plans for this purpose are "
            "counted.")
    series = {k: [(pr, _num(table.cells[(pr, k)])) for pr in table.rows] for k in table.cols}
    desc = f"{_label(result)}. {note}"
    svg = bar_chart(series or {"People": []}, title=f"{title} ({_label(result)})",
                    y_label="People", horizontal=True, desc=desc)
    return Panel(title, result.purpose, list(result.agreements), table, svg,
                 _csv(title, result, table.fieldnames(), table.to_rows(), note), desc)


__all__ = ["ADMISSION_TYPE", "AGE_BANDS", "CRISIS_PLAN_CODES", "ED_VISIT_TYPE", "EMERGENCY_CLASSES",
           "END_OF_LIFE_PLAN_CODES", "LTC_CODES", "Panel", "age_band", "care_plan_panel",
           "emergency_panel", "mltc_panel", "population_dashboard"]
