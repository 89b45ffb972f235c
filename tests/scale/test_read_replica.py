"""Reads through a real PostgreSQL streaming replica, with read-your-writes (issue 14).

A standby is made with pg_basebackup -R and started on its own port (tests/scale/replica.py).
To tell which server answered, the tests pause WAL replay on the standby
(``pg_wal_replay_pause()``): a write is then on the primary only, so a client that did not write
it can only see it once replay resumes -- while the client that wrote it sees it at once (its
read waits a moment for the standby, then falls back to the primary).

Skips when no standby can be made here (no PostgreSQL binaries, or PostgreSQL unreachable),
except under CI=true, where it fails.
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import create_engine, select, text
from starlette.testclient import TestClient

from sharedcare.population import export
from tests.scale.conftest import BASE, ORG

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture(scope="module")
def pair():
    from tests.conftest import IN_CI, PG_ADMIN_URL, _pg_state, _postgres_available
    from tests.scale import replica

    if not _postgres_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL is unreachable in CI: {_pg_state.get('why')}")
        pytest.skip(f"PostgreSQL unreachable: {_pg_state.get('why')}")
    try:
        made = replica.start(PG_ADMIN_URL)
    except replica.Unavailable as e:
        if IN_CI:
            pytest.fail(f"no streaming replica could be made in CI: {e}")
        pytest.skip(f"no streaming replica can be made here: {e}")
    yield made
    made.stop()


@pytest.fixture
def rsc(pair, tmp_path, monkeypatch):
    """A SharedCare on the primary with the standby as its read replica."""
    from sharedcare.app import SharedCare

    monkeypatch.delenv("SHAREDCARE_REDIS_URL", raising=False)
    monkeypatch.setenv("SHAREDCARE_REPLICA_WAIT", "0.3")
    name = f"sharedcare_replica_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pair.url("primary", "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    standby_url = pair.url("replica", name)
    deadline = time.time() + 30
    while True:  # the new database reaches the standby through the WAL
        try:
            probe = create_engine(standby_url)
            with probe.connect():
                pass
            probe.dispose()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    sc = SharedCare.open(pair.url("primary", name), tmp_path / "data", read_database=standby_url)
    sc.governance.add_organisation(ORG, "Test Partner System Trust", "acute-trust")
    assert sc.replica is not None and sc.replica.wait == 0.3
    standby = create_engine(standby_url, isolation_level="AUTOCOMMIT")
    yield sc, standby
    resume(standby)
    standby.dispose()
    sc.engine.dispose()
    sc.replica.engine.dispose()
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pause(standby) -> None:
    with standby.connect() as c:
        c.execute(text("SELECT pg_wal_replay_pause()"))


def resume(standby) -> None:
    with standby.connect() as c:
        c.execute(text("SELECT pg_wal_replay_resume()"))


def caught_up(sc, timeout=20.0) -> None:
    assert sc.replica.caught_up(sc.replica.write_position(), timeout)


def _patient(pid, family):
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}


def _ids(bundle) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry") or []
            if (e.get("search") or {}).get("mode", "match") == "match"}


@pytest.fixture
def two_clients(rsc):
    from sharedcare.app import create_app

    sc, standby = rsc
    writer = {"Authorization": "Bearer " + sc.governance.issue_system_token("writer", ORG)}
    other = {"Authorization": "Bearer " + sc.governance.issue_system_token("other", ORG)}
    with TestClient(create_app(sc), base_url=BASE) as c:
        yield sc, standby, c, writer, other


def test_reads_use_the_replica_and_the_writer_reads_its_writes(two_clients):
    sc, standby, c, writer, other = two_clients
    r = c.put("/fhir/Patient/p1", json=_patient("p1", "Before"), headers=writer)
    assert r.status_code in (200, 201), r.text
    caught_up(sc)
    assert _ids(c.get("/fhir/Patient?family=Before", headers=other).json()) == {"p1"}

    pause(standby)
    r = c.put("/fhir/Patient/p2", json=_patient("p2", "During"), headers=writer)
    assert r.status_code in (200, 201), r.text
    # The writer sees its write at once: the standby is behind, so its read goes to the primary.
    t0 = time.monotonic()
    assert _ids(c.get("/fhir/Patient?family=During", headers=writer).json()) == {"p2"}
    assert time.monotonic() - t0 >= 0.3  # it waited (bounded) for the standby first
    assert len(c.get("/fhir/Patient/p2/_history", headers=writer).json()["entry"]) == 1
    # Everyone else reads the standby, which has not replayed the write yet.
    assert _ids(c.get("/fhir/Patient?family=During", headers=other).json()) == set()
    hist = c.get("/fhir/Patient/p2/_history", headers=other)
    assert hist.status_code == 404 or not hist.json().get("entry"), hist.text
    assert c.get("/fhir/Patient/p2/$everything", headers=other).status_code == 404

    resume(standby)
    caught_up(sc)
    assert _ids(c.get("/fhir/Patient?family=During", headers=other).json()) == {"p2"}
    assert _ids(c.get("/fhir/Patient/p2/$everything", headers=other).json()) == {"p2"}
    # Audit events of reads answered by the standby were written on the primary.
    from sharedcare.governance.schema import audit_event

    with sc.engine.connect() as conn:
        assert conn.execute(select(audit_event.c.seq).where(
            audit_event.c.client_id == "other")).first() is not None


def test_sorted_pages_read_their_snapshot_while_the_replica_lags(two_clients):
    sc, standby, c, writer, other = two_clients
    for i in range(5):
        assert c.put(f"/fhir/Patient/s{i}", json=_patient(f"s{i}", f"Sort{i}"),
                     headers=writer).status_code in (200, 201)
    caught_up(sc)
    pause(standby)  # the snapshot the first page writes is on the primary only
    r = c.get("/fhir/Patient?_sort=family&_count=2", headers=other)
    assert r.status_code == 200, r.text
    seen = []
    page = r.json()
    while True:
        seen += [e["resource"]["id"] for e in page.get("entry") or []]
        nxt = next((ln["url"] for ln in page.get("link") or [] if ln["relation"] == "next"),
                   None)
        if nxt is None:
            break
        r = c.get(nxt, headers=other)
        assert r.status_code == 200, r.text
        page = r.json()
    assert seen == [f"s{i}" for i in range(5)]


def test_export_reads_the_replica_once_it_has_caught_up(two_clients, monkeypatch):
    sc, standby, c, writer, other = two_clients
    used: list[bool] = []
    real = export.BulkExport._export

    def spy(self, job, policy):
        used.append(self.sc.store._reader().pool is self.sc.replica.engine.pool)  # where it reads
        return real(self, job, policy)

    monkeypatch.setattr(export.BulkExport, "_export", spy)
    monkeypatch.setattr(export, "REPLICA_WAIT", 0.3)
    assert c.put("/fhir/Patient/e1", json=_patient("e1", "Exp"), headers=writer).status_code \
        in (200, 201)

    def run() -> set[str]:
        status = c.get("/fhir/$export?_type=Patient", headers={**ASYNC, **other})
        assert status.status_code == 202, status.text
        deadline = time.time() + 30
        while time.time() < deadline:
            r = c.get(status.headers["Content-Location"], headers=other)
            if r.status_code == 200:
                out = set()
                for item in r.json()["output"]:
                    body = c.get(item["url"], headers=other).content
                    out |= {ln.split(b'"id":"')[1].split(b'"')[0].decode()
                            for ln in body.split(b"\n") if ln}
                return out
            assert r.status_code == 202, r.text
            time.sleep(0.05)
        raise AssertionError("export did not finish")

    caught_up(sc)
    assert "e1" in run() and used[-1] is True  # from the standby
    pause(standby)
    assert c.put("/fhir/Patient/e2", json=_patient("e2", "Exp"), headers=writer).status_code \
        in (200, 201)
    got = run()
    assert used[-1] is False and {"e1", "e2"} <= got  # the standby lagged: the primary
    resume(standby)
