"""The server delivers by itself: a real uvicorn server (its own worker, nothing driven by the
test), a Subscription written over HTTP, an admission fed over HL7 v2."""

from __future__ import annotations

import time

import httpx
import pytest

from sharedcare.notify import subscribe

from ._support import FEED, GP, ack_ok, admission, world


@pytest.fixture
def served(request, monkeypatch):
    monkeypatch.setenv("SHAREDCARE_NOTIFY_WORKER", "1")
    monkeypatch.setenv("SHAREDCARE_NOTIFY_INTERVAL", "0.05")
    return request.getfixturevalue("live_server")


def test_the_server_runs_the_worker(sc, receiver, served, system_token):
    feeds = world(sc)
    subscribe(sc, ods=GP, topics=["admission"], channel="rest-hook", endpoint=receiver.url)
    auth = {"Authorization": f"Bearer {system_token}"}
    r = httpx.post(f"{served}/fhir/Subscription", headers=auth, json={
        "resourceType": "Subscription", "status": "requested", "reason": "inpatients",
        "criteria": "Encounter?class=IMP&status=in-progress",
        "channel": {"type": "rest-hook", "endpoint": receiver.url,
                    "payload": "application/fhir+json"}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(
            f"{served}/fhir/Subscription/{sid}", headers=auth).json()["status"] != "active":
        time.sleep(0.05)
    assert httpx.get(f"{served}/fhir/Subscription/{sid}", headers=auth).json()["status"] \
        == "active"
    t0 = time.monotonic()
    assert ack_ok(feeds.ingest_hl7(admission(1), FEED))
    while len(receiver.received) < 2 and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    assert len(receiver.received) == 2
    assert time.monotonic() - t0 < 5  # commit -> delivered, by the server on its own
    kinds = sorted(r.headers["content-type"] for r in receiver.received)
    assert kinds == ["application/fhir+json"] * 2
    bodies = sorted(r.json()["resourceType"] for r in receiver.received)
    assert bodies == ["Bundle", "Encounter"]
