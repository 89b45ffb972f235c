"""Feeds end to end: HL7 v2 over a real MLLP socket into a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM, feed_source
from sharedcare.feeds.hl7v2 import mllp_send, serve_mllp
from sharedcare.feeds.service import MESSAGE_TIME_EXT, FeedService, mllp_handler
from sharedcare.store.repository import PermitAll
from sharedcare.store.schema import resource, resource_version
from tests.conftest import data_dir

ODS = "RTEST"
FEED = "pas-adt"


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8").lstrip("\ufeff").replace("\r\n", "\r").replace(
        "\n", "\r")


def segs(message: str, sid: str) -> list[list[str]]:
    return [line.split("|") for line in re.split(r"\r", message) if line.split("|")[0] == sid]


def msa(ack: str) -> list[str]:
    return next(line.split("|") for line in ack.split("\r") if line.startswith("MSA"))


def err(ack: str) -> str:
    return next((line for line in ack.split("\r") if line.startswith("ERR")), "")


def counts(sc, exclude=("OperationOutcome", "Endpoint")) -> dict[str, tuple[int, int]]:
    """(current rows, versions) per type: what 'no trace' and 'idempotent' are measured by."""
    with sc.engine.connect() as c:
        rows = dict(c.execute(select(resource.c.type, func.count()).group_by(resource.c.type)
                              ).all())
        versions = dict(c.execute(
            select(resource.c.type, func.count()).select_from(resource_version.join(
                resource, resource.c.pk == resource_version.c.resource_pk))
            .group_by(resource.c.type)).all())
    return {t: (n, versions.get(t, 0)) for t, n in rows.items() if t not in exclude}


def search(sc, rtype, *params):
    return [s.json() for s in sc.store.search(rtype, list(params) + [("_count", "500")],
                                              PermitAll()).matches]


@pytest.fixture
def feeds(sc):
    service = FeedService(sc)
    service.add_feed(ODS, FEED, "hl7v2", status="live")
    return service


@pytest.fixture
def mllp(feeds):
    """A real MLLP listener on a real port (its own event loop thread) backed by the sc store."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        serve_mllp("127.0.0.1", 0, mllp_handler(feeds, FEED)), loop).result(10)
    port = server.sockets[0].getsockname()[1]

    def send(*messages: str) -> list[str]:
        return mllp_send("127.0.0.1", port, list(messages), timeout=60)

    yield send
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def samples() -> list[Path]:
    folder = data_dir("hl7v2")
    out = []
    for p in sorted(folder.glob("*.hl7")):
        msh = segs(read(p), "MSH")[0]
        if msh[8].split("^")[0] in ("ADT", "ORU", "MDM"):
            out.append(p)
    return out


def test_every_sample_is_acked_and_stored(sc, feeds, mllp):
    paths = samples()
    assert len(paths) >= 60
    messages = [read(p) for p in paths]
    acks = mllp(*messages)
    for p, m, ack in zip(paths, messages, acks, strict=True):
        code = msa(ack)
        assert code[1] == "AA", (p.name, err(ack))
        assert code[2] == segs(m, "MSH")[0][9]  # MSA-2 echoes the control id
    # Each message's own receipt is there, and every PID-3 identifier value found a Patient.
    provenances = search(sc, "Provenance", ("_source", feed_source(ODS, FEED)))
    assert len(provenances) == len(paths)
    patients = search(sc, "Patient")
    values = {i["value"] for p in patients for i in p.get("identifier") or []}
    for m in messages:
        for pid in segs(m, "PID"):
            first = pid[3].split("~")[0].split("^")[0]
            if first:
                assert first in values
    for p in patients:  # provenance on every resource
        assert p["meta"]["source"] == feed_source(ODS, FEED)
        assert {"system": SOURCE_ORG_SYSTEM, "code": ODS} in p["meta"]["tag"]


def test_fields_match_source_segments(sc, feeds, mllp):
    folder = data_dir("hl7v2")
    a01, oru, mdm = (read(folder / n) for n in ("ADT-A01-01.hl7", "ORU-R01-01.hl7",
                                                  "MDM-T02-01.hl7"))
    assert [msa(a)[1] for a in mllp(a01)] == ["AA"]

    pid = segs(a01, "PID")[0]
    [patient] = search(sc, "Patient", ("identifier", pid[3].split("~")[0].split("^")[0]))
    assert patient["name"][0]["family"] == pid[5].split("^")[0].split("&")[0]  # EVERYMAN
    assert patient["name"][0]["given"][0] == pid[5].split("^")[1]  # ADAM
    assert patient["birthDate"].replace("-", "") == pid[7][:8]
    assert patient["gender"] == {"M": "male", "F": "female"}[pid[8]]
    pv1 = segs(a01, "PV1")[0]
    [enc] = search(sc, "Encounter", ("identifier", pv1[19].split("^")[0]))
    assert enc["subject"]["reference"] == f"Patient/{patient['id']}"
    assert enc["status"] == "in-progress"  # A01 admit
    assert [msa(a)[1] for a in mllp(oru, mdm)] == ["AA"] * 2

    obx = segs(oru, "OBX")
    obr = segs(oru, "OBR")[0]
    reports = search(sc, "DiagnosticReport", ("identifier", obr[3].split("^")[0]))
    assert len(reports) == 1
    assert reports[0]["code"]["coding"][0]["code"] == obr[4].split("^")[0]
    observations = [sc.store.read("Observation", r["reference"].split("/")[1], PermitAll()).json()
                    for r in reports[0]["result"]]
    assert observations  # (OBX inside the SPM group are about the specimen, not results)
    assert {o["code"]["coding"][0]["code"] for o in observations} <= {
        o[3].split("^")[0] for o in obx}
    for o in observations:
        assert o["subject"] == reports[0]["subject"]

    txa = segs(mdm, "TXA")[0]
    [doc] = search(sc, "DocumentReference")
    assert doc["masterIdentifier"]["value"].endswith(txa[12].split("^")[0])
    assert doc["status"] == "current" and doc["docStatus"] == "final"  # TXA-17 AU
    mdm_pid = segs(mdm, "PID")[0]
    subject = sc.store.read("Patient", doc["subject"]["reference"].split("/")[1],
                            PermitAll()).json()
    assert subject["name"][0]["family"] == mdm_pid[5].split("^")[0]


GOOD = ("MSH|^~\\&|PAS|RTEST|SC|SC|20240101120000||ADT^A01^ADT_A01|{cid}|P|2.5\r"
        "EVN|A01|20240101120000\r"
        "PID|1||{mrn}^^^RTEST^MR~9434765919^^^NHS^NH||Smith^Jane||19800101|F|||1 High St^^Leeds^^LS1 4AB\r"
        "PV1|1|I|WARD1^^^RTEST||||||||||||||||{visit}\r")


@pytest.mark.parametrize("bad, reason", [
    ("XSH|^~\\&|PAS|RTEST|SC|SC|20240101120000||ADT^A01|X1|P|2.5\rPID|1||1^^^^MR\r", "bad MSH"),
    ("MSH|^~\\&|PAS|RTEST|SC|SC|20240101120000||ADT^A01^ADT_A01|X2|P|2.5\rEVN|A01\rPID|1\r",
     "truncated PID"),
    ("MSH|^~\\&|PAS|RTEST|SC|SC|20240101120000||ADT^A01^ADT_A01|X3|P|2.5\rEVN|A01\r"
     "PID|1||7^^^RTEST^MR||Smith^Jane||19800101|F\r", "A01 without PV1 (truncated message)"),
    ("MSH|#~\\&|PAS|RTEST|SC|SC|20240101120000||ADT^A01|X4|P|2.5\rPID|1||1^^^^MR\r",
     "wrong encoding characters"),
    ("MSH|^~\\&|PAS|RTEST|SC|SC|20240101120000||ADT^Z99^ADT_A01|X5|P|2.5\rPID|1||1^^^^MR\r",
     "unknown event"),
    ("MSH|^~\\&|PAS|RTEST|SC|SC|20241301120000||ADT^A01^ADT_A01|X6|P|2.5\rPID|1||1^^^^MR\r",
     "bad MSH-7"),
])
def test_malformed_messages_nack_and_leave_no_trace(sc, feeds, mllp, bad, reason):
    mllp(GOOD.format(cid="seed", mrn="M1", visit="V1"))
    before = counts(sc)
    [ack] = mllp(bad)
    assert msa(ack)[1] in ("AE", "AR"), reason
    assert err(ack), reason  # ERR segment with the reason
    assert "Jane" not in ack and "Smith" not in ack
    assert counts(sc) == before, reason
    assert feeds.quality_report(ODS)["records_rejected"] == 1


def test_redelivery_is_idempotent(sc, feeds, mllp):
    msg = GOOD.format(cid="C1", mrn="M1", visit="V1")
    assert msa(mllp(msg)[0])[1] == "AA"
    before = counts(sc)
    assert [msa(a)[1] for a in mllp(msg, msg, msg)] == ["AA"] * 3
    assert counts(sc) == before
    assert len(search(sc, "Provenance")) == 1


def test_older_message_does_not_overwrite_newer(sc, feeds, mllp):
    a01 = GOOD.format(cid="A01", mrn="M9", visit="V9")  # 2024-01-01 12:00, Smith
    a08 = (a01.replace("ADT^A01^ADT_A01|A01", "ADT^A08^ADT_A01|A08")
           .replace("20240101120000", "20240102090000").replace("Smith^Jane", "Jones^Jane"))
    assert [msa(a)[1] for a in mllp(a08, a01)] == ["AA", "AA"]  # newer first, older late
    [patient] = search(sc, "Patient", ("identifier", "M9"))
    assert patient["name"][0]["family"] == "Jones"
    stamp = next(e for e in patient["meta"]["extension"] if e["url"] == MESSAGE_TIME_EXT)
    assert stamp["valueInstant"].startswith("2024-01-02T09:00:00")
    assert patient["meta"]["versionId"] == "1"  # the late A01 wrote nothing over it
    # In arrival order the newer one wins as well.
    a01b = a01.replace("M9", "M10").replace("V9", "V10").replace("|A01|", "|A01b|")
    a08b = a08.replace("M9", "M10").replace("V9", "V10").replace("|A08|", "|A08b|")
    mllp(a01b, a08b)
    [patient] = search(sc, "Patient", ("identifier", "M10"))
    assert patient["name"][0]["family"] == "Jones"


def test_paused_feed_nacks_with_reason(sc, feeds, mllp):
    feeds.set_status(FEED, "paused")
    before = counts(sc)
    [ack] = mllp(GOOD.format(cid="P1", mrn="M1", visit="V1"))
    assert msa(ack)[1] == "AR" and "paused" in err(ack)
    assert counts(sc) == before
    feeds.set_status(FEED, "live")
    assert msa(mllp(GOOD.format(cid="P1", mrn="M1", visit="V1"))[0])[1] == "AA"
    assert [f.status for f in feeds.list_feeds()] == ["live"]


def test_merge_and_unmerge_keep_history(sc, feeds, mllp):
    old = GOOD.format(cid="O1", mrn="OLD1", visit="VO").replace("~9434765919^^^NHS^NH", "")
    new = GOOD.format(cid="N1", mrn="NEW1", visit="VN").replace("20240101120000",
                                                                 "20240101130000")
    a40 = ("MSH|^~\\&|PAS|RTEST|SC|SC|20240102120000||ADT^A40^ADT_A39|M1|P|2.5\rEVN|A40\r"
           "PID|1||NEW1^^^RTEST^MR||Smith^Jane||19800101|F\rMRG|OLD1^^^RTEST^MR\r")
    assert [msa(a)[1] for a in mllp(old, new, a40)] == ["AA"] * 3
    [retired] = search(sc, "Patient", ("identifier", "OLD1"))
    [survivor] = search(sc, "Patient", ("identifier", "NEW1"))
    assert retired["active"] is False
    assert {"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"} in \
        retired["link"]
    assert any(lk["type"] == "replaces" and lk["other"]["reference"] == f"Patient/{retired['id']}"
               for lk in survivor["link"])
    feeds.unmerge(survivor["id"], retired["id"], "wrong patient merged")
    restored = sc.store.read("Patient", retired["id"], PermitAll()).json()
    assert restored.get("active") is not False and not restored.get("link")
    history, _ = sc.store.history(PermitAll(), "Patient", retired["id"])
    assert len(history) == 3  # created, merged, unmerged
    survivor = sc.store.read("Patient", survivor["id"], PermitAll()).json()
    assert not survivor.get("link")


def test_nhs_number_links_person_and_quality_report(sc, feeds, mllp):
    mllp(GOOD.format(cid="Q1", mrn="M1", visit="V1"),
         GOOD.format(cid="Q2", mrn="M2", visit="V2").replace("~9434765919^^^NHS^NH", ""))
    feeds.add_feed("RGP", "gp-fhir", "fhir", status="live")
    feeds.ingest_fhir_bundle({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:0b7f6b9e-3f0c-4d2e-9a31-000000000001",
        "resource": {"resourceType": "Patient", "identifier": [
            {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}], "name": [{"family": "Smith"}]},
        "request": {"method": "POST", "url": "Patient"}}]}, "gp-fhir")
    [person] = search(sc, "Person", ("identifier", f"{NHS_NUMBER_SYSTEM}|9434765919"))
    assert len(person["link"]) == 2 and {lk["assurance"] for lk in person["link"]} == {"level4"}
    gp_patient = search(sc, "Patient", ("_tag", f"{SOURCE_ORG_SYSTEM}|RGP"))[0]
    assert gp_patient["meta"]["source"] == feed_source("RGP", "gp-fhir")
    report = feeds.quality_report(ODS)
    assert report["patients"] == 2
    assert report["nhs_number"]["valid"] == 1 and report["nhs_number"]["valid_share"] == 0.5
    assert report["feeds"][FEED]["messages"] == 2
    assert report["stale_feeds"] == []
    assert report["missing_mandatory"]["birthDate"] == 0
