"""SMART EHR launch into sharedcare: a partner's EPR (the simulator in ehr_simulator.py, on a
real port) launches a real sharedcare server (live_server), over real HTTP, on SQLite and
PostgreSQL; then every refusal.
"""

from __future__ import annotations

import json
from contextlib import closing

import httpx
import pytest
from ehr_simulator import EhrSimulator, start
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import select

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, ODS_SYSTEM
from sharedcare.governance.ehr_launch import get_epr, register_epr, remove_epr
from sharedcare.governance.schema import audit_event, staff

ORG = "RTEST"
OTHER = "RGP01"
CLIENT_ID = "sharedcare-at-riverside"
SECRET = "epr-secret-for-tests"
NHS = "9434765919"
SDS = "555123456789"


@pytest.fixture
def ehr():
    sim = EhrSimulator(CLIENT_ID, SECRET)
    server, thread = start(sim)
    sim.add_patient("epr-pat-1", NHS)
    sim.add_practitioner("epr-doc-1", SDS)
    sim.launches["L1"] = ("epr-pat-1", "epr-doc-1")
    yield sim
    server.should_exit = True
    thread.join(5)


@pytest.fixture
def world(sc, live_server, system_token, ehr):
    gov = sc.governance
    gov.add_organisation(OTHER, "Riverside Surgery", "gp-practice")
    gov.add_staff("drsmith", "Dr Jo Smith", [(ORG, "clinician")], sds_id=SDS)
    register_epr(sc.engine, ehr.fhir + "/", "Riverside EPR", ods=ORG, client_id=CLIENT_ID,
                 client_secret=SECRET, sealer=sc.sealer)
    auth = {"Authorization": f"Bearer {system_token}"}
    with httpx.Client(base_url=live_server, headers=auth) as c:
        c.put("/fhir/Organization/org1", json={
            "resourceType": "Organization", "id": "org1", "name": "Test Trust",
            "identifier": [{"system": ODS_SYSTEM, "value": ORG}]}).raise_for_status()
        c.put("/fhir/Patient/p1", json={
            "resourceType": "Patient", "id": "p1",
            "name": [{"family": "Launchington", "given": ["Ada"]}],
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": NHS}],
            "generalPractitioner": [{"reference": "Organization/org1"}]}).raise_for_status()
    return live_server


def launch(base: str, iss: str, launch_id: str = "L1", follow=True) -> tuple[httpx.Client,
                                                                             httpx.Response]:
    c = httpx.Client(follow_redirects=follow, timeout=20)
    return c, c.get(f"{base}/launch", params={"iss": iss, "launch": launch_id})


def audit_rows(sc) -> list:
    with sc.engine.connect() as conn:
        return conn.execute(select(audit_event).order_by(audit_event.c.seq)).all()


def test_epr_launch_opens_the_patients_record_signed_in(world, ehr, sc):
    c, r = launch(world, ehr.fhir)
    with closing(c):
        assert r.status_code == 200, r.text
        assert r.url.path == "/patients/p1"
        assert "LAUNCHINGTON" in r.text and "Ada" in r.text
        # Every hop: sharedcare -> EPR authorize -> sharedcare callback -> the patient page.
        hops = [str(h.url) for h in r.history]
        assert hops[0].startswith(f"{world}/launch?")
        assert hops[1].startswith(f"{ehr.base}/auth/authorize?")
        assert hops[2].startswith(f"{world}/launch/callback?")
        # The authorize request was a proper EHR launch.
        q = dict(httpx.URL(hops[1]).params)
        assert q["launch"] == "L1" and q["aud"] == ehr.fhir
        assert q["code_challenge_method"] == "S256" and q["nonce"] and q["state"]
        assert set(q["scope"].split()) >= {"launch", "openid", "fhirUser"}
        # The session is a normal sharedcare session: other pages work too.
        assert c.get(f"{world}/patients").status_code == 200
        assert "sign-in" not in str(c.get(f"{world}/patients").url)
    rows = audit_rows(sc)
    sign_ins = [r for r in rows if r.action == "sign-in"]
    assert len(sign_ins) == 1
    s = sign_ins[0]
    assert (s.username, s.ods, s.role, s.outcome) == ("drsmith", ORG, "clinician", "0")
    assert "Riverside EPR" in s.reason
    assert any(r.action == "everything" and r.patient_id == "p1" and r.username == "drsmith"
               for r in rows)
    text = " ".join(str(v) for r in rows for v in r)
    for token in ehr.tokens:
        assert token not in text
    assert SECRET not in text


def test_unregistered_iss_is_refused_without_contacting_it(world, ehr, sc):
    remove_epr(sc.engine, ehr.fhir)
    assert get_epr(sc.engine, ehr.fhir) is None
    c, r = launch(world, ehr.fhir, follow=False)
    c.close()
    assert r.status_code == 403 and "location" not in r.headers
    assert "not registered" in r.text
    assert ehr.requests == []  # the unregistered server never heard from us
    c, r = launch(world, "https://evil.example/fhir", follow=False)
    c.close()
    assert r.status_code == 403 and "location" not in r.headers
    assert audit_rows(sc)[-1].outcome == "4"


def test_callback_with_unknown_state_is_refused(world):
    with httpx.Client() as c:
        r = c.get(f"{world}/launch/callback", params={"code": "x", "state": "made-up"})
    assert r.status_code == 400 and "expired" in r.text
    assert "sc_session" not in r.cookies


def test_callback_in_another_browser_is_refused(world, ehr):
    with httpx.Client() as c:
        r = c.get(f"{world}/launch", params={"iss": ehr.fhir, "launch": "L1"})
        r = c.get(r.headers["location"])  # the EPR approves
        callback = r.headers["location"]
    with httpx.Client() as other:  # another browser: no binding cookie
        r = other.get(callback)
    assert r.status_code == 400 and "expired" in r.text


def refused(world, ehr, status: int, words: str, signed_in=False) -> httpx.Response:
    c, r = launch(world, ehr.fhir)
    with closing(c):
        assert r.status_code == status, r.text
        assert words in r.text
        assert ("sc_session" in c.cookies) is signed_in
    return r


def test_id_token_signed_by_another_key_is_refused(world, ehr):
    ehr.sign_with = RSAKey.generate_key(2048, parameters={"kid": "ehr-1"}, private=True)
    refused(world, ehr, 401, "cannot be trusted")


def test_id_token_with_wrong_nonce_audience_or_issuer_is_refused(world, ehr, sc):
    for bad in ({"nonce": "not-the-one-sent"}, {"aud": "someone-else"},
                {"iss": "https://other.example"}, {"exp": 1000}):
        ehr.overrides = bad
        refused(world, ehr, 401, "cannot be trusted")
    assert all(r.outcome == "4" for r in audit_rows(sc) if r.action == "sign-in")


def test_unknown_user_is_refused(world, ehr, sc):
    ehr.add_practitioner("epr-doc-2", "999999999999")
    ehr.launches["L1"] = ("epr-pat-1", "epr-doc-2")
    refused(world, ehr, 403, "not linked")
    ehr.add_practitioner("epr-doc-3", None)  # no SDS user id at all
    ehr.launches["L1"] = ("epr-pat-1", "epr-doc-3")
    refused(world, ehr, 403, "not linked")
    ehr.overrides = {"fhirUser": f"{ehr.fhir}/Patient/epr-pat-1"}  # not a practitioner
    refused(world, ehr, 403, "Unknown user")
    # A disabled account is no account.
    ehr.overrides = {}
    ehr.launches["L1"] = ("epr-pat-1", "epr-doc-1")
    sc.governance.add_staff("drsmith", "Dr Jo Smith", [(ORG, "clinician")], sds_id=SDS,
                            active=False)
    refused(world, ehr, 403, "not linked")


def test_a_practitioner_url_off_the_eprs_fhir_base_is_not_fetched(world, ehr):
    """The EPR's access token goes with the Practitioner read: never to another host."""
    ehr.overrides = {"fhirUser": "https://elsewhere.example/fhir/Practitioner/epr-doc-1"}
    refused(world, ehr, 502, "could not be read")


def test_no_role_at_the_eprs_organisation_is_refused(world, ehr, sc):
    sc.governance.add_staff("drsmith", "Dr Jo Smith", [(OTHER, "clinician")], sds_id=SDS)
    refused(world, ehr, 403, "no role at")


def test_patient_without_nhs_number_is_refused(world, ehr):
    ehr.add_patient("epr-pat-1", None)
    refused(world, ehr, 404, "NHS number")
    ehr.add_patient("epr-pat-1", "1234567890")  # fails the check digit
    refused(world, ehr, 404, "NHS number")


def test_patient_not_in_the_shared_record(world, ehr):
    ehr.add_patient("epr-pat-1", "4010232137")
    # Signed in (the person is who the EPR says), but no record to open.
    r = refused(world, ehr, 404, "Patient not found", signed_in=True)
    assert "signed in" in r.text


def test_the_eprs_client_secret_is_sealed_in_the_database(world, sc):
    """A copy of the database (a backup, a replica) does not hand out sharedcare's credential
    at the EPR: the column holds it sealed under a key kept beside the signing key."""
    from sqlalchemy import select as sql_select

    from sharedcare.governance.schema import partner_epr

    with sc.engine.connect() as conn:
        stored = conn.execute(sql_select(partner_epr.c.client_secret)).scalar_one()
    assert SECRET not in stored and stored.startswith("fernet:")
    assert sc.sealer.open(stored) == SECRET
    assert (sc.data_dir / "keys" / "secrets.fernet").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="sealed"):
        register_epr(sc.engine, "https://epr.example/fhir", "X", ods=ORG, client_id="c",
                     client_secret="s")


def test_epr_token_error_is_refused(world, ehr, sc):
    register_epr(sc.engine, ehr.fhir, "Riverside EPR", ods=ORG, client_id=CLIENT_ID,
                 client_secret="wrong-secret", sealer=sc.sealer)
    r = refused(world, ehr, 502, "did not complete the sign-in")
    assert "wrong-secret" not in r.text
    text = " ".join(str(v) for row in audit_rows(sc) for v in row)
    assert "wrong-secret" not in text


def test_several_roles_at_the_organisation_choose_one(world, ehr, sc):
    sc.governance.add_staff("drsmith", "Dr Jo Smith", [(ORG, "clinician"), (ORG, "admin"),
                                                       (OTHER, "nurse")], sds_id=SDS)
    c, r = launch(world, ehr.fhir)
    with closing(c):
        assert r.status_code == 200 and "Choose your role" in r.text
        assert "RGP01" not in r.text  # only roles at the EPR's organisation
        import re

        txn = re.search(r'name="txn" value="([^"]+)"', r.text).group(1)
        r = c.post(f"{world}/launch/role", data={"txn": txn, "role": f"{ORG}|clinician"})
        assert r.status_code == 200 and r.url.path == "/patients/p1"
        assert "LAUNCHINGTON" in r.text


def test_preferred_username_mapping(world, ehr, sc):
    register_epr(sc.engine, ehr.fhir, "Riverside EPR", ods=ORG, client_id=CLIENT_ID,
                 client_secret=SECRET, sealer=sc.sealer, user_match="preferred-username",
                 scope="launch openid patient/Patient.read")
    ehr.overrides = {"preferred_username": "drsmith"}
    c, r = launch(world, ehr.fhir)
    with closing(c):
        assert r.status_code == 200 and r.url.path == "/patients/p1"
    assert "/fhir/Practitioner/epr-doc-1" not in ehr.requests


def test_register_epr_validates(sc):
    with pytest.raises(ValueError):
        register_epr(sc.engine, "not a url", "X", ods=ORG, client_id="c")
    with pytest.raises(ValueError):
        register_epr(sc.engine, "https://epr.example/fhir", "X", ods=ORG, client_id="c",
                     user_match="email")
    with pytest.raises(ValueError):
        register_epr(sc.engine, "https://epr.example/fhir", "X", ods=ORG, client_id="c",
                     scope="openid patient/Patient.read")
    e = register_epr(sc.engine, "https://epr.example/fhir/", "X", ods=ORG, client_id="c",
                     client_secret="s", sealer=sc.sealer)
    assert e.iss == "https://epr.example/fhir" and e.user_match == "sds-user-id"
    assert get_epr(sc.engine, "https://epr.example/fhir/") == e


def test_admin_epr_commands(sc, database_url, tmp_path):
    from typer.testing import CliRunner

    from sharedcare.cli import app

    def run(*args, **kw):
        return CliRunner().invoke(app, [*args, "--database", database_url, "--data-dir",
                                        str(tmp_path / "data")], catch_exceptions=False,
                                  env={"COLUMNS": "300"}, **kw)

    r = run("admin", "staff", "dr.lee", "Dr Lee", "--role", f"{ORG}:clinician", "--sds-id",
            "555000111222", input="pw-for-test\npw-for-test\n")
    assert r.exit_code == 0, r.output
    with sc.engine.connect() as conn:
        assert conn.execute(select(staff.c.sds_id).where(staff.c.username == "dr.lee")
                            ).scalar() == "555000111222"
    r = run("admin", "epr", "add", "https://epr.example/fhir", "--name", "Riverside EPR",
            "--org", ORG, "--client-id", "sc-at-riverside", input="the-secret\n")
    assert r.exit_code == 0, r.output
    epr = get_epr(sc.engine, "https://epr.example/fhir")
    assert (epr.ods, epr.client_id) == (ORG, "sc-at-riverside")
    assert "the-secret" not in epr.client_secret  # sealed, with the server's key (same data dir)
    assert sc.sealer.open(epr.client_secret) == "the-secret"
    r = run("admin", "epr", "list")
    assert "epr.example" in r.output and "the-secret" not in r.output
    r = run("admin", "epr", "add", "https://epr.example/fhir", "--name", "X", "--org", "NOPE",
            "--client-id", "c", input="\n")
    assert r.exit_code != 0 and "no such organisation" in r.output
    r = run("admin", "epr", "add", "https://epr.example/fhir", "--name", "X", "--org", ORG,
            "--client-id", "c", "--match", "email", input="\n")
    assert r.exit_code != 0
    assert run("admin", "epr", "remove", "https://epr.example/fhir").exit_code == 0
    assert get_epr(sc.engine, "https://epr.example/fhir") is None


def test_sharedcare_authenticates_to_the_epr_with_a_private_key(world, ehr, sc, tmp_path):
    from typer.testing import CliRunner

    from sharedcare.cli import app as cli

    r = CliRunner().invoke(cli, ["admin", "keygen", "sharedcare-at-riverside", "--out-dir",
                                 str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    private = tmp_path / "sharedcare-at-riverside-private-key.json"
    ehr.client_keys = KeySet.import_key_set(
        json.loads((tmp_path / "sharedcare-at-riverside-jwks.json").read_text()))
    # Still registered with the secret: the EPR now refuses it.
    refused(world, ehr, 502, "did not complete the sign-in")
    with pytest.raises(ValueError):
        register_epr(sc.engine, ehr.fhir, "Riverside EPR", ods=ORG, client_id=CLIENT_ID,
                     client_secret=SECRET, private_key_file=str(private), sealer=sc.sealer)
    with pytest.raises(ValueError):  # a public key set is not a private key
        register_epr(sc.engine, ehr.fhir, "Riverside EPR", ods=ORG, client_id=CLIENT_ID,
                     private_key_file=str(tmp_path / "sharedcare-at-riverside-jwks.json"))
    register_epr(sc.engine, ehr.fhir, "Riverside EPR", ods=ORG, client_id=CLIENT_ID,
                 private_key_file=str(private))
    c, r = launch(world, ehr.fhir)
    with closing(c):
        assert r.status_code == 200 and r.url.path == "/patients/p1"
    # Signed with another key: refused by the EPR.
    other = tmp_path / "other"
    CliRunner().invoke(cli, ["admin", "keygen", "sharedcare-at-riverside", "--out-dir",
                             str(other)], catch_exceptions=False)
    register_epr(sc.engine, ehr.fhir, "Riverside EPR", ods=ORG, client_id=CLIENT_ID,
                 private_key_file=str(other / "sharedcare-at-riverside-private-key.json"))
    refused(world, ehr, 502, "did not complete the sign-in")
