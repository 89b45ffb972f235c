"""`_text` and `_content` over HTTP: type, system, compartment and POST searches, governed --
a document the viewer may not see is neither returned nor counted, and its words cannot be
probed for -- with a real FHIR client (fhirpy) too. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import importlib
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.fhir.codes import DATA_CATEGORY_SYSTEM, SENSITIVITY_SYSTEM
from sharedcare.governance.schema import audit_event
from sharedcare.store.repository import WriteOp
from tests.governance.small_world import bearer, build, join_hospital_record

from ..fhir._support import entries, outcome

XHTML = '<div xmlns="http://www.w3.org/1999/xhtml"><p>{}</p></div>'


def letter(rid, words, pid="P1", category=None, labels=(), url=None):
    att = {"contentType": "text/plain", "data": base64.b64encode(words.encode()).decode()}
    if url:
        att = {"contentType": "text/plain", "url": url}
    meta = {}
    if category:
        meta["tag"] = [{"system": DATA_CATEGORY_SYSTEM, "code": category}]
    if labels:
        meta["security"] = [{"system": SENSITIVITY_SYSTEM, "code": c} for c in labels]
    body = {"resourceType": "DocumentReference", "status": "current",
            "subject": {"reference": f"Patient/{pid}"}, "content": [{"attachment": att}],
            "text": {"status": "generated", "div": XHTML.format(f"Clinic letter {rid}")}}
    if meta:
        body["meta"] = meta
    return WriteOp("PUT", "DocumentReference", rid, body)


def audit_rows(sc) -> list:
    with sc.engine.connect() as c:
        return c.execute(select(audit_event.c.entity, audit_event.c.reason)
                         .order_by(audit_event.c.seq)).all()


@pytest.fixture
def world(sc):
    """GP1's letters about P1: one shared with the hospital (tagged gp-summary, which the
    GP-hospital agreement shares), one sexual-health labelled, one under 'documents' (no
    agreement shares it), one whose text is a Binary only GP1 may see. The hospital's own
    letter about P1. Each holds the word 'bronchiectasis'."""
    build(sc)
    sc.store.write([
        letter("gp-shared", "Bronchiectasis reviewed; sputum clear.", category="gp-summary"),
        letter("gp-sensitive", "Bronchiectasis; chlamydia treated.", category="gp-summary",
               labels=("sexual-health",)),
        letter("gp-documents", "Bronchiectasis and housing letter."),
        WriteOp("PUT", "Binary", "gp-bin", {
            "resourceType": "Binary", "contentType": "text/plain",
            "securityContext": {"reference": "Patient/P1"},  # part of P1's record
            "data": base64.b64encode(b"Bronchiectasis; haemoptysis noted.").decode()}),
        letter("gp-linked", "", category="gp-summary", url="Binary/gp-bin"),
    ], source_org="GP1")
    sc.store.write([letter("hos-own", "Bronchiectasis clinic: physiotherapy.")],
                   source_org="HOS")
    with TestClient(create_app(sc), base_url="http://testserver") as c:
        yield sc, c


def search(c, headers, path="/fhir/DocumentReference", **params):
    r = c.get(path, params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def ids(body) -> list[str]:
    return sorted(e["resource"]["id"] for e in entries(body))


def test_a_viewer_finds_only_what_it_may_see_and_the_total_agrees(world):
    sc, c = world
    hos = bearer(sc, "hos.doc", "HOS")
    body = search(c, hos, _content="bronchiectasis")
    assert ids(body) == ["gp-shared", "hos-own"] and body["total"] == 2
    # The withheld letters' own words find nothing: not a result, not a count.
    for word in ("chlamydia", "housing", "haemoptysis"):
        body = search(c, hos, _content=word)
        assert entries(body) == [] and body["total"] == 0, word
        assert search(c, hos, _content=word, _summary="count")["total"] == 0
    # The controller sees all of its own.
    gp = search(c, bearer(sc, "gp.doc", "GP1"), _content="bronchiectasis")
    assert ids(gp) == ["gp-documents", "gp-linked", "gp-sensitive", "gp-shared"]
    assert ids(search(c, bearer(sc, "gp.doc", "GP1"), _content="haemoptysis")) == [
        "gp-linked"]
    # No relationship with P1, no agreement: nothing.
    nurse = search(c, bearer(sc, "ch.nurse", "CH1", role="nurse"), _content="bronchiectasis")
    assert entries(nurse) == [] and nurse["total"] == 0


def test_text_searches_the_narrative(world):
    sc, c = world
    hos = bearer(sc, "hos.doc", "HOS")
    assert ids(search(c, hos, _text='"clinic letter"')) == ["gp-linked", "gp-shared", "hos-own"]
    assert ids(search(c, hos, _text="gp-sensitive")) == []
    assert ids(search(c, hos, _text="physiotherapy")) == []  # in the attachment only


def test_system_compartment_and_post_searches(world):
    sc, c = world
    hos = bearer(sc, "hos.doc", "HOS")
    body = search(c, hos, "/fhir", _type="DocumentReference,Binary", _content="bronchiectasis")
    assert ids(body) == ["gp-shared", "hos-own"] and body["total"] == 2
    body = search(c, hos, "/fhir/Patient/P1/DocumentReference", _content="bronchiectasis")
    assert ids(body) == ["gp-shared", "hos-own"] and body["total"] == 2
    r = c.post("/fhir/DocumentReference/_search", data={"_content": "physiotherapy OR sputum"},
               headers=hos)
    assert r.status_code == 200, r.text
    assert ids(r.json()) == ["gp-shared", "hos-own"]
    # combined with another parameter, paged in relevance order
    body = search(c, hos, _content="bronchiectasis", subject="Patient/P1", _count="1")
    assert len(entries(body)) == 1 and body["total"] == 2
    nxt = next(link["url"] for link in body["link"] if link["relation"] == "next")
    second = c.get(nxt, headers=hos).json()
    assert sorted(ids(body) + ids(second)) == ["gp-shared", "hos-own"]


def test_the_person_across_partners_records(world):
    sc, c = world
    join_hospital_record(sc, letter("hos-record", "Bronchiectasis exacerbation.", "hos-p1"))
    body = search(c, bearer(sc, "hos.doc", "HOS"), "/fhir/Patient/P1/DocumentReference",
                  _content="exacerbation")
    assert ids(body) == ["hos-record"]


@pytest.mark.parametrize(("value", "says"), [
    ('"bronchiectasis', "not closed"), ("(a OR b", "not closed"), ("a AND", "operator"),
    ("NOT a", "NOT"), ("", "no words")])
def test_malformed_text_is_a_400_outcome_naming_the_parameter(world, value, says):
    sc, c = world
    r = c.get("/fhir/DocumentReference", params={"_content": value},
              headers=bearer(sc, "hos.doc", "HOS"))
    assert r.status_code == 400
    text = outcome(r)
    assert "_content" in text and says in text


def test_one_audit_event_per_search_and_no_words_in_it(world):
    sc, c = world
    before = len(audit_rows(sc))
    search(c, bearer(sc, "hos.doc", "HOS"), _content="bronchiectasis physiotherapy")
    c.get("/fhir/DocumentReference", params={"_content": '"bronchiectasis'},
          headers=bearer(sc, "hos.doc", "HOS"))
    rows = audit_rows(sc)[before:]
    assert len(rows) == 2
    assert all("bronchiectasis" not in str(r).lower() for r in rows)
    assert "_content" in rows[0].entity


def test_capability_statement_lists_text_parameters(world):
    _, c = world
    cs = c.get("/fhir/metadata").json()
    docs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "DocumentReference")
    assert {"_text", "_content"} <= {p["name"] for p in docs["searchParam"]}


def test_fhirpy_finds_a_clinic_letter_by_its_words(live_server, system_token):
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(f"{live_server}/fhir", authorization=f"Bearer {system_token}")
    patient = client.resource("Patient", name=[{"family": "Okonkwo"}])
    patient.save()
    for words in ("Sarcoidosis follow-up: steroids tapered.", "Routine eye check."):
        client.resource(
            "DocumentReference", status="current", subject=patient.to_reference(),
            content=[{"attachment": {"contentType": "text/plain",
                                     "data": base64.b64encode(words.encode()).decode()}}],
        ).save()
    found = client.resources("DocumentReference").search(_content="steroids tapered").fetch_all()
    assert len(found) == 1
    assert "Sarcoidosis" in base64.b64decode(found[0]["content"][0]["attachment"]["data"]).decode()
    assert client.resources("DocumentReference").search(
        _content='"tapered steroids"').fetch_all() == []
    assert len(client.resources("DocumentReference").search(
        subject=f"Patient/{patient.id}", _content="eye OR sarcoidosis").fetch_all()) == 2


# Words every generated resource of a type holds (tests/governance/gov_world.clinical_body).
WORLD_WORDS = {"Observation": "pulse", "Condition": "asthma", "DocumentReference": "current",
               "CarePlan": "plan", "Flag": '"falls risk"'}


def test_text_search_in_random_worlds_matches_the_oracle(database_url, tmp_path, monkeypatch):
    """Random care systems (every agreement state, relationship, objection, label, break-glass)
    from the governance property tests: for every viewer, a `_content` search finds exactly the
    resources holding the words that the oracle says the viewer may see, and counts only
    those -- per type and across types."""
    from hypothesis import HealthCheck, given, settings

    # The governance worlds import their oracle as a top-level module (tests/governance).
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "governance"))
    gov_world = importlib.import_module("gov_world")
    oracle_of = importlib.import_module("oracle").Oracle
    access_for, fresh, load, worlds = (gov_world.access_for, gov_world.fresh, gov_world.load,
                                       gov_world.worlds)

    examples = 4 if database_url.startswith("sqlite") else 2
    checked = {"n": 0}

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(worlds())
    def prop(generated):
        world, viewers = generated
        sc = fresh(database_url, tmp_path)
        try:
            load(sc, world, viewers)
            oracle = oracle_of(world)
            present = sorted({r.type for r in world.resources} & set(WORLD_WORDS))
            for v in viewers:
                a = access_for(sc.governance, v)
                visible = {r.ref for r in world.resources if oracle.may_see(v, r)}
                for t in present:
                    want = {r.ref for r in world.resources if r.type == t} & visible
                    page = sc.governance.search(a, t, [("_content", WORLD_WORDS[t]),
                                                       ("_count", "1000")])
                    got = {f"{s.type}/{s.id}" for s in page.matches}
                    assert got == want, (v, t, sorted(got ^ want))
                    assert page.total == len(want), (v, t)
                    checked["n"] += 1
                everywhere = " OR ".join(WORLD_WORDS[t] for t in present)
                page = sc.governance.search(a, None, [("_type", ",".join(present)),
                                                      ("_content", everywhere),
                                                      ("_count", "1000")])
                want = {r.ref for r in world.resources if r.type in present} & visible
                assert {f"{s.type}/{s.id}" for s in page.matches} == want, v
                assert page.total == len(want), v
        finally:
            sc.engine.dispose()

    prop()
    assert checked["n"] >= examples * 6
