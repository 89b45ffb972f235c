"""Two servers, one database: whatever one server started, the other can finish (issue 14).

Each test drives two full applications (`create_app` over two `SharedCare.open` on the same
database) the way a load balancer without sticky sessions would: every step of a flow may land
on either server. Runs on SQLite and PostgreSQL, with the shared state in the database and in
Redis (see conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from sharedcare.fhir.codes import ODS_SYSTEM
from sharedcare.governance.smart import ASSERTION_TYPE, register_client
from sharedcare.population import export
from sharedcare.store.repository import WriteOp
from tests.scale.conftest import BASE, ORG

REDIRECT = "https://app.example/callback"
PASSWORD = "correct horse battery staple"
TOKEN_URL = f"{BASE}/auth/token"
ASYNC = {"Prefer": "respond-async"}


class Browser:
    """One browser (one cookie jar) whose requests a load balancer spreads over servers."""

    def __init__(self, *clients):
        self.clients = clients
        self.jar: dict[str, str] = {}

    def send(self, server: int, method: str, url: str, **kw):
        c = self.clients[server]
        c.cookies.clear()
        for k, v in self.jar.items():
            c.cookies.set(k, v)
        r = c.request(method, url, **kw)
        self.jar.update({k: v for k, v in c.cookies.items()})
        return r


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _txn(html: str) -> str:
    return re.search(r'name="txn" value="([^"]+)"', html).group(1)


def _setup_app(sc):
    gov = sc.governance
    gov.add_staff("drsmith", "Dr Jo Smith", [(ORG, "clinician")], password=PASSWORD)
    register_client(sc.engine, "app1", "Test Viewer", ods=None, redirect_uris=[REDIRECT],
                    scopes="openid launch/patient patient/*.rs user/*.rs")
    sc.store.write([WriteOp("PUT", "Organization", "org1", {
        "resourceType": "Organization", "id": "org1", "name": "Test Trust",
        "identifier": [{"system": ODS_SYSTEM, "value": ORG}]})], source_org=ORG)


def _code_through(browser: Browser, steps: tuple[int, int]) -> tuple[str, str]:
    """Authorize at server steps[0], sign in at steps[1]: the code the app is sent back."""
    verifier, challenge = _pkce()
    r = browser.send(steps[0], "GET", "/auth/authorize", params={
        "response_type": "code", "client_id": "app1", "redirect_uri": REDIRECT,
        "scope": "openid user/*.rs", "state": "st-1", "aud": f"{BASE}/fhir",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    assert r.status_code == 200, r.text
    r = browser.send(steps[1], "POST", "/auth/authorize/sign-in", data={
        "txn": _txn(r.text), "username": "drsmith", "password": PASSWORD})
    assert r.status_code == 303, r.text
    q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}
    assert q["state"] == "st-1"
    return q["code"], verifier


def _exchange(client, code, verifier):
    return client.post("/auth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "client_id": "app1", "code_verifier": verifier})


def test_code_issued_by_a_is_redeemed_at_b_once(servers, clients):
    _setup_app(servers.a)
    ca, cb = clients
    browser = Browser(ca, cb)
    code, verifier = _code_through(browser, (0, 1))  # the sign-in itself crosses servers
    r = _exchange(cb, code, verifier)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert r.json()["scope"] == "openid user/*.rs" and r.json()["id_token"]
    # The token works at either server.
    for c in (ca, cb):
        got = c.get("/fhir/Organization/org1", headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 200, got.text
    # The code is gone everywhere: a second redemption at either server is refused.
    for c in (ca, cb):
        r = _exchange(c, code, verifier)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


def test_a_code_raced_at_two_servers_is_granted_once(servers, clients):
    _setup_app(servers.a)
    ca, cb = clients
    for _ in range(3):
        code, verifier = _code_through(Browser(ca, cb), (1, 0))
        answers: list[int] = []
        start = threading.Barrier(2)

        def redeem(c, code=code, verifier=verifier, start=start, answers=answers):
            start.wait()
            answers.append(_exchange(c, code, verifier).status_code)

        threads = [threading.Thread(target=redeem, args=(c,)) for c in (ca, cb)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(answers) == [200, 400]


def test_sign_in_started_at_a_is_refused_at_b_from_another_browser(servers, clients):
    _setup_app(servers.a)
    ca, cb = clients
    _verifier, challenge = _pkce()
    r = Browser(ca).send(0, "GET", "/auth/authorize", params={
        "response_type": "code", "client_id": "app1", "redirect_uri": REDIRECT,
        "scope": "user/*.rs", "state": "s", "aud": f"{BASE}/fhir",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    stranger = Browser(cb)  # no binding cookie: it did not start this sign-in
    r = stranger.send(0, "POST", "/auth/authorize/sign-in", data={
        "txn": _txn(r.text), "username": "drsmith", "password": PASSWORD})
    assert r.status_code == 400 and "expired" in r.text


# ------------------------------------------------------------------ backend services
def _assertion(key, jti):
    now = int(time.time())
    claims = {"iss": "partner1", "sub": "partner1", "aud": TOKEN_URL, "exp": now + 240,
              "jti": jti}
    return jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"}, claims, key,
                      algorithms=["RS384"])


def _client_credentials(c, signed):
    return c.post("/auth/token", data={"grant_type": "client_credentials",
                                       "scope": "system/*.rs",
                                       "client_assertion_type": ASSERTION_TYPE,
                                       "client_assertion": signed})


def test_replayed_client_assertion_is_refused_at_the_other_server(servers, clients):
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    register_client(servers.b.engine, "partner1", "Partner EPR", ods=ORG, public=False,
                    jwks={"keys": [key.as_dict(private=False)]}, scopes="system/*.rs")
    ca, cb = clients
    signed = _assertion(key, "jti-once")
    assert _client_credentials(ca, signed).status_code == 200
    for c in (cb, ca):  # the same assertion replayed, at the other server and at the first
        r = _client_credentials(c, signed)
        assert r.status_code == 401 and "already used" in r.json()["error_description"]
    # A new assertion reusing the jti is a replay too; a fresh jti is fine.
    r = _client_credentials(cb, _assertion(key, "jti-once"))
    assert r.status_code == 401 and "already used" in r.json()["error_description"]
    assert _client_credentials(cb, _assertion(key, "jti-twice")).status_code == 200


# ------------------------------------------------------------------ bulk export
def _load(sc, patients=6):
    ops = []
    for i in range(patients):
        ops.append(WriteOp("PUT", "Patient", f"p{i}", {
            "resourceType": "Patient", "id": f"p{i}", "gender": "female",
            "name": [{"family": f"Fam{i}"}]}))
        ops.append(WriteOp("PUT", "Condition", f"c{i}", {
            "resourceType": "Condition", "id": f"c{i}", "subject": {"reference": f"Patient/p{i}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}}))
    sc.store.write(ops, source_org=ORG)


def _poll(c, url, headers) -> dict:
    deadline = time.time() + 60
    while time.time() < deadline:
        r = c.get(url, headers=headers)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 202, r.text
        assert "X-Progress" in r.headers
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def test_export_started_at_a_is_polled_and_downloaded_at_b(servers, clients, monkeypatch):
    monkeypatch.setattr(export, "WINDOW", 3)  # several windows, several status writes
    _load(servers.a)
    auth = {"Authorization": "Bearer " + servers.a.governance.issue_system_token("sys", ORG)}
    ca, cb = clients
    r = ca.get("/fhir/$export", headers={**ASYNC, **auth})
    assert r.status_code == 202, r.text
    status = r.headers["Content-Location"]
    job = status.rsplit("/", 1)[1]
    manifest = _poll(cb, status, auth)  # every poll at B
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts == {"Patient": 6, "Condition": 6}
    got = set()
    for item in manifest["output"]:
        f = cb.get(item["url"], headers=auth)  # downloaded at B
        assert f.status_code == 200, f.text
        lines = [orjson.loads(ln) for ln in f.content.split(b"\n") if ln]
        assert len(lines) == item["count"]
        got |= {(x["resourceType"], x["id"]) for x in lines}
    assert {("Patient", "p0"), ("Condition", "c5")} <= got
    # The files are in the shared export directory, not in either server's data folder.
    assert (servers.export_dir / job / "Patient-1.ndjson").is_file()
    assert not (servers.a.data_dir / "exports").exists()
    # Another client is refused at A as at B; the owner deletes it at A and it is gone at B.
    other = {"Authorization": "Bearer " + servers.b.governance.issue_system_token("o", ORG)}
    assert cb.get(status, headers=other).status_code == 403
    assert ca.delete(status, headers=auth).status_code == 202
    assert cb.get(status, headers=auth).status_code == 404
    assert cb.get(manifest["output"][0]["url"], headers=auth).status_code == 404
    assert not (servers.export_dir / job).exists()


def test_export_cancelled_at_b_stops_the_job_running_at_a(servers, clients, monkeypatch):
    monkeypatch.setattr(export, "SAVE_EVERY", 0.0)  # check for a cancel at every window
    _load(servers.a)
    gate = threading.Event()
    real_rows = export.BulkExport._rows

    def slow_rows(self, policy, job):
        for row in real_rows(self, policy, job):
            gate.wait(10)  # the job is held mid-way until B has cancelled it
            yield row

    monkeypatch.setattr(export.BulkExport, "_rows", slow_rows)
    monkeypatch.setattr(export, "WINDOW", 1)
    auth = {"Authorization": "Bearer " + servers.a.governance.issue_system_token("sys", ORG)}
    ca, cb = clients
    status = ca.get("/fhir/$export", headers={**ASYNC, **auth}).headers["Content-Location"]
    job = status.rsplit("/", 1)[1]
    r = cb.get(status, headers=auth)
    assert r.status_code == 202, r.text  # running, seen from B
    assert cb.delete(status, headers=auth).status_code == 202
    gate.set()
    bulk = servers.a._bulk_export
    deadline = time.time() + 20
    while job in bulk.jobs and time.time() < deadline:
        time.sleep(0.05)
    assert job not in bulk.jobs  # A's runner saw the cancel and stopped
    assert ca.get(status, headers=auth).status_code == 404
    assert not (servers.export_dir / job).exists()


def test_export_whose_server_went_away_is_reported(servers, clients):
    _ca, cb = clients
    auth = {"Authorization": "Bearer " + servers.a.governance.issue_system_token("sys", ORG)}
    from sharedcare.population.export import JOB, _identity

    access = servers.a.governance.access_from_claims(
        servers.a.governance.tokens.verify(auth["Authorization"][7:]))
    jid = "f" * 32
    servers.a.shared.put(JOB, jid, {
        "requester": _identity(access), "request": "x", "transaction_time": "2026-01-01T00:00:00",
        "base": f"{BASE}/fhir", "types": None, "since": None, "level": "system",
        "status": "running", "progress": 10, "output": [], "error": None, "finished": None,
        "beat": time.time() - export.STALLED - 5}, 60)
    r = cb.get(f"/fhir/$export-poll/{jid}", headers=auth)
    assert r.status_code == 500 and "stopped" in r.text


# ------------------------------------------------------------------ OpenID Connect staff sign-in
@pytest.fixture
def provider(monkeypatch):
    """The OpenID provider of tests/governance/test_oidc.py, on a real local port."""
    import uvicorn

    from tests.conftest import free_port
    from tests.governance.test_oidc import CLIENT_ID, SECRET, FakeProvider

    op = FakeProvider()
    port = free_port()
    op.issuer = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(op.app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    monkeypatch.setenv("SHAREDCARE_OIDC_ISSUER", op.issuer)
    monkeypatch.setenv("SHAREDCARE_OIDC_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SHAREDCARE_OIDC_CLIENT_SECRET", SECRET)
    yield op
    server.should_exit = True
    thread.join(5)


def test_oidc_login_started_at_a_completes_at_b(servers, clients, provider):
    import httpx

    servers.a.governance.add_organisation("RGP01", "Riverside Surgery", "gp-practice")
    servers.a.governance.add_staff("drjones", "Dr Alex Jones",
                                   [(ORG, "clinician"), ("RGP01", "admin")],
                                   oidc_subject=provider.subject)
    ca, cb = clients
    browser = Browser(ca, cb)
    r = browser.send(0, "GET", "/auth/oidc/login", params={"next": "/patients"})
    assert r.status_code == 302, r.text
    back = httpx.get(r.headers["location"], follow_redirects=False)  # the provider approves
    callback = urlsplit(back.headers["location"])
    r = browser.send(1, "GET", f"{callback.path}?{callback.query}")  # ... and returns to B
    assert r.status_code == 200 and "Choose your role" in r.text, r.text
    r = browser.send(0, "POST", "/auth/oidc/role", data={"txn": _txn(r.text),
                                                        "role": f"{ORG}|clinician"})
    assert r.status_code == 303 and r.headers["location"] == "/patients", r.text
    claims = servers.b.governance.tokens.verify(browser.jar["sc_session"])
    assert (claims["sub"], claims["role"]) == ("drjones", "clinician")
    # The provider's answer was taken once: replayed at either server, it is refused.
    for server in (0, 1):
        r = browser.send(server, "GET", f"{callback.path}?{callback.query}")
        assert r.status_code == 400 and "expired" in r.text


def test_expired_exports_are_swept_by_any_server(servers, clients, monkeypatch):
    import os

    _load(servers.a)
    auth = {"Authorization": "Bearer " + servers.a.governance.issue_system_token("sys", ORG)}
    ca, cb = clients
    status = ca.get("/fhir/$export", headers={**ASYNC, **auth}).headers["Content-Location"]
    _poll(cb, status, auth)
    live = status.rsplit("/", 1)[1]
    # A job whose 24 hours are over: its shared state has expired, its files are still there.
    gone = "e" * 32
    (servers.export_dir / gone).mkdir()
    (servers.export_dir / gone / "Patient-1.ndjson").write_bytes(b"{}\n")
    old = time.time() - 2 * export.STALLED - 60
    os.utime(servers.export_dir / gone, (old, old))
    os.utime(servers.export_dir / live, (old, old))
    servers.a.shared.put(export.JOB, "d" * 32, {"status": "complete"}, 0.05)
    time.sleep(0.1)
    bulk_b = servers.b._bulk_export  # made by create_app
    assert bulk_b.sweep(force=True) == 1
    assert not (servers.export_dir / gone).exists()
    assert (servers.export_dir / live / "Patient-1.ndjson").is_file()  # its job is live
    assert cb.get(status, headers=auth).status_code == 200
    assert servers.a.shared.get(export.JOB, "d" * 32) is None


# ------------------------------------------------------------------ two real servers
@pytest.fixture
def live_pair(servers, monkeypatch):
    """Both applications on real sockets (uvicorn), behind one public URL, as behind a load
    balancer: every server must then agree on the SMART audience and token endpoint."""
    import httpx
    import uvicorn

    from sharedcare.app import create_app
    from tests.conftest import free_port

    public = "http://shcr.test"
    monkeypatch.setenv("SHAREDCARE_PUBLIC_URL", public)
    running = []
    for sc in (servers.a, servers.b):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(sc), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread, port))
    deadline = time.time() + 20
    while not all(s.started for s, _, _ in running) and time.time() < deadline:
        time.sleep(0.02)
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
               for _, _, port in running]
    yield public, clients
    for c in clients:
        c.close()
    for server, thread, _ in running:
        server.should_exit = True
        thread.join(10)


def test_two_real_servers_share_sign_ins_codes_and_assertions(servers, live_pair):
    public, (ha, hb) = live_pair
    _setup_app(servers.a)
    browser = Browser(ha, hb)
    verifier, challenge = _pkce()
    r = browser.send(0, "GET", "/auth/authorize", params={
        "response_type": "code", "client_id": "app1", "redirect_uri": REDIRECT,
        "scope": "user/*.rs", "state": "s", "aud": f"{public}/fhir",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    assert r.status_code == 200, r.text
    r = browser.send(1, "POST", "/auth/authorize/sign-in", data={
        "txn": _txn(r.text), "username": "drsmith", "password": PASSWORD})
    assert r.status_code == 303, r.text
    code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
    assert _exchange(ha, code, verifier).status_code == 200
    assert _exchange(hb, code, verifier).json()["error"] == "invalid_grant"

    key = RSAKey.generate_key(2048, parameters={"kid": "k2"}, private=True)
    register_client(servers.a.engine, "partner1", "Partner EPR", ods=ORG, public=False,
                    jwks={"keys": [key.as_dict(private=False)]}, scopes="system/*.rs")
    now = int(time.time())
    signed = jwt.encode({"alg": "RS384", "kid": "k2", "typ": "JWT"},
                        {"iss": "partner1", "sub": "partner1", "aud": f"{public}/auth/token",
                         "exp": now + 240, "jti": "real-servers-1"}, key, algorithms=["RS384"])
    assert _client_credentials(hb, signed).status_code == 200
    r = _client_credentials(ha, signed)
    assert r.status_code == 401 and "already used" in r.json()["error_description"]
