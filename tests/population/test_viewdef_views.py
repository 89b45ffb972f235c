"""The ready ViewDefinitions in sharedcare/population/views over Synthea and UK-style data."""

from __future__ import annotations

import json
import os
from collections import Counter

import duckdb
import pytest

from sharedcare.population.viewdef import (
    VIEWS_DIR,
    compile_view,
    evaluate,
    load_view,
    materialise_duckdb,
    ready_views,
)
from tests.conftest import data_dir

SYNTHEA = data_dir("fhir", "synthea")

EXPECTED_VIEWS = {
    "patient_demographics",
    "encounters",
    "conditions",
    "observations",
    "medications",
    "care_plans",
    "social_care_packages",
}
ONE_ROW_PER_RESOURCE = {
    "patient_demographics": "Patient",
    "encounters": "Encounter",
    "conditions": "Condition",
    "observations": "Observation",
    "medications": "MedicationRequest",
    "care_plans": "CarePlan",
}


@pytest.fixture(scope="module")
def synthea() -> list[dict]:
    bundles = sorted(SYNTHEA.glob("*_*-*.json"))[:4] if SYNTHEA.is_dir() else []
    if not bundles:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Synthea bundles not found in {SYNTHEA} (required when CI=true)")
        pytest.skip(f"Synthea bundles not found in {SYNTHEA}")
    resources = []
    for b in bundles:
        resources += [e["resource"] for e in json.loads(b.read_text())["entry"]]
    return resources


def test_library_is_complete_and_valid():
    views = ready_views()
    assert set(views) == EXPECTED_VIEWS
    for stem, view in views.items():
        assert view["resourceType"] == "ViewDefinition"
        assert view["name"] == stem
        cv = compile_view(view)
        assert cv.column_names[0] == "id"
        assert all(c.type for c in cv.columns), f"{stem}: every column declares a type"
    assert load_view("encounters") == json.loads((VIEWS_DIR / "encounters.json").read_text())


@pytest.mark.parametrize("name", sorted(ONE_ROW_PER_RESOURCE))
def test_ready_view_over_synthea(synthea, name):
    rtype = ONE_ROW_PER_RESOURCE[name]
    rows = evaluate(load_view(name), synthea)
    resources = [r for r in synthea if r["resourceType"] == rtype]
    assert len(rows) == len(resources) > 0
    assert Counter(r["id"] for r in rows) == Counter(r["id"] for r in resources)
    patient_ids = {r["id"] for r in synthea if r["resourceType"] == "Patient"}
    if name != "patient_demographics":
        # urn:uuid subject references resolve to the patient's resource key
        assert {r["patient_id"] for r in rows} <= patient_ids
        assert all(r["patient_id"] for r in rows)


def test_synthea_values(synthea):
    pats = {r["id"]: r for r in evaluate(load_view("patient_demographics"), synthea)}
    src = next(r for r in synthea if r["resourceType"] == "Patient")
    row = pats[src["id"]]
    assert row["gender"] == src["gender"] and row["birth_date"] == src["birthDate"]
    assert row["postcode"] == src["address"][0].get("postalCode")
    assert row["nhs_number"] is None  # Synthea patients are US; no NHS numbers

    enc = evaluate(load_view("encounters"), synthea)
    assert {r["class"] for r in enc} <= {"AMB", "EMER", "IMP", "WELLNESS", "VR", "HH"}
    assert all(r["period_start"] and r["type_code"] for r in enc)
    orgs = {r["id"] for r in synthea if r["resourceType"] == "Organization"}
    assert any(r["service_provider_id"] in orgs for r in enc)

    obs = evaluate(load_view("observations"), synthea)
    height = [r for r in obs if r["code"] == "8302-2"]
    assert height and all(
        isinstance(r["value_quantity"], float) and r["value_unit"] == "cm" for r in height
    )

    plans = evaluate(load_view("care_plans"), synthea)
    assert all(isinstance(r["category_codes"], list) for r in plans)


def test_patient_demographics_uk():
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "birthDate": "1950-02-03",
        "identifier": [
            {"system": "urn:oid:local-mrn", "value": "MRN1"},
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"},
        ],
        "address": [
            {"use": "work", "postalCode": "EC1A 1BB"},
            {"use": "home", "postalCode": "LS1 4AP"},
        ],
        "generalPractitioner": [{"reference": "Organization/B82005"}],
        "deceasedDateTime": "2024-01-02",
    }
    [row] = evaluate(load_view("patient_demographics"), [patient])
    assert row == {
        "id": "p1",
        "nhs_number": "9000000009",
        "gender": "female",
        "birth_date": "1950-02-03",
        "deceased": True,
        "deceased_at": "2024-01-02",
        "postcode": "LS1 4AP",
        "gp_practice_id": "B82005",
        "gp_practice_ods_code": None,
        "gp_reference": "Organization/B82005",
    }
    logical = {
        **patient,
        "generalPractitioner": [
            {
                "identifier": {
                    "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                    "value": "B82005",
                }
            }
        ],
    }
    [row] = evaluate(load_view("patient_demographics"), [logical])
    assert row["gp_practice_id"] is None and row["gp_practice_ods_code"] == "B82005"


def test_social_care_packages_selects_social_care_service_requests():
    social = {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "410606002"}]}],
        "code": {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "1156063003",
                    "display": "Home care package",
                }
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "occurrencePeriod": {"start": "2024-01-01", "end": "2024-06-30"},
        "requester": {"reference": "Practitioner/sw1"},
        "performer": [{"reference": "Organization/LA01"}],
    }
    other = {
        **social,
        "id": "sr2",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}],
    }
    rows = evaluate(
        load_view("social_care_packages"), [social, other, {"resourceType": "CarePlan"}]
    )
    assert rows == [
        {
            "id": "sr1",
            "patient_id": "p1",
            "status": "active",
            "intent": "order",
            "service_system": "http://snomed.info/sct",
            "service_code": "1156063003",
            "service_display": "Home care package",
            "start": "2024-01-01",
            "end": "2024-06-30",
            "authored_on": None,
            "requester_id": "sw1",
            "provider_id": "LA01",
        }
    ]


def test_ready_views_materialise_into_duckdb(synthea):
    con = duckdb.connect()
    try:
        for name, view in ready_views().items():
            n = materialise_duckdb(view, synthea, con, name)
            assert con.execute(f"SELECT count(*) FROM {name}").fetchone() == (n,)
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'encounters'"
            ).fetchall()
        )
        assert types["period_start"] == "TIMESTAMP WITH TIME ZONE"
        assert con.execute(
            "SELECT count(*) FROM encounters e JOIN patient_demographics p ON e.patient_id = p.id"
        ).fetchone()[0] == n_enc(synthea)
    finally:
        con.close()


def n_enc(resources) -> int:
    return sum(1 for r in resources if r["resourceType"] == "Encounter")
