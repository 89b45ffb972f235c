"""One identity per person in the store: NHS-number links, splink links, review Tasks, $match.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import random

import pytest

from sharedcare.feeds.service import FeedService
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance.policy import Access
from sharedcare.identity import nhs_number as nhs
from sharedcare.identity.matching import MATCH_GRADE_EXTENSION_URL
from sharedcare.identity.service import IdentityService, match_handler
from sharedcare.identity.simulate import make_people, make_records
from sharedcare.store.repository import PermitAll, WriteOp

from ._support import audit_rows, basis, link_of, patient, person_of, persons, queued


def _records():
    rng = random.Random(7)
    return make_records(make_people(80, rng), rng)[0]


@pytest.fixture(scope="module")
def trained():
    """The model trained once on the population below (training is the slow part)."""
    from sharedcare.identity.matching import Linker

    linker = Linker()
    linker.train(_records())
    return linker


@pytest.fixture
def population(sc, trained):
    """A few hundred partner records of 80 people, for the model to learn from (NHS numbers
    only where valid: the store refuses invalid ones)."""
    IdentityService._instances[id(sc)] = IdentityService(sc, linker=trained)
    records = _records()
    ops = []
    for r in records:
        number = nhs.normalise(r.nhs_number)
        res = patient(r.given, r.family, r.birth_date, r.sex, r.postcode, r.source.upper(),
                      number if number and nhs.is_valid(number) else None)
        for k in ("birthDate", "gender"):
            if not res[k]:
                res.pop(k)
        if not r.postcode:
            res.pop("address")
        ops.append(WriteOp("PUT", "Patient", res["id"], res))
    sc.store.write(ops)
    return IdentityService.of(sc)


def officer(sc):
    sc.governance.add_staff("id.officer", "Identity Officer", [("RTEST", "admin")], None)
    return sc.governance.prepare(Access("id.officer", "RTEST", "admin"))


def test_two_partners_records_of_one_person_end_up_in_one_person(sc, population):
    feeds = FeedService(sc)
    feeds.add_feed("RHOSP", "hosp-fhir", "fhir", status="live")
    feeds.add_feed("RCOUNCIL", "council-fhir", "fhir", status="live")
    hosp = patient("Margaret", "Thistlewood", "1948-05-17", "female", "LS6 2QT", "RHOSP",
                   "9434765919")
    council = patient("Margret", "Thistlewood", "1948-05-17", "female", "LS6 2QT", "RCOUNCIL")
    for p, feed in ((hosp, "hosp-fhir"), (council, "council-fhir")):
        feeds.ingest_fhir_bundle({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": p, "request": {"method": "PUT", "url": f"Patient/{p['id']}"}}]}, feed)
    # The hospital record joined the Person of its NHS number in its own transaction; the
    # council one (no NHS number) waits in the queue for the worker.
    assert link_of(sc, hosp["id"])["assurance"] == "level4"
    assert basis(sc, hosp["id"]) == "nhs-number"
    assert person_of(sc, council["id"]) is None and queued(sc)[council["id"]] == "pending"
    assert population.resolve(council["id"]).outcome == "link"
    assert population.linker() is not None and population.linker().trained
    linked = person_of(sc, council["id"])
    assert linked is not None and linked["id"] == person_of(sc, hosp["id"])["id"]
    assert {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"} in linked["identifier"]
    assert link_of(sc, council["id"])["assurance"] == "level3"
    assert basis(sc, council["id"]) == "match"
    # No patient is linked from two Persons; every patient is linked or queued.
    refs = [lk["target"]["reference"] for p in persons(sc) for lk in p["link"]]
    assert len(refs) == len(set(refs))
    waiting = set(queued(sc))
    assert council["id"] not in waiting
    assert {f"Patient/{s.id}" for s in sc.store.iter_current(PermitAll(), ["Patient"])} == \
        set(refs) | {f"Patient/{p}" for p in waiting}
    assert set(population.unlinked_patients()) == waiting


def test_possible_match_goes_to_review(sc, population):
    # Same family name, birth date, sex and postcode, different given name: twins look like
    # this, so the model never links such a pair by itself -- it asks a person.
    a = patient("Oliver", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RHOSP", pid="a-1")
    b = patient("Thomas", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RCOUNCIL", pid="b-1")
    sc.store.write([WriteOp("PUT", "Patient", p["id"], p) for p in (a, b)])
    assert {"a-1", "b-1"} <= set(queued(sc))
    outcomes = {r.patient_id: r for r in (population.resolve("a-1"), population.resolve("b-1"))}
    assert {r.outcome for r in outcomes.values()} == {"review"}
    # One review for the pair, whichever record was resolved first.
    assert len({r.task_id for r in outcomes.values()}) == 1
    r = outcomes["a-1"]
    task = sc.store.read("Task", r.task_id, PermitAll()).json()
    assert task["status"] == "requested" and task["for"]["reference"] == "Patient/a-1"
    # Each record keeps a Person of its own until a person decides.
    assert person_of(sc, "a-1")["id"] != person_of(sc, "b-1")["id"]
    [review] = population.review_queue()
    assert (review.task_id, review.patient_id, review.candidate_id) == (r.task_id, "a-1", "b-1")
    assert (review.patient_source, review.candidate_source) == ("RHOSP", "RCOUNCIL")
    assert review.fields["given"].startswith("disagree")
    for f in ("family", "birth_date", "sex", "postcode"):
        assert review.fields[f].startswith("agree"), review.fields
    assert review.grade in ("probable", "possible") and 0.5 <= review.probability < 0.99
    assert review.match_weight is not None and review.match_weight < 7
    # Resolving again proposes nothing new.
    assert population.resolve("b-1").outcome == "already-linked"
    assert len(population.review_queue()) == 1

    # The officer says: different people. Nothing is linked; the Task is closed and audited.
    access = officer(sc)
    population.reject(access, r.task_id, "twins, checked with the GP practice")
    assert person_of(sc, "a-1")["id"] != person_of(sc, "b-1")["id"]
    done = sc.store.read("Task", r.task_id, PermitAll()).json()
    assert done["status"] == "completed"
    assert done["businessStatus"]["text"] == "different people"
    assert population.review_queue() == []
    [event] = audit_rows(sc, "identity-reject")
    assert event["username"] == "id.officer" and event["patient_id"] == "a-1"
    assert "twins" in event["reason"]
    with pytest.raises(FHIRError, match="already decided"):
        population.confirm(access, r.task_id)


def test_confirmed_review_links_the_records(sc, population):
    a = patient("Oliver", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RHOSP", pid="a-2")
    b = patient("Thomas", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RCOUNCIL", pid="b-2")
    sc.store.write([WriteOp("PUT", "Patient", p["id"], p) for p in (a, b)])
    population.resolve("b-2")
    [review] = population.review_queue()
    person = population.confirm(officer(sc), review.task_id, "same person: known as Tom")
    assert person_of(sc, "a-2")["id"] == person_of(sc, "b-2")["id"] == person
    assert basis(sc, review.patient_id) == "review"
    [event] = audit_rows(sc, "identity-confirm")
    assert event["patient_id"] == review.patient_id and "Tom" in event["reason"]


def test_match_grades_and_handler(sc, population):
    target = patient("Harriet", "Quenby", "1961-11-23", "female", "YO1 7HH", "RHOSP",
                     "9434765919", pid="hq-1")
    sc.store.write([WriteOp("PUT", "Patient", "hq-1", target)])
    exact = IdentityService.of(sc).match({**target, "id": None}, count=5)
    assert exact["type"] == "searchset"
    top = exact["entry"][0]
    assert top["resource"]["id"] == "hq-1" and top["search"]["mode"] == "match"
    assert top["search"]["extension"] == [{"url": MATCH_GRADE_EXTENSION_URL,
                                           "valueCode": "certain"}]
    assert top["search"]["score"] == 1.0
    fuzzy = patient("Harriet", "Quenbey", "1961-11-23", "female", "YO1 7HH", "X")
    res = IdentityService.of(sc).match(fuzzy)
    grades = {e["resource"]["id"]: e["search"]["extension"][0]["valueCode"] for e in res["entry"]}
    assert grades.get("hq-1") in ("certain", "probable")
    assert all(0 <= e["search"]["score"] <= 1 for e in res["entry"])
    stranger = patient("Zebedee", "Xylophone", "1901-01-01", "male", "ZE1 0AA", "X")
    assert IdentityService.of(sc).match(stranger)["entry"] == []

    token = sc.governance.issue_system_token("matcher", "RTEST")
    access = sc.governance.prepare(sc.governance.access_from_claims(
        sc.governance.tokens.verify(token)))
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {**target, "id": None}},
        {"name": "count", "valueInteger": 1}, {"name": "onlyCertainMatches", "valueBoolean": True}]}
    out = match_handler(sc, access, body)
    assert out["resourceType"] == "Bundle" and len(out["entry"]) <= 1
