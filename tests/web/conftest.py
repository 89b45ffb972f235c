"""A small demo care system (seed 7, 60 patients) shared by the web tests, and helpers to act
as its personas."""

from __future__ import annotations

import re
import threading
import time

import pytest

SEED, PATIENTS = 7, 60


class Demo:
    def __init__(self, sc, cs):
        self.sc, self.cs = sc, cs
        self.gov = sc.governance
        self.personas = {p.role: p for p in cs.personas}
        featured = next(p for p in cs.personas if p.nhs_number)
        self.nhs = featured.nhs_number
        from sharedcare.demo.load import patient_ids_by_nhs_number

        self.pid = patient_ids_by_nhs_number(sc, [self.nhs])[self.nhs]  # test set-up only

    def role_of(self, username: str) -> tuple[str, str]:
        ods, role = self.cs.staff_member(username).roles[0]
        return ods, role

    def token(self, username: str, ods: str | None = None, role: str | None = None) -> str:
        o, r = self.role_of(username)
        return self.gov.issue_token(username, ods or o, role or r)

    def access(self, username: str, ods: str | None = None, role: str | None = None):
        tok = self.token(username, ods, role)
        return self.gov.access_from_claims(self.gov.tokens.verify(tok))

    def staff_at(self, ods: str, role: str, skip: int = 0) -> str:
        """Another member of staff (not a persona) with this role at this organisation."""
        personas = {p.username for p in self.cs.personas}
        found = [s.username for s in self.cs.staff
                 if (ods, role) in s.roles and s.username not in personas]
        return found[skip]

    def outsider(self, n: int) -> str:
        """The n-th clinician (not a persona) with no relationship with the featured patient;
        each test takes its own, since declaring or breaking glass changes what they see."""
        if not hasattr(self, "_outsiders"):
            from sharedcare.governance.policy import explain_relationship

            personas = {p.username for p in self.cs.personas}
            self._outsiders = []
            with self.sc.engine.connect() as conn:
                for s in self.cs.staff:
                    ods, role = s.roles[0]
                    if role != "clinician" or s.username in personas:
                        continue
                    a = self.access(s.username)
                    gp_org = self.personas["GP"].org
                    shares = a.shared_with.get(gp_org, frozenset()) if ods != gp_org else {"x"}
                    if "demographics" in shares and not explain_relationship(conn, a, self.pid):
                        self._outsiders.append(s.username)
        return self._outsiders[n]

    def governed_items(self, access, patient_id: str | None = None) -> set[str]:
        """What governance lets this Access see of the patient: every page of $everything."""
        pid = patient_id or self.pid
        view = self.gov.everything(access, pid, 1000)
        items = {f"{s.type}/{s.id}" for s in view.matches}
        cur = view.next_cursor
        while cur:
            more = self.gov.everything(access, pid, 1000, cur)
            items |= {f"{s.type}/{s.id}" for s in more.matches}
            cur = more.next_cursor
        return items


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from sharedcare.app import SharedCare
    from sharedcare.demo import generate
    from sharedcare.demo.load import load_demo

    folder = tmp_path_factory.mktemp("webdemo")
    sc = SharedCare.open(f"sqlite:///{folder / 'demo.sqlite'}", folder / "data")
    cs = generate(seed=SEED, patients=PATIENTS)
    load_demo(sc, cs)
    d = Demo(sc, cs)
    d.outsider(0)  # before any test declares a relationship or breaks glass
    yield d
    sc.engine.dispose()


@pytest.fixture(scope="session")
def web_app(demo):
    from sharedcare.app import create_app

    return create_app(demo.sc)


@pytest.fixture
def signed_in(web_app, demo):
    """signed_in(username, ods=None, role=None) -> a TestClient with a session and CSRF cookie."""
    from starlette.testclient import TestClient

    clients = []

    def make(username: str, ods: str | None = None, role: str | None = None):
        c = TestClient(web_app, base_url="http://testserver")
        c.cookies.set("sc_session", demo.token(username, ods, role))
        c.get("/")  # picks up the CSRF cookie
        c.csrf = c.cookies.get("sc_csrf")
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


VOID = {"br", "img", "input", "meta", "link", "hr", "col", "area", "base", "wbr", "source"}


def item_blocks(html: str) -> dict[str, str]:
    """data-item -> the HTML inside that element (first occurrence), parsed properly."""
    from html.parser import HTMLParser

    out: dict[str, str] = {}

    class P(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.open: list[list] = []  # [ref, tag, depth, parts]

        def handle_starttag(self, tag, attrs):
            raw = self.get_starttag_text() or ""
            for o in self.open:
                o[3].append(raw)
                if tag == o[1] and tag not in VOID:
                    o[2] += 1
            ref = dict(attrs).get("data-item")
            if ref and tag not in VOID:
                self.open.append([ref, tag, 1, []])

        def handle_endtag(self, tag):
            for o in list(self.open):
                if tag == o[1]:
                    o[2] -= 1
                    if o[2] == 0:
                        out.setdefault(o[0], "".join(o[3]))
                        self.open.remove(o)
                        continue
                o[3].append(f"</{tag}>")

        def handle_data(self, data):
            for o in self.open:
                o[3].append(data)

    P().feed(html)
    return out


@pytest.fixture(scope="session")
def blocks_of():
    return item_blocks


def page_items(html: str) -> set[str]:
    return set(re.findall(r'data-item="([^"]+)"', html))


@pytest.fixture(scope="session")
def items_of():
    return page_items


@pytest.fixture(scope="session")
def live_demo(web_app):
    """The demo app on a real socket (uvicorn in a thread) for the browser tests."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(web_app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
