"""Break-glass alerts the IG lead; the inbox, the header count, the subscription form and the
dead-letter page with its Retry button (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.governance.policy import Access
from sharedcare.notify.schema import notify_delivery, notify_subscription
from sharedcare.store.repository import WriteOp

from ._support import FEED, GP, HOSPITAL, ack_ok, admission, audits, inbox, world
from .test_delivery import until_settled, worker


@pytest.fixture
def web(sc, monkeypatch):
    monkeypatch.setenv("SHAREDCARE_NOTIFY_WORKER", "0")  # the tests drive the worker
    app = create_app(sc)
    clients = []

    def signed_in(username: str, ods: str, role: str) -> TestClient:
        sc.governance.add_staff(username, username.title(), [(ods, role)], password=None)
        c = TestClient(app, base_url="http://testserver")
        c.cookies.set("sc_session", sc.governance.issue_token(username, ods, role))
        c.get("/")
        c.csrf = c.cookies.get("sc_csrf")
        clients.append(c)
        return c

    yield signed_in
    for c in clients:
        c.close()


def test_break_glass_alerts_the_ig_lead_in_the_inbox_with_a_count(sc, web):
    sc.store.write([WriteOp("PUT", "Patient", "p1", {"resourceType": "Patient"})],
                   source_org=GP)
    sc.governance.add_organisation(GP, "Brookside", "gp-practice")
    doctor = sc.governance.prepare(Access("dr.a", HOSPITAL, "clinician"))
    sc.governance.break_glass(doctor, "p1", "collapsed in the department, no history")
    ig = web("ig.lead", HOSPITAL, "ig-lead")
    other_ig = web("ig.other", GP, "ig-lead")
    clinician = web("dr.b", HOSPITAL, "clinician")
    assert until_settled(worker(sc), sc) == {"sent": 1}
    (item,) = inbox(sc, HOSPITAL)
    assert item.kind == "break-glass" and item.role == "ig-lead"
    page = ig.get("/notifications/subscriptions").text
    assert 'id="notifications-count">1<' in page
    assert 'id="notifications-count"' not in clinician.get("/notifications/subscriptions").text
    assert 'id="notifications-count"' not in other_ig.get("/notifications/subscriptions").text
    r = ig.get("/notifications")
    assert r.status_code == 200
    assert "Someone broke glass" in r.text and 'href="/governance/break-glass"' in r.text
    assert 'id="notifications-count"' not in r.text  # read now
    (audit,) = audits(sc)
    assert (audit.ods, audit.outcome, audit.patient_id) == (HOSPITAL, "0", "p1")
    # The clinician at the same organisation is not the IG lead: nothing for them.
    assert 'id="no-notifications"' in clinician.get("/notifications").text


def test_subscription_form_and_dead_letter_retry(sc, web, receiver):
    feeds = world(sc)
    gp = web("dr.gp", GP, "clinician")
    r = gp.post("/notifications/subscriptions", data={
        "csrf": gp.csrf, "topic": ["admission", "nonsense"], "channel": "rest-hook",
        "endpoint": receiver.url, "scope": "registered"})
    assert r.status_code == 400 and "choose topics from" in r.text
    r = gp.post("/notifications/subscriptions", data={
        "csrf": gp.csrf, "topic": ["admission"], "channel": "rest-hook",
        "endpoint": "not a url", "scope": "registered"})
    assert r.status_code == 400 and "http(s) endpoint" in r.text
    r = gp.post("/notifications/subscriptions", data={
        "csrf": gp.csrf, "topic": ["admission"], "channel": "rest-hook",
        "endpoint": receiver.url, "scope": "registered"}, follow_redirects=False)
    assert r.status_code == 303
    with sc.engine.connect() as c:
        (sub,) = c.execute(select(notify_subscription)).all()
    assert (sub.ods, sub.role, sub.username, sub.channel) == (GP, "clinician", "dr.gp",
                                                             "rest-hook")
    receiver.fail = 2
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    assert until_settled(worker(sc, max_attempts=2), sc) == {"dead": 1}
    page = gp.get("/notifications/dead-letters")
    assert "HTTP 503" in page.text and "a patient was admitted" in page.text
    assert "HTTP 503" in gp.get("/notifications/subscriptions").text
    # In error: visible to its owner (above) and to the system administrator, not to others.
    admin = web("sys.admin", HOSPITAL, "sysadmin")
    assert "HTTP 503" in admin.get("/notifications/subscriptions").text
    assert "HTTP 503" in admin.get("/notifications/dead-letters").text
    assert "HTTP 503" not in web("dr.y", HOSPITAL, "clinician").get(
        "/notifications/subscriptions").text
    with sc.engine.connect() as c:
        (dead,) = c.execute(select(notify_delivery.c.id)).scalars()
    # Another organisation cannot retry it.
    stranger = web("dr.x", HOSPITAL, "clinician")
    stranger.post("/notifications/dead-letters/retry", data={"csrf": stranger.csrf,
                                                               "delivery": str(dead)})
    assert "HTTP 503" in gp.get("/notifications/dead-letters").text
    r = gp.post("/notifications/dead-letters/retry",
                data={"csrf": gp.csrf, "delivery": str(dead)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("done=1")
    assert until_settled(worker(sc), sc) == {"sent": 1}
    assert len(receiver.received) == 1
    assert "Nothing undelivered" in gp.get("/notifications/dead-letters").text
