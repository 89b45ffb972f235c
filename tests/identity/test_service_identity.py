"""One identity per person in the store: NHS-number links, splink links, review Tasks, $match."""

from __future__ import annotations

import random
import uuid

import pytest

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM
from sharedcare.feeds.service import FeedService
from sharedcare.identity.matching import MATCH_GRADE_EXTENSION_URL
from sharedcare.identity.service import IdentityService, match_handler
from sharedcare.identity.simulate import make_people, make_records
from sharedcare.store.repository import PermitAll, WriteOp


def patient(given, family, birth, sex, postcode, ods, nhs=None, pid=None):
    res = {"resourceType": "Patient", "id": pid or str(uuid.uuid4()),
           "meta": {"tag": [{"system": SOURCE_ORG_SYSTEM, "code": ods}]},
           "name": [{"family": family, "given": [given]}], "birthDate": birth, "gender": sex,
           "address": [{"postalCode": postcode}]}
    if nhs:
        res["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": nhs}]
    return res


@pytest.fixture
def population(sc):
    """A few hundred partner records of 80 people, for the model to learn from."""
    rng = random.Random(7)
    records, _ = make_records(make_people(80, rng), rng)
    ops = []
    for r in records:
        res = patient(r.given, r.family, r.birth_date, r.sex, r.postcode, r.source.upper(),
                      r.nhs_number)
        for k in ("birthDate", "gender"):
            if not res[k]:
                res.pop(k)
        if not r.postcode:
            res.pop("address")
        ops.append(WriteOp("PUT", "Patient", res["id"], res))
    sc.store.write(ops)
    return IdentityService.of(sc)


def persons(sc):
    return [s.json() for s in sc.store.search("Person", [("_count", "1000")],
                                              PermitAll()).matches]


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
    # The hospital record joined the Person of its NHS number at ingest; the council one waits
    # for the model, which is trained on the store's own patients.
    resolutions = {r.patient_id: r for r in population.resolve_pending()}
    assert population.linker() is not None and population.linker().trained
    r = resolutions[council["id"]]
    assert r.outcome == "link", r
    linked = [p for p in persons(sc) if {f"Patient/{hosp['id']}", f"Patient/{council['id']}"}
              <= {lk["target"]["reference"] for lk in p["link"]}]
    assert len(linked) == 1
    assert {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"} in linked[0]["identifier"]
    # Every patient now has exactly one Person.
    refs = [lk["target"]["reference"] for p in persons(sc) for lk in p["link"]]
    assert len(refs) == len(set(refs)) == sc.store.search("Patient", [], PermitAll()).total
    assert population.resolve_pending() == []


def test_possible_match_goes_to_review(sc, population):
    a = patient("Oliver", "Pemberton", "1977-09-02", "male", "BD7 1DP", "RHOSP", pid="a-1")
    b = patient("Olly", "Pemberton", "1977-02-09", "male", "HX1 1AA", "RCOUNCIL", pid="b-1")
    sc.store.write([WriteOp("PUT", "Patient", p["id"], p) for p in (a, b)])
    population.resolve("a-1")
    r = population.resolve("b-1")
    if r.outcome == "review":
        task = sc.store.read("Task", r.task_id, PermitAll()).json()
        assert task["status"] == "requested" and task["for"]["reference"] == "Patient/b-1"
        population.decide_review(r.task_id, same_person=True)
        assert population.persons_linking("a-1") == population.persons_linking("b-1")
    else:
        assert r.outcome in ("link", "new")


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
