"""Population dashboards: right figures, suppressed (incl. by subtraction), labelled."""

from __future__ import annotations

import csv
import io
import random
from datetime import date

import pytest
from nhs_number import calculate_checksum

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, ODS_SYSTEM
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.policy import Access
from sharedcare.population.dashboards import age_band, population_dashboard
from sharedcare.population.suppression import round_to
from sharedcare.store.repository import WriteOp

PLAN, GP = "RPLAN", "RGP01"
AS_OF = date(2026, 11, 25)
PRACTICES = {"org-a": ("P1", "Alpha Surgery"), "org-b": ("P2", "Beta Practice"),
             "org-c": ("P3", "Gamma Clinic")}
DISTRICTS = ("M19 1AA", "M20 2BB", "SK4 3CC")
LTC = ["44054006", "38341003", "195967001", "13645005", "52448006"]


# test-range NHS numbers with a valid modulus-11 check digit (the store refuses others)
NHS_NUMBERS = [s + str(c) for s in (f"99955{k:04d}" for k in range(1000))
               if (c := calculate_checksum(s)) < 10]


def _build(seed=3, n=90):
    rng = random.Random(seed)
    res = [{"resourceType": "Organization", "id": oid, "name": name,
            "identifier": [{"system": ODS_SYSTEM, "value": ods}]}
           for oid, (ods, name) in PRACTICES.items()]
    truth = []  # (pid, practice label, band, district, n_ltc, emergencies, crisis, eol)
    for i in range(n):
        pid = f"pt{i}"
        org = rng.choice(list(PRACTICES))
        year = rng.choice([1935, 1950, 1958, 1970, 1990, 2012])
        pc = rng.choice(DISTRICTS)
        res.append({"resourceType": "Patient", "id": pid, "birthDate": f"{year}-06-15",
                    "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS_NUMBERS[i]}],
                    "address": [{"use": "home", "postalCode": pc}],
                    "generalPractitioner": [{"reference": f"Organization/{org}"}]})
        codes = rng.sample(LTC, rng.choice([0, 1, 1, 2, 3]))
        for k, code in enumerate(codes):
            res.append({"resourceType": "Condition", "id": f"{pid}-c{k}",
                        "clinicalStatus": {"coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active"}]},
                        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
                        "subject": {"reference": f"Patient/{pid}"}})
        emer = rng.choice([0, 0, 1, 2])
        for k in range(emer):
            ae = {"resourceType": "Encounter", "id": f"{pid}-ae{k}", "status": "finished",
                  "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                            "code": "EMER"},
                  "subject": {"reference": f"Patient/{pid}"},
                  "period": {"start": "2026-05-10T10:00:00Z"}}
            adm = {"resourceType": "Encounter", "id": f"{pid}-adm{k}", "status": "finished",
                   "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                             "code": "IMP"},
                   "type": [{"coding": [{"system": "http://snomed.info/sct",
                                         "code": "183452005"}]}],
                   "partOf": {"reference": f"Encounter/{pid}-ae{k}"},
                   "subject": {"reference": f"Patient/{pid}"},
                   "period": {"start": "2026-05-10T14:00:00Z"}}
            res += [ae, adm]
        # an old one, outside the 12 months
        res.append({"resourceType": "Encounter", "id": f"{pid}-old", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                              "code": "EMER"}, "subject": {"reference": f"Patient/{pid}"},
                    "period": {"start": "2023-01-10T10:00:00Z"}})
        crisis, eol = rng.random() < 0.2, rng.random() < 0.15
        if crisis:
            res.append({"resourceType": "CarePlan", "id": f"{pid}-cp", "status": "active",
                        "intent": "plan", "category": [{"text": "Mental health crisis plan"}],
                        "subject": {"reference": f"Patient/{pid}"}})
        if eol:
            res.append({"resourceType": "CarePlan", "id": f"{pid}-eol", "status": "active",
                        "intent": "plan", "category": [{"coding": [{
                            "system": "http://snomed.info/sct", "code": "736373009"}]}],
                        "subject": {"reference": f"Patient/{pid}"}})
        _, name = PRACTICES[org]
        truth.append((pid, name, age_band(date(year, 6, 1), AS_OF), pc.split()[0],
                      len(codes), emer, crisis, eol))
    return res, truth


@pytest.fixture
def world(sc):
    gov = sc.governance
    gov.add_organisation(PLAN, "ICB analytics", "icb")
    gov.add_organisation(GP, "GP federation", "gp-practice")
    gov.add_agreement("DSA-PLAN", "Planning", [PLAN, GP], ["planning"],
                      ["demographics", "gp-summary", "encounters", "care-plans"],
                      status="active")
    resources, truth = _build()
    sc.store.write([WriteOp("PUT", r["resourceType"], r["id"], r) for r in resources],
                   source_org=GP)
    opted = truth[0][0]
    gov.record_choice(opted, "national-opt-out")
    return sc, [t for t in truth if t[0] != opted]


def _planner(sc):
    return sc.governance.prepare(Access("analyst", PLAN, "programme-lead", "planning"))


def _check_published(table, raw: dict):
    """Every published count is 0 or >= threshold (rounded), and no line of the table has
    exactly one hidden entry -- so no hidden cell can be recovered by subtraction."""
    sym, thr, rnd = table.symbol, table.threshold, table.rounding
    raw_rows = {r: sum(raw.get((r, c), 0) for c in table.cols) for r in table.rows}
    raw_cols = {c: sum(raw.get((r, c), 0) for r in table.rows) for c in table.cols}
    pairs = [(table.cells[(r, c)], raw.get((r, c), 0)) for r in table.rows for c in table.cols]
    pairs += [(table.row_totals[r], raw_rows[r]) for r in table.rows]
    pairs += [(table.col_totals[c], raw_cols[c]) for c in table.cols]
    pairs += [(table.grand_total, sum(raw_rows.values()))]
    for shown, true in pairs:
        if 0 < true < thr:
            assert shown == sym
        if shown != sym:
            assert shown == round_to(true, rnd) and shown % rnd == 0
    lines = [[table.cells[(r, c)] for c in table.cols] + [table.row_totals[r]]
             for r in table.rows]
    lines += [[table.cells[(r, c)] for r in table.rows] + [table.col_totals[c]]
              for c in table.cols]
    lines.append(list(table.row_totals.values()) + [table.grand_total])
    lines.append(list(table.col_totals.values()) + [table.grand_total])
    for line in lines:
        assert sum(1 for v in line if v == sym) != 1, line


def _csv_rows(text):
    return list(csv.DictReader(io.StringIO("\n".join(
        ln for ln in text.splitlines() if not ln.startswith("#")))))


def test_panels_are_right_suppressed_and_labelled(world):
    sc, truth = world
    panels = population_dashboard(sc, _planner(sc), as_of=AS_OF)
    assert len(panels) == 3
    for p in panels:
        assert p.purpose == "planning" and p.agreements == ["DSA-PLAN"]
        assert "Purpose: planning; agreement(s): DSA-PLAN" in p.csv
        assert "DSA-PLAN" in p.svg and p.svg.startswith("<svg")
        for row in _csv_rows(p.csv):  # no published number in 1..4 anywhere in the CSV
            for k, v in row.items():
                if k != "per_1000" and v.isdigit():
                    assert int(v) == 0 or int(v) >= 5, (p.title, row)

    mltc, emer, plans = panels
    raw = {}
    for _pid, practice, band, _d, n, *_ in truth:
        if n >= 2:
            raw[(practice, band)] = raw.get((practice, band), 0) + 1
    _check_published(mltc.table, raw)
    assert mltc.table.primary  # the data has small cells: they must be hidden
    assert set(mltc.table.rows) == {n for _, n in PRACTICES.values()}  # names people read

    raw = {}
    for _pid, _pr, _b, district, _n, e, *_ in truth:
        if e:
            raw[(district, "Emergency admissions")] = \
                raw.get((district, "Emergency admissions"), 0) + e  # admission counted once
    _check_published(emer.table, raw)
    reg = {}
    for t in truth:
        reg[t[3]] = reg.get(t[3], 0) + 1
    for row in _csv_rows(emer.csv):
        if row["neighbourhood"] in reg and row["registered"] != "*":
            assert int(row["registered"]) == round_to(reg[row["neighbourhood"]], 5)
        if row["per_1000"]:
            assert float(row["per_1000"]) == round(
                int(row["emergency_admissions"]) / int(row["registered"]) * 1000, 1)

    raw = {}
    for _pid, practice, *_rest, crisis, eol in truth:
        for kind, flag in (("Crisis plan", crisis), ("End of life care plan", eol)):
            if flag:
                raw[(practice, kind)] = raw.get((practice, kind), 0) + 1
    _check_published(plans.table, raw)


def test_opted_out_patient_not_counted(world):
    sc, truth = world
    panels = population_dashboard(sc, _planner(sc), as_of=AS_OF, threshold=1, rounding=1)
    mltc = panels[0]
    assert mltc.table.grand_total == sum(1 for t in truth if t[4] >= 2)
    reg_total = next(r for r in _csv_rows(panels[1].csv) if r["neighbourhood"] == "Total")
    assert int(reg_total["registered"]) == len(truth)


def test_dashboard_refused_without_planning_agreement(world):
    sc, _ = world
    sc.governance.set_agreement_status("DSA-PLAN", "suspended")
    with pytest.raises(FHIRError) as e:
        population_dashboard(sc, _planner(sc), as_of=AS_OF)
    assert e.value.status == 403


def test_an_attendance_that_went_home_is_not_an_admission(world):
    """Most A&E attendances end at home; only the inpatient stays count as admissions."""
    sc, truth = world
    pid, district = truth[1][0], truth[1][3]
    before = population_dashboard(sc, _planner(sc), as_of=AS_OF, threshold=1, rounding=1)[1]
    sc.store.write([WriteOp("PUT", "Encounter", f"{pid}-home{k}", {
        "resourceType": "Encounter", "id": f"{pid}-home{k}", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": "2026-05-12T10:00:00Z"}}) for k in range(6)], source_org=GP)
    after = population_dashboard(sc, _planner(sc), as_of=AS_OF, threshold=1, rounding=1)[1]
    col = after.table.cols[0]
    assert after.table.cells[(district, col)] == before.table.cells[(district, col)]
