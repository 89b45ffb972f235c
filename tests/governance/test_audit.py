"""The audit trail: exactly one AuditEvent per access, tamper-evident, no patient names."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pytest
from small_world import PATIENT_FAMILY, access, build
from sqlalchemy import func, insert, select, text
from typer.testing import CliRunner

from sharedcare.cli import app as cli
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.audit import row_hash
from sharedcare.governance.schema import audit_event


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


def _cli_verify(sc):
    url = sc.engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(cli, ["audit", "verify", "--database", url,
                                    "--data-dir", str(sc.data_dir)])


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
