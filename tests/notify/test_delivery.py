"""Delivery end to end, on SQLite and PostgreSQL: HL7 v2 in, a real HTTP receiver, a real SMTP
server and the staff inbox out -- governed at send time, audited, retried, dead-lettered."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from sharedcare.notify import NotifyWorker, retry_dead, subscribe
from sharedcare.notify.schema import notify_delivery, notify_subscription

from ._support import (
    AGREEMENT,
    FEED,
    GP,
    HOSPITAL,
    NHS,
    OTHER_GP,
    ack_ok,
    admission,
    audits,
    deliveries,
    inbox,
    world,
)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"


def worker(sc, **kw) -> NotifyWorker:
    kw.setdefault("backoff_base", 0.02)
    return NotifyWorker(sc, **kw)


def until_settled(w: NotifyWorker, sc, timeout: float = 20.0) -> dict:
    """Run passes until nothing is pending (back-offs included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w.run_once()
        got = deliveries(sc)
        if not got.get("pending"):
            with sc.engine.connect() as c:
                from sharedcare.notify.schema import notify_event

                if not c.execute(select(notify_event.c.id).where(
                        notify_event.c.dispatched.is_(False))).first():
                    return got
        time.sleep(0.02)
    raise AssertionError(f"deliveries still pending after {timeout}s: {deliveries(sc)}")


def sub_row(sc, sid):
    with sc.engine.connect() as c:
        return c.execute(select(notify_subscription).where(notify_subscription.c.id == sid)
                         ).first()


def test_admission_over_hl7_reaches_the_gp_rest_hook_inbox_and_mail(sc, receiver, smtp):
    feeds = world(sc)
    hook = subscribe(sc, ods=GP, topics=["admission", "discharge"], channel="rest-hook",
                     endpoint=receiver.url, headers=["Authorization: Bearer gp-secret"])
    box = subscribe(sc, ods=GP, topics=["admission"], channel="inbox")
    mail = subscribe(sc, ods=GP, topics=["admission"], channel="email",
                     endpoint="duty.gp@brookside.example")
    # Another practice's subscription: the patient is not registered there.
    subscribe(sc, ods=OTHER_GP, topics=["admission"], channel="rest-hook", endpoint=receiver.url)
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    w = worker(sc)
    assert until_settled(w, sc) == {"sent": 3}

    (got,) = receiver.received
    assert got.key == f"{hook}/1" or got.key.startswith(f"{hook}/")
    assert got.headers["authorization"] == "Bearer gp-secret"
    assert got.headers["content-type"] == "application/fhir+json"
    bundle = got.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    status = bundle["entry"][0]["resource"]
    params = {p["name"]: p for p in status["parameter"]}
    assert params["type"]["valueCode"] == "event-notification"
    assert params["topic"]["valueCanonical"].endswith("/SubscriptionTopic/admission")
    event = {p["name"]: p for p in params["notification-event"]["part"]}
    assert event["event-number"]["valueString"] == "1"
    focus = event["focus"]["valueReference"]["reference"]
    assert focus.startswith("Encounter/")
    # id-only: where to look, never what the record says
    assert b"Smith" not in got.body and NHS.encode() not in got.body

    (item,) = inbox(sc, GP)
    assert item.kind == "admission" and item.focus == focus and item.role is None

    (message,) = smtp
    text = message.get_payload()
    assert message["To"] == "duty.gp@brookside.example"
    assert "https://care.example.org/notifications" in text
    for secret in ("Smith", "Jane", NHS, "1980", "WARD1", "Leeds"):
        assert secret not in text and secret not in message["Subject"]
    assert message["Idempotency-Key"].startswith(f"{mail}/")

    trail = audits(sc)
    assert len(trail) == 3 and {a.ods for a in trail} == {GP}
    assert {a.outcome for a in trail} == {"0"}
    assert all(a.patient_id for a in trail)
    assert {sub_row(sc, s).sent for s in (hook, box, mail)} == {1}


def test_a_subscriber_whose_agreement_is_suspended_receives_nothing(sc, receiver):
    feeds = world(sc)
    hook = subscribe(sc, ods=GP, topics=["admission"], channel="rest-hook",
                     endpoint=receiver.url)
    box = subscribe(sc, ods=GP, topics=["admission"], channel="inbox")
    sc.governance.set_agreement_status(AGREEMENT, "suspended")
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    assert until_settled(worker(sc), sc) == {"refused": 2}
    assert receiver.received == []
    assert inbox(sc, GP) == []
    assert sub_row(sc, hook).refused == 1 and sub_row(sc, hook).sent == 0
    trail = audits(sc)
    assert [a.outcome for a in trail] == ["4", "4"]
    assert all("agreement" in a.reason for a in trail)
    # Active again: the next admission goes out.
    sc.governance.set_agreement_status(AGREEMENT, "active")
    assert ack_ok(feeds.ingest_hl7(admission(2, nhs="9434765870"), FEED))
    assert until_settled(worker(sc), sc) == {"refused": 2, "sent": 2}
    assert len(receiver.received) == 1 and len(inbox(sc, GP)) == 1
    assert sub_row(sc, box).sent == 1


def test_payload_never_holds_more_than_the_subscriber_may_read(sc, receiver):
    """A GP system's criteria Subscriptions with full payloads: encounters are shared with the
    practice, results are not -- so the result is refused, never sent."""
    feeds = world(sc, categories=("demographics", "encounters"))
    from starlette.testclient import TestClient

    from sharedcare.app import create_app

    gp_token = sc.governance.issue_system_token("gp-system", GP)
    with TestClient(create_app(sc)) as client:
        client.headers["Authorization"] = f"Bearer {gp_token}"
        for criteria in ("Encounter?class=IMP", "Observation?status=final"):
            r = client.post("/fhir/Subscription", json={
                "resourceType": "Subscription", "status": "requested", "reason": "ours",
                "criteria": criteria,
                "channel": {"type": "rest-hook", "endpoint": receiver.url,
                            "payload": "application/fhir+json"}})
            assert r.status_code == 201, r.text
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    patient = sc.store.search("Patient", [], _permit()).matches[0].id
    from sharedcare.store.repository import WriteOp

    sc.store.write([WriteOp("PUT", "Observation", "hb1", {
        "resourceType": "Observation", "status": "final", "code": {"text": "Haemoglobin"},
        "subject": {"reference": f"Patient/{patient}"}, "valueQuantity": {"value": 99}})],
        source_org=HOSPITAL)
    w = worker(sc)
    assert until_settled(w, sc) == {"sent": 1, "refused": 1}
    (got,) = receiver.received
    assert got.json()["resourceType"] == "Encounter"
    assert b"Haemoglobin" not in b"".join(r.body for r in receiver.received)
    with sc.engine.connect() as c:
        subs = {r.criteria: r for r in c.execute(select(notify_subscription))}
    assert subs["Observation?status=final"].refused == 1
    assert subs["Encounter?class=IMP"].ods == GP and subs["Encounter?class=IMP"].role == "system"
    # requested -> active on the resource itself
    res = sc.store.read("Subscription", subs["Encounter?class=IMP"].resource_id, _permit())
    assert res.json()["status"] == "active"


def _permit():
    from sharedcare.store.repository import PermitAll

    return PermitAll()


def test_receiver_failing_three_times_gets_each_notification_once_and_in_order(sc, receiver):
    feeds = world(sc)
    hook = subscribe(sc, ods=GP, topics=["admission", "discharge"], channel="rest-hook",
                     endpoint=receiver.url)
    receiver.fail = 3
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    assert ack_ok(feeds.ingest_hl7(admission(1, discharged=True), FEED))
    assert ack_ok(feeds.ingest_hl7(admission(2, nhs="9434765870"), FEED))
    assert until_settled(worker(sc), sc) == {"sent": 3}
    keys = receiver.keys()
    assert len(keys) == len(set(keys)) == 3  # each exactly once
    assert [int(k.rsplit("/", 1)[1]) for k in keys] == sorted(
        int(k.rsplit("/", 1)[1]) for k in keys)  # in event order
    topics = [{p["name"]: p for p in r.json()["entry"][0]["resource"]["parameter"]}
              ["topic"]["valueCanonical"].rsplit("/", 1)[1] for r in receiver.received]
    assert topics == ["admission", "discharge", "admission"]
    with sc.engine.connect() as c:
        attempts = [a for (a,) in c.execute(select(notify_delivery.c.attempts)
                                             .order_by(notify_delivery.c.id))]
    assert attempts == [4, 1, 1]  # three failures and the success, then straight through
    assert len(audits(sc)) == 3  # one audit event per delivery, not per attempt
    assert sub_row(sc, hook).status == "active"


def test_dead_letter_after_max_attempts_then_retry(sc, receiver):
    feeds = world(sc)
    hook = subscribe(sc, ods=GP, topics=["admission"], channel="rest-hook",
                     endpoint=receiver.url)
    receiver.fail = 2
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    assert ack_ok(feeds.ingest_hl7(admission(2, nhs="9434765870"), FEED))
    w = worker(sc, max_attempts=2)
    # The first dies after two failures; the second, behind it, then goes out.
    assert until_settled(w, sc) == {"dead": 1, "sent": 1}
    row = sub_row(sc, hook)
    assert row.dead == 1 and row.last_error == "HTTP 503"
    assert len(receiver.received) == 1
    assert retry_dead(sc, subscription_id=hook) == 1
    assert until_settled(w, sc) == {"sent": 2}
    assert len(set(receiver.keys())) == 2


@pytest.mark.parametrize("content", ["full-resource", "empty"])
def test_topic_subscription_backport_bundle(sc, client, receiver, content):
    feeds = world(sc)
    r = client.post("/fhir/Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "admissions",
        "criteria": "https://fhir.sharedcare.org.uk/SubscriptionTopic/admission",
        "_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria",
                                     "valueString": "Encounter?class=IMP"}]},
        "channel": {"type": "rest-hook", "endpoint": receiver.url,
                    "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content",
                                                "valueCode": content}]}}})
    assert r.status_code == 201, r.text
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    assert ack_ok(feeds.ingest_hl7(admission(2, nhs="9434765870", klass="E"), FEED))
    assert until_settled(worker(sc), sc) == {"sent": 1}  # the A&E attendance is filtered out
    entries = receiver.received[0].json()["entry"]
    params = {p["name"]: p for p in entries[0]["resource"]["parameter"]}
    assert params["subscription"]["valueReference"]["reference"] == f"Subscription/{r.json()['id']}"
    event = {p["name"] for p in params["notification-event"]["part"]}
    if content == "full-resource":
        assert entries[1]["resource"]["resourceType"] == "Encounter"
        assert "focus" in event
    else:
        assert len(entries) == 1 and "focus" not in event


def test_prune_forgets_only_events_that_went_to_nobody(sc, receiver):
    from sharedcare.store.repository import WriteOp

    from ._support import events

    feeds = world(sc)
    subscribe(sc, ods=GP, topics=["admission"], channel="rest-hook", endpoint=receiver.url)
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    sc.store.write([WriteOp("PUT", "Observation", "o1", {
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/nobody"}})], source_org=HOSPITAL)
    w = worker(sc)
    assert until_settled(w, sc) == {"sent": 1}
    assert len(events(sc)) == 2
    assert w.prune(older_than_days=7) == 0  # too recent
    assert w.prune(older_than_days=-1) == 1
    assert [e.rtype for e in events(sc)] == ["Encounter"]


def test_death_reaches_the_registered_practice_and_not_a_stranger(sc):
    from sharedcare.store.repository import WriteOp

    feeds = world(sc)
    subscribe(sc, ods=GP, topics=["death"], channel="inbox")
    subscribe(sc, ods=OTHER_GP, topics=["death"], channel="inbox", scope="caseload")
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    (patient,) = sc.store.search("Patient", [], _permit()).matches
    sc.store.write([WriteOp("PUT", "Patient", patient.id, {
        **patient.json(), "deceasedDateTime": "2026-01-03T04:00:00Z"})], source_org=HOSPITAL)
    assert until_settled(worker(sc), sc) == {"sent": 1}
    (item,) = inbox(sc, GP)
    assert (item.kind, item.focus, item.patient_id) == ("death", f"Patient/{patient.id}",
                                                         patient.id)
    assert inbox(sc, OTHER_GP) == []


def test_r4_subscription_empty_payload_error_and_end(sc, client, receiver):
    """No payload: an empty POST with the headers; a dead letter puts the Subscription in
    error (and a later success back to active); past its end it is off and sends nothing."""
    feeds = world(sc)
    r = client.post("/fhir/Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "pings",
        "criteria": "Encounter?class=IMP",
        "channel": {"type": "rest-hook", "endpoint": receiver.url,
                    "header": ["X-Partner-Key: k1"]}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    def status():
        return client.get(f"/fhir/Subscription/{sid}").json()["status"]

    receiver.fail = 2
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    w = worker(sc, max_attempts=2)
    assert until_settled(w, sc) == {"dead": 1}
    assert status() == "error"
    assert "could not be delivered" in client.get(f"/fhir/Subscription/{sid}").json()["error"]
    assert ack_ok(feeds.ingest_hl7(admission(2, nhs="9434765870"), FEED))
    assert until_settled(w, sc) == {"dead": 1, "sent": 1}
    assert status() == "active"
    (got,) = receiver.received
    assert got.body == b"" and got.headers["x-partner-key"] == "k1"
    assert got.key.startswith(f"fhir:{sid}/")
    # Past its end: off, and the next admission goes nowhere.
    current = client.get(f"/fhir/Subscription/{sid}").json()
    r = client.put(f"/fhir/Subscription/{sid}", json={**current, "end": "2020-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    w.run_once()
    assert status() == "off"
    assert ack_ok(feeds.ingest_hl7(admission(3, nhs="9434765846"), FEED))
    assert until_settled(w, sc) == {"dead": 1, "sent": 1}
    assert len(receiver.received) == 1


def test_break_glass_mails_the_ig_lead_at_once_without_the_reason(sc, smtp):
    from sharedcare.governance.policy import Access
    from sharedcare.store.repository import WriteOp

    world(sc)
    subscribe(sc, ods=HOSPITAL, topics=["break-glass", "declared-relationship"],
              channel="email", role="ig-lead", endpoint="ig.lead@trust.example")
    sc.store.write([WriteOp("PUT", "Patient", "p1", {"resourceType": "Patient"})],
                   source_org=GP)
    doctor = sc.governance.prepare(Access("dr.a", HOSPITAL, "clinician"))
    sc.governance.break_glass(doctor, "p1", "overdose suspected, unconscious, no history")
    assert until_settled(worker(sc), sc) == {"sent": 2}  # the mail and the IG lead's inbox
    (message,) = smtp
    assert message["To"] == "ig.lead@trust.example"
    text = message.get_payload()
    assert "broke glass" in text
    for secret in ("overdose", "unconscious", "p1", "dr.a"):
        assert secret not in text
    (item,) = inbox(sc, HOSPITAL)
    assert (item.kind, item.role) == ("break-glass", "ig-lead")


def test_caseload_team_told_of_a_discharge(sc):
    """"Notify my team of discharges of people on our caseload": a community team with an
    active episode of care for the patient; the practice-registration scope would not match."""
    from sharedcare.fhir.codes import ODS_SYSTEM
    from sharedcare.store.repository import WriteOp

    feeds = world(sc)
    team = "RY001"
    sc.governance.add_organisation(team, "Community nursing", "community")
    sc.governance.add_agreement("DSA-COMMUNITY", "Community", [HOSPITAL, team],
                                ["direct-care"], ["demographics", "encounters"],
                                status="active")
    caseload = subscribe(sc, ods=team, topics=["discharge"], channel="inbox", role="nurse",
                         scope="caseload")
    registered = subscribe(sc, ods=team, topics=["discharge"], channel="inbox", role="nurse")
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    (patient,) = sc.store.search("Patient", [], _permit()).matches
    sc.store.write([WriteOp("PUT", "EpisodeOfCare", "eoc1", {
        "resourceType": "EpisodeOfCare", "status": "active",
        "patient": {"reference": f"Patient/{patient.id}"},
        "managingOrganization": {"identifier": {"system": ODS_SYSTEM, "value": team}}})],
        source_org=team)
    assert ack_ok(feeds.ingest_hl7(admission(1, discharged=True), FEED))
    assert until_settled(worker(sc), sc) == {"sent": 1}
    (item,) = inbox(sc, team)
    assert item.kind == "discharge"
    assert sub_row(sc, caseload).sent == 1 and sub_row(sc, registered).events == 0


def test_status_operation_reports_the_subscription_as_its_owner_reads_it(sc, client, receiver):
    """Subscription/{id}/$status: the backport SubscriptionStatus, governed as reading the
    Subscription (one audit event); an unknown or malformed id is an OperationOutcome."""
    world(sc)
    r = client.post("/fhir/Subscription", json={
        "resourceType": "Subscription", "status": "requested", "reason": "admissions",
        "criteria": "Encounter?class=IMP",
        "channel": {"type": "rest-hook", "endpoint": receiver.url}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    got = client.get(f"/fhir/Subscription/{sid}/$status")
    assert got.status_code == 200, got.text
    params = {p["name"]: p for p in got.json()["parameter"]}
    assert got.json()["resourceType"] == "Parameters"
    assert params["subscription"]["valueReference"]["reference"] == f"Subscription/{sid}"
    assert params["type"]["valueCode"] == "query-status"
    assert params["status"]["valueCode"] in ("requested", "active")
    missing = client.get("/fhir/Subscription/no-such-one/$status")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Subscription/{sid}/$status?x=1").status_code == 400
    capability = client.get("/fhir/metadata").json()
    sub = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Subscription")
    assert "status" in {o["name"] for o in sub["operation"]}


def test_a_quiet_topic_subscription_gets_heartbeats(sc, client, receiver):
    """backport-heartbeat-period: when nothing has been sent for that long the receiver gets a
    heartbeat Bundle (the status only: no event, no patient data), once per period, whichever
    worker runs; a period below the server's minimum is a 400 naming the field."""
    from sqlalchemy import update

    from sharedcare.store.repository import now_utc

    world(sc)
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "admissions",
           "criteria": "https://fhir.sharedcare.org.uk/SubscriptionTopic/admission",
           "channel": {"type": "rest-hook", "endpoint": receiver.url,
                       "payload": "application/fhir+json",
                       "header": ["X-Partner-Key: k9"],
                       "extension": [{"url": BACKPORT + "backport-heartbeat-period",
                                      "valueUnsignedInt": 60}]}}
    bad = {**sub, "channel": {**sub["channel"], "extension": [
        {"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": 5}]}}
    refused = client.post("/fhir/Subscription", json=bad)
    assert refused.status_code == 400
    assert "Subscription.channel.extension" in refused.text
    r = client.post("/fhir/Subscription", json=sub)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    a, b = worker(sc), worker(sc)
    a.drain()
    assert receiver.received == [], "not quiet for a period yet"

    def quiet_for(seconds: int) -> None:
        from datetime import UTC, datetime, timedelta

        then = (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")
        with sc.engine.begin() as conn:
            conn.execute(update(notify_subscription).where(
                notify_subscription.c.resource_id == sid).values(created=then, last_sent=None))

    quiet_for(61)
    assert a.heartbeats() + b.heartbeats() == 1, "one heartbeat, whichever worker"
    (beat,) = receiver.received
    bundle = beat.json()
    assert bundle["type"] == "history" and len(bundle["entry"]) == 1
    params = {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}
    assert params["type"]["valueCode"] == "heartbeat"
    assert params["subscription"]["valueReference"]["reference"] == f"Subscription/{sid}"
    assert beat.headers["x-partner-key"] == "k9"
    assert a.heartbeats() == 0, "sent one this period"
    with sc.engine.connect() as conn:
        last = conn.execute(select(notify_subscription.c.last_sent).where(
            notify_subscription.c.resource_id == sid)).scalar_one()
    assert last and last <= now_utc()
