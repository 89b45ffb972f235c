"""The outbox: events are written in the write's own transaction, on every intake path, and
only for writes that matter (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.policy import Access
from sharedcare.notify.schema import notify_subscription
from sharedcare.store.repository import WriteOp

from ._support import FEED, GP, HOSPITAL, ack_ok, admission, events, world


def enc(status: str, klass: str = "IMP", pid: str = "p1") -> dict:
    return {"resourceType": "Encounter", "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": klass}, "subject": {"reference": f"Patient/{pid}"}}


def kinds(sc) -> list[tuple[str, str, list[str]]]:
    return [(e.rtype, e.rid, e.kinds.split()) for e in events(sc)]


def test_encounter_transitions_patient_death_and_results(sc):
    w = sc.store.write
    w([WriteOp("PUT", "Patient", "p1", {"resourceType": "Patient"})], source_org=HOSPITAL)
    assert events(sc) == []  # a Patient without a death is no event
    w([WriteOp("PUT", "Encounter", "e1", enc("in-progress"))], source_org=HOSPITAL)
    w([WriteOp("PUT", "Encounter", "e1", {**enc("in-progress"), "serviceType": {"text": "x"}})],
      source_org=HOSPITAL)  # changed, but still in progress: no second admission
    w([WriteOp("PUT", "Encounter", "e1", enc("finished"))], source_org=HOSPITAL)
    w([WriteOp("PUT", "Encounter", "e1", enc("finished"))], source_org=HOSPITAL)  # unchanged
    w([WriteOp("PUT", "Encounter", "e2", enc("arrived", "EMER"))], source_org=HOSPITAL)
    w([WriteOp("PUT", "Encounter", "e3", enc("in-progress", "AMB"))], source_org=HOSPITAL)
    w([WriteOp("PUT", "Condition", "c1", {"resourceType": "Condition",
                                           "subject": {"reference": "Patient/p1"}})],
      source_org=HOSPITAL)
    w([WriteOp("PUT", "Observation", "o1", {"resourceType": "Observation", "status": "final",
                                             "code": {"text": "Hb"},
                                             "subject": {"reference": "Patient/p1"}})],
      source_org=HOSPITAL)
    w([WriteOp("PUT", "Patient", "p1", {"resourceType": "Patient",
                                         "deceasedDateTime": "2026-01-01"})], source_org=HOSPITAL)
    w([WriteOp("PUT", "Patient", "p1", {"resourceType": "Patient", "gender": "female",
                                         "deceasedDateTime": "2026-01-01"})], source_org=HOSPITAL)
    got = kinds(sc)
    assert got == [
        ("Encounter", "e1", ["encounter-start", "admission"]),
        ("Encounter", "e1", ["encounter-end", "discharge"]),
        ("Encounter", "e2", ["encounter-start", "emergency"]),
        ("Encounter", "e3", ["encounter-start"]),
        ("Observation", "o1", ["result"]),
        ("Patient", "p1", ["death"]),
    ]
    assert {e.patient_id for e in events(sc)} == {"p1"}
    assert {e.ods for e in events(sc)} == {HOSPITAL}


def test_no_event_without_its_data(sc):
    """A unit of work that fails leaves neither its data nor its events."""
    sc.store.write([WriteOp("PUT", "Encounter", "e1", enc("planned"))], source_org=HOSPITAL)
    with pytest.raises(FHIRError):
        sc.store.write([WriteOp("PUT", "Encounter", "e2", enc("in-progress")),
                        WriteOp("PUT", "Encounter", "e1", enc("in-progress"), if_match=7)],
                       source_org=HOSPITAL)
    assert events(sc) == []
    assert not sc.store.exists("Encounter", "e2")


def test_hl7_admission_is_an_event_once(sc):
    feeds = world(sc)
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))  # redelivered: changes nothing
    got = kinds(sc)
    assert [(t, k) for t, _, k in got] == [("Encounter", ["encounter-start", "admission"])]
    assert ack_ok(feeds.ingest_hl7(admission(1, discharged=True), FEED))
    assert [k for _, _, k in kinds(sc)][-1] == ["encounter-end", "discharge"]


def test_criteria_subscription_makes_other_types_events(sc, client):
    cond = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}}
    sc.store.write([WriteOp("PUT", "Condition", "c0", cond)],
                   source_org=HOSPITAL)
    assert events(sc) == []
    r = client.post("/fhir/Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "problems",
        "criteria": "Condition?clinical-status=active",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}})
    assert r.status_code == 201, r.text
    from sharedcare.notify.events import forget_criteria

    forget_criteria()
    sc.store.write([WriteOp("PUT", "Condition", "c1", cond)],
                   source_org=HOSPITAL)
    assert [(t, i) for t, i, _ in kinds(sc)] == [("Condition", "c1")]


def test_break_glass_and_declared_relationship_are_events(sc):
    sc.governance.add_organisation(GP, "GP", "gp-practice")
    sc.store.write([WriteOp("PUT", "Patient", "p1", {"resourceType": "Patient"})],
                   source_org=HOSPITAL)
    a = sc.governance.prepare(Access("dr.who", GP, "clinician"))
    sc.governance.break_glass(a, "p1", "unconscious in the street, needs history")
    sc.governance.declare_relationship(a, "p1", "new patient registering at the practice")
    got = events(sc)
    assert [(e.kinds.split(), e.patient_id, e.ods, e.actor) for e in got] == [
        (["break-glass"], "p1", GP, "dr.who"), (["declared-relationship"], "p1", GP, "dr.who")]


BAD = [
    ({"status": "requested", "channel": {"type": "rest-hook", "endpoint": "http://x/"}},
     "Subscription.criteria"),
    ({"status": "requested", "criteria": "Encounter?nonsense-param=1",
      "channel": {"type": "rest-hook", "endpoint": "http://x/"}}, "Subscription.criteria"),
    ({"status": "requested", "criteria": "Encounter?class=IMP",
      "channel": {"type": "websocket"}}, "Subscription.channel.type"),
    ({"status": "requested", "criteria": "Encounter?class=IMP",
      "channel": {"type": "rest-hook", "endpoint": "ftp://x/"}}, "Subscription.channel.endpoint"),
    ({"status": "requested", "criteria": "Encounter?class=IMP",
      "channel": {"type": "rest-hook", "endpoint": "http://x/", "payload": "text/csv"}},
     "Subscription.channel.payload"),
    ({"status": "requested", "criteria": "Encounter?class=IMP",
      "channel": {"type": "rest-hook", "endpoint": "http://x/", "header": ["no colon"]}},
     "Subscription.channel.header[0]"),
    ({"status": "requested", "criteria": "https://fhir.sharedcare.org.uk/SubscriptionTopic/nope",
      "channel": {"type": "rest-hook", "endpoint": "http://x/"}}, "Subscription.criteria"),
]


def test_bad_subscription_is_an_operation_outcome_naming_the_field(sc, client):
    for body, where in BAD:
        r = client.post("/fhir/Subscription", json={"resourceType": "Subscription",
                                                     "reason": "test", **body})
        assert r.status_code == 400, (where, r.text)
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert where in outcome["issue"][0]["expression"], (where, outcome)
    with sc.engine.connect() as c:
        assert c.execute(select(notify_subscription)).all() == []


MALFORMED = [
    {"_criteria": ["not", "an", "element"]},
    {"_criteria": {"extension": [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/"
                                         "StructureDefinition/backport-filter-criteria",
                                  "valueString": "Nope?x=1"}]}},
    {"end": 12},
    {"channel": {"type": "rest-hook", "endpoint": "http://x/", "_payload": "odd"}},
    {"channel": {"type": "rest-hook", "endpoint": ["http://x/"]}},
]


def test_malformed_topic_subscriptions_are_400_never_500(client):
    for extra in MALFORMED:
        body = {"resourceType": "Subscription", "reason": "t", "status": "requested",
                "criteria": "https://fhir.sharedcare.org.uk/SubscriptionTopic/admission",
                "channel": {"type": "rest-hook", "endpoint": "http://x/"}, **extra}
        r = client.post("/fhir/Subscription", json=body)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"


def test_load_and_csv_feed_write_their_events(sc, tmp_path):
    """`sharedcare load` and a CSV feed go through Store.write: their events are there too."""
    import json

    from sharedcare.feeds.service import FeedService
    from sharedcare.loader import Loader
    from tests.conftest import ROOT

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "lp"},
         "request": {"method": "PUT", "url": "Patient/lp"}},
        {"resource": {"resourceType": "Observation", "id": "lo", "status": "final",
                      "code": {"text": "x"}, "subject": {"reference": "Patient/lp"}},
         "request": {"method": "PUT", "url": "Observation/lo"}}]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    loader = Loader(sc.store, source_org=HOSPITAL)
    loader.load_file(path)
    assert not loader.rejected
    assert [(t, k) for t, _, k in kinds(sc)] == [("Observation", ["result"])]
    feeds = FeedService(sc)
    sc.governance.add_organisation("LAZ01", "Council", "social-care")
    mapping = json.loads((ROOT / "examples" / "council-care-packages.mapping.json").read_text())
    feeds.add_feed("LAZ01", "council-care", "csv", mapping=mapping, status="live")
    before = len(events(sc))
    feeds.ingest_csv(ROOT / "examples" / "council-care-packages.csv", "council-care")
    assert len(events(sc)) == before  # Patients and ServiceRequests: nobody asked
    sc.store.write([WriteOp("PUT", "Subscription", "care-packages", {
        "resourceType": "Subscription", "status": "requested", "reason": "care packages",
        "criteria": "ServiceRequest?status=active",
        "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}})],
        source_org="LAZ01")
    csv2 = tmp_path / "more.csv"
    src = (ROOT / "examples" / "council-care-packages.csv").read_text().splitlines()
    csv2.write_text("\n".join([src[0]] + [line.replace(",PK", ",PKX") for line in src[1:]]))
    feeds.ingest_csv(csv2, "council-care")
    written = [t for t, _, _ in kinds(sc)[before:]]
    assert written and set(written) == {"ServiceRequest"}
