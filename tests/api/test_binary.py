"""Binary as itself (http://hl7.org/fhir/R4/binary.html, http.html#binary): a clinic letter
uploaded as a PDF, fetched raw or as the Binary resource -- and governed as part of the
patient's record it secures, not as directory data. Runs on SQLite and PostgreSQL.

The small world (tests/governance/small_world.py): GP1 registers P1 and P2, HOS has an open
encounter with P1; here an agreement also shares 'documents' (and mental-health) between GP1,
HOS and the care home CH1, which has no relationship with P1 until an episode of care opens."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import DATA_CATEGORY_SYSTEM
from sharedcare.fhir.xml import xml_to_resource
from sharedcare.governance.schema import audit_event
from sharedcare.store.repository import PermitAll, WriteOp
from sharedcare.web.accesslog import access_log

from ..governance.small_world import bearer, build

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n\x00\xff\xfe binary bytes"
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"


@pytest.fixture
def world(sc):
    build(sc)
    sc.governance.add_agreement("isa-docs", "letters", ["GP1", "HOS", "CH1"], ["direct-care"],
                                ["documents", "mental-health"], status="active")
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        yield sc, c


def audit_count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


def upload(c, headers, context="Patient/P1", body=PDF, media="application/pdf", **kw):
    h = {"Content-Type": media, **headers}
    if context:
        h["X-Security-Context"] = context
    return c.post("/fhir/Binary", content=body, headers=h, **kw)


def test_a_letter_uploaded_raw_comes_back_raw_or_as_a_binary(world):
    sc, c = world
    hos = bearer(sc, "hos.doc", "HOS")
    r = upload(c, hos)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["resourceType"] == "Binary" and made["contentType"] == "application/pdf"
    assert base64.b64decode(made["data"]) == PDF
    assert made["securityContext"] == {"reference": "Patient/P1"}
    url = f"/fhir/Binary/{made['id']}"
    for accept in (None, "application/pdf", "*/*", "text/html,*/*;q=0.8"):
        raw = c.get(url, headers={**hos, **({"Accept": accept} if accept else {})})
        assert raw.status_code == 200
        assert raw.content == PDF, accept
        assert raw.headers["content-type"] == "application/pdf"
        assert raw.headers["x-security-context"] == "Patient/P1"
        assert raw.headers["x-content-type-options"] == "nosniff"
        assert raw.headers["etag"] == 'W/"1"'
    as_json = c.get(url, headers={**hos, "Accept": FHIR_JSON})
    assert as_json.json()["data"] == made["data"]
    as_xml = c.get(url, headers={**hos, "Accept": FHIR_XML})
    assert xml_to_resource(as_xml.content)["data"] == made["data"]
    assert c.get(f"{url}?_format=json", headers=hos).json()["resourceType"] == "Binary"
    # PUT with raw content: a new version, same rules
    r = c.put(url, content=b"second draft", headers={
        **hos, "Content-Type": "text/plain", "X-Security-Context": "Patient/P1"})
    assert r.status_code == 200, r.text
    again = c.get(url, headers=hos)
    assert again.content == b"second draft"
    assert again.headers["content-type"].startswith("text/plain")
    assert c.get(f"{url}/_history/1", headers=hos).content == PDF


def test_a_letter_is_governed_like_the_patients_record(world):
    sc, c = world
    hos, gp = bearer(sc, "hos.doc", "HOS"), bearer(sc, "gp.doc", "GP1")
    nurse = bearer(sc, "ch.nurse", "CH1", "nurse")
    bid = upload(c, hos).json()["id"]
    url = f"/fhir/Binary/{bid}"
    # the care home shares letters by agreement but has no relationship with P1
    for accept in ("application/pdf", FHIR_JSON, FHIR_XML):
        before = audit_count(sc)
        r = c.get(url, headers={**nurse, "Accept": accept})
        assert r.status_code in (403, 404), (accept, r.status_code)
        assert PDF not in r.content and b"data" not in r.content
        assert audit_count(sc) == before + 1  # the refusal is audited, once
    # nor in a search, nor through the patient's compartment
    for url_ in ("/fhir/Binary", "/fhir/Patient/P1/Binary"):
        listed = c.get(url_, headers=nurse).json().get("entry", [])
        assert not [e for e in listed if e["resource"]["resourceType"] == "Binary"], url_
    # the GP (registered) may, under the agreement
    before = audit_count(sc)
    assert c.get(url, headers={**gp, "Accept": "application/pdf"}).content == PDF
    assert audit_count(sc) == before + 1
    # a relationship opens: an episode of care at the care home
    sc.store.write([WriteOp("PUT", "EpisodeOfCare", "eoc-ch1", {
        "resourceType": "EpisodeOfCare", "status": "active",
        "patient": {"reference": "Patient/P1"},
        "managingOrganization": {"reference": "Organization/org-CH1"}})], source_org="CH1")
    before = audit_count(sc)
    assert c.get(url, headers={**nurse, "Accept": "application/pdf"}).content == PDF
    assert audit_count(sc) == before + 1
    assert c.get(url, headers={**nurse, "Accept": FHIR_JSON}).json()["id"] == bid
    found = c.get("/fhir/Patient/P1/Binary", headers=nurse).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [bid]
    # the patient sees each fetch of their letter in their access log
    log = [e for e in access_log(sc.engine, "P1") if e["org"] == "Organisation CH1"]
    assert len([e for e in log if not e["refused"]]) >= 3  # raw, JSON, the compartment search
    assert len([e for e in log if e["refused"]]) == 3  # the three refused fetches
    with sc.engine.connect() as conn:
        rows = conn.execute(select(audit_event.c.entity, audit_event.c.outcome).where(
            audit_event.c.patient_id == "P1", audit_event.c.ods == "CH1")).all()
    assert (f"Binary/{bid}", "0") in rows and (f"Binary/{bid}", "4") in rows


def test_a_binary_secured_by_a_document_takes_its_record_and_category(world):
    sc, c = world
    gp = bearer(sc, "gp.doc", "GP1")
    sc.store.write([WriteOp("PUT", "DocumentReference", "dr-mh", {
        "resourceType": "DocumentReference", "status": "current",
        "meta": {"tag": [{"system": DATA_CATEGORY_SYSTEM, "code": "mental-health"}]},
        "subject": {"reference": "Patient/P1"},
        "content": [{"attachment": {"contentType": "application/pdf"}}]})], source_org="GP1")
    r = upload(c, gp, context="DocumentReference/dr-mh")
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    with sc.engine.connect() as conn:
        from sharedcare.store.schema import compartment, resource

        pk, category = conn.execute(select(resource.c.pk, resource.c.category).where(
            resource.c.type == "Binary", resource.c.id == bid)).one()
        patients = set(conn.execute(select(compartment.c.patient_id).where(
            compartment.c.resource_pk == pk)).scalars())
    assert patients == {"P1"} and category == "mental-health"
    # a care home without a relationship may not attach a letter to P1's document
    nurse = bearer(sc, "ch.nurse", "CH1", "nurse")
    r = upload(c, nurse, context="DocumentReference/dr-mh")
    assert r.status_code == 403, r.text
    assert sc.store.search("Binary", [], PermitAll()).total == 1
    # HOS has a relationship with P1 and the agreement shares mental-health; an admin at HOS
    # (whose role does not include it) may not see the letter
    assert c.get(f"/fhir/Binary/{bid}", headers=bearer(sc, "hos.doc", "HOS")).content == PDF
    r = c.get(f"/fhir/Binary/{bid}", headers=bearer(sc, "hos.admin", "HOS", "admin"))
    assert r.status_code in (403, 404)


def test_a_person_must_say_whose_record_a_binary_belongs_to(world):
    sc, c = world
    hos = bearer(sc, "hos.doc", "HOS")
    before = sc.store.search("Binary", [], PermitAll()).total
    r = upload(c, hos, context=None)
    assert r.status_code == 422 and "securityContext" in r.text
    r = c.post("/fhir/Binary", json={"resourceType": "Binary", "contentType": "text/plain",
                                     "data": base64.b64encode(b"x").decode()}, headers=hos)
    assert r.status_code == 422
    # nor into the record of a patient the writer has no relationship with
    r = upload(c, hos, context="Patient/P2")
    assert r.status_code == 403
    r = upload(c, hos, context="not a reference")
    assert r.status_code == 400 and "X-Security-Context" in r.text
    assert sc.store.search("Binary", [], PermitAll()).total == before
    # a partner system's feed may store unattached content (no person sees it)
    system = {"Authorization": f"Bearer {sc.governance.issue_system_token('feed', 'HOS')}"}
    r = upload(c, system, context=None)
    assert r.status_code == 201
    assert c.get(f"/fhir/Binary/{r.json()['id']}", headers=hos).status_code in (403, 404)


def test_too_large_is_a_413(world, monkeypatch):
    sc, c = world
    from sharedcare.api.operations import http

    monkeypatch.setattr(http, "MAX_BINARY", 1024)
    r = upload(c, bearer(sc, "hos.doc", "HOS"), body=b"x" * 2048)
    assert r.status_code == 413 and r.json()["issue"][0]["code"] == "too-long"
