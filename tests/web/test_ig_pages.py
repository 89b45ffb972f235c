"""The IG lead's pages through HTTP: audit search (page, CSV, JSON), chain check, break-glass
and declared-relationship review with CSRF."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.policy import Access
from sharedcare.governance.schema import audit_event, break_glass, care_relationship
from sharedcare.web import ig as pages


@pytest.fixture
def database_url(tmp_path):  # the web layer: SQLite is enough
    return f"sqlite:///{tmp_path / 'ig.sqlite'}"


@pytest.fixture
def web(sc):
    g = sc.governance
    g.add_organisation("GP1", "Brookside Medical Centre", "gp-practice")
    g.add_staff("ig", "IG Lead", [("RTEST", "ig-lead")])
    g.add_staff("admin", "Sys Admin", [("RTEST", "sysadmin")])
    g.add_staff("doc", "Doctor", [("GP1", "clinician")])
    app = create_app(sc)
    app.router.routes[0:0] = pages.routes(sc)
    with TestClient(app, base_url="http://testserver") as c:
        c.sc = sc
        yield c


def as_(client, username, ods, role):
    client.cookies.set("sc_session", client.sc.governance.issue_token(username, ods, role))
    client.get("/programme/you-said-we-did")  # collect the CSRF cookie
    return client.cookies.get("sc_csrf")


def doc(sc):
    return sc.governance.prepare(Access("doc", "GP1", "clinician"))


def test_pages_for_ig_lead_and_403_for_a_clinician(web):
    as_(web, "ig", "RTEST", "ig-lead")
    for url in ("/governance/audit", "/governance/break-glass", "/governance/audit.csv",
                "/governance/break-glass.csv"):
        assert web.get(url).status_code == 200, url
    r = web.get("/governance/audit")
    assert "Chain intact" in r.text
    as_(web, "admin", "RTEST", "sysadmin")
    assert web.get("/governance/audit").status_code == 200
    assert web.get("/governance/break-glass").status_code == 403
    as_(web, "doc", "GP1", "clinician")
    for url in ("/governance/audit", "/governance/break-glass", "/governance/audit.csv"):
        r = web.get(url)
        assert r.status_code == 403, url
        assert "You cannot use this page" in r.text
    token = web.sc.governance.issue_token("doc", "GP1", "clinician")
    assert web.get("/api/governance/audit",
                   headers={"Authorization": f"Bearer {token}"}).status_code == 403


def test_audit_filters_csv_json_and_viewing_is_audited(web):
    sc = web.sc
    sc.governance.audit(doc(sc), "read", "0", patient_id="pat-1", entity="Patient/pat-1")
    sc.governance.audit(doc(sc), "everything", "4", patient_id="pat-2",
                        reason="no legitimate relationship")
    as_(web, "ig", "RTEST", "ig-lead")

    r = web.get("/governance/audit?patient=pat-1")
    assert r.status_code == 200
    assert "Patient/pat-1" in r.text and "1 event" in r.text
    assert "Patient/pat-1" not in web.get("/governance/audit?patient=pat-3").text
    assert "Patient/pat-1" not in web.get("/governance/audit?patient=pat-1&outcome=refused").text
    assert "Patient/pat-1" in web.get("/governance/audit?user=doc&org=GP1&action=read"
                                      "&outcome=permitted").text
    assert "Patient/pat-1" not in web.get("/governance/audit?patient=pat-1&glass=1").text
    assert "Patient/pat-1" not in web.get("/governance/audit?from=2000-01-01&to=2000-12-31").text
    assert "no legitimate relationship" in web.get("/governance/audit?outcome=refused").text
    assert web.get("/governance/audit?from=yesterday").status_code == 400

    r = web.get("/governance/audit.csv?user=doc")
    assert r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0].startswith("seq,recorded,username,client_id,role,ods,organisation")
    assert len(lines) == 3  # header + the two events, newest first
    assert ",pat-2," in lines[1] and ",refused," in lines[1] and ",pat-1," in lines[2]

    j = web.get("/api/governance/audit?patient=pat-1").json()
    assert j["total"] == 1 and j["events"][0]["entity"] == "Patient/pat-1"
    assert j["events"][0]["organisation"] == "Brookside Medical Centre"

    with sc.engine.connect() as conn:
        viewed = conn.execute(select(audit_event.c.action).where(
            audit_event.c.username == "ig", audit_event.c.entity == "audit trail")).all()
    assert len(viewed) >= 10 and {a for (a,) in viewed} == {"search"}


def test_paging_newest_first(web):
    sc = web.sc
    for i in range(pages.PER_PAGE + 5):
        sc.governance.audit(doc(sc), "read", "0", patient_id="pat-many", entity=f"Obs/{i}")
    as_(web, "ig", "RTEST", "ig-lead")
    first = web.get("/api/governance/audit?patient=pat-many").json()
    assert first["total"] == pages.PER_PAGE + 5 and len(first["events"]) == pages.PER_PAGE
    assert first["events"][0]["entity"] == f"Obs/{pages.PER_PAGE + 4}"
    second = web.get("/api/governance/audit?patient=pat-many&page=2").json()
    assert [e["entity"] for e in second["events"]] == [f"Obs/{i}" for i in range(4, -1, -1)]
    assert "page 1 of 2" in web.get("/governance/audit?patient=pat-many").text


def test_broken_chain_is_shown(web):
    sc = web.sc
    sc.governance.audit(doc(sc), "read", "0", patient_id="pat-1")
    with sc.engine.begin() as conn:
        conn.execute(update(audit_event).where(audit_event.c.patient_id == "pat-1")
                     .values(reason="edited"))
    as_(web, "ig", "RTEST", "ig-lead")
    r = web.get("/governance/audit")
    assert "The audit chain is broken" in r.text and "contents were changed" in r.text


def test_break_glass_review_records_reviewer_and_note(web):
    sc = web.sc
    sc.governance.break_glass(doc(sc), "pat-7", "Unconscious in the waiting room")
    csrf = as_(web, "ig", "RTEST", "ig-lead")
    r = web.get("/governance/break-glass")
    assert "Unconscious in the waiting room" in r.text and "Brookside Medical Centre" in r.text
    with sc.engine.connect() as conn:
        gid = conn.execute(select(break_glass.c.id)).scalar()
    assert web.post(f"/governance/break-glass/{gid}", data={"note": "x"}).status_code == 400
    r = web.post(f"/governance/break-glass/{gid}", data={"csrf": csrf, "note": ""})
    assert r.status_code == 400 and "Write a review note" in r.text
    r = web.post(f"/governance/break-glass/{gid}",
                 data={"csrf": csrf, "note": "Checked with the ED consultant: justified"},
                 follow_redirects=False)
    assert r.status_code == 303
    with sc.engine.connect() as conn:
        row = conn.execute(select(break_glass).where(break_glass.c.id == gid)).one()
    assert row.reviewed_by == "ig" and row.review_note.startswith("Checked with")
    assert "Reviewed" in web.get("/governance/break-glass").text
    assert web.post("/governance/break-glass/999", data={"csrf": csrf, "note": "n"}
                    ).status_code == 404
    assert sc.governance.audit_trail.verify() == []
    j = web.get("/api/governance/break-glass").json()
    assert j["break_glass"][0]["reviewed_by"] == "ig"


def test_rejecting_a_declared_relationship_ends_access(web):
    sc = web.sc
    access = doc(sc)
    sc.governance.declare_relationship(access, "pat-9", "Seeing the patient in clinic today")
    assert sc.governance.check_patient(access, "pat-9", "read")  # the declaration counts
    csrf = as_(web, "ig", "RTEST", "ig-lead")
    assert "Seeing the patient in clinic today" in web.get("/governance/break-glass").text
    with sc.engine.connect() as conn:
        rid = conn.execute(select(care_relationship.c.id).where(
            care_relationship.c.kind == "declared")).scalar()
    r = web.post(f"/governance/relationships/{rid}",
                 data={"csrf": csrf, "decision": "reject", "note": "No appointment found"},
                 follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("done=rejected")
    with sc.engine.connect() as conn:
        row = conn.execute(select(care_relationship).where(care_relationship.c.id == rid)).one()
    assert row.review_status == "rejected"
    with pytest.raises(FHIRError) as e:
        sc.governance.check_patient(access, "pat-9", "read")
    assert e.value.status == 403
    assert "Seeing the patient" not in web.get("/governance/break-glass").text


def test_accepting_a_declared_relationship_keeps_it(web):
    sc = web.sc
    access = doc(sc)
    sc.governance.declare_relationship(access, "pat-8", "Covering for a colleague this week")
    csrf = as_(web, "ig", "RTEST", "ig-lead")
    with sc.engine.connect() as conn:
        rid = conn.execute(select(care_relationship.c.id)).scalar()
    r = web.post(f"/governance/relationships/{rid}", data={"csrf": csrf, "decision": "accept"},
                 follow_redirects=False)
    assert r.status_code == 303
    assert sc.governance.check_patient(access, "pat-8", "read")
    assert web.post(f"/governance/relationships/{rid}", data={"csrf": csrf, "decision": "maybe"}
                    ).status_code == 400


NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


def _patient(sc, pid, nhs, given, family, ods):
    from sharedcare.store.repository import WriteOp

    sc.store.write([WriteOp("PUT", "Patient", pid, {
        "resourceType": "Patient", "identifier": [{"system": NHS_SYSTEM, "value": nhs}],
        "name": [{"family": family, "given": [given]}]})], source_org=ods)


def test_audit_search_by_nhs_number_finds_every_record_of_the_person(web):
    sc = web.sc
    # one person, two partners' Patient records (different ids, the same NHS number)
    _patient(sc, "edna-gp", "9434765919", "Edna", "Example", "GP1")
    _patient(sc, "edna-trust", "9434765919", "Edna", "Example", "RTEST")
    _patient(sc, "someone-else", "9434765870", "Sam", "Other", "GP1")
    for pid in ("edna-gp", "edna-trust", "someone-else"):
        sc.governance.audit(doc(sc), "read", "0", patient_id=pid, entity=f"Patient/{pid}")
    as_(web, "ig", "RTEST", "ig-lead")
    r = web.get("/governance/audit?patient=943+476+5919")
    assert r.status_code == 200
    assert 'href="/governance/audit?patient=9434765919"' in r.text  # each row links by number
    assert "Edna EXAMPLE" in r.text and "NHS number 943 476 5919" in r.text
    assert "Sam OTHER" not in r.text
    assert "2 patient records" in r.text
    j = web.get("/api/governance/audit?patient=9434765919").json()
    assert sorted(j["patient_ids"]) == ["edna-gp", "edna-trust"]
    assert sorted(e["patient_id"] for e in j["events"]) == ["edna-gp", "edna-trust"]
    # a record id still works (links from elsewhere), and an unknown valid number finds nothing
    assert [e["patient_id"] for e in web.get(
        "/api/governance/audit?patient=someone-else").json()["events"]] == ["someone-else"]
    assert web.get("/api/governance/audit?patient=9876543210").json()["total"] == 0
    bad = web.get("/governance/audit?patient=9434765918")
    assert bad.status_code == 400 and "check digit is wrong" in bad.text


def test_break_glass_review_names_the_patient_and_is_paginated(web):
    from sharedcare.governance.policy import now_text

    sc = web.sc
    _patient(sc, "edna-gp", "9434765919", "Edna", "Example", "GP1")
    n = pages.GLASS_PER_PAGE + 5
    with sc.engine.begin() as conn:
        conn.execute(break_glass.insert(), [{
            "username": "doc", "ods": "GP1", "role": "clinician", "patient_id": "edna-gp",
            "reason": f"Emergency number {i:02d} with no history", "started": now_text(),
            "expires": now_text()} for i in range(n)])
    as_(web, "ig", "RTEST", "ig-lead")
    first = web.get("/governance/break-glass").text
    assert first.count('id="glass-') == pages.GLASS_PER_PAGE
    assert f"({n} to review of {n})" in first
    assert "Edna EXAMPLE</strong> (NHS number 943 476 5919)" in first
    assert "broke glass for patient edna-gp" not in first and ">edna-gp<" not in first
    assert "Brookside Medical Centre" in first and "(GP1)" not in first
    assert 'href="/governance/break-glass?page=2#events"' in first
    second = web.get("/governance/break-glass?page=2").text
    assert second.count('id="glass-') == 5
    shown = set()
    for text in (first, second):
        shown |= {int(x) for x in __import__("re").findall(r'id="glass-(\d+)"', text)}
    assert len(shown) == n  # every event on exactly one page


def test_audit_search_by_nhs_number_follows_the_person_to_records_without_one(web):
    """The council's record has no NHS number; identity joined it to the person. Its events are
    the person's events too."""
    from sqlalchemy import select

    from sharedcare.store.persons import patients_of_person
    from sharedcare.store.repository import PermitAll, WriteOp
    from sharedcare.store.schema import person_link

    sc = web.sc
    _patient(sc, "edna-gp", "9434765919", "Edna", "Example", "GP1")
    sc.store.write([WriteOp("PUT", "Patient", "edna-council", {
        "resourceType": "Patient", "name": [{"family": "Example", "given": ["Edna"]}]})],
        source_org="RTEST")
    with sc.engine.connect() as conn:
        key = conn.execute(select(person_link.c.person_key)
                           .where(person_link.c.patient_id == "edna-gp")).scalar_one()
    person = sc.store.read("Person", key, PermitAll()).json()
    person["link"] = [*person["link"], {"target": {"reference": "Patient/edna-council"}}]
    sc.store.write([WriteOp("PUT", "Person", key, person)])
    with sc.engine.connect() as conn:
        assert set(patients_of_person(conn, "edna-gp")) == {"edna-gp", "edna-council"}
    sc.governance.audit(doc(sc), "read", "0", patient_id="edna-council", entity="x")
    as_(web, "ig", "RTEST", "ig-lead")
    j = web.get("/api/governance/audit?patient=9434765919").json()
    assert "edna-council" in [e["patient_id"] for e in j["events"]]
