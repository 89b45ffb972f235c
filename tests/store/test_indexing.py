"""Tests of the search-index extractor (sharedcare.store.indexing)."""

from __future__ import annotations

import copy
import decimal
import json
import random
import re
import threading
from collections import Counter
from pathlib import Path

import pytest

from sharedcare.store.indexing import (
    MAX_DATE,
    MIN_DATE,
    Indexer,
    IndexRows,
    date_range,
    normalize_string,
    number_range,
)
from tests.conftest import data_dir


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """The test data laid out as ../shared was: fhir/examples and fhir/synthea (decompressed)."""
    root = tmp_path_factory.mktemp("shared")
    (root / "fhir").mkdir()
    for name in ("examples", "synthea"):
        (root / "fhir" / name).symlink_to(data_dir("fhir", name), target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def ix() -> Indexer:
    return Indexer()


# ----------------------------------------------------------------------------- helpers


def by_param(rows: list, code: str) -> list:
    return [r[1:] for r in rows if r[0] == code]


def _example_resources(shared: Path) -> list[dict]:
    out = []
    for f in sorted((shared / "fhir" / "examples").glob("*.json")):
        r = json.loads(f.read_text())
        if r.get("resourceType") == "Bundle":
            out += [e["resource"] for e in r.get("entry", ()) if "resource" in e]
        out.append(r)
    return out


def _synthea_sample(shared: Path, n: int = 300) -> list[dict]:
    from sharedcare.store.indexing.bench import load_resources

    res = load_resources(shared / "fhir" / "synthea", limit_files=3)
    random.Random(1).shuffle(res)
    return res[:n]


def _canon(x) -> str:
    def default(v):
        return float(v) if isinstance(v, decimal.Decimal) else str(v)

    return json.dumps(x, sort_keys=True, default=default)


# ----------------------------------------------------------------------------- (1) fhirpathpy proof


def test_compiled_extractors_match_fhirpathpy(ix, shared):
    """For every indexed parameter of every example / sampled Synthea resource, the compiled
    closures select exactly the nodes fhirpathpy selects with the official R4 expression."""
    import fhirpathpy
    from fhirpathpy.models import models

    from sharedcare.store.indexing.indexer import fhirpathpy_options

    holder = threading.local()
    opts = fhirpathpy_options(ix.model.resource_types, holder)
    supported = set(ix.supported_types())
    resources = [
        r
        for r in _example_resources(shared) + _synthea_sample(shared)
        if r.get("resourceType") in supported
    ]
    assert len(resources) > 900

    compiled: dict = {}
    mismatches, comparisons, nonempty = [], 0, set()
    for r in resources:
        rt = r["resourceType"]
        for code, sp in ix.params_for(rt).items():
            if not ix.is_indexed(rt, code):
                continue
            key = (rt, code)
            if key not in compiled:
                compiled[key] = fhirpathpy.compile(sp.expression, models["r4"], opts)
            holder.root = r
            try:
                expected = compiled[key](copy.deepcopy(r))
            except ValueError as e:
                # FHIRPath N1 makes `x as T` an error on several items; the R4 definitions use
                # it on repeating elements (Observation.component.value as Quantity), which
                # servers -- and this compiler -- read as ofType(T). Compare against that.
                assert "singleton" in str(e)
                alt = re.sub(r"\(([A-Za-z.]+) as (\w+)\)", r"\1.ofType(\2)", sp.expression)
                alt = alt.replace(".as(", ".ofType(")
                k2 = key + ("ofType",)
                if k2 not in compiled:
                    compiled[k2] = fhirpathpy.compile(alt, models["r4"], opts)
                expected = compiled[k2](copy.deepcopy(r))
            got = ix.extract(r, code)
            comparisons += 1
            exp_set = sorted({_canon(x) for x in expected})
            got_set = sorted({_canon(x) for x in got})
            if expected:
                nonempty.add(key)
            if exp_set != got_set:
                mismatches.append((rt, r.get("id"), code, sp.expression, exp_set[:2], got_set[:2]))
    assert not mismatches, mismatches[:5]
    assert comparisons > 20_000
    # not vacuous: hundreds of distinct parameters actually selected something
    assert len(nonempty) > 500


def test_no_fallbacks_and_expected_skips(ix):
    assert ix.fallbacks == []
    reasons = Counter(reason.split(":")[0] for _, _, reason in ix.skipped)
    assert set(reasons) == {
        "composite parameter",
        "special parameter",
        "no FHIRPath expression in the R4 definitions",
    }
    skipped_codes = {(b, c) for b, c, _ in ix.skipped}
    assert ("Observation", "code-value-quantity") in skipped_codes  # composite
    assert ("Location", "near") in skipped_codes  # special
    assert ("Patient", "_text") in skipped_codes  # no expression
    assert not ix.is_indexed("Observation", "code-value-quantity")
    for rt in ix.supported_types():
        params = ix.params_for(rt)
        assert "_id" not in params and "_lastUpdated" not in params
        for code in ("_tag", "_security", "_profile", "_source"):
            assert ix.is_indexed(rt, code), (rt, code)
        # everything that is not skipped is compiled
        for code in params:
            if (rt, code) not in skipped_codes:
                assert ix.is_indexed(rt, code)


def test_multi_base_expressions_are_split_per_base(ix):
    p = ix.params_for("Observation")["patient"]
    assert p.base == "Observation"
    assert p.expression == "Observation.subject.where(resolve() is Patient)"
    assert p.type == "reference" and "Patient" in p.targets
    assert ix.params_for("Condition")["code"].expression == "Condition.code"
    assert (
        ix.params_for("MedicationRequest")["code"].expression
        == "(MedicationRequest.medication as CodeableConcept)"
    )
    assert ix.params_for("Encounter")["_tag"].expression == "Encounter.meta.tag"
    with pytest.raises(ValueError):
        ix.params_for("NotAType")


# ----------------------------------------------------------------------------- (2) concrete rows

OBS = {
    "resourceType": "Observation",
    "id": "o1",
    "meta": {
        "tag": [{"system": "urn:t", "code": "t1"}],
        "profile": ["http://x/StructureDefinition/p"],
        "source": "https://feed.example/1",
    },
    "status": "final",
    "code": {
        "coding": [
            {"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"},
            {"system": "http://snomed.info/sct", "code": "27113001"},
        ],
        "text": "Body  weight",
    },
    "subject": {"reference": "Patient/p1"},
    "performer": [{"reference": "Practitioner/dr1"}],
    "encounter": {"reference": "https://other.example/fhir/Encounter/e9/_history/3"},
    "effectiveDateTime": "2021-06-01T10:15:00+01:00",
    "valueQuantity": {
        "value": 5.4,
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    },
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {
                "value": 120,
                "unit": "mmHg",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueCodeableConcept": {"coding": [{"system": "urn:s", "code": "high"}]},
        },
    ],
}


def test_observation_rows(ix):
    rows = ix.index(OBS)
    assert isinstance(rows, IndexRows)
    assert by_param(rows.tokens, "code") == [
        ("http://loinc.org", "29463-7", "body weight"),
        ("http://snomed.info/sct", "27113001", None),
        (None, None, "body weight"),
    ]
    assert by_param(rows.tokens, "status") == [(None, "final", None)]
    assert by_param(rows.tokens, "_tag") == [("urn:t", "t1", None)]
    assert ("http://loinc.org", "8480-6", None) in by_param(rows.tokens, "component-code")
    assert by_param(rows.tokens, "component-value-concept") == [("urn:s", "high", None)]
    assert by_param(rows.uris, "_profile") == [("http://x/StructureDefinition/p",)]
    assert by_param(rows.uris, "_source") == [("https://feed.example/1",)]
    # 5.4 kg -> implied precision 5.35 .. 5.45
    (q,) = by_param(rows.numbers, "value-quantity")
    assert q[0] == pytest.approx(5.35) and q[1] == pytest.approx(5.45) and q[2] == 5.4
    assert q[3:] == ("http://unitsofmeasure.org", "kg", "kg")
    (c,) = by_param(rows.numbers, "component-value-quantity")
    assert c == (119.5, 120.5, 120.0, "http://unitsofmeasure.org", "mm[Hg]", "mmHg")
    assert len(by_param(rows.numbers, "combo-value-quantity")) == 2
    # effective with an offset is stored in UTC, second precision
    assert by_param(rows.dates, "date") == [("2021-06-01T09:15:00", "2021-06-01T09:15:00")]
    refs = rows.references
    assert ("subject", "Patient", "p1", None) in refs
    assert ("patient", "Patient", "p1", None) in refs
    assert ("performer", "Practitioner", "dr1", None) in refs
    assert (
        "encounter",
        "Encounter",
        "e9",
        "https://other.example/fhir/Encounter/e9/_history/3",
    ) in refs
    assert rows.compartments == {"p1"}


def test_patient_rows_and_own_compartment(ix):
    pat = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {
                "system": "https://fhir.nhs.uk/Id/nhs-number",
                "value": "9434765919",
                "type": {"text": "NHS Number"},
            }
        ],
        "name": [{"family": "Müller", "given": ["José", "Ann  Marie"], "prefix": ["Dr"]}],
        "gender": "female",
        "birthDate": "1970-02",
        "deceasedBoolean": False,
        "telecom": [
            {"system": "phone", "value": "01632 960000"},
            {"system": "email", "value": "a@example.org"},
        ],
        "address": [{"line": ["1 Rue Élysée"], "city": "Leeds", "postalCode": "LS1 4AP"}],
        "link": [{"other": {"reference": "Patient/old"}, "type": "replaces"}],
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-extensions-Patient-mothersMaidenName",
                "valueString": "Smith",
            }
        ],
    }
    rows = ix.index(pat)
    assert by_param(rows.strings, "family") == [("muller", "Müller")]
    assert sorted(by_param(rows.strings, "given")) == [
        ("ann marie", "Ann  Marie"),
        ("jose", "José"),
    ]
    assert set(by_param(rows.strings, "name")) == {
        ("muller", "Müller"),
        ("jose", "José"),
        ("ann marie", "Ann  Marie"),
        ("dr", "Dr"),
    }
    assert ("1 rue elysee", "1 Rue Élysée") in by_param(rows.strings, "address")
    assert by_param(rows.strings, "address-city") == [("leeds", "Leeds")]
    assert by_param(rows.strings, "mothersMaidenName") == [("smith", "Smith")]
    assert by_param(rows.tokens, "identifier") == [
        ("https://fhir.nhs.uk/Id/nhs-number", "9434765919", "nhs number")
    ]
    assert by_param(rows.tokens, "gender") == [
        ("http://hl7.org/fhir/administrative-gender", "female", None)
    ]
    assert by_param(rows.tokens, "phone") == [(None, "01632 960000", None)]
    assert by_param(rows.tokens, "email") == [(None, "a@example.org", None)]
    assert len(by_param(rows.tokens, "telecom")) == 2
    assert by_param(rows.tokens, "deceased") == [(None, "false", None)]
    assert by_param(rows.dates, "birthdate") == [("1970-02-01T00:00:00", "1970-02-28T23:59:59")]
    assert rows.compartments == {"p1", "old"}

    dead = dict(pat, deceasedDateTime="2020-01-01")
    del dead["deceasedBoolean"]
    assert by_param(ix.index(dead).tokens, "deceased") == [(None, "true", None)]
    assert by_param(ix.index(dead).dates, "death-date") == [
        ("2020-01-01T00:00:00", "2020-01-01T23:59:59")
    ]


def test_encounter_period_and_open_ends(ix):
    enc = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p2"},
        "period": {"start": "2019-03-04T09:00:00Z", "end": "2019-03-04T10:30:00Z"},
    }
    rows = ix.index(enc)
    assert by_param(rows.dates, "date") == [("2019-03-04T09:00:00", "2019-03-04T10:30:00")]
    assert by_param(rows.tokens, "class") == [
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", None)
    ]
    assert rows.compartments == {"p2"}
    open_ended = dict(enc, period={"start": "2019-03-04"})
    assert by_param(ix.index(open_ended).dates, "date") == [("2019-03-04T00:00:00", MAX_DATE)]
    open_start = dict(enc, period={"end": "2019"})
    assert by_param(ix.index(open_start).dates, "date") == [(MIN_DATE, "2019-12-31T23:59:59")]


def test_reference_forms_and_resolve(ix):
    obs = {
        "resourceType": "Observation",
        "id": "o2",
        "status": "final",
        "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "cp"}],
        "subject": {"reference": "#cp"},
    }
    rows = ix.index(obs)
    # contained: url kept, type from the contained resource; resolve() is Patient matches
    assert ("subject", "Patient", None, "#cp") in rows.references
    assert ("patient", "Patient", None, "#cp") in rows.references
    assert rows.compartments == set()  # no logical id to put it under

    obs2 = dict(obs, subject={"reference": "urn:uuid:1234"})
    del obs2["contained"]
    rows2 = ix.index(obs2)
    assert rows2.references == [("subject", None, None, "urn:uuid:1234")]  # patient: not resolvable

    obs3 = dict(obs2, subject={"reference": "Group/g1"})
    rows3 = ix.index(obs3)
    assert rows3.references == [("subject", "Group", "g1", None)]
    assert rows3.compartments == set()

    obs4 = dict(obs2, subject={"reference": "urn:uuid:1234", "type": "Patient"})
    assert ("patient", "Patient", None, "urn:uuid:1234") in ix.index(obs4).references


def test_quantity_range_age_and_decimal_params(ix):
    cond = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p3"},
        "onsetAge": {"value": 52, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
        "abatementRange": {"low": {"value": 60, "unit": "a"}, "high": {"value": 65.5, "unit": "a"}},
    }
    rows = ix.index(cond)
    assert by_param(rows.numbers, "onset-age") == [
        (51.5, 52.5, 52.0, "http://unitsofmeasure.org", "a", "a")
    ]
    (ab,) = by_param(rows.numbers, "abatement-age")
    assert ab[0] == 59.5 and ab[1] == pytest.approx(65.55) and ab[2] == 60.0
    assert rows.dates == []  # onset as Age is not a date
    ra = {
        "resourceType": "RiskAssessment",
        "id": "r1",
        "status": "final",
        "subject": {"reference": "Patient/p3"},
        "prediction": [{"probabilityDecimal": 0.02}, {"probabilityRange": {"high": {"value": 1}}}],
    }
    nums = by_param(ix.index(ra).numbers, "probability")
    assert (0.015, 0.025, 0.02, None, None, None) in nums
    assert (float("-inf"), 1.5, 1.0, None, None, None) in nums


def test_unsupported_type_and_other_valid_types(ix):
    with pytest.raises(ValueError):
        ix.index({"resourceType": "Nonsense"})
    # a valid R4 type outside the supported list still gets the common parameters
    rows = ix.index({"resourceType": "Bundle", "meta": {"tag": [{"code": "x"}]}, "type": "batch"})
    assert ("_tag", None, "x", None) in rows.tokens


def test_real_examples(ix, shared):
    ex = shared / "fhir" / "examples"
    obs = json.loads((ex / "Observation-example.json").read_text())
    rows = ix.index(obs)
    assert ("http://loinc.org", "29463-7", "body weight") in by_param(rows.tokens, "code")
    assert by_param(rows.numbers, "value-quantity") == [
        (184.5, 185.5, 185.0, "http://unitsofmeasure.org", "[lb_av]", "lbs")
    ]
    assert rows.compartments == {"example"}


def test_synthea_compartments(ix, shared):
    res = _synthea_sample(shared, 400)
    clinical = [
        r
        for r in res
        if r["resourceType"]
        in ("Observation", "Encounter", "Condition", "Claim", "ExplanationOfBenefit")
    ]
    assert clinical
    for r in clinical:
        assert len(ix.index(r).compartments) == 1, r["resourceType"]


# ----------------------------------------------------------------------------- (3) value helpers


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2020", ("2020-01-01T00:00:00", "2020-12-31T23:59:59")),
        ("2020-02", ("2020-02-01T00:00:00", "2020-02-29T23:59:59")),
        ("2019-02", ("2019-02-01T00:00:00", "2019-02-28T23:59:59")),
        ("2020-02-03", ("2020-02-03T00:00:00", "2020-02-03T23:59:59")),
        ("2020-02-03T10:11", ("2020-02-03T10:11:00", "2020-02-03T10:11:59")),
        ("2020-02-03T10:11:12", ("2020-02-03T10:11:12", "2020-02-03T10:11:12")),
        ("2020-02-03T10:11:12.999Z", ("2020-02-03T10:11:12", "2020-02-03T10:11:12")),
        ("2020-02-03T01:00:00+05:30", ("2020-02-02T19:30:00", "2020-02-02T19:30:00")),
        ("2020-12-31T23:30:00-01:00", ("2021-01-01T00:30:00", "2021-01-01T00:30:00")),
        ("2016-12-31T23:59:60Z", ("2016-12-31T23:59:59", "2016-12-31T23:59:59")),
        ("9999-12-31T23:00:00-05:00", (MAX_DATE, MAX_DATE)),
    ],
)
def test_date_range(value, expected):
    assert date_range(value) == expected


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("", "not a FHIR date"),
        ("20200101", "not a FHIR date"),
        ("2020-13", "month 13"),
        ("2021-02-29", "day 29"),
        ("2020-01-01T24:00:00", "hour 24"),
        ("2020-01-01T10:60", "minute 60"),
        ("2020-01-01T10:00:00+25:00", "offset"),
        ("2020-1-1", "not a FHIR date"),
        ("2020-01-01 10:00", "not a FHIR date"),
        ("0000", "year"),
    ],
)
def test_date_range_errors(bad, reason):
    with pytest.raises(ValueError, match=reason):
        date_range(bad)


def test_date_range_non_string():
    with pytest.raises(ValueError):
        date_range(2020)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("5.4", (5.35, 5.45, 5.4)),
        ("100", (99.5, 100.5, 100.0)),
        ("100.00", (99.995, 100.005, 100.0)),
        ("1e2", (50.0, 150.0, 100.0)),
        ("1.0e2", (95.0, 105.0, 100.0)),
        ("-3.5", (-3.55, -3.45, -3.5)),
        ("0", (-0.5, 0.5, 0.0)),
        (" 7 ", (6.5, 7.5, 7.0)),
        (42, (41.5, 42.5, 42.0)),
        (0.25, (0.245, 0.255, 0.25)),
    ],
)
def test_number_range(value, expected):
    got = number_range(value)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "bad", ["", "abc", "1,5", "5.4.1", "1e", "--1", "nan", "inf", True, None, float("nan")]
)
def test_number_range_errors(bad):
    with pytest.raises(ValueError):
        number_range(bad)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Müller", "muller"),
        ("  José\t MARÍA \n", "jose maria"),
        ("Straße", "strasse"),
        ("ﬁle", "file"),  # compatibility ligature (NFKD)
        ("Zoë-Ann O'Brien", "zoe-ann o'brien"),
        ("", ""),
    ],
)
def test_normalize_string(value, expected):
    assert normalize_string(value) == expected
