"""`sharedcare identity ...`: link, unlink, review, confirm and reject from the command line, each
audited with its reason (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sharedcare.identity.schema import identity_queue
from sharedcare.identity.worker import IdentityWorker
from sharedcare.store.repository import WriteOp

from ._support import audit_rows, basis, patient, person_of, queued


def run(sc, *args):
    from sharedcare.cli import app

    url = sc.engine.url.render_as_string(hide_password=False)
    r = CliRunner().invoke(app, ["identity", *args, "--user", "id.officer", "--database", url,
                                 "--data-dir", str(sc.data_dir)], catch_exceptions=False)
    return r.exit_code, r.output


def test_link_unlink_review_confirm_reject_are_audited(sc):
    sc.governance.add_staff("id.officer", "Identity Officer", [("RTEST", "admin")], None)
    sc.governance.add_staff("nurse.n", "Nurse", [("RTEST", "nurse")], None)
    a = patient("Oliver", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RHOSP", pid="a")
    b = patient("Olly", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RCOUNCIL", pid="b")
    n1 = patient("Ann", "Lee", "1950-01-01", "female", "M1 1AA", "RHOSP", "9434765919", pid="n1")
    n2 = patient("Ann", "Lee", "1950-01-01", "female", "M1 1AA", "RGP", "9990000026", pid="n2")
    sc.store.write([WriteOp("PUT", "Patient", p["id"], p) for p in (a, b, n1, n2)])

    # link: b joins a's Person; audited; explained on the link
    code, out = run(sc, "link", "a", "b", "--reason", "same person per the ward clerk")
    assert code == 0, out
    assert person_of(sc, "a")["id"] == person_of(sc, "b")["id"]
    assert basis(sc, "b") == "operator"
    [ev] = audit_rows(sc, "identity-link")
    assert (ev["username"], ev["patient_id"]) == ("id.officer", "b")
    assert "ward clerk" in ev["reason"]
    code, out = run(sc, "explain", "b")
    members = {m["patient"]: m for m in json.loads(out[out.index("{"):])["members"]}
    assert "ward clerk" in members["b"]["reason"] and members["b"]["basis"] == "operator"

    # unlink reverses it; the worker does not put it back (a person decided)
    code, out = run(sc, "unlink", "b", "--reason", "different people after all")
    assert code == 0, out
    assert person_of(sc, "a")["id"] != person_of(sc, "b")["id"]
    [ev] = audit_rows(sc, "identity-unlink")
    assert ev["patient_id"] == "b" and "after all" in ev["reason"]
    IdentityWorker(sc).drain()
    assert person_of(sc, "a")["id"] != person_of(sc, "b")["id"]

    # refusals: a reason is required; different valid NHS numbers never link; a record placed by
    # its NHS number cannot be unlinked; a role without identity work is refused
    code, out = run(sc, "link", "a", "b", "--reason", "x")
    assert code == 2 and "reason" in out
    code, out = run(sc, "link", "n1", "n2", "--reason", "looks like the same person")
    assert code == 2 and "different valid NHS numbers" in out
    assert person_of(sc, "n1")["id"] != person_of(sc, "n2")["id"]
    code, out = run(sc, "unlink", "n1", "--reason", "wrong person linked here")
    assert code == 2 and "NHS number" in out
    from sharedcare.cli import app

    r = CliRunner().invoke(app, ["identity", "review", "--user", "nurse.n", "--role", "nurse",
                                 "--database", sc.engine.url.render_as_string(hide_password=False),
                                 "--data-dir", str(sc.data_dir)])
    assert r.exit_code == 2 and "identity work needs" in r.output
    assert len(audit_rows(sc, "identity-link")) == 1 and len(audit_rows(sc, "identity-unlink")) == 1

    # review: a possible match queued by the model, shown with its evidence, then decided
    c = patient("Thomas", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RCOUNCIL", pid="c")
    sc.store.write([WriteOp("PUT", "Patient", "c", c)])
    assert queued(sc) == {"c": "pending"}
    with sc.engine.begin() as conn:  # the model's certain link is not what this test is about
        conn.execute(identity_queue.update().values(status="pending"))
    IdentityWorker(sc).drain()
    code, out = run(sc, "review", "--json")
    [item] = json.loads(out)
    assert item["patient_id"] == "c" and item["fields"]["given"].startswith("disagree")
    assert item["fields"]["family"].startswith("agree") and item["match_weight"] is not None
    code, out = run(sc, "review")
    assert code == 0 and item["task_id"] in out and "family: agree" in out
    code, out = run(sc, "reject", item["task_id"], "--reason", "twins")
    assert code == 0, out
    code, out = run(sc, "review", "--json")
    assert json.loads(out) == []
    code, out = run(sc, "confirm", item["task_id"])
    assert code == 2 and "already decided" in out
    [ev] = audit_rows(sc, "identity-reject")
    assert ev["patient_id"] == "c" and "twins" in ev["reason"]
    assert person_of(sc, "c")["id"] not in (person_of(sc, "a")["id"], person_of(sc, "b")["id"])
