"""Authentication and SMART scopes at the FHIR API: 401s, 403s, narrowing, lock-out, roles."""

from __future__ import annotations

import pytest
from joserfc.jwk import ECKey
from small_world import build
from sqlalchemy import select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.auth import TokenService
from sharedcare.governance.schema import staff

PASSWORD = "correct horse battery staple"


@pytest.fixture
def api(sc):
    build(sc)
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        yield sc, c


def get(c, path, token=None, **headers):
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return c.get(f"/fhir/{path}", headers=headers)


def assert_outcome(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


def other_key_token(gov):
    # Same algorithm, same claims, even the server's key id: only the signing key differs.
    kid = gov.tokens.key.kid
    stranger = TokenService(ECKey.generate_key("P-256", parameters={"kid": kid}, private=True))
    return stranger.issue({"sub": "hos.doc", "ods": "HOS", "role": "clinician",
                           "purpose": "direct-care", "scope": "user/*.cruds", "kind": "user"})


BAD_TOKENS = ["none", "expired", "other-key", "garbage", "three-dots", "alg-none",
              "empty-bearer", "basic"]


def test_401_operation_outcome(api):
    for bad in BAD_TOKENS:
        check_401(api, bad)


def check_401(api, bad):
    sc, c = api
    gov = sc.governance
    headers = {}
    if bad == "expired":
        headers["Authorization"] = "Bearer " + gov.issue_token("hos.doc", "HOS", "clinician",
                                                               lifetime=-10)
    elif bad == "other-key":
        headers["Authorization"] = "Bearer " + other_key_token(gov)
    elif bad == "garbage":
        headers["Authorization"] = "Bearer not-a-token"
    elif bad == "three-dots":
        headers["Authorization"] = "Bearer a.b.c"
    elif bad == "alg-none":
        # {"alg":"none"}.{"sub":"hos.doc","ods":"HOS","role":"clinician","kind":"user"}.
        headers["Authorization"] = ("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJob3MuZG9jIiwib2RzIjoiSE"
                                    "9TIiwicm9sZSI6ImNsaW5pY2lhbiIsImtpbmQiOiJ1c2VyIn0.")
    elif bad == "empty-bearer":
        headers["Authorization"] = "Bearer "
    elif bad == "basic":
        headers["Authorization"] = "Basic aG9zLmRvYzpwYXNzd29yZA=="
    for path in ("Observation/o-plain", "Observation?subject=Patient/P1",
                 "Patient/P1/$everything"):
        r = c.get(f"/fhir/{path}", headers=headers)
        body = assert_outcome(r, 401) if r.status_code == 401 else pytest.fail(
            f"{bad} token: {r.status_code} {r.text[:200]}")
        assert body["issue"][0]["code"] == "login"
        assert r.headers.get("www-authenticate", "").startswith("Bearer")


def test_valid_token_reads(api):
    sc, c = api
    tok = sc.governance.issue_token("hos.doc", "HOS", "clinician")
    assert get(c, "Observation/o-plain", tok).status_code == 200


def test_403_for_insufficient_scope(api):
    sc, c = api
    gov = sc.governance
    narrow = gov.issue_token("hos.doc", "HOS", "clinician", scope="user/Patient.rs")
    assert get(c, "Patient/P1", narrow).status_code == 200
    body = assert_outcome(get(c, "Observation/o-plain", narrow), 403)
    assert "scope" in body["issue"][0]["diagnostics"]
    assert_outcome(get(c, "Observation?subject=Patient/P1", narrow), 403)
    read_only = gov.issue_token("hos.doc", "HOS", "clinician", scope="user/*.r")
    assert get(c, "Observation/o-plain", read_only).status_code == 200
    assert_outcome(get(c, "Observation?subject=Patient/P1", read_only), 403)  # no 's'


def test_scopes_narrow_but_never_widen(api):
    sc, c = api
    gov = sc.governance
    # The broadest user scope does not give a viewer without a relationship anything.
    ch = gov.issue_token("ch.nurse", "CH1", "nurse", scope="user/*.cruds")
    assert_outcome(get(c, "Observation/o-plain", ch), 403)
    assert_outcome(get(c, "Patient/P1", ch), 403)
    assert_outcome(get(c, "Patient/P1/$everything", ch), 403)
    assert get(c, "Observation", ch).json().get("total") == 0
    # Nor does it lift the role's categories or sensitivity labels.
    admin = gov.issue_token("hos.admin", "HOS", "admin", scope="user/*.cruds system/*.cruds")
    assert_outcome(get(c, "Observation/o-plain", admin), 403)
    doc = gov.issue_token("hos.doc", "HOS", "clinician", scope="user/*.cruds system/*.cruds")
    assert_outcome(get(c, "Observation/o-sexual", doc), 403)
    # Nor does a token for a role the person does not hold get issued at all.
    with pytest.raises(FHIRError) as e:
        gov.issue_token("hos.admin", "HOS", "clinician")
    assert e.value.status == 403


def test_patient_scopes_confine_to_the_launch_patient(api):
    sc, c = api
    gov = sc.governance
    gp = gov.issue_token("gp.doc", "GP1", "clinician", scope="patient/*.rs", patient="P1")
    assert get(c, "Patient/P1", gp).status_code == 200
    assert get(c, "Observation/o-plain", gp).status_code == 200
    assert_outcome(get(c, "Patient/P2", gp), 403)
    assert_outcome(get(c, "Observation/o-p2", gp), 403)
    assert_outcome(get(c, "Patient/P2/$everything", gp), 403)
    assert_outcome(get(c, "Patient/P2/Observation", gp), 403)
    ids = {e["resource"]["id"] for e in get(c, "Observation", gp).json()["entry"]
           if e["search"]["mode"] == "match"}
    assert "o-p2" not in ids and "o-plain" in ids
    ids = {e["resource"]["id"] for e in get(c, "Patient", gp).json()["entry"]}
    assert ids == {"P1"}
    # The same person with user scopes sees both registered patients.
    full = gov.issue_token("gp.doc", "GP1", "clinician")
    assert get(c, "Patient/P2", full).status_code == 200
    # patient/ scopes without a launch patient are refused.
    nopat = gov.issue_token("gp.doc", "GP1", "clinician", scope="patient/*.rs")
    assert_outcome(get(c, "Patient/P1", nopat), 403)


def test_local_account_lockout_and_argon2(api):
    sc, _ = api
    gov = sc.governance
    good = PASSWORD
    gov.add_staff("hos.doc", "Dr hos.doc", [("HOS", "clinician")], good)
    with sc.engine.connect() as conn:
        stored = conn.execute(select(staff.c.password_hash)
                              .where(staff.c.username == "hos.doc")).scalar()
    assert stored.startswith("$argon2id$") and good not in stored
    assert gov.sign_in("hos.doc", good)
    for _ in range(4):
        assert not gov.sign_in("hos.doc", "wrong")
    assert gov.sign_in("hos.doc", good), "a success before the limit resets the count"
    assert not gov.is_locked("hos.doc")
    for _ in range(5):
        assert not gov.sign_in("hos.doc", "wrong")
    assert gov.is_locked("hos.doc")
    assert not gov.sign_in("hos.doc", good), "locked out: even the right password fails"
    assert not gov.sign_in("nobody", good)


def test_one_person_two_roles_sees_different_things(api):
    sc, c = api
    gov = sc.governance
    as_doc = gov.issue_token("dual", "HOS", "clinician")
    as_admin = gov.issue_token("dual", "HOS", "admin")
    assert get(c, "Observation/o-plain", as_doc).status_code == 200
    assert_outcome(get(c, "Observation/o-plain", as_admin), 403)
    assert get(c, "Patient/P1", as_admin).status_code == 200
    assert get(c, "Encounter/e-1", as_admin).status_code == 200
    n_doc = get(c, "Observation", as_doc).json()["total"]
    n_admin = get(c, "Observation", as_admin).json()["total"]
    assert (n_doc, n_admin) == (3, 0)  # o-plain, o-mental (clinician may see), o-hos
