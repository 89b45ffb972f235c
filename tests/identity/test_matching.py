import json
import random

import pytest

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM
from sharedcare.identity.matching import (
    Demographics,
    Linker,
    demographics_from_patient,
    normalise_name,
    normalise_postcode,
)
from sharedcare.identity.nhs_number import synthetic
from sharedcare.identity.simulate import (
    cluster_pairs,
    make_people,
    make_records,
    pairwise_scores,
    true_pairs,
)


@pytest.fixture(scope="module")
def population():
    rng = random.Random(11)
    people = make_people(500, rng)
    records, truth = make_records(people, rng)
    return people, records, truth


@pytest.fixture(scope="module")
def trained(population):
    _, records, _ = population
    linker = Linker()
    linker.train(records)
    return linker


@pytest.fixture(scope="module")
def decisions(trained, population):
    return trained.predict(population[1])


def _nhs(seed):
    return synthetic(random.Random(seed))


# ------------------------------------------------------------------ demographics


def test_demographics_from_fhir_patient():
    patient = {
        "resourceType": "Patient",
        "id": "abc",
        "identifier": [
            {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
            {"system": NHS_NUMBER_SYSTEM, "value": "943 476 5919"},
        ],
        "name": [
            {"use": "old", "family": "Maiden", "given": ["Jo"], "period": {"end": "2001-01-01"}},
            {"use": "official", "family": "Bloggs", "given": ["Josephine", "Anne"]},
        ],
        "gender": "female",
        "birthDate": "1970-02-03",
        "address": [
            {"use": "home", "postalCode": "LS1 1AA", "period": {"end": "2019-01-01"}},
            {"use": "home", "postalCode": "ls2 9jt"},
        ],
    }
    d = demographics_from_patient(patient, "gp")
    assert d == Demographics(
        record_id="gp/abc",
        source="gp",
        nhs_number="9434765919",
        given="Josephine",
        family="Bloggs",
        birth_date="1970-02-03",
        sex="female",
        postcode="ls2 9jt",
    )


def test_demographics_from_synthea_patient():
    import glob

    path = min(glob.glob("/work/shared/fhir/synthea/Abdul_Koepp_*.json"))
    with open(path) as f:
        bundle = json.load(f)
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    d = demographics_from_patient(patient, "hospital")
    assert (d.given, d.family, d.birth_date, d.sex) == ("Abdul", "Koepp", "1956-08-03", "male")
    assert d.nhs_number is None  # US data: no NHS number


def test_normalisers():
    assert normalise_name("  María-Luisa  o'neil ") == "MARIA LUISA ONEIL"
    assert normalise_name("") is None
    assert normalise_postcode("ls29jt") == "LS2 9JT"
    assert normalise_postcode(" sw1a 1aa ") == "SW1A 1AA"
    assert normalise_postcode("01810") == "01810"


# ------------------------------------------------------------------ linkage quality


def test_links_seeded_population_with_high_precision_and_recall(population, trained, decisions):
    _, records, truth = population
    truth_pairs = true_pairs(truth)
    links = {(d.a, d.b) for d in decisions if d.outcome == "link"}
    s = pairwise_scores(links, truth_pairs)
    assert s["precision"] >= 0.98, s
    assert s["recall"] >= 0.95, s
    c = pairwise_scores(cluster_pairs(trained.clusters(records, decisions)), truth_pairs)
    assert c["precision"] >= 0.98, c
    assert c["recall"] >= 0.95, c
    # Most links among records lacking NHS numbers must come from the model, not the number.
    assert sum(d.reason == "model" and d.outcome == "link" for d in decisions) > 100


def test_training_used_nhs_labels(trained):
    info = trained.training_info
    assert info["m_method"] == "labels"
    assert info["nhs_labelled_pairs"] > 100
    assert 0 < info["probability_two_random_records_match"] < 0.05


def test_em_training_also_works(population):
    _, records, truth = population
    linker = Linker()
    linker.train(records, m_method="em")
    assert linker.training_info["m_method"] == "em"
    links = {(d.a, d.b) for d in linker.predict(records) if d.outcome == "link"}
    s = pairwise_scores(links, true_pairs(truth))
    assert s["precision"] >= 0.95 and s["recall"] >= 0.95, s


def test_decision_outcomes_follow_thresholds(trained, decisions):
    for d in decisions:
        assert d.a < d.b
        if d.reason == "model":
            expected = (
                "link"
                if d.probability >= trained.link_threshold
                else "review"
                if d.probability >= trained.review_threshold
                else "distinct"
            )
            assert d.outcome == expected


def test_clusters_partition_all_records(population, trained, decisions):
    records = population[1]
    clusters = trained.clusters(records, decisions)
    ids = [rid for c in clusters for rid in c]
    assert sorted(ids) == sorted(r.record_id for r in records)


# ------------------------------------------------------------------ NHS number rules


def _person(
    rid,
    source,
    nhs=None,
    given="Margaret",
    family="Thornbury",
    birth_date="1948-03-17",
    sex="female",
    postcode="LS6 2AB",
):
    return Demographics(rid, source, nhs, given, family, birth_date, sex, postcode)


def test_differing_valid_nhs_numbers_never_link(trained):
    n1, n2 = _nhs(1), _nhs(2)
    assert n1 != n2
    a = _person("gp/1", "gp", n1)
    b = _person("hospital/1", "hospital", n2)
    bridge = _person("council/1", "council", None)  # identical demographics, no number
    records = [a, b, bridge]
    decisions = {(d.a, d.b): d for d in trained.predict(records)}
    d_ab = decisions[("gp/1", "hospital/1")]
    assert d_ab.outcome == "distinct" and d_ab.reason == "nhs-number-conflict"
    assert d_ab.model_probability is not None and d_ab.model_probability > 0.99
    # The unnumbered record links to both on demographics, but the cluster never joins the two.
    clusters = trained.clusters(records)
    assert not any({"gp/1", "hospital/1"} <= c for c in clusters)
    assert len(clusters) == 2


def test_verified_nhs_number_links_outright(trained):
    n = _nhs(3)
    a = _person("gp/1", "gp", n)
    b = _person(
        "council/9",
        "council",
        f"{n[:3]}-{n[3:6]}-{n[6:]}",
        given="Peggy",
        family="Smith",
        birth_date="1950-01-01",
        postcode="M1 1AA",
    )
    [d] = [d for d in trained.predict([a, b]) if {d.a, d.b} == {"gp/1", "council/9"}]
    assert (d.outcome, d.reason, d.probability) == ("link", "nhs-number", 1.0)


def test_invalid_nhs_number_is_ignored(trained):
    n = _nhs(4)
    bad = n[:-1] + str((int(n[-1]) + 1) % 10)
    a = _person("gp/1", "gp", bad)
    b = _person(
        "hospital/2",
        "hospital",
        bad,
        given="Zebedee",
        family="Quartermaine",
        birth_date="2001-11-30",
        sex="male",
        postcode="YO1 7HH",
    )
    assert not [d for d in trained.predict([a, b]) if d.outcome == "link"]


def test_twins_are_not_auto_linked(trained):
    a = _person("gp/1", "gp", None, given="Olivia")
    b = _person("hospital/1", "hospital", None, given="Jessica")
    for d in trained.predict([a, b]):
        assert d.outcome != "link"


# ------------------------------------------------------------------ $match scoring


def test_score_grades_exact_match_certain_and_stranger_low(trained, population):
    records = population[1]
    query = next(r for r in records if r.postcode and r.birth_date and r.given and r.family)
    exact_copy = Demographics(
        "other/1",
        "other",
        None,
        query.given,
        query.family,
        query.birth_date,
        query.sex,
        query.postcode,
    )
    stranger = Demographics(
        "other/2",
        "other",
        None,
        "Bartholomew",
        "Okonkwo-Smythe",
        "1921-12-01",
        "male" if query.sex != "male" else "female",
        "ZE2 9QQ",
    )
    query = Demographics(
        query.record_id,
        query.source,
        None,
        query.given,
        query.family,
        query.birth_date,
        query.sex,
        query.postcode,
    )
    results = trained.score(query, [stranger, exact_copy])
    assert [r[0].record_id for r in results] == ["other/1", "other/2"]
    (_, p_exact, g_exact), (_, p_stranger, g_stranger) = results
    assert g_exact == "certain" and p_exact >= 0.99
    assert g_stranger == "certainly-not" and p_stranger < 0.01


def test_score_nhs_number_rules(trained):
    n1, n2 = _nhs(5), _nhs(6)
    query = _person("q", "api", n1)
    same_number = _person("c1", "gp", n1, given="Meg", family="Other", birth_date="1999-09-09")
    other_number = _person("c2", "gp", n2)
    results = {c.record_id: (p, g) for c, p, g in trained.score(query, [same_number, other_number])}
    assert results["c1"] == (1.0, "certain")
    assert results["c2"] == (0.0, "certainly-not")


def test_score_typo_is_probable_or_better(trained):
    query = _person("q", "api", None, postcode=None)
    typo = _person("c", "council", None, family="Thornbery", postcode="LS6 2AB")
    [(_, p, grade)] = trained.score(query, [typo])
    assert grade in ("certain", "probable"), p


def test_grade_boundaries():
    linker = Linker(0.99, 0.8, possible_threshold=0.5)
    assert [linker.grade(p) for p in (0.995, 0.99, 0.9, 0.8, 0.6, 0.5, 0.2)] == [
        "certain",
        "certain",
        "probable",
        "probable",
        "possible",
        "possible",
        "certainly-not",
    ]


# ------------------------------------------------------------------ state


def test_model_round_trips_through_json(trained, population, decisions):
    text = trained.to_json()
    data = json.loads(text)
    assert data["splink_model"]["comparisons"]
    restored = Linker.from_json(text)
    assert restored.link_threshold == trained.link_threshold
    again = restored.predict(population[1])
    assert [(d.a, d.b, d.outcome) for d in again] == [(d.a, d.b, d.outcome) for d in decisions]
    for x, y in zip(again, decisions):
        assert x.probability == pytest.approx(y.probability, abs=1e-9)


def test_training_is_deterministic(population, trained):
    other = Linker()
    other.train(population[1])
    a = trained.to_dict()["splink_model"]["comparisons"]
    b = other.to_dict()["splink_model"]["comparisons"]
    for ca, cb in zip(a, b):
        for la, lb in zip(ca["comparison_levels"], cb["comparison_levels"]):
            for key in ("m_probability", "u_probability"):
                if la.get(key) is not None:
                    assert la[key] == pytest.approx(lb[key], rel=1e-6)


def test_untrained_linker_refuses():
    with pytest.raises(RuntimeError):
        Linker().predict([_person("a", "gp"), _person("b", "gp")])
    with pytest.raises(ValueError):
        Linker(0.5, 0.9)
