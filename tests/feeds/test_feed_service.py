"""Feeds end to end: HL7 v2 over a real MLLP socket into a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sharedcare.feeds.hl7v2 import mllp_send, serve_mllp
from sharedcare.feeds.service import MESSAGE_TIME_EXT, FeedService, mllp_handler
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM, feed_source
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


# ---------------------------------------------------------------- group commit (issue 16, P6)
SEQ = ("MSH|^~\\&|PAS|RTEST|SC|SC|20240301120000||ADT^{event}^ADT_A01|{cid}|P|2.5\r"
       "EVN|{event}|20240301120000\r"
       "PID|1||{mrn}^^^RTEST^MR||{family}^Jane||19800101|F|||1 High St^^Leeds^^LS1 4AB\r"
       "PV1|1|I|{ward}^^^RTEST||||||||||||||||{visit}\r")


def seq(conn: int, n: int, family: str | None = None, mrn: str | None = None,
        ward: str | None = None) -> str:
    """Message n of connection `conn`: all of a connection's messages are about its patient and
    carry the same message time, so each one applied overwrites the one before it."""
    return SEQ.format(event="A01" if n == 0 else "A08", cid=f"G{conn}-{n}", mrn=mrn or f"GM{conn}",
                      visit=f"GV{mrn or conn}", family=family or f"Fam{conn}x{n}",
                      ward=ward or f"WARD{conn}")


def families_in_history(sc, mrn: str) -> list[str]:
    [patient] = search(sc, "Patient", ("identifier", mrn))
    history, _ = sc.store.history(PermitAll(), "Patient", patient["id"], count=100)
    return [s.json()["name"][0]["family"] for _, s, _ in sorted(history, key=lambda h: h[1].version)]


def record_batches(feeds) -> list[int]:
    sizes: list[int] = []
    commit_group = feeds._commit_group

    def spy(batch):
        sizes.append(len(batch))
        return commit_group(batch)

    feeds._commit_group = spy
    return sizes


def record_units(feeds) -> list[int]:
    units: list[int] = []
    write_group = feeds._write_group

    def spy(conn, group, retry):
        units.append(len(group))
        return write_group(conn, group, retry)

    feeds._write_group = spy
    return units


def test_four_connections_interleaved_each_acked_in_order_all_committed(sc, feeds, mllp):
    sizes = record_batches(feeds)
    units = record_units(feeds)
    stall = threading.Event()

    def slow_first_commit(batch):  # the first commit waits, so the others queue behind it
        if not stall.is_set():
            stall.set()
            time.sleep(0.3)

    feeds._before_commit = slow_first_commit
    n = 12
    results: dict[int, list[str]] = {}

    def client(k: int) -> None:
        results[k] = mllp(*[seq(k, i) for i in range(n)])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == [0, 1, 2, 3]
    for k, acks in results.items():
        assert [msa(a)[1:3] for a in acks] == [["AA", f"G{k}-{i}"] for i in range(n)]
        # applied in the order sent: one version per message, the last one current
        assert families_in_history(sc, f"GM{k}") == [f"Fam{k}x{i}" for i in range(n)]
    assert len(search(sc, "Provenance")) == 4 * n
    assert sum(sizes) == 4 * n and max(sizes) > 1  # messages of several connections shared one
    assert max(units) > 1  # and, touching different patients, were written as one unit


def test_bad_message_in_a_group_is_nacked_alone_and_leaves_nothing(sc, feeds):
    """Four callers' messages in one transaction; the third fails inside the store after its
    rows were written (a write hook refuses it): its savepoint rolls back, the rest commit."""
    from sharedcare.fhir.outcome import FHIRError

    def refuse(conn, results):
        for r in results:
            if r.stored.type == "Patient" and b"Poison" in (r.stored.content or b""):
                raise FHIRError.of(422, "business-rule", "refused by a write hook",
                                   "Patient.name")

    sc.store.after_write.append(refuse)
    sizes = record_batches(feeds)
    units = record_units(feeds)
    release = threading.Event()
    first = threading.Event()

    def hold_first(batch):
        if not first.is_set():
            first.set()
            assert release.wait(30)

    feeds._before_commit = hold_first
    before = counts(sc)
    acks: dict[int, str] = {}

    def send(k: int, family: str | None = None) -> None:
        acks[k] = feeds.ingest_hl7(seq(k, 0, family), FEED)

    leader = threading.Thread(target=send, args=(0,))
    leader.start()
    assert first.wait(30)
    others = [threading.Thread(target=send, args=(k, "Poison" if k == 2 else None))
              for k in (1, 2, 3)]
    for t in others:
        t.start()
    deadline = time.time() + 30
    while len(feeds._gc_queue) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert len(feeds._gc_queue) == 3
    assert acks == {}  # nothing is ACKed before its commit
    release.set()
    for t in [leader, *others]:
        t.join(60)
    sc.store.after_write.remove(refuse)
    assert sizes == [1, 3]
    assert units == [3]  # tried as one unit, then one by one
    assert {k: msa(a)[1] for k, a in acks.items()} == {0: "AA", 1: "AA", 2: "AE", 3: "AA"}
    assert "Patient.name" in err(acks[2]) and "Poison" not in acks[2]
    assert not search(sc, "Patient", ("family", "Poison"))
    after = counts(sc)
    assert after["Patient"][0] == before.get("Patient", (0, 0))[0] + 3
    assert after["Provenance"][0] == before.get("Provenance", (0, 0))[0] + 3
    assert feeds.quality_report(ODS)["records_rejected"] == 1


def test_ack_only_after_commit_and_a_failed_commit_nacks_the_whole_group(sc, feeds, mllp):
    """The commit is held: no ACK byte may arrive. Then a COMMIT that fails: every message of
    its group is NACKed and nothing of them is in the store; sent again, they are accepted."""
    release = threading.Event()
    seen: list[bool] = []

    def hold(batch):
        seen.append(True)
        assert release.wait(30)

    assert msa(mllp(seq(9, 0))[0])[1] == "AA"
    feeds._before_commit = hold
    results: list[str] = []
    t = threading.Thread(target=lambda: results.extend(mllp(seq(9, 1))))
    t.start()
    deadline = time.time() + 30
    while not seen and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert results == []  # the transaction has not committed: no ACK yet
    assert families_in_history(sc, "GM9") == ["Fam9x0"]  # and its data is not visible
    release.set()
    t.join(30)
    assert msa(results[0])[1] == "AA"
    assert families_in_history(sc, "GM9") == ["Fam9x0", "Fam9x1"]

    def fail(batch):
        raise OSError("disk gone at COMMIT")

    feeds._before_commit = fail
    before = counts(sc)
    out: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, mllp(seq(k + 20, 0))))
               for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert all(msa(a[0])[1] == "AE" and "207" in err(a[0]) and "disk" not in a[0]
               for a in out.values())
    assert counts(sc) == before
    feeds._before_commit = None
    for k in range(4):
        assert msa(mllp(seq(k + 20, 0))[0])[1] == "AA"
    assert counts(sc)["Patient"][0] == before["Patient"][0] + 4


def test_prepared_conditional_matches_agree_with_the_store(sc, feeds, mllp):
    from urllib.parse import quote

    assert [msa(a)[1] for a in mllp(seq(30, 0), seq(31, 0), seq(31, 1))] == ["AA"] * 3
    tag = f"_tag={quote(SOURCE_ORG_SYSTEM, safe=':/')}|{ODS}"
    [patient] = search(sc, "Patient", ("identifier", "GM31"))
    mrn = next(i for i in patient["identifier"] if i["value"] == "GM31")
    queries = [("Patient", f"identifier={quote(mrn['system'], safe=':/')}|GM31&{tag}"),
               ("Patient", f"identifier={quote(mrn['system'], safe=':/')}|GM31"),
               ("Patient", f"identifier={quote(mrn['system'], safe=':/')}|NOPE&{tag}"),
               ("Patient", f"{tag}"),
               ("Patient", f"identifier={NHS_NUMBER_SYSTEM}|9434765919"),
               ("Patient", "identifier=GM31"),
               ("Encounter", f"identifier=GV31&{tag}"),
               ("Patient", "family=Fam31x1")]
    with sc.engine.connect() as conn:
        for rtype, q in queries:
            assert sorted(feeds._match(rtype, q, conn)) == sorted(
                sc.store.match_ids(rtype, q, conn, policy=PermitAll())), q
        dup, found = feeds._lookups(conn, "no-such-receipt", queries[:3])
        assert dup is False
        for rtype, q in queries[:3]:
            assert sorted(found[(rtype, q)]) == sorted(
                sc.store.match_ids(rtype, q, conn, policy=PermitAll())), q


def test_routing_by_sender_uses_the_cached_feed_list_and_sees_new_feeds(sc, feeds):
    msg = seq(40, 0).replace("|PAS|RTEST|", "|LABSYS|RLAB|")
    assert msa(feeds.ingest_hl7(msg))[1] == "AR"  # no feed for this sender yet
    feeds.add_feed("RLAB", "lab-feed", "hl7v2", mapping={"senders": ["RLAB"]}, status="live")
    assert feeds.feed_for_message(msg) == "lab-feed"  # add_feed refreshed the routes
    assert msa(feeds.ingest_hl7(msg))[1] == "AA"
    assert feeds.feed_for_message(seq(41, 0)) is None  # PAS/RTEST names no feed


def test_messages_about_one_patient_in_one_group_apply_in_queue_order(sc, feeds):
    """Four callers in one transaction: two about the same patient (by MRN), one sharing a
    ward with another. They may not be written as one unit (the second would not see the
    first's Patient): one Patient, two versions in queue order; every message accepted."""
    sizes = record_batches(feeds)
    units = record_units(feeds)
    release, first = threading.Event(), threading.Event()

    def hold_first(batch):
        if not first.is_set():
            first.set()
            assert release.wait(30)

    feeds._before_commit = hold_first
    acks: dict[int, str] = {}
    messages = {0: seq(50, 0),
                1: seq(51, 0, family="First", mrn="SAME"),
                2: seq(52, 1, family="Second", mrn="SAME"),
                3: seq(53, 0, ward="WARD51")}

    def send(k: int) -> None:
        acks[k] = feeds.ingest_hl7(messages[k], FEED)

    leader = threading.Thread(target=send, args=(0,))
    leader.start()
    assert first.wait(30)
    others = []
    for k in (1, 2, 3):  # queued in this order
        others.append(threading.Thread(target=send, args=(k,)))
        others[-1].start()
        deadline = time.time() + 30
        while len(feeds._gc_queue) < k and time.time() < deadline:
            time.sleep(0.005)
    release.set()
    for t in [leader, *others]:
        t.join(60)
    assert sizes == [1, 3]
    assert {k: msa(a)[1] for k, a in acks.items()} == {0: "AA", 1: "AA", 2: "AA", 3: "AA"}
    assert families_in_history(sc, "SAME") == ["First", "Second"]
    assert len(search(sc, "Location")) == 3  # WARD50, WARD51 (two messages), WARD52
    assert units == [1, 2]  # 51 alone; 52 planned again after it, written with 53
