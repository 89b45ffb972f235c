"""UK Core validation (sharedcare/fhir/ukcore.py): a resource claiming a UK Core profile is checked
against the bundled UK Core StructureDefinitions -- every problem with its FHIRPath location --
and a resource claiming none is untouched. The valid Patient is the official UK Core example
UKCore-Patient-RichardSmith-Example (NHSDigital/FHIR-R4-UKCORE-STAGING-MAIN, Apache-2.0), in
JSON, with its profile claimed; so is the blood pressure (UKCore-Observation-VitalSigns-
BloodPressure-Example)."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest

from sharedcare.fhir import ukcore
from sharedcare.fhir.validation import problems, write_status

SD = "https://fhir.hl7.org.uk/StructureDefinition/"
CS = "https://fhir.hl7.org.uk/CodeSystem/"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ETHNIC = SD + "Extension-UKCore-EthnicCategory"
VERIFICATION = SD + "Extension-UKCore-NHSNumberVerificationStatus"


def richard_smith() -> dict:
    return {
        "resourceType": "Patient", "id": "UKCore-Patient-RichardSmith-Example",
        "meta": {"profile": [SD + "UKCore-Patient"]},
        "extension": [
            {"url": ETHNIC, "valueCodeableConcept": {"coding": [{
                "system": CS + "UKCore-EthnicCategoryEngland", "code": "G",
                "display": "Mixed - Any other mixed background"}]}},
            {"url": SD + "Extension-UKCore-ContactPreference", "extension": [
                {"url": "PreferredContactMethod", "valueCodeableConcept": {"coding": [{
                    "system": CS + "UKCore-PreferredContactMethod", "code": "3",
                    "display": "Telephone"}]}},
                {"url": "PreferredContactTimes", "valueTiming": {"repeat": {
                    "frequency": 1, "period": 1, "periodUnit": "d",
                    "dayOfWeek": ["mon", "wed", "fri"], "when": ["MORN"]}}},
                {"url": "PreferredWrittenCommunicationFormat", "valueCodeableConcept": {
                    "coding": [{"system": CS + "UKCore-PreferredWrittenCommunicationFormat",
                                "code": "11", "display": "Large print"}]}}]},
            {"url": SD + "Extension-UKCore-DeathNotificationStatus", "extension": [
                {"url": "deathNotificationStatus", "valueCodeableConcept": {"coding": [{
                    "system": CS + "UKCore-DeathNotificationStatus", "code": "U",
                    "display": "Removed"}]}},
                {"url": "systemEffectiveDate", "valueDateTime": "2019-08-01T00:00:00.000Z"}]},
            {"url": SD + "Extension-UKCore-ResidentialStatus", "valueCodeableConcept": {
                "coding": [{"system": CS + "UKCore-ResidentialStatus", "code": "H",
                            "display": "UK Resident"}]}}],
        "identifier": [{
            "extension": [{"url": VERIFICATION, "valueCodeableConcept": {"coding": [{
                "system": CS + "UKCore-NHSNumberVerificationStatusEngland", "code": "01",
                "display": "Number present and verified"}]}}],
            "system": NHS, "value": "9912003888"}],
        "name": [{"use": "official", "family": "SMITH", "given": ["Richard"]}],
        "telecom": [{"system": "phone", "value": "01131231234"}],
        "gender": "male", "birthDate": "1970-09-11",
        "address": [{"line": ["4 Sandmoor Drive"], "city": "LEEDS", "postalCode": "LS17 7DF"}],
        "contact": [{
            "extension": [
                {"url": SD + "Extension-UKCore-ContactRank", "valuePositiveInt": 1},
                {"url": SD + "Extension-UKCore-CopyCorrespondenceIndicator",
                 "valueBoolean": True}],
            "relationship": [{"coding": [{
                "system": CS + "UKCore-AdditionalPersonRelationshipRole", "code": "Personal",
                "display": "Personal relationship with the patient"}]}],
            "name": {"use": "official", "text": "JACKSON Jane (Miss)", "family": "Jackson",
                     "given": ["Jane"], "prefix": ["Miss"]},
            "telecom": [{"system": "phone", "value": "07777123123", "use": "mobile"}],
            "address": {"use": "home", "type": "physical", "line": ["5 Alwoodley Road"],
                        "city": "LEEDS", "postalCode": "LS17 6EH"},
            "gender": "female"}],
        "communication": [{"language": {"coding": [
            {"system": "urn:ietf:bcp:47", "code": "bfi", "display": "British Sign Language"},
            {"system": "http://snomed.info/sct", "code": "703963007",
             "display": "Makaton vocabulary"}]}}],
    }


def heart_rate() -> dict:
    return {
        "resourceType": "Observation", "id": "hr-1", "status": "final",
        "meta": {"profile": [SD + "UKCore-Observation-VitalSigns-HeartRate"]},
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"},
                            {"system": "http://snomed.info/sct", "code": "364075005"}]},
        "subject": {"reference": "Patient/UKCore-Patient-RichardSmith-Example"},
        "effectiveDateTime": "2026-11-30T09:00:00Z",
        "valueQuantity": {"value": 72, "unit": "per minute",
                          "system": "http://unitsofmeasure.org", "code": "/min"},
    }


def blood_pressure() -> dict:
    def component(snomed, display, loinc, text, value):
        return {"code": {"coding": [
            {"system": "http://snomed.info/sct", "code": snomed, "display": display},
            {"system": "http://loinc.org", "code": loinc, "display": text}], "text": text},
            "valueQuantity": {"value": value, "unit": "millimeter of mercury",
                              "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
    return {
        "resourceType": "Observation", "id": "UKCore-Observation-VitalSigns-BloodPressure-Example",
        "meta": {"profile": [SD + "UKCore-Observation-VitalSigns-BloodPressure"]},
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}],
        "code": {"coding": [
            {"system": "http://snomed.info/sct", "code": "75367002", "display": "Blood pressure"},
            {"system": "http://loinc.org", "code": "85354-9",
             "display": "Blood pressure panel with all children optional"}],
            "text": "Blood pressure"},
        "subject": {"reference": "Patient/UKCore-Patient-RichardSmith-Example"},
        "effectiveDateTime": "2023-08-10",
        "performer": [{"reference":
                       "Organization/UKCore-Organization-LeedsTeachingHospital-Example"}],
        "bodySite": {"coding": [{"system": "http://snomed.info/sct", "code": "40983000",
                                 "display": "Structure of upper extremity between shoulder "
                                            "and elbow"}],
                     "text": "Structure of upper extremity between shoulder and elbow"},
        "component": [
            component("72313002", "Systolic arterial pressure", "8480-6",
                      "Systolic blood pressure", 140),
            component("1091811000000102", "Diastolic arterial pressure", "8462-4",
                      "Diastolic blood pressure", 90)],
    }


def found(resource) -> list[tuple[str, str]]:
    return [(i.code, i.expression) for i in ukcore.check(resource).issues]


# ------------------------------------------------------------------ valid resources pass
def test_the_official_uk_core_patient_example_is_valid():
    report = ukcore.check(richard_smith())
    assert report.issues == []
    assert report.profiles == [SD + "UKCore-Patient"]
    assert problems(richard_smith()) == []
    # all-languages is not bundled: the language is noted as not checked, never failed
    assert [(n.severity, n.expression) for n in report.notes] == [
        ("information", "Patient.communication[0].language")]


def test_a_valid_heart_rate_passes_its_profile_and_the_ones_it_derives_from():
    assert ukcore.check(heart_rate()).issues == []
    chain = [p.name for p in ukcore.profile(SD + "UKCore-Observation-VitalSigns-HeartRate")
             .chain()]
    assert chain == ["UKCore-Observation-VitalSigns-HeartRate", "UKCore-Observation-VitalSigns",
                     "UKCore-Observation"]


def test_a_resource_claiming_no_uk_core_profile_is_not_checked_against_uk_core():
    p = richard_smith()
    del p["meta"]
    p["extension"][0] = {"url": ETHNIC, "valueString": "not a CodeableConcept"}
    assert problems(p) == []
    assert ukcore.check(p).issues == []


# ------------------------------------------------------------------ each kind of problem
def test_a_uk_core_extension_of_the_wrong_value_type():
    p = richard_smith()
    p["extension"][0] = {"url": ETHNIC, "valueCoding": {
        "system": CS + "UKCore-EthnicCategoryEngland", "code": "G"}}
    issues = ukcore.check(p).issues
    assert [(i.code, i.expression) for i in issues] == [
        ("extension", "Patient.extension[0].value[x]")]
    assert "CodeableConcept" in issues[0].diagnostics and "Coding" in issues[0].diagnostics
    assert write_status(problems(p)) == 422


def test_a_sub_extension_of_a_complex_extension_of_the_wrong_type():
    p = richard_smith()
    p["extension"][1]["extension"][0] = {"url": "PreferredContactMethod", "valueString": "3"}
    assert found(p) == [("extension", "Patient.extension[1].extension[0].value[x]")]


def test_an_unknown_uk_core_extension():
    p = richard_smith()
    p["extension"].append({"url": SD + "Extension-UKCore-NoSuchThing", "valueString": "x"})
    assert found(p) == [("extension", "Patient.extension[4].url")]


def test_a_uk_core_extension_outside_its_context():
    p = richard_smith()
    p["name"][0]["extension"] = [copy.deepcopy(p["extension"][0])]
    issues = ukcore.check(p).issues
    assert [(i.code, i.expression) for i in issues] == [
        ("extension", "Patient.name[0].extension[0]")]
    assert "Patient" in issues[0].diagnostics


def test_a_code_outside_a_required_binding():
    p = richard_smith()
    p["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = "99"
    issues = ukcore.check(p).issues
    assert [(i.code, i.expression) for i in issues] == [
        ("code-invalid", "Patient.identifier[0].extension[0].value[x]")]
    assert "UKCore-NHSNumberVerificationStatus" in issues[0].diagnostics


def test_a_required_binding_expanded_from_a_published_expansion():
    # BirthSex includes the whole of v3-AdministrativeGender, which is not bundled: the
    # ValueSet's own published expansion says which codes it holds
    ok = {"url": SD + "Extension-UKCore-BirthSex", "valueCodeableConcept": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-AdministrativeGender",
        "code": "F"}]}}
    p = richard_smith()
    p["extension"].append(ok)
    assert found(p) == []
    ok["valueCodeableConcept"]["coding"][0]["code"] = "X"
    assert found(p) == [("code-invalid", "Patient.extension[4].value[x]")]


def test_too_many_in_a_slice_by_identifier_system():
    p = richard_smith()
    p["identifier"].append({"system": NHS, "value": "9434765919"})
    issues = ukcore.check(p).issues
    assert [(i.code, i.expression) for i in issues] == [("structure", "Patient.identifier")]
    assert "nhsNumber" in issues[0].diagnostics and "at most 1" in issues[0].diagnostics


def test_a_slice_member_missing_a_required_element():
    p = richard_smith()
    p["identifier"].append({"system": NHS, "use": "old"})
    del p["identifier"][0]  # one NHS number, without its value
    assert found(p) == [("required", "Patient.identifier[0].value")]
    p["identifier"].insert(0, {"system": "https://example.org/mrn", "value": "M1"})
    assert found(p) == [("required", "Patient.identifier[1].value")]


def test_a_missing_required_element_and_a_too_many():
    o = heart_rate()
    del o["subject"]
    o["category"].append(copy.deepcopy(o["category"][0]))
    assert sorted(found(o)) == [("required", "Observation.subject"),
                                ("structure", "Observation.category")]


def test_fixed_values():
    o = heart_rate()
    o["valueQuantity"]["unit"] = "beats/min"
    o["category"][0]["coding"][0]["code"] = "laboratory"
    issues = ukcore.check(o).issues
    assert sorted((i.code, i.expression) for i in issues) == [
        ("value", "Observation.category[0].coding[0].code"),
        ("value", "Observation.value[x].unit")]
    assert any("'per minute'" in i.diagnostics for i in issues)


def test_a_choice_of_the_wrong_type_and_an_element_the_profile_forbids():
    o = heart_rate()
    o["valueString"] = o.pop("valueQuantity") and "72"
    assert ("structure", "Observation.value[x]") in found(o)
    bp = heart_rate()
    bp["meta"]["profile"] = [SD + "UKCore-Observation-VitalSigns-BloodPressure"]
    issues = ukcore.check(bp).issues
    assert any(i.expression == "Observation.value[x]" and "not allowed" in i.diagnostics
               for i in issues)


def test_the_official_blood_pressure_example_is_valid():
    assert problems(blood_pressure()) == []
    assert ukcore.check(blood_pressure()).issues == []


def test_closed_slicing_and_a_required_slice():
    o = blood_pressure()
    o["component"][1]["code"]["text"] = "Diastolic BP"  # no slice takes it: closed
    issues = ukcore.check(o).issues
    assert [(i.code, i.expression) for i in issues] == [("structure", "Observation.component[1]")]
    assert "closed" in issues[0].diagnostics
    o = blood_pressure()
    del o["component"][0]
    issues = ukcore.check(o).issues
    assert [(i.code, i.expression) for i in issues] == [("required", "Observation.component")]
    assert "SystolicBP" in issues[0].diagnostics


def test_a_slice_inherits_its_base_elements_discriminator():
    # component:SystolicBP.code.coding:loinc is told apart by the system the base element
    # component.code.coding:loinc fixes: its display is then held to the slice's fixed value
    o = blood_pressure()
    o["component"][0]["code"]["coding"][1]["display"] = "SBP"
    assert found(o) == [("value", "Observation.component[0].code.coding[1].display")]


def test_unknown_and_mismatched_profiles():
    p = richard_smith()
    p["meta"]["profile"] = [SD + "UKCore-Nobody"]
    assert found(p) == [("structure", "Patient.meta.profile")]
    p["meta"]["profile"] = [SD + "UKCore-Observation"]
    assert found(p) == [("structure", "Patient")]


def test_r4_problems_come_first_and_are_a_400():
    p = richard_smith()
    p["gender"] = 5
    found_ = problems(p)
    assert [i.expression for i in found_] == ["Patient.gender"]
    assert write_status(found_) == 400


def test_the_location_follows_a_bundle_entry():
    p = richard_smith()
    p["extension"][0] = {"url": ETHNIC, "valueString": "x"}
    assert [i.expression for i in problems(p, "Bundle.entry[3].resource")] == [
        "Bundle.entry[3].resource.extension[0].value[x]"]


def test_terminology_a_code_system_not_bundled_is_not_checked_never_failed():
    # UKCore-ConditionCode is SNOMED CT by filter: no SNOMED CT here, so not checked
    snomed = ukcore.valueset("https://fhir.hl7.org.uk/ValueSet/UKCore-ConditionCode")
    assert "http://snomed.info/sct" in snomed.unchecked
    assert ukcore._in_valueset(snomed, "http://snomed.info/sct", "22298006") == "unchecked"
    assert ukcore._in_valueset(snomed, "http://example.org/other", "1") == "bad"
    # a whole CodeSystem that is bundled is expanded from its concepts
    ethnic = ukcore.valueset("https://fhir.hl7.org.uk/ValueSet/UKCore-EthnicCategory")
    assert not ethnic.unchecked
    assert ukcore._in_valueset(ethnic, CS + "UKCore-EthnicCategoryEngland", "G") == "ok"
    assert ukcore._in_valueset(ethnic, CS + "UKCore-EthnicCategoryEngland", "ZZ") == "bad"


# ------------------------------------------------------------------ the bundled definitions
@pytest.mark.parametrize("url", ukcore.profile_urls())
def test_every_bundled_profile_loads(url):
    prof = ukcore.profile(url)
    assert prof is not None and prof.url == url and prof.root.children
    assert prof.type and prof.type[0].isupper()
    # an empty resource of the type: only missing-element problems, never a crash
    report = ukcore.check({"resourceType": prof.type, "meta": {"profile": [url]}})
    assert {i.code for i in report.issues} <= {"required"}


@pytest.mark.parametrize("url", ukcore.extension_urls())
def test_every_bundled_extension_loads(url):
    ext = ukcore.profile(url)
    assert ext is not None and ext.type == "Extension" and ext.contexts
    assert ext.root.children["url"].el.fixed == url


def test_the_bundle_is_the_whole_uk_core_release():
    assert len(ukcore.profile_urls()) == 70 and len(ukcore.extension_urls()) == 69
    assert (ukcore.UKCORE / "LICENSE.md").read_text().count("Apache License, Version 2.0")
    for vs in ("UKCore-EthnicCategory", "UKCore-NHSNumberVerificationStatus"):
        assert ukcore.valueset("https://fhir.hl7.org.uk/ValueSet/" + vs).codes


def test_the_fhir_model_layer_imports_nothing_above_it():
    above = ("api", "governance", "identity", "store", "feeds", "web", "demo", "population")
    for path in (Path(ukcore.__file__).parent).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert (node.module or "").split(".")[0] not in above, path.name
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                parts = node.module.split(".")
                assert not (parts[0] == "sharedcare" and len(parts) > 1
                            and parts[1] in above), path.name


@pytest.mark.parametrize("where, value", [
    (("identifier", 0, "extension", 0, "valueCodeableConcept", "coding"), 1.5),
    (("identifier", 0, "extension", 0, "valueCodeableConcept", "coding", 0, "system"), [1]),
    (("extension",), {"url": 3}),
    (("extension", 0), [None]),
    (("identifier",), "x"),
    (("contact", 0, "extension", 0, "url"), None),
])
def test_a_resource_that_is_not_even_r4_is_reported_never_a_crash(where, value):
    # $validate runs the UK Core check beside the R4 one, whatever the R4 check found
    p = richard_smith()
    node = p
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    assert problems(p)  # the R4 problem
    ukcore.check(p)  # and the UK Core walk copes


def test_an_extension_without_its_value_and_a_complex_one_with_a_value():
    p = richard_smith()
    p["extension"][0] = {"url": ETHNIC}
    assert found(p) == [("required", "Patient.extension[0].value[x]")]
    p = richard_smith()
    p["extension"][1]["valueString"] = "a complex extension has no value of its own"
    assert found(p) == [("structure", "Patient.extension[1].value[x]")]


def test_a_complex_extension_missing_a_required_sub_extension():
    p = richard_smith()
    del p["extension"][2]["extension"][0]  # DeathNotificationStatus without its status
    issues = ukcore.check(p).issues
    assert [(i.code, i.expression) for i in issues] == [
        ("required", "Patient.extension[2].extension")]
    assert "deathNotificationStatus" in issues[0].diagnostics
