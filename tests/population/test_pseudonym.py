"""Keyed pseudonyms and the de-identification rules (no database)."""

from __future__ import annotations

import re

import pytest

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, ODS_SYSTEM
from sharedcare.population.pseudonym import (
    Pseudonymiser,
    coarsen,
    load_key,
    postcode_district,
    pseudonym,
)

KEY = bytes(range(32))


def test_pseudonym_is_keyed_per_project_and_stable():
    a = pseudonym(KEY, "alpha", "9990677786")
    assert a == pseudonym(KEY, "alpha", "9990677786")
    assert re.fullmatch(r"[a-z2-7]{24}", a)
    assert a != pseudonym(KEY, "beta", "9990677786")
    assert a != pseudonym(bytes(32), "alpha", "9990677786")
    assert a != pseudonym(KEY, "alpha", "9990677787")
    with pytest.raises(ValueError):
        pseudonym(KEY, "", "x")


def test_key_file_made_once_private(tmp_path):
    k1 = load_key(tmp_path)
    path = tmp_path / "keys" / "pseudonym.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(k1) == 32 and load_key(tmp_path) == k1
    assert "key" not in repr(Pseudonymiser(k1, "p")).lower().replace("pseudonymiser", "")


def test_coarsen_and_district():
    assert coarsen("2024-02-23T17:08:00Z", "month") == "2024-02"
    assert coarsen("2024-02-23", "year") == "2024"
    assert coarsen("2024-02-23", "none") == "2024-02-23"
    assert coarsen("38341003", "year") == "38341003"
    assert postcode_district("m19 3sf") == "M19"
    assert postcode_district("SK43AB") == "SK4"
    assert postcode_district(None) is None


def test_resource_rules():
    p = Pseudonymiser(KEY, "proj", "month")
    patient = {
        "resourceType": "Patient", "id": "abc",
        "text": {"status": "generated", "div": "<div>Margaret Wood</div>"},
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9990677786"}],
        "name": [{"family": "Wood"}], "telecom": [{"value": "07700 900201"}],
        "address": [{"use": "home", "line": ["229 Mersey Avenue"], "postalCode": "M19 3SF"}],
        "birthDate": "1947-08-17", "contact": [{"name": {"family": "Wood"}}],
        "generalPractitioner": [{"reference": "Organization/org-1", "display": "Brookside",
                                 "identifier": {"system": ODS_SYSTEM, "value": "P89000"}}],
    }
    out = p.resource(patient)
    assert out["id"] == pseudonym(KEY, "proj", "abc")
    assert out["identifier"] == [{"system": NHS_NUMBER_SYSTEM,
                                  "value": pseudonym(KEY, "proj", "9990677786")}]
    assert "name" not in out and "telecom" not in out and "contact" not in out
    assert "text" not in out
    assert out["address"] == [{"use": "home", "postalCode": "M19"}]
    assert out["birthDate"] == "1947-08"
    assert out["generalPractitioner"] == [{"reference": "Organization/org-1",
                                           "display": "Brookside",
                                           "identifier": {"system": ODS_SYSTEM,
                                                          "value": "P89000"}}]
    cond = {"resourceType": "Condition", "id": "c1",
            "subject": {"reference": "http://x/fhir/Patient/abc", "display": "Margaret Wood"},
            "recorder": {"reference": "Practitioner/dr1", "display": "Dr Who"},
            "code": {"coding": [{"code": "38341003", "display": "Hypertension"}],
                     "text": "Hypertension"},
            "note": [{"text": "lives with daughter"}], "onsetDateTime": "2021-09-04"}
    c = p.resource(cond)
    assert c["subject"] == {"reference": f"Patient/{out['id']}"}  # joins to the Patient
    assert c["recorder"] == {"reference": "Practitioner/dr1"}
    assert c["code"]["text"] == "Hypertension" and c["code"]["coding"][0]["display"]
    assert "note" not in c and c["onsetDateTime"] == "2021-09"
    assert p.resource({"resourceType": "Organization", "id": "org-1"})["id"] == "org-1"
    with pytest.raises(ValueError):
        Pseudonymiser(KEY, "proj", "week")
