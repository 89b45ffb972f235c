"""A repeating primitive whose entry has an extension but no value: FHIR JSON writes null in the
list and the extension at the same index of `_name` (http://hl7.org/fhir/R4/json.html#primitive),
as HAPI FHIR serialises it. Accepted, stored as sent, indexed, and given back in JSON and XML."""

from __future__ import annotations

from sharedcare.fhir.xml import xml_to_resource

from ..fhir._support import FHIR_JSON, outcome

QUALIFIER = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier",
                            "valueCode": "IN"}]}
PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "NULLS-1"}],
           "name": [{"family": "Nullington", "given": ["Jo", None], "_given": [None, QUALIFIER]}],
           "address": [{"line": [None, "1 High Street"], "_line": [QUALIFIER, None]}]}


def test_a_null_entry_with_its_extension_is_accepted_and_given_back(client):
    r = client.post("/fhir/Patient", json=PATIENT, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    got = client.get(f"/fhir/Patient/{rid}").json()
    assert got["name"][0]["given"] == ["Jo", None]
    assert got["name"][0]["_given"] == [None, QUALIFIER]
    assert got["address"][0]["line"] == [None, "1 High Street"]
    found = client.get("/fhir/Patient", params={"given": "Jo", "family": "Nullington"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [rid]
    xml = client.get(f"/fhir/Patient/{rid}", headers={"Accept": "application/fhir+xml"})
    assert xml.status_code == 200
    back = xml_to_resource(xml.content)
    assert back["name"][0]["given"] == ["Jo", None] and back["name"][0]["_given"][1] == QUALIFIER
    assert client.get(f"/fhir/Patient/{rid}/$everything").status_code == 200


def test_a_null_without_its_extension_is_a_400_naming_the_entry(client):
    bad = {**PATIENT, "name": [{"family": "Nullington", "given": ["Jo", None]}]}
    r = client.post("/fhir/Patient", json=bad, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 400
    text = outcome(r)
    assert "Patient.name[0].given[1]" in text and "_given[1]" in text
