"""The audit trail: exactly one AuditEvent per access, tamper-evident, no patient names."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from small_world import PATIENT_FAMILY, access, build
from sqlalchemy import func, insert, select, text
from typer.testing import CliRunner

from sharedcare.cli import app as cli
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.audit import (
    ENV_CHECKPOINT_DIR,
    ENV_CHECKPOINT_EVENTS,
    ENV_KEY_FILE,
    AuditTrail,
    read_checkpoints,
    row_hash,
)
from sharedcare.governance.schema import audit_anchor, audit_event


def rows(sc):
    with sc.engine.connect() as c:
        return [dict(r) for r in c.execute(select(audit_event).order_by(audit_event.c.seq))
                .mappings()]


def count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(audit_event)).scalar_one()


def one_new_row(sc, before: int) -> dict:
    after = rows(sc)
    assert len(after) == before + 1, f"expected exactly one audit row, got {len(after) - before}"
    return after[-1]


@pytest.fixture
def world(sc):
    build(sc)
    return sc


def test_exactly_one_audit_row_per_access(world):
    sc, gov = world, world.governance
    doc = access(sc, "hos.doc", "HOS", "clinician")
    ig = access(sc, "hos.ig", "HOS", "ig-lead")

    n = count(sc)
    gov.read(doc, "Observation", "o-plain")
    r = one_new_row(sc, n)
    assert (r["action"], r["outcome"], r["patient_id"], r["entity"]) == \
        ("read", "0", "P1", "Observation/o-plain")

    n = count(sc)
    gov.search(doc, "Observation", [("subject", "Patient/P1")])
    r = one_new_row(sc, n)
    assert (r["action"], r["outcome"]) == ("search", "0")

    n = count(sc)
    view = gov.everything(doc, "P1", count=2)
    assert view.next_cursor  # a first page ...
    r = one_new_row(sc, n)
    assert (r["action"], r["outcome"], r["patient_id"]) == ("everything", "0", "P1")
    n = count(sc)
    gov.everything(doc, "P1", count=2, cursor=view.next_cursor)  # ... and each further page
    assert one_new_row(sc, n)["action"] == "everything"

    n = count(sc)
    with pytest.raises(FHIRError) as e:  # denied read: sensitive label from another org
        gov.read(doc, "Observation", "o-sexual")
    assert e.value.status == 403
    r = one_new_row(sc, n)
    assert (r["action"], r["outcome"], r["patient_id"]) == ("read", "4", "P1")
    assert "sensitive" in r["reason"]

    n = count(sc)
    with pytest.raises(FHIRError) as e:  # denied read: no relationship with P2
        gov.read(doc, "Patient", "P2")
    assert e.value.status == 403
    assert one_new_row(sc, n)["outcome"] == "4"

    n = count(sc)
    with pytest.raises(FHIRError) as e:  # unknown resource
        gov.read(doc, "Observation", "nope")
    assert e.value.status == 404
    assert one_new_row(sc, n)["outcome"] == "4"

    for who, pid in ((doc, "P2"), (ig, "P1")):  # denied $everything
        n = count(sc)
        with pytest.raises(FHIRError) as e:
            gov.everything(who, pid)
        assert e.value.status == 403
        r = one_new_row(sc, n)
        assert (r["action"], r["outcome"]) == ("everything", "4")
    assert gov.audit_trail.verify() == []


def test_scope_denied_access_is_audited(world):
    sc, gov = world, world.governance
    narrow = access(sc, "hos.doc", "HOS", "clinician", scope="user/Patient.rs")
    n = count(sc)
    with pytest.raises(FHIRError) as e:
        gov.read(narrow, "Observation", "o-plain")
    assert e.value.status == 403
    r = one_new_row(sc, n)
    assert (r["action"], r["outcome"]) == ("read", "4")


# ------------------------------------------------------------------------------ tampering
def _trail(sc, n=6):
    doc = access(sc, "hos.doc", "HOS", "clinician")
    for _ in range(n):
        sc.governance.read(doc, "Observation", "o-plain")
    assert sc.governance.audit_trail.verify() == []
    return rows(sc)


def _cli(sc, *args):
    url = sc.engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(cli, ["audit", *args, "--database", url,
                                    "--data-dir", str(sc.data_dir)])


def _cli_verify(sc, *checkpoints):
    return _cli(sc, "verify", *[a for c in checkpoints for a in ("--checkpoint", str(c))])


def edit_reason(sc, trail):
    mid = trail[len(trail) // 2]["seq"]
    with sc.engine.begin() as c:
        c.execute(audit_event.update().where(audit_event.c.seq == mid)
                  .values(reason="nothing to see here"))


def edit_content(sc, trail):
    mid = trail[len(trail) // 2]
    with sc.engine.begin() as c:
        c.execute(audit_event.update().where(audit_event.c.seq == mid["seq"])
                  .values(content=mid["content"].replace("hos.doc", "someone.else")))


def delete_middle(sc, trail):
    with sc.engine.begin() as c:
        c.execute(audit_event.delete().where(audit_event.c.seq == trail[len(trail) // 2]["seq"]))


def swap_seq(sc, trail):
    a, b = trail[2]["seq"], trail[3]["seq"]
    with sc.engine.begin() as c:
        for old, new in ((a, -1), (b, a), (-1, b)):
            c.execute(text("UPDATE audit_event SET seq = :new WHERE seq = :old"),
                      {"new": new, "old": old})


def insert_forged(sc, trail):
    last = dict(trail[-1])
    forged = {**last, "seq": last["seq"] + 1, "prev_hash": last["hash"],
              "reason": "forged: access approved", "username": "intruder"}
    forged["hash"] = row_hash(secrets.token_bytes(32), forged)  # without the server's key
    with sc.engine.begin() as c:
        c.execute(insert(audit_event), [forged])


def rechain_without_key(sc, trail):
    """Edit a row and recompute every later hash with plain SHA-256 (no key)."""
    with sc.engine.begin() as c:
        prev = trail[1]["hash"]
        for r in trail[2:]:
            r = dict(r, prev_hash=prev)
            if r["seq"] == trail[2]["seq"]:
                r["reason"] = "rewritten"
            r["hash"] = hmac.new(b"guess", repr(r).encode(), hashlib.sha256).hexdigest()
            c.execute(audit_event.update().where(audit_event.c.seq == r["seq"])
                      .values(reason=r["reason"], prev_hash=r["prev_hash"], hash=r["hash"]))
            prev = r["hash"]


def delete_last(sc, trail):
    with sc.engine.begin() as c:
        c.execute(audit_event.delete().where(audit_event.c.seq == trail[-1]["seq"]))


TAMPERING = [edit_reason, edit_content, delete_middle, swap_seq, insert_forged,
             rechain_without_key,
             delete_last]


@pytest.mark.parametrize("tamper", TAMPERING)
def test_tampering_is_detected(world, tamper):
    sc = world
    trail = _trail(sc)
    tamper(sc, trail)
    problems = sc.governance.audit_trail.verify()
    assert problems, f"{tamper.__name__} was not detected"
    result = _cli_verify(sc)
    assert result.exit_code == 1, result.output
    assert "TAMPERED" in result.output


def test_intact_trail_verifies_with_cli(world):
    _trail(world, 3)
    result = _cli_verify(world)
    assert result.exit_code == 0, result.output
    assert "intact" in result.output


def test_break_glass_appears_in_the_patients_audit_with_its_reason(world):
    sc, gov = world, world.governance
    doc = access(sc, "hos.doc", "HOS", "clinician")
    reason = "collapsed in resus, needs full history now"
    gov.break_glass(doc, "P1", reason)
    gov.read(doc, "Observation", "o-sexual")  # now readable
    gov.everything(doc, "P1")
    with sc.engine.connect() as c:
        mine = [dict(r) for r in c.execute(select(audit_event).where(
            audit_event.c.patient_id == "P1").order_by(audit_event.c.seq)).mappings()]
    glass = [r for r in mine if r["action"] == "break-glass"]
    assert len(glass) == 1
    assert glass[0]["reason"] == reason and glass[0]["break_glass"]
    assert glass[0]["username"] == "hos.doc" and glass[0]["ods"] == "HOS"
    assert '"ETREAT"' in glass[0]["content"] and reason in glass[0]["content"]
    assert mine[-1]["action"] == "everything" and mine[-1]["break_glass"]


def test_audit_rows_contain_no_patient_names(world):
    sc, gov = world, world.governance
    doc = access(sc, "hos.doc", "HOS", "clinician")
    other = access(sc, "ch.nurse", "CH1", "nurse")
    gov.read(doc, "Patient", "P1")
    gov.search(doc, "Patient", [("_id", "P1")])
    gov.search(doc, "Observation", [("subject", "Patient/P1"), ("_include", "Observation:subject")])
    gov.everything(doc, "P1")
    for fn in (lambda: gov.read(other, "Patient", "P1"), lambda: gov.everything(other, "P1"),
               lambda: gov.read(doc, "Observation", "o-sexual")):
        with pytest.raises(FHIRError):
            fn()
    gov.break_glass(doc, "P1", "unconscious, no next of kin present")
    for r in rows(sc):
        for col in ("content", "reason", "entity"):
            assert PATIENT_FAMILY.lower() not in (r[col] or "").lower(), (col, r[col])
            assert "hubert" not in (r[col] or "").lower(), (col, r[col])


def test_search_by_name_does_not_write_the_name_into_the_audit(world):
    sc, gov = world, world.governance
    doc = access(sc, "hos.doc", "HOS", "clinician")
    gov.search(doc, "Patient", [("family", PATIENT_FAMILY)])
    r = rows(sc)[-1]
    assert r["action"] == "search"
    assert PATIENT_FAMILY.lower() not in (r["entity"] or "").lower()
    assert PATIENT_FAMILY.lower() not in r["content"].lower()


# ------------------------------------------------------------------------------ checkpoints
def _reads(sc, n):
    doc = access(sc, "hos.doc", "HOS", "clinician")
    for _ in range(n):
        sc.governance.read(doc, "Observation", "o-plain")


def _checkpoint(sc, path):
    result = _cli(sc, "checkpoint", "--out", str(path))
    assert result.exit_code == 0, result.output
    return path


def _delete_everything(sc):
    with sc.engine.begin() as c:
        c.execute(audit_event.delete())
        c.execute(audit_anchor.delete())


def test_deleting_every_event_and_the_anchor_is_detected(world, tmp_path):
    sc = world
    _reads(sc, 4)
    cp = _checkpoint(sc, tmp_path / "ig" / "checkpoint.json")
    _delete_everything(sc)

    # Even without a checkpoint: the database still holds records, so it was audited.
    problems = sc.governance.audit_trail.verify()
    assert any("every event and the anchor were deleted" in p for p in problems), problems
    result = _cli_verify(sc)
    assert result.exit_code == 1, result.output
    assert "TAMPERED" in result.output and "audit checkpoint --out" in result.output

    # With the checkpoint: how much was lost.
    result = _cli_verify(sc, cp)
    assert result.exit_code == 1, result.output
    assert "every event was deleted" in result.output
    assert count(sc) == 0


def test_truncating_the_newest_events_and_the_anchor_is_caught_by_the_checkpoint(world, tmp_path):
    sc = world
    _reads(sc, 5)
    cp = _checkpoint(sc, tmp_path / "cp.json")
    last = rows(sc)[-1]["seq"]
    with sc.engine.begin() as c:  # drop the newest two and re-point the anchor at what is left
        c.execute(audit_event.delete().where(audit_event.c.seq > last - 2))
    with sc.engine.begin() as c:
        c.execute(audit_anchor.delete())
    result = _cli_verify(sc, cp)
    assert result.exit_code == 1, result.output
    assert f"events {last - 1}..{last} are missing" in result.output


def _copy_sqlite(src: Path, dst: Path) -> None:
    # SQLite's online backup: a consistent copy of the whole file (WAL included), safe while
    # other connections (the CLI's) are open -- what `cp` does to a stopped server's file.
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def _snapshot(sc, tmp_path):
    """An older copy of the database: the SQLite file itself, or PostgreSQL's audit tables."""
    if sc.engine.dialect.name == "sqlite":
        db = Path(sc.engine.url.database)
        _copy_sqlite(db, tmp_path / "old.sqlite")
        return db
    with sc.engine.connect() as c:
        return ([dict(r) for r in c.execute(select(audit_event)).mappings()],
                [dict(r) for r in c.execute(select(audit_anchor)).mappings()])


def _restore(sc, tmp_path, snap):
    if sc.engine.dialect.name == "sqlite":
        sc.engine.dispose()
        _copy_sqlite(tmp_path / "old.sqlite", snap)
        return
    events, anchor = snap
    with sc.engine.begin() as c:
        c.execute(audit_event.delete())
        c.execute(audit_anchor.delete())
        c.execute(insert(audit_event), events)
        c.execute(insert(audit_anchor), anchor)


def test_rollback_to_an_older_copy_is_detected(world, tmp_path):
    sc = world
    _reads(sc, 3)
    snap = _snapshot(sc, tmp_path)
    _reads(sc, 4)
    cp = _checkpoint(sc, tmp_path / "daily.json")
    _restore(sc, tmp_path, snap)
    assert sc.governance.audit_trail.verify() == []  # the old copy agrees with itself ...
    result = _cli_verify(sc, cp)                      # ... but not with the checkpoint
    assert result.exit_code == 1, result.output
    assert "rolled back to an older copy" in result.output

    # Rolled back, then used again until the sequence numbers pass the checkpoint's: the event
    # at the checkpoint's number is a different one.
    _reads(sc, 6)
    assert sc.governance.audit_trail.verify() == []
    result = _cli_verify(sc, cp)
    assert result.exit_code == 1, result.output
    assert "no longer has the hash recorded by checkpoint" in result.output


def test_a_tampered_or_foreign_checkpoint_fails(world, tmp_path):
    sc = world
    _reads(sc, 3)
    cp = _checkpoint(sc, tmp_path / "cp.json")
    text_ = cp.read_text()
    forged = tmp_path / "forged.json"
    forged.write_text(text_.replace(f'"count":{count(sc)}', f'"count":{count(sc) - 2}'))
    assert forged.read_text() != text_
    result = _cli_verify(sc, forged)
    assert result.exit_code == 1, result.output
    assert "signature does not verify" in result.output

    other = AuditTrail(sc.engine, secrets.token_bytes(32)).checkpoint()  # signed with another key
    foreign = tmp_path / "foreign.json"
    foreign.write_bytes(other.to_json())
    result = _cli_verify(sc, foreign)
    assert result.exit_code == 1, result.output
    assert "signature does not verify" in result.output

    broken = tmp_path / "broken.jsonl"
    broken.write_text(text_ + "{not json\n")
    result = _cli_verify(sc, broken)
    assert result.exit_code == 2, result.output
    assert f"{broken}:2" in result.output


def test_checkpoint_then_more_events_verifies_with_the_cli(world, tmp_path):
    sc = world
    _reads(sc, 2)
    cp = _checkpoint(sc, tmp_path / "cp.jsonl")
    _reads(sc, 3)
    _checkpoint(sc, cp)  # appended: one file, two checkpoints
    assert len(read_checkpoints([cp])) == 2
    _reads(sc, 2)
    result = _cli_verify(sc, cp)
    assert result.exit_code == 0, result.output
    assert "audit trail intact up to checkpoint" in result.output
    assert "and 2 events after it" in result.output

    # A checkpoint is not written for a trail that is already tampered with.
    delete_middle(sc, rows(sc))
    result = _cli(sc, "checkpoint", "--out", str(tmp_path / "no.json"))
    assert result.exit_code == 1 and not (tmp_path / "no.json").exists(), result.output


def test_server_appends_checkpoints_to_a_directory(database_url, tmp_path, monkeypatch):
    from small_world import build

    from sharedcare.app import SharedCare

    folder = tmp_path / "checkpoints"
    monkeypatch.setenv(ENV_CHECKPOINT_DIR, str(folder))
    monkeypatch.setenv(ENV_CHECKPOINT_EVENTS, "1")
    sc = SharedCare.open(database_url, tmp_path / "data")
    try:
        build(sc)
        trail = sc.governance.audit_trail
        _reads(sc, 5)  # the checkpointer starts with the first event and wakes after each
        deadline = time.time() + 10
        while time.time() < deadline:
            cps = read_checkpoints([folder]) if folder.exists() else []
            if cps and max(c.seq for c in cps) == rows(sc)[-1]["seq"]:
                break
            time.sleep(0.05)
        assert cps and max(c.seq for c in cps) == rows(sc)[-1]["seq"], cps
        result = _cli_verify(sc)  # the directory from the environment
        assert result.exit_code == 0, result.output
        assert "intact up to checkpoint" in result.output

        # Rolled back while the server runs: it refuses to sign the older trail.
        snap = [r for r in rows(sc) if r["seq"] <= 2]
        with sc.engine.begin() as c:
            c.execute(audit_event.delete().where(audit_event.c.seq > 2))
            c.execute(audit_anchor.update().values(seq=2, hash=snap[-1]["hash"],
                                                   mac=trail._anchor_mac(2, snap[-1]["hash"])))
        trail.stop_checkpoints()
        assert trail.checkpoint_to_dir() is None
        result = _cli_verify(sc, folder)
        assert result.exit_code == 1 and "are missing" in result.output, result.output
    finally:
        sc.governance.audit_trail.stop_checkpoints()
        sc.engine.dispose()


def test_key_file_from_the_environment(database_url, tmp_path, monkeypatch):
    from sharedcare.app import SharedCare

    key_file = tmp_path / "secrets" / "audit.key"
    monkeypatch.setenv(ENV_KEY_FILE, str(key_file))
    sc = SharedCare.open(database_url, tmp_path / "data")
    try:
        sc.governance.add_organisation("HOS", "Hospital", "acute-trust")
        for _ in range(3):
            sc.governance.audit_trail.record(access(sc, "hos.doc", "HOS", "clinician"), "read")
        assert key_file.exists() and (key_file.stat().st_mode & 0o777) == 0o600
        assert not (tmp_path / "data" / "keys" / "audit.key").exists()
        key = key_file.read_bytes()
        assert AuditTrail(sc.engine, key).verify() == []
        assert AuditTrail(sc.engine, secrets.token_bytes(32)).verify()  # another key fails

        result = _cli_verify(sc)
        assert result.exit_code == 0, result.output
        assert "inside the data directory" not in result.output
        monkeypatch.delenv(ENV_KEY_FILE)  # without it, the CLI uses (makes) the default key
        result = _cli_verify(sc)
        assert result.exit_code == 1, result.output
        assert "not the one this trail was written with" in result.output
        assert "inside the data directory" in result.output and ENV_KEY_FILE in result.output
    finally:
        sc.engine.dispose()


def test_key_beside_the_database_is_warned_about(world):
    _reads(world, 1)
    result = _cli_verify(world)
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "inside the data directory" in result.output
    assert "audit trail intact" in result.output and "No checkpoint was given" in result.output


def test_a_new_database_gets_an_anchor_an_old_one_is_not_given_one(world):
    sc = world
    _reads(sc, 2)
    _delete_everything(sc)
    sc.governance.audit_trail.initialise()  # e.g. the next start: must not bless the deletion
    with sc.engine.connect() as c:
        assert c.execute(select(audit_anchor)).first() is None
    assert sc.governance.audit_trail.verify()


def test_serve_warns_when_the_key_is_beside_the_database(world, monkeypatch, tmp_path):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)  # start-up only, no server
    url = world.engine.url.render_as_string(hide_password=False)
    args = ["serve", "--database", url, "--data-dir", str(world.data_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "inside the data directory" in result.output and ENV_KEY_FILE in result.output

    outside = tmp_path / "elsewhere" / "audit.key"
    outside.parent.mkdir()
    shutil.copy(world.governance.audit_trail.key_file, outside)
    monkeypatch.setenv(ENV_KEY_FILE, str(outside))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "inside the data directory" not in result.output


def test_concurrent_accesses_each_get_one_event_and_the_chain_verifies(world):
    """The audit writer gathers events that arrive together into one transaction (one lock,
    one insert, one anchor update): each caller still gets its own committed event, in one
    unbroken chain with consecutive numbers."""
    from concurrent.futures import ThreadPoolExecutor

    gov = world.governance
    before = count(world)
    gate = __import__("threading").Barrier(16)

    def audited(i: int) -> int:
        gate.wait()
        return gov.audit(access(world, "gp.doc", "GP1", "clinician"), "read", "0",
                         patient_id="P1", entity=f"Observation/o{i}")

    with ThreadPoolExecutor(16) as pool:
        seqs = list(pool.map(audited, range(64)))
    after = rows(world)
    assert len(after) == before + 64
    assert sorted(seqs) == [r["seq"] for r in after[before:]]  # each caller's own event
    assert sorted(r["entity"] for r in after[before:]) == sorted(
        f"Observation/o{i}" for i in range(64))
    assert [r["seq"] for r in after] == list(range(1, len(after) + 1))
    assert gov.audit_trail.verify() == []
