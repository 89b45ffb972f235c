"""Tests of the demo care system generator (sharedcare.demo)."""

from __future__ import annotations

import base64
import csv
import dataclasses
from collections import Counter, defaultdict
from datetime import date, timedelta
from functools import cache, lru_cache
from pathlib import Path

import jsonschema_rs
import orjson
import pytest

from sharedcare.demo import (
    AGREEMENT_STATUSES,
    AUDIT_ACTIONS,
    AUDIT_OUTCOMES,
    DATA_CATEGORIES,
    ORG_KINDS,
    STAFF_ROLES,
    generate,
    is_valid_nhs_number,
)
from sharedcare.fhir.codes import (
    DATA_CATEGORY_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    SENSITIVITY_CODES,
    SENSITIVITY_SYSTEM,
    SOURCE_ORG_SYSTEM,
    feed_source,
)

AS_OF = date(2026, 6, 15)
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "sharedcare/fhir/definitions/fhir.schema.json"
EXPECTED_CATEGORIES = {
    "demographics",
    "gp-summary",
    "encounters",
    "results",
    "documents",
    "care-plans",
    "mental-health",
    "social-care",
    "care-home-notes",
}


@cache
def system(seed: int = 42, patients: int = 300):
    return generate(seed, patients, as_of=AS_OF)


@cache
def resources(seed: int = 42, patients: int = 300) -> tuple:
    return tuple(system(seed, patients).resources())


@lru_cache(maxsize=1)
def schema() -> dict:
    return orjson.loads(SCHEMA_PATH.read_bytes())


_validators: dict[str, object] = {}


def validator(resource_type: str):
    """A validator for one resource type (clearer errors than the root schema's oneOf)."""
    if resource_type not in _validators:
        s = schema()
        _validators[resource_type] = jsonschema_rs.Draft6Validator(
            {"$ref": f"#/definitions/{resource_type}", "definitions": s["definitions"]}
        )
    return _validators[resource_type]


def nhs_check_independent(number: str) -> bool:
    """Modulus 11 written out again, so the generator's own check is not the only judge."""
    digits = [int(c) for c in number]
    total = sum(d * (10 - i) for i, d in enumerate(digits[:9]))
    check = (11 - total % 11) % 11
    return check != 10 and check == digits[9]


def references(obj, out: list[str]) -> list[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str):
                out.append(v)
            else:
                references(v, out)
    elif isinstance(obj, list):
        for v in obj:
            references(v, out)
    return out


def codes(concept: dict, system: str | None = None) -> list[str]:
    return [c["code"] for c in concept.get("coding", []) if system in (None, c["system"])]


def tag(res: dict, tag_system: str) -> list[str]:
    return [t["code"] for t in res["meta"].get("tag", []) if t["system"] == tag_system]


def snapshot(cs) -> bytes:
    """Everything a CareSystem exposes, serialised."""
    parts = {
        "organisations": [dataclasses.asdict(o) for o in cs.organisations],
        "staff": [dataclasses.asdict(m) for m in cs.staff],
        "agreements": [dataclasses.asdict(a) for a in cs.agreements],
        "personas": [dataclasses.asdict(p) for p in cs.personas],
        "objections": cs.objections,
        "opt_outs": cs.national_opt_outs,
        "audit": cs.audit_history,
        "resources": list(cs.resources()),
    }
    return orjson.dumps(parts, default=str)


# --- determinism and size -----------------------------------------------------------------------


def test_same_seed_same_output_different_seed_different_output():
    a = snapshot(generate(7, 80, as_of=AS_OF))
    b = snapshot(generate(7, 80, as_of=AS_OF))
    c = snapshot(generate(8, 80, as_of=AS_OF))
    assert a == b
    assert a != c


def test_resources_can_be_iterated_twice_identically():
    cs = system()
    assert orjson.dumps(list(cs.resources())) == orjson.dumps(list(cs.resources()))


def test_patient_count_honoured():
    for n in (0, 1, 37, 300):
        cs = generate(3, n, as_of=AS_OF) if n != 300 else system()
        patients = [
            r
            for r in (resources() if n == 300 else cs.resources())
            if r["resourceType"] == "Patient" and "generalPractitioner" in r
        ]
        assert cs.patients_count == n
        assert len(patients) == n  # one GP registration per person
        practices = [o for o in cs.organisations if o.kind == "gp-practice"]
        assert sum(o.registered_population for o in practices) == n


def test_practice_count_scales_with_patients():
    def count(n):
        return sum(o.kind == "gp-practice" for o in generate(1, n, as_of=AS_OF).organisations)

    assert count(10) == 3
    assert count(6000) == 5


def test_nhs_numbers_valid_and_unique():
    cs = generate(11, 3000, as_of=AS_OF)
    numbers = cs.nhs_numbers()
    assert len(numbers) == 3000 == len(set(numbers))
    for n in numbers:
        assert n.startswith("999") and len(n) == 10
        assert nhs_check_independent(n), n
        assert is_valid_nhs_number(n)
    # the GP records carry the same numbers; every partner's record with a number has one of them
    def numbers_of(pred):
        return [
            i["value"]
            for r in resources()
            if r["resourceType"] == "Patient" and pred(r)
            for i in r["identifier"]
            if i["system"] == NHS_NUMBER_SYSTEM
        ]

    assert sorted(numbers_of(lambda r: "generalPractitioner" in r)) == sorted(
        system().nhs_numbers()
    )
    assert set(numbers_of(lambda r: True)) == set(system().nhs_numbers())


def test_nhs_check_agrees_with_nhs_number_package():
    nhs_number = pytest.importorskip("nhs_number")
    for n in system().nhs_numbers():
        assert nhs_number.is_valid(n)
    assert not is_valid_nhs_number("9990000001") or nhs_number.is_valid("9990000001")


# --- FHIR validity and labels -------------------------------------------------------------------


def test_every_resource_is_schema_valid():
    bad = []
    for r in resources():
        v = validator(r["resourceType"])
        if not v.is_valid(r):
            bad.append((r["resourceType"], r["id"], [str(e)[:300] for e in v.iter_errors(r)][:2]))
    assert not bad, bad[:5]
    # and against the root schema as a whole for a sample
    root = jsonschema_rs.validator_for(schema())
    for r in resources()[::50]:
        assert root.is_valid(r)


def test_every_resource_tagged_with_known_source_org_and_category():
    cs = system()
    ods_codes = {o.ods for o in cs.organisations}
    for r in resources():
        orgs = tag(r, SOURCE_ORG_SYSTEM)
        cats = tag(r, DATA_CATEGORY_SYSTEM)
        assert len(orgs) == 1 and orgs[0] in ods_codes, r
        assert len(cats) == 1 and cats[0] in EXPECTED_CATEGORIES, r
        assert r["meta"]["source"].startswith(feed_source(orgs[0], "")), r["meta"]
        for s in r["meta"].get("security", []):
            assert s["system"] == SENSITIVITY_SYSTEM and s["code"] in SENSITIVITY_CODES
    assert set(DATA_CATEGORIES) == EXPECTED_CATEGORIES
    used = Counter(tag(r, DATA_CATEGORY_SYSTEM)[0] for r in resources())
    assert set(used) == EXPECTED_CATEGORIES, used


def test_ids_unique_and_references_resolve():
    keys = [f"{r['resourceType']}/{r['id']}" for r in resources()]
    assert len(keys) == len(set(keys))
    known = set(keys)
    refs = [ref for r in resources() for ref in references(r, [])]
    assert refs
    missing = [ref for ref in refs if ref not in known]
    assert not missing, missing[:5]


def test_organizations_carry_ods_codes():
    cs = system()
    orgs = [r for r in resources() if r["resourceType"] == "Organization"]
    assert {r["identifier"][0]["value"] for r in orgs} == {o.ods for o in cs.organisations}
    assert all(r["identifier"][0]["system"] == ODS_SYSTEM for r in orgs)


def person_of_patients() -> dict[str, int]:
    """Patient id -> generation index of the person, from the generator's own grouping (each
    person's resources come together), not from identifiers."""
    cs = system()
    out = {}
    for i in range(cs.patients_count):
        for r in cs.patient_resources(i):
            if r["resourceType"] == "Patient":
                out[r["id"]] = i
    return out


def test_each_partner_keeps_its_own_patient_record():
    owner = person_of_patients()
    patients = {r["id"]: r for r in resources() if r["resourceType"] == "Patient"}
    # every clinical resource refers to its own organisation's Patient
    for r in resources():
        subject = r.get("subject") or r.get("patient")
        if not subject or not subject["reference"].startswith("Patient/"):
            continue
        patient = patients[subject["reference"].split("/", 1)[1]]
        assert tag(patient, SOURCE_ORG_SYSTEM) == tag(r, SOURCE_ORG_SYSTEM), r["id"]
    # one Patient per person per partner
    seen = Counter((owner[pid], tag(p, SOURCE_ORG_SYSTEM)[0]) for pid, p in patients.items())
    assert max(seen.values()) == 1
    # only the GP's record carries the registration
    kinds = {o.ods: o.kind for o in system().organisations}
    for p in patients.values():
        gp = kinds[tag(p, SOURCE_ORG_SYSTEM)[0]] == "gp-practice"
        assert ("generalPractitioner" in p) == gp
        local = [i for i in p["identifier"] if i["system"] != NHS_NUMBER_SYSTEM]
        if not gp:  # the partner's own number, in its own identifier system
            assert local and f"/{tag(p, SOURCE_ORG_SYSTEM)[0]}/" in local[0]["system"]
    # most people are known to two or more partners, some to many
    partners = Counter(owner.values())
    assert sum(n >= 2 for n in partners.values()) / 300 >= 0.7
    assert max(partners.values()) >= 5


def test_partner_records_differ_as_real_ones_do():
    """Some partners' records lack the NHS number; some carry a nickname, an old address or
    no phone -- so identity has real work to do."""
    owner = person_of_patients()
    cs = system()
    gp = {}
    others = []
    for r in resources():
        if r["resourceType"] != "Patient":
            continue
        (gp.__setitem__(owner[r["id"]], r) if "generalPractitioner" in r else others.append(r))
    assert len(others) > 300
    no_nhs = [r for r in others if not any(i["system"] == NHS_NUMBER_SYSTEM
                                           for i in r["identifier"])]
    assert 0.02 * len(others) < len(no_nhs) < 0.3 * len(others)
    nickname = old_address = no_phone = slips = 0
    for r in others:
        g = gp[owner[r["id"]]]
        if r["birthDate"] != g["birthDate"]:
            # a mistyped birth date, only on a record without the NHS number, ten days out
            assert r in no_nhs and r["birthDate"][:8] == g["birthDate"][:8]
            assert abs(int(r["birthDate"][8:]) - int(g["birthDate"][8:])) == 10
            slips += 1
        assert r["gender"] == g["gender"]
        assert r["name"][0]["family"] == g["name"][0]["family"]
        nickname += r["name"][0]["given"] != g["name"][0]["given"]
        old_address += r["address"][0]["postalCode"] != g["address"][0]["postalCode"]
        no_phone += "telecom" not in r
    assert nickname and old_address and no_phone > 0.2 * len(others)
    assert 0 < slips < len(no_nhs), "some records only a person can match: the review queue"
    # the featured patient: the council's record has no NHS number, the rest do
    featured = {tag(r, SOURCE_ORG_SYSTEM)[0]: r for r in cs.patient_resources(0)
                if r["resourceType"] == "Patient"}
    assert len(featured) >= 5
    for ods, r in featured.items():
        has = any(i["system"] == NHS_NUMBER_SYSTEM for i in r["identifier"])
        assert has == (ods != "LAZ01"), ods


def test_clinical_content_present():
    types = Counter(r["resourceType"] for r in resources())
    for t in (
        "Patient",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "AllergyIntolerance",
        "Encounter",
        "Observation",
        "DiagnosticReport",
        "DocumentReference",
        "CarePlan",
        "CareTeam",
        "EpisodeOfCare",
        "QuestionnaireResponse",
        "ServiceRequest",
        "Practitioner",
        "Organization",
    ):
        assert types[t] > 0, t
    snomed = {
        c["code"]
        for r in resources()
        if r["resourceType"] == "Condition"
        for c in r["code"].get("coding", [])
    }
    assert {"44054006", "38341003"} <= snomed
    letters = [
        r
        for r in resources()
        if r["resourceType"] == "DocumentReference" and r["type"]["coding"][0]["code"] == "18842-5"
    ]
    assert letters
    text = base64.b64decode(letters[0]["content"][0]["attachment"]["data"]).decode()
    assert "DISCHARGE SUMMARY" in text
    classes = {r["class"]["code"] for r in resources() if r["resourceType"] == "Encounter"}
    assert {"EMER", "IMP"} <= classes
    assert any(
        r.get("hospitalization", {}).get("dischargeDisposition")
        for r in resources()
        if r["resourceType"] == "Encounter"
    )
    postcodes = [
        r["address"][0]["postalCode"] for r in resources() if r["resourceType"] == "Patient"
    ]
    assert all(
        p.split()[0][:2]
        in {"M1", "M2", "M3", "M4", "M5", "M6", "M7", "M8", "M9", "BL", "SK", "OL", "WN"}
        for p in postcodes
    )


def test_hba1c_results_trend_over_time():
    series: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for r in resources():
        if r["resourceType"] == "Observation" and "59261-8" in codes(r["code"]):
            series[r["subject"]["reference"]].append(
                (r["effectiveDateTime"], r["valueQuantity"]["value"])
            )
    assert series
    assert all(len(v) >= 3 for v in series.values())


def test_featured_patient_known_to_many_services():
    cs = system()
    featured = cs.patient_resources(0)
    assert featured[0]["resourceType"] == "Patient"
    orgs = {tag(r, SOURCE_ORG_SYSTEM)[0] for r in featured}
    cats = {tag(r, DATA_CATEGORY_SYSTEM)[0] for r in featured}
    assert len(orgs) >= 5
    assert {
        "gp-summary",
        "encounters",
        "results",
        "mental-health",
        "social-care",
        "care-plans",
        "documents",
    } <= cats


def test_sensitive_items_present_on_a_few_patients():
    labelled = defaultdict(set)
    for r in generate(5, 1500, as_of=AS_OF).resources():
        for s in r["meta"].get("security", []):
            labelled[s["code"]].add((r.get("subject") or r.get("patient"))["reference"])
    assert len(labelled) >= 4, labelled.keys()
    patients = set().union(*labelled.values())
    assert 0 < len(patients) < 0.1 * 1500


# --- bundles ------------------------------------------------------------------------------------


def test_bundles_are_put_transactions_in_reference_order():
    cs = generate(42, 60, as_of=AS_OF)
    all_res = list(cs.resources())
    bundles = list(cs.bundles(size=100))
    assert all(b["resourceType"] == "Bundle" and b["type"] == "transaction" for b in bundles)
    assert all(len(b["entry"]) <= 100 for b in bundles)
    assert sum(len(b["entry"]) for b in bundles) == len(all_res)
    seen: set[str] = set()
    bundle_validator = validator("Bundle")
    for b in bundles:
        assert bundle_validator.is_valid(b)
        here = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in b["entry"]}
        for e in b["entry"]:
            res = e["resource"]
            assert e["request"] == {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}
            for ref in references(res, []):
                assert ref in seen or ref in here, ref
        seen |= here
    with pytest.raises(ValueError):
        next(cs.bundles(size=0))


# --- organisations, staff, agreements, personas -------------------------------------------------


def test_organisations_real_trusts_and_made_up_partners():
    cs = system()
    kinds = Counter(o.kind for o in cs.organisations)
    assert set(kinds) == set(ORG_KINDS)
    real = [o for o in cs.organisations if o.real]
    source = Path(__file__).resolve().parents[2] / "sharedcare/demo/data/trusts-qop.csv"
    rows = {r["ods_code"]: r for r in csv.DictReader(source.read_text().splitlines())}
    for o in real:
        assert rows[o.ods]["stp_code"] == "QOP" and rows[o.ods]["ods_name"] == o.name
    assert {o.kind for o in real} >= {"acute-trust", "mental-health", "ambulance"}
    assert cs.organisation("RXV").kind == "mental-health"
    assert cs.organisation("RX7").kind == "ambulance"
    assert "RW6" not in {o.ods for o in cs.organisations}  # closed trust left out
    assert all(o.registered_population is None for o in cs.organisations if o.kind != "gp-practice")
    assert all(
        o.ods.startswith("P8") and len(o.ods) == 6
        for o in cs.organisations
        if o.kind == "gp-practice"
    )
    lives = sorted({o.go_live for o in cs.organisations if o.go_live})
    assert len(lives) >= 5  # staggered


def test_staff_roles():
    cs = system()
    ods = {o.ods for o in cs.organisations}
    assert len({m.username for m in cs.staff}) == len(cs.staff)
    assert len({m.sds_id for m in cs.staff}) == len(cs.staff)
    used_roles = set()
    for m in cs.staff:
        assert m.roles and m.password and m.display_name
        for org, role in m.roles:
            assert org in ods and role in STAFF_ROLES
            used_roles.add(role)
    assert used_roles == set(STAFF_ROLES)
    assert any(len(m.roles) >= 2 for m in cs.staff)
    assert any(len({o for o, _ in m.roles}) >= 2 for m in cs.staff)
    staffed = {o for m in cs.staff for o, _ in m.roles}
    assert staffed == ods


def test_agreements_cover_several_states():
    cs = system()
    ods = {o.ods for o in cs.organisations}
    statuses = {a.status for a in cs.agreements}
    assert {"active", "draft", "signed", "suspended"} <= statuses
    assert statuses <= set(AGREEMENT_STATUSES)
    assert len(statuses) >= 5
    main = [a for a in cs.agreements if a.status == "active" and "direct-care" in a.purposes]
    assert main and len(main[0].parties) > 0.6 * len(ods)
    assert any("planning" in a.purposes and a.status == "active" for a in cs.agreements)
    by_user = {m.username: m for m in cs.staff}
    for a in cs.agreements:
        assert set(a.parties) <= ods
        assert set(a.categories) <= EXPECTED_CATEGORIES
        for party, username, when in a.signatures:
            assert party in a.parties
            assert (party, "ig-lead") in by_user[username].roles
            assert when.tzinfo is not None
        if a.status == "draft":
            assert not a.signatures and a.effective is None
        if a.status == "signed":
            assert a.effective > AS_OF and {p for p, _, _ in a.signatures} == set(a.parties)
        if a.status == "expired":
            assert a.end < AS_OF


def test_personas():
    cs = system()
    labels = {p.role for p in cs.personas}
    assert {
        "GP",
        "A&E doctor",
        "District nurse",
        "Mental health crisis team",
        "Social worker",
        "IG lead",
        "Programme lead",
        "Patient",
        "Clinician with no relationship",
    } <= labels
    by_user = {m.username: m for m in cs.staff}
    featured = cs.nhs_numbers()[0]
    for p in cs.personas:
        if p.role == "Patient":
            assert p.nhs_number == featured and p.org is None and p.password
            continue
        m = by_user[p.username]
        assert m.password == p.password
        assert p.org in {o for o, _ in m.roles}
    roles = {p.role: by_user[p.username].roles for p in cs.personas if p.role != "Patient"}
    assert "ig-lead" in {r for _, r in roles["IG lead"]}
    assert "programme-lead" in {r for _, r in roles["Programme lead"]}
    # the "no relationship" clinician's organisation holds nothing about the featured patient
    outsider = next(p for p in cs.personas if p.role == "Clinician with no relationship")
    featured_orgs = {tag(r, SOURCE_ORG_SYSTEM)[0] for r in cs.patient_resources(0)}
    assert outsider.org not in featured_orgs
    gp = next(p for p in cs.personas if p.role == "GP")
    assert gp.org in featured_orgs


# --- objections, opt-outs, audit history --------------------------------------------------------


def test_objections_and_opt_outs():
    cs = system()
    numbers = set(cs.nhs_numbers())
    ods = {o.ods for o in cs.organisations}
    assert cs.objections and cs.national_opt_outs
    assert {s for _, s, _ in cs.objections} == {"all", "from-org", "to-org"}
    for nhs, scope, org in cs.objections:
        assert nhs in numbers
        assert (org is None) == (scope == "all")
        assert org is None or org in ods
    assert set(cs.national_opt_outs) <= numbers
    assert cs.nhs_numbers()[0] not in set(cs.national_opt_outs)


def test_audit_history_shape():
    cs = generate(42, 2000, as_of=AS_OF)
    audit = cs.audit_history
    usernames = {m.username for m in cs.staff}
    numbers = set(cs.nhs_numbers())
    live = {o.ods: o.go_live for o in cs.organisations}
    assert audit == sorted(audit, key=lambda e: e["when"])
    for e in audit:
        assert e["action"] in AUDIT_ACTIONS and e["outcome"] in AUDIT_OUTCOMES
        assert e["username"] in usernames and e["nhs_number"] in numbers
        assert live[e["org"]] is not None and e["when"].date() >= live[e["org"]]
        assert AS_OF - timedelta(days=190) <= e["when"].date() < AS_OF
    assert {e["action"] for e in audit} == set(AUDIT_ACTIONS)
    assert cs.break_glass_history
    assert all(e["action"] == "break-glass" and e.get("reason") for e in cs.break_glass_history)
    assert len(cs.break_glass_history) < 0.05 * len(audit)
    # adoption grows: the last eight weeks are busier than the first eight
    first = sum(e["when"].date() < AS_OF - timedelta(weeks=18) for e in audit)
    last = sum(e["when"].date() >= AS_OF - timedelta(weeks=8) for e in audit)
    assert last > 2 * first
    # weekly shape: weekdays busier than weekends
    weekday = Counter(e["when"].weekday() for e in audit)
    assert min(weekday[d] for d in range(5)) > max(weekday[5], weekday[6])
    # the featured patient has a break-glass event in their history
    assert any(e["nhs_number"] == cs.nhs_numbers()[0] for e in cs.break_glass_history)


def test_default_as_of_is_today():
    cs = generate(1, 5)
    assert cs.as_of == date.today()


def test_schema_validator_is_not_vacuous():
    patient = next(r for r in resources() if r["resourceType"] == "Patient")
    v = validator("Patient")
    assert v.is_valid(patient)
    assert not v.is_valid({**patient, "gender": "mal"})
    assert not v.is_valid({**patient, "unknownElement": 1})
    assert not v.is_valid({**patient, "birthDate": "2020-13-01"})


def test_kinds_of_partner_hold_their_own_data():
    cs = generate(9, 1500, as_of=AS_OF)
    kind = {o.ods: o.kind for o in cs.organisations}
    by_kind: dict[str, set[str]] = defaultdict(set)
    for r in larger():
        if r["resourceType"] in ("Organization", "Practitioner", "PractitionerRole"):
            continue
        by_kind[kind[tag(r, SOURCE_ORG_SYSTEM)[0]]].add(tag(r, DATA_CATEGORY_SYSTEM)[0])
    assert by_kind["gp-practice"] >= {"demographics", "gp-summary"}
    assert by_kind["acute-trust"] >= {"encounters", "results", "documents"}
    # each partner's own Patient record is its demographics; its records are its own kind
    assert all("demographics" in cats for cats in by_kind.values()), by_kind
    assert by_kind["mental-health"] == {"demographics", "mental-health"}
    assert by_kind["social-care"] == {"demographics", "social-care"}
    assert by_kind["care-home"] == {"demographics", "care-home-notes"}
    assert "care-plans" in by_kind["hospice"] and "care-plans" in by_kind["community"]


def test_generation_speed_guard():
    import time

    cs = generate(1, 1000, as_of=AS_OF)
    t = time.perf_counter()
    n = sum(1 for _ in cs.resources())
    elapsed = time.perf_counter() - t
    # ~60,000 resources/s on the development machine; fail only if grossly slower
    assert n / elapsed > 5000, (n, elapsed)


def test_main_prints_stats(capsys):
    from sharedcare.demo.__main__ import main

    assert main(["--patients", "20", "--as-of", "2026-06-15"]) == 0
    out = capsys.readouterr().out
    assert "resources/s" in out and "patients       20" in out


# --- data a clinician would not doubt (issue 12) ------------------------------------------------


@cache
def larger() -> tuple:
    return tuple(generate(9, 1500, as_of=AS_OF).resources())


def test_lab_results_carry_uk_pathology_codes_and_names():
    from sharedcare.demo import clinical as cx

    labs = [r for r in resources() if r["resourceType"] == "Observation"
            and r["category"][0]["coding"][0]["code"] == "laboratory"]
    assert labs
    for r in labs:
        first = r["code"]["coding"][0]
        assert first["system"] == "http://snomed.info/sct", first
        assert r["code"]["text"] in {"HbA1c", "eGFR", "Creatinine", "Total cholesterol"}
        assert codes(r["code"], "http://loinc.org")  # the LOINC mapping travels with it
        assert "Hemoglobin" not in r["code"]["text"] + first["display"]  # what people read
    names = {r["code"]["text"] for r in labs}
    assert {"HbA1c", "eGFR", "Creatinine"} <= names
    hba1c = next(r for r in labs if r["code"]["text"] == "HbA1c")
    assert codes(hba1c["code"], "http://snomed.info/sct") == ["999791000000106"]
    assert hba1c["valueQuantity"]["unit"] == "mmol/mol"
    reports = {r["code"]["text"] for r in resources() if r["resourceType"] == "DiagnosticReport"}
    assert reports <= set(cx.UK_REPORT_NAMES.values()) and "Urea and electrolytes" in reports


def test_no_plan_supervises_a_medicine_that_is_not_prescribed():
    owner = person_of_patients()
    prescribed: dict[int, str] = defaultdict(str)
    planned: dict[int, str] = defaultdict(str)
    for r in resources():
        ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
        if not ref.startswith("Patient/"):
            continue
        who = owner[ref.split("/", 1)[1]]
        if r["resourceType"] in ("MedicationRequest", "MedicationStatement"):
            prescribed[who] += r["medicationCodeableConcept"]["text"].lower()
        elif r["resourceType"] == "CarePlan":
            planned[who] += orjson.dumps(r).decode().lower()
    assert planned
    for who, text in planned.items():
        for medicine in ("insulin", "warfarin", "methotrexate"):
            if medicine in text:
                assert medicine in prescribed[who], (who, medicine)


def test_emergency_care_at_real_rates_per_1000_people():
    """England: ~280 type 1 A&E attendances and ~110 emergency admissions per 1,000 people a
    year. The demo's last year should be of that order, not double it."""
    people = sum(1 for r in larger() if r["resourceType"] == "Patient"
                 and "generalPractitioner" in r)
    since = (AS_OF - timedelta(days=365)).isoformat()
    encounters = {r["id"]: r for r in larger() if r["resourceType"] == "Encounter"
                  and r["period"]["start"][:10] >= since}
    attendances = [r for r in encounters.values() if r["class"]["code"] == "EMER"]
    admissions = [r for r in encounters.values() if r["class"]["code"] == "IMP"
                  and "partOf" in r]
    per_1000 = lambda n: n / people * 1000  # noqa: E731
    assert 180 <= per_1000(len(attendances)) <= 400, per_1000(len(attendances))
    assert 60 <= per_1000(len(admissions)) <= 150, per_1000(len(admissions))


def test_break_glass_at_a_few_per_1000_record_views():
    cs = generate(42, 2000, as_of=AS_OF)
    views = sum(1 for e in cs.audit_history
                if e["action"] in ("read", "search") and e["outcome"] == "permitted")
    glass = len(cs.break_glass_history)
    assert glass and views > 1000
    assert 1 <= glass / views * 1000 <= 8, (glass, views)
