"""Governed extracts: purpose and agreements, opt-out, objections, pseudonyms, coarsening."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SENSITIVITY_SYSTEM
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.policy import Access
from sharedcare.governance.schema import audit_event
from sharedcare.population.extract import run_extract
from sharedcare.population.pseudonym import load_key, pseudonym
from sharedcare.store.persons import patients_of_person
from sharedcare.store.repository import WriteOp

PLAN = "RPLAN"  # the requesting organisation (e.g. the ICB's analytics team)
GP = "RGP01"  # shares demographics + gp-summary for planning
MH = "RMH01"  # no planning agreement
VIEWS = ["patient_demographics", "conditions", "encounters"]


def _patient(pid, nhs, postcode="M19 3SF"):
    return {"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1948-07-19",
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
            "name": [{"family": f"Surname{pid}", "given": ["Given"]}],
            "telecom": [{"system": "phone", "value": "07700 900123"}],
            "address": [{"use": "home", "line": ["1 Secret Street"], "postalCode": postcode}]}


def _condition(cid, pid, code="44054006", onset="2021-09-04", security=None):
    res = {"resourceType": "Condition", "id": cid,
           "subject": {"reference": f"Patient/{pid}", "display": f"Surname{pid}"},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
           "onsetDateTime": onset,
           "note": [{"text": f"Seen with Surname{pid}"}]}
    if security:
        res["meta"] = {"security": [{"system": SENSITIVITY_SYSTEM, "code": security}]}
    return res


def _encounter(eid, pid):
    return {"resourceType": "Encounter", "id": eid, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "EMER"}, "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": "2026-03-14T10:11:12Z"}}


def _write(sc, resources, org):
    sc.store.write([WriteOp("PUT", r["resourceType"], r["id"], r) for r in resources],
                   source_org=org)


PATIENTS = {f"pat-{i}": nhs for i, nhs in enumerate([  # valid modulus-11 check digits
    "9991234500", "9991234519", "9991234527", "9991234535", "9991234543", "9991234551",
    "9991234578", "9991234586"])}


@pytest.fixture
def world(sc):
    gov = sc.governance
    for ods, kind in ((PLAN, "icb"), (GP, "gp-practice"), (MH, "mental-health")):
        gov.add_organisation(ods, ods, kind)
    gov.add_agreement("DSA-PLAN-1", "Population health planning", [PLAN, GP], ["planning"],
                      ["demographics", "gp-summary"], status="active")
    gov.add_agreement("DSA-DC-1", "Direct care", [PLAN, GP, MH], ["direct-care"],
                      ["demographics", "gp-summary", "encounters", "mental-health"],
                      status="active")
    gov.add_agreement("DSA-RES-0", "Research (draft)", [PLAN, GP], ["research"],
                      ["demographics"], status="draft")
    gp = []
    for i, (pid, nhs) in enumerate(PATIENTS.items()):
        gp += [_patient(pid, nhs), _condition(f"cond-{i}", pid), _encounter(f"enc-{i}", pid)]
    gp.append(_condition("cond-sens", "pat-1", security="sexual-health"))
    _write(sc, gp, GP)
    _write(sc, [_condition("cond-mh", "pat-2", code="35489007")], MH)
    _write(sc, [_condition("cond-own-3", "pat-3", code="13645005"),
                _condition("cond-own-4", "pat-4", code="13645005")], PLAN)
    gov.record_choice("pat-3", "national-opt-out")
    gov.record_choice("pat-4", "objection-all")
    return sc


def _planner(sc, purpose="planning"):
    return sc.governance.prepare(Access("analyst", PLAN, "programme-lead", purpose))


def _all_values(db_path: Path) -> list[str]:
    con = duckdb.connect(str(db_path), read_only=True)
    out = []
    for (t,) in con.execute("select table_name from information_schema.tables").fetchall():
        for row in con.execute(f'select * from "{t}"').fetchall():
            out += [str(v) for v in row]
    con.close()
    return out


def test_scope_opt_out_objection_and_agreements(world, tmp_path):
    r = run_extract(world, _planner(world), VIEWS, project="mltc", out_dir=tmp_path / "x")
    assert r.purpose == "planning"
    assert r.agreements == ["DSA-PLAN-1"]
    assert set(r.controllers) == {PLAN, GP}
    manifest = json.loads(r.manifest_path.read_text())
    assert manifest["agreements"] == ["DSA-PLAN-1"] and manifest["purpose"] == "planning"
    key = load_key(world.data_dir)

    def p(v):
        return pseudonym(key, "mltc", v)

    con = duckdb.connect(str(r.duckdb_path), read_only=True)
    patients = {row[0] for row in con.execute("select id from patient_demographics").fetchall()}
    # pat-3: national opt-out; pat-4 objected to sharing, and GP controls the Patient
    assert patients == {p(pid) for pid in PATIENTS if pid not in ("pat-3", "pat-4")}
    conds = {row[0] for row in con.execute("select id from conditions").fetchall()}
    # GP's conditions, minus the opted-out patient, minus the objecting patient's (GP data),
    # minus the sensitive one; MH's is not covered; the requester's own about pat-4 stays.
    expected = {p(f"cond-{i}") for i in range(8) if i not in (3, 4)} | {p("cond-own-4")}
    assert conds == expected
    # encounters are not a category the planning agreement shares
    assert con.execute("select count(*) from encounters").fetchone()[0] == 0
    # joins still work on pseudonyms
    joined = con.execute("select count(*) from conditions c join patient_demographics d "
                         "on c.patient_id = d.id").fetchone()[0]
    assert joined == len(expected) - 1  # cond-own-4's patient is not shared
    assert con.execute("select project, purpose, agreements from extract_info").fetchone() == \
        ("mltc", "planning", "DSA-PLAN-1")
    con.close()
    # Parquet has the same rows
    assert pq.read_table(r.parquet["conditions"]).num_rows == len(expected)
    # one audit event naming purpose and agreement
    with world.engine.connect() as conn:
        ev = conn.execute(select(audit_event.c.action, audit_event.c.outcome,
                                 audit_event.c.purpose, audit_event.c.reason)
                          .order_by(audit_event.c.seq.desc()).limit(1)).one()
    assert ev.action == "export" and ev.outcome == "0" and ev.purpose == "planning"
    assert "DSA-PLAN-1" in ev.reason


def test_opted_out_patient_still_visible_for_direct_care(world, tmp_path):
    gp = world.governance.access_from_claims(world.governance.tokens.verify(
        world.governance.issue_system_token("gp-system", GP)))
    assert world.governance.read(gp, "Patient", "pat-3").json()["id"] == "pat-3"
    r = run_extract(world, _planner(world), ["patient_demographics"], project="x",
                    out_dir=tmp_path / "x")
    assert r.rows["patient_demographics"] == len(PATIENTS) - 2


def test_no_identifiers_or_key_in_output(world, tmp_path):
    out = tmp_path / "out"
    run_extract(world, _planner(world), VIEWS, project="p1", out_dir=out)
    key = load_key(world.data_dir)
    assert (world.data_dir / "keys" / "pseudonym.key").stat().st_mode & 0o077 == 0
    raw = list(PATIENTS) + list(PATIENTS.values()) + [f"cond-{i}" for i in range(8)] + \
        ["Surnamepat-0", "Secret Street", "07700 900123", "3SF"]
    blobs = [f.read_bytes() for f in out.iterdir()]
    assert {f.suffix for f in out.iterdir()} >= {".parquet", ".duckdb", ".json"}
    for blob in blobs:
        for secret in raw:
            assert secret.encode() not in blob, secret
        for form in (key, key.hex().encode(), __import__("base64").b64encode(key)):
            assert form not in blob
    values = _all_values(out / "extract.duckdb")
    for f in out.glob("*.parquet"):
        values += [str(v) for col in pq.read_table(f).to_pydict().values() for v in col]
    text = "\n".join(values)
    for secret in raw:
        assert secret not in text, secret
    assert "M19" in text  # postcode district kept for neighbourhood figures


def test_pseudonyms_stable_within_and_different_across_projects(world, tmp_path):
    a1 = run_extract(world, _planner(world), ["patient_demographics"], project="alpha",
                     out_dir=tmp_path / "a1")
    a2 = run_extract(world, _planner(world), ["patient_demographics"], project="alpha",
                     out_dir=tmp_path / "a2")
    b = run_extract(world, _planner(world), ["patient_demographics"], project="beta",
                    out_dir=tmp_path / "b")

    def ids(r):
        con = duckdb.connect(str(r.duckdb_path), read_only=True)
        rows = set(con.execute("select id, nhs_number from patient_demographics").fetchall())
        con.close()
        return rows

    assert ids(a1) == ids(a2)
    assert len(ids(a1)) == len(PATIENTS) - 2
    flat_a = {v for row in ids(a1) for v in row}
    flat_b = {v for row in ids(b) for v in row}
    assert not flat_a & flat_b


def test_refused_without_an_agreement_for_the_purpose(world, tmp_path):
    # research: only a draft agreement exists
    with pytest.raises(FHIRError) as e:
        run_extract(world, _planner(world, "research"), VIEWS, project="r",
                    out_dir=tmp_path / "r")
    assert e.value.status == 403
    assert "no active sharing agreement covers research" in str(e.value)
    assert not (tmp_path / "r").exists()
    with world.engine.connect() as conn:
        ev = conn.execute(select(audit_event.c.action, audit_event.c.outcome)
                          .order_by(audit_event.c.seq.desc()).limit(1)).one()
    assert tuple(ev) == ("export", "4")
    # a direct-care token is not a secondary-use token
    with pytest.raises(FHIRError) as e:
        run_extract(world, _planner(world, "direct-care"), VIEWS, project="r",
                    out_dir=tmp_path / "r")
    assert e.value.status == 403
    # suspending the planning agreement closes the door
    world.governance.set_agreement_status("DSA-PLAN-1", "suspended")
    with pytest.raises(FHIRError):
        run_extract(world, _planner(world), VIEWS, project="r", out_dir=tmp_path / "r")


@pytest.mark.parametrize("level,birth,onset", [("none", "1948-07-19", "2021-09-04"),
                                               ("month", "1948-07-01", "2021-09-01"),
                                               ("year", "1948-01-01", "2021-01-01")])
def test_date_coarsening(world, tmp_path, level, birth, onset):
    r = run_extract(world, _planner(world), ["patient_demographics", "conditions"],
                    project="d", coarsen_dates=level, out_dir=tmp_path / level)
    con = duckdb.connect(str(r.duckdb_path), read_only=True)
    births = {str(b) for (b,) in con.execute("select birth_date from patient_demographics")
              .fetchall()}
    onsets = {str(o)[:10] for (o,) in con.execute("select onset from conditions").fetchall()}
    con.close()
    assert births == {birth}
    assert onsets == {onset}


def test_custom_view_cannot_reach_names(world, tmp_path):
    view = {"resourceType": "ViewDefinition", "name": "sneaky", "resource": "Patient",
            "select": [{"column": [
                {"name": "family", "path": "name.family.first()", "type": "string"},
                {"name": "phone", "path": "telecom.value.first()", "type": "string"},
                {"name": "line", "path": "address.line.first()", "type": "string"},
                {"name": "postcode", "path": "address.postalCode.first()", "type": "string"}]}]}
    r = run_extract(world, _planner(world), [view], project="s", out_dir=tmp_path / "s")
    con = duckdb.connect(str(r.duckdb_path), read_only=True)
    rows = set(con.execute("select * from sneaky").fetchall())
    con.close()
    assert rows == {(None, None, None, "M19")}


def test_an_opt_out_on_any_of_the_persons_records_covers_the_person(world, tmp_path):
    # The planning team's own record of pat-0's person (same NHS number: identity joins them).
    _write(world, [_patient("plan-0", PATIENTS["pat-0"])], PLAN)
    with world.engine.connect() as conn:
        assert "pat-0" in patients_of_person(conn, "plan-0")
    world.governance.record_choice("plan-0", "national-opt-out")
    r = run_extract(world, _planner(world), VIEWS, project="mltc", out_dir=tmp_path / "x")
    key = load_key(world.data_dir)
    con = duckdb.connect(str(r.duckdb_path), read_only=True)
    patients = {row[0] for row in con.execute("select id from patient_demographics").fetchall()}
    conds = {row[0] for row in con.execute("select id from conditions").fetchall()}
    con.close()
    assert pseudonym(key, "mltc", "pat-0") not in patients
    assert pseudonym(key, "mltc", "cond-0") not in conds
    assert pseudonym(key, "mltc", "pat-1") in patients
