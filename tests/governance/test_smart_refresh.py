"""SMART refresh tokens with rotation (OAuth 2.0 Security BCP, RFC 9700 §4.14).

The app signs a person in through the real authorization code + PKCE flow (the helpers of
test_smart.py), then refreshes over HTTP as an app would; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time

import test_smart
from joserfc.jwk import ECKey
from sqlalchemy import delete, select, update
from starlette.testclient import TestClient
from test_smart import ORG, REDIRECT, assertion, bearer, build_app, exchange, get_code

from sharedcare.governance import smart
from sharedcare.governance.schema import audit_event, staff, staff_role
from sharedcare.governance.smart import ASSERTION_TYPE, register_client

web = test_smart.web  # the fixture: organisations, staff, app1 and two patients

SCOPES = "openid launch/patient offline_access online_access patient/*.rs user/*.rs"


def register(sc, scopes=SCOPES, **kw):
    register_client(sc.engine, "app1", "Test Viewer", ods=None, redirect_uris=[REDIRECT],
                    scopes=scopes, **kw)


def refresh(c: TestClient, token: str, client_id="app1", **over):
    return c.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                       "client_id": client_id, **over})


def signed_in(web, scope="offline_access user/*.rs", **kw) -> dict:
    code, verifier = get_code(web, scope, **kw)
    r = exchange(web, code, verifier)
    assert r.status_code == 200, r.text
    return r.json()


def test_rotation_gives_a_new_refresh_token_and_the_old_one_stops_working(web, sc):
    register(sc)
    first = signed_in(web)
    assert set(first["scope"].split()) == {"offline_access", "user/*.rs"}
    assert first["refresh_token"]
    r = refresh(web, first["refresh_token"])
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert set(second["scope"].split()) == {"offline_access", "user/*.rs"}
    claims = sc.governance.tokens.verify(second["access_token"])
    assert (claims["sub"], claims["ods"], claims["role"], claims["client_id"]) == \
        ("drsmith", ORG, "clinician", "app1")
    assert web.get("/fhir/Patient/p1", headers=bearer(second["access_token"])).status_code == 200
    # The new one works once more ...
    third = refresh(web, second["refresh_token"]).json()
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    # ... and nothing is stored in the clear: the shared state holds hashes of the keys only.
    with sc.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(
            select(smart_state_table())).all() for v in row)
    for tok in (first, second, third):
        assert tok["refresh_token"] not in stored
    # No token in the audit trail either.
    with sc.engine.connect() as conn:
        audit = " ".join(str(v) for row in conn.execute(select(audit_event)).all() for v in row)
    assert "refreshed its access" in audit
    for tok in (first, second, third):
        assert tok["refresh_token"] not in audit and tok["access_token"] not in audit


def smart_state_table():
    from sharedcare.store.shared_state import shared_state

    return shared_state


def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(web, sc):
    register(sc)
    first = signed_in(web)
    second = refresh(web, first["refresh_token"]).json()
    # An attacker (or a confused app) presents the rotated token again.
    r = refresh(web, first["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "already used" in r.json()["error_description"]
    # The current token of that family is revoked with it.
    r = refresh(web, second["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # So are the access tokens the family issued: whoever replayed may hold one.
    for tok in (first, second):
        assert web.get("/fhir/Patient/p1", headers=bearer(tok["access_token"])).status_code \
            == 401
    # Another sign-in (another family) is not affected.
    other = signed_in(web)
    assert refresh(web, other["refresh_token"]).status_code == 200
    assert web.get("/fhir/Patient/p1", headers=bearer(other["access_token"])).status_code == 200
    with sc.engine.connect() as conn:
        reasons = conn.execute(select(audit_event.c.reason).where(
            audit_event.c.outcome == "4", audit_event.c.action == "token")).scalars().all()
    assert any("used again after rotation" in r for r in reasons)


def test_refresh_token_only_with_offline_or_online_access(web, sc):
    register(sc)
    assert "refresh_token" not in signed_in(web, "user/*.rs")
    online = signed_in(web, "online_access user/*.rs")
    assert online["scope"].split()[0] == "online_access"
    assert refresh(web, online["refresh_token"]).status_code == 200
    # A client not registered for offline_access is not granted it, and gets no refresh token.
    register(sc, "openid user/*.rs")
    body = signed_in(web, "offline_access user/*.rs")
    assert "offline_access" not in body["scope"] and "refresh_token" not in body


def test_narrower_scope_allowed_wider_refused(web, sc):
    register(sc)
    first = signed_in(web, "offline_access user/*.rs patient/*.rs launch/patient",
                      patient="p1")
    r = refresh(web, first["refresh_token"], scope="user/Patient.read")
    assert r.status_code == 200, r.text
    narrow = r.json()
    assert narrow["scope"] == "user/Patient.rs"
    token = narrow["access_token"]
    assert web.get("/fhir/Patient/p1", headers=bearer(token)).status_code == 200
    assert web.get("/fhir/Observation/o1", headers=bearer(token)).status_code == 403
    assert narrow["patient"] == "p1"
    # The refresh token keeps the original grant (RFC 6749 §6): the full scopes come back.
    r = refresh(web, narrow["refresh_token"])
    assert set(r.json()["scope"].split()) == set(first["scope"].split())
    current = r.json()["refresh_token"]
    for wider in ("user/*.cruds", "user/Patient.rs system/*.rs", "online_access",
                  "user/Observation.rs?category=laboratory"):
        r = refresh(web, current, scope=wider)
        assert r.status_code == 400 and r.json()["error"] == "invalid_scope", wider
    # A refused scope does not use the token up.
    assert refresh(web, current).status_code == 200


def test_refresh_token_is_bound_to_its_client(web, sc):
    register(sc)
    register_client(sc.engine, "app2", "Other App", ods=None, redirect_uris=[REDIRECT],
                    scopes=SCOPES)
    first = signed_in(web)
    r = refresh(web, first["refresh_token"], client_id="app2")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = refresh(web, first["refresh_token"], client_id="nobody")
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = web.post("/auth/token", data={"grant_type": "refresh_token", "client_id": "app1"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    # The other client's attempt did not use the token up; the real client still refreshes.
    assert refresh(web, first["refresh_token"]).status_code == 200
    r = refresh(web, "made-up-token")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_confidential_client_must_authenticate_to_refresh(web, sc):
    key = ECKey.generate_key("P-384", parameters={"kid": "app1-key"}, private=True)
    register(sc, public=False, jwks={"keys": [key.as_dict(private=False)]})
    code, verifier = get_code(web, "offline_access user/*.rs")
    first = exchange(web, code, verifier, client_assertion_type=ASSERTION_TYPE,
                     client_assertion=assertion(key, "ES384", "app1")).json()
    r = refresh(web, first["refresh_token"])
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    impostor = ECKey.generate_key("P-384", parameters={"kid": "app1-key"}, private=True)
    r = refresh(web, first["refresh_token"], client_assertion_type=ASSERTION_TYPE,
                client_assertion=assertion(impostor, "ES384", "app1"))
    assert r.status_code == 401
    r = refresh(web, first["refresh_token"], client_assertion_type=ASSERTION_TYPE,
                client_assertion=assertion(key, "ES384", "app1"))
    assert r.status_code == 200, r.text


def test_refused_once_the_account_is_disabled_or_the_role_removed(web, sc):
    register(sc)
    first = signed_in(web)
    with sc.engine.begin() as conn:
        conn.execute(update(staff).where(staff.c.username == "drsmith").values(active=False))
    r = refresh(web, first["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "disabled" in r.json()["error_description"]
    with sc.engine.begin() as conn:
        conn.execute(update(staff).where(staff.c.username == "drsmith").values(active=True))
    second = signed_in(web)
    with sc.engine.begin() as conn:
        conn.execute(delete(staff_role).where(staff_role.c.username == "drsmith",
                                              staff_role.c.ods == ORG))
    r = refresh(web, second["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # The family went with it: giving the role back does not revive the token.
    sc.governance.add_staff("drsmith", "Dr Jo Smith", [(ORG, "clinician")])
    assert refresh(web, second["refresh_token"]).status_code == 400


def test_refresh_tokens_expire_with_their_family(web, sc, monkeypatch):
    register(sc)
    monkeypatch.setitem(smart.REFRESH_LIFETIME, "online_access", 1)
    body = signed_in(web, "online_access user/*.rs")
    time.sleep(1.2)
    r = refresh(web, body["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_smart_configuration_offers_refresh(sc):
    with TestClient(build_app(sc), base_url="http://testserver") as c:
        doc = c.get("/.well-known/smart-configuration").json()
    assert "refresh_token" in doc["grant_types_supported"]
    assert {"permission-offline", "permission-online"} <= set(doc["capabilities"])
    assert {"offline_access", "online_access"} <= set(doc["scopes_supported"])
