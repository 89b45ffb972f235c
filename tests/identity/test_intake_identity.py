"""Identity on every intake path (SQLite and PostgreSQL): the FHIR API, HL7 v2 over MLLP, and the
worker the server runs for records without an NHS number -- with no manual call."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from sharedcare.feeds.hl7v2 import mllp_send
from sharedcare.feeds.service import FeedService
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM
from sharedcare.store.repository import PermitAll, WriteOp
from tests.conftest import free_port

from ._support import basis, link_of, patient, person_of, persons, queued

NHS = "9434765919"
ADT = ("MSH|^~\\&|PAS|{ods}|SC|SC|{ts}||ADT^{event}^ADT_A01|{cid}|P|2.5\r"
       "EVN|{event}|{ts}\r"
       "PID|1||{pid}||Pemberton^Oliver||19770902|M|||1 High St^^Bradford^^BD7 1DP\r"
       "PV1|1|O|CLINIC^^^{ods}\r")


def adt(ods, cid, mrn, nhs=None, event="A04", ts="20240101120000"):
    pid = f"{mrn}^^^{ods}^MR" + (f"~{nhs}^^^NHS^NH" if nhs else "")
    return ADT.format(ods=ods, cid=cid, pid=pid, event=event, ts=ts)


def msa(ack: str) -> str:
    return next(line.split("|")[1] for line in ack.split("\r") if line.startswith("MSA"))


def by_identifier(sc, value):
    [p] = [s.json() for s in sc.store.search("Patient", [("identifier", value)],
                                             PermitAll()).matches]
    return p


def test_api_patient_and_hl7_adt_with_the_same_nhs_number_are_one_person(sc, client):
    body = patient("Oliver", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RTEST", NHS)
    body.pop("id")
    r = client.post("/fhir/Patient", json=body)
    assert r.status_code == 201, r.text
    api_id = r.json()["id"]
    # Linked in the same transaction as the write: there is no waiting.
    assert link_of(sc, api_id)["assurance"] == "level4"

    feeds = FeedService(sc)
    feeds.add_feed("RHOSP", "hosp-adt", "hl7v2", status="live")
    assert msa(feeds.ingest_hl7(adt("RHOSP", "H1", "MRN77", NHS), "hosp-adt")) == "AA"
    hosp = by_identifier(sc, "MRN77")
    person = person_of(sc, hosp["id"])
    assert person["id"] == person_of(sc, api_id)["id"]
    assert {lk["target"]["reference"] for lk in person["link"]} == {
        f"Patient/{api_id}", f"Patient/{hosp['id']}"}
    assert person["identifier"] == [{"system": NHS_NUMBER_SYSTEM, "value": NHS}]
    assert basis(sc, hosp["id"]) == basis(sc, api_id) == "nhs-number"
    assert len(persons(sc)) == 1 and queued(sc) == {}


def test_transaction_with_two_records_of_one_number_makes_one_person(sc, client):
    a = patient("Ann", "Lee", "1950-01-01", "female", "M1 1AA", "RTEST", NHS, pid="t-a")
    b = patient("Anne", "Lee", "1950-01-01", "female", "M1 1AA", "RTEST", NHS, pid="t-b")
    c = patient("Zed", "Other", "1960-01-01", "male", "M2 2BB", "RTEST", pid="t-c")
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": p, "request": {"method": "PUT", "url": f"Patient/{p['id']}"}}
        for p in (a, b, c)]})
    assert r.status_code == 200, r.text
    [person] = persons(sc)
    assert {lk["target"]["reference"] for lk in person["link"]} == {"Patient/t-a", "Patient/t-b"}
    assert person["meta"]["versionId"] == "1"  # written once for both
    assert queued(sc) == {"t-c": "pending"}

    # The NHS number removed: it leaves that number's Person and waits for the model.
    client.put("/fhir/Patient/t-b", json={k: v for k, v in b.items() if k != "identifier"})
    assert person_of(sc, "t-b") is None and queued(sc)["t-b"] == "pending"
    # A deleted record leaves its Person; an empty Person is retired.
    assert client.delete("/fhir/Patient/t-a").status_code in (200, 204)
    assert persons(sc) == []


@pytest.fixture
def server_with_mllp(sc):
    """The real server (uvicorn: its lifespan runs the identity worker) with MLLP attached."""
    import uvicorn

    from sharedcare.app import create_app
    from sharedcare.feeds.service import attach_mllp

    app = create_app(sc)
    mllp_port = free_port()
    attach_mllp(app, sc, "127.0.0.1", mllp_port)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", mllp_port
    server.should_exit = True
    thread.join(30)
    assert not thread.is_alive()


def test_worker_links_another_organisations_record_without_nhs_number(sc, server_with_mllp):
    base, mllp_port = server_with_mllp
    feeds = FeedService(sc)
    # The listener routes by sending facility (MSH-4).
    feeds.add_feed("LAZ01", "council-adt", "hl7v2", {"senders": ["LAZ01"]}, status="live")
    token = sc.governance.issue_system_token("test-system", "RTEST")
    gp = patient("Oliver", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RTEST", NHS)
    gp.pop("id")
    r = httpx.post(f"{base}/fhir/Patient", json=gp, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    gp_id = r.json()["id"]
    # The council registers the same person: same name, birth date, sex and postcode, its own
    # client number, no NHS number -- over MLLP, to the server.
    [ack] = mllp_send("127.0.0.1", mllp_port, [adt("LAZ01", "C1", "CL9")], timeout=30)
    assert msa(ack) == "AA"
    council = by_identifier(sc, "CL9")
    deadline = time.time() + 30
    while time.time() < deadline and (person_of(sc, council["id"]) is None or queued(sc)):
        time.sleep(0.2)
    assert person_of(sc, council["id"]) is not None, "the worker did not resolve the record"
    assert person_of(sc, council["id"])["id"] == person_of(sc, gp_id)["id"]
    assert basis(sc, council["id"]) == "match"
    assert link_of(sc, council["id"])["assurance"] == "level3"
    assert queued(sc) == {}


def test_partner_merge_a40_stays_within_the_partner(sc):
    feeds = FeedService(sc)
    feeds.add_feed("RHOSP", "hosp-adt", "hl7v2", status="live")
    gp = patient("Oliver", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RGP01", NHS, pid="gp-1")
    sc.store.write([WriteOp("PUT", "Patient", "gp-1", gp)])
    for msg in (adt("RHOSP", "H1", "OLD1"), adt("RHOSP", "H2", "NEW1", NHS,
                                                 ts="20240101130000")):
        assert msa(feeds.ingest_hl7(msg, "hosp-adt")) == "AA"
    person_before = person_of(sc, "gp-1")
    a40 = ("MSH|^~\\&|PAS|RHOSP|SC|SC|20240102120000||ADT^A40^ADT_A39|M1|P|2.5\rEVN|A40\r"
           f"PID|1||NEW1^^^RHOSP^MR~{NHS}^^^NHS^NH||Pemberton^Oliver||19770902|M\r"
           "MRG|OLD1^^^RHOSP^MR\r")
    assert msa(feeds.ingest_hl7(a40, "hosp-adt")) == "AA"
    retired, survivor = by_identifier(sc, "OLD1"), by_identifier(sc, "NEW1")
    assert retired["active"] is False
    assert {"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"} in \
        retired["link"]
    # The other partner's record is untouched, and so is the Person: the hospital's merge says
    # nothing about anyone else's records; a link across partners is a separate fact.
    assert sc.store.read("Patient", "gp-1", PermitAll()).json()["meta"]["versionId"] == "1"
    person_after = person_of(sc, "gp-1")
    assert person_after == person_before
    assert {lk["target"]["reference"] for lk in person_after["link"]} == {
        "Patient/gp-1", f"Patient/{survivor['id']}"}
    assert person_of(sc, retired["id"]) is None or \
        person_of(sc, retired["id"])["id"] != person_after["id"]


