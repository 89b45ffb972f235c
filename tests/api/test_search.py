"""FHIR search through the REST API, checked against answers computed from the source bundles.

Every expected set is computed here in plain Python from the Synthea files (never from the
server's index). Each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from ..fhir._support import (
    FHIR_JSON,
    Loaded,
    codes_of,
    date_matches,
    entries,
    fold,
    ids,
    keys,
    load_files,
    next_link,
    outcome,
    pages,
    parse_instant,
    patient_file,
    relative,
    search,
    value_range,
)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
PATIENTS = ("Tom_Goodwin", "María_Luisa_Razo", "Stephen_McLaughlin")


@pytest.fixture
def data(client) -> Loaded:
    """Four patients posted as transactions (each bundle carries its own Organizations and
    Practitioners, made conditional creates as the loader does)."""
    return load_files(client, [patient_file(p) for p in PATIENTS])


def observations(data: Loaded) -> list[tuple[str, dict]]:
    return data.of_type("Observation")


def subject_of(res: dict) -> str | None:
    ref = (res.get("subject") or {}).get("reference", "")
    return ref.split("/", 1)[1] if ref.startswith("Patient/") else None


def match_ids(body) -> set[str]:
    found = ids(body)
    assert len(found) == len(set(found)), "a search returned the same resource twice"
    return set(found)


# ----------------------------------------------------------------------------- Patient
def test_patient_by_identifier_system_and_value(client, data):
    for pid, pat in data.patients.items():
        for ident in pat["identifier"]:
            body = search(client, "/fhir/Patient",
                          {"identifier": f"{ident['system']}|{ident['value']}"})
            expected = {p for p, src in data.patients.items()
                        if any(i["system"] == ident["system"] and i["value"] == ident["value"]
                               for i in src["identifier"])}
            assert match_ids(body) == expected == {pid}
            assert body["total"] == 1


def test_patient_by_identifier_value_alone_and_wrong_system(client, data):
    pid, pat = next(iter(data.patients.items()))
    ssn = next(i for i in pat["identifier"] if i["system"].endswith("us-ssn"))
    assert match_ids(search(client, "/fhir/Patient", {"identifier": ssn["value"]})) == {pid}
    wrong = search(client, "/fhir/Patient", {"identifier": f"http://example.org/x|{ssn['value']}"})
    assert match_ids(wrong) == set()


def test_patient_by_family_and_birthdate(client, data):
    for pid, pat in data.patients.items():
        family = pat["name"][0]["family"]
        for fam_query in (family, family[:3].lower(), fold(family).upper()):
            body = search(client, "/fhir/Patient",
                          {"family": fam_query, "birthdate": pat["birthDate"]})
            expected = {p for p, src in data.patients.items()
                        if src["birthDate"] == pat["birthDate"]
                        and any(fold(n.get("family", "")).startswith(fold(fam_query))
                                for n in src["name"])}
            assert match_ids(body) == expected
            assert pid in expected
    # the right family with the wrong birthdate finds nobody
    pid, pat = next(iter(data.patients.items()))
    body = search(client, "/fhir/Patient", {"family": pat["name"][0]["family"],
                                             "birthdate": "1900-01-01"})
    assert match_ids(body) == set()


def test_patient_name_search_ignores_accents_and_case(client, data):
    razo = data.patient_id("Razo")
    for q in ("maria", "MARÍA", "María Lu"):
        assert razo in match_ids(search(client, "/fhir/Patient", {"name": q})), q
    # maiden name is a name too
    assert razo in match_ids(search(client, "/fhir/Patient", {"family": "laureano"}))


# ----------------------------------------------------------------------------- dates
PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb")


def _obs_date_cases(data: Loaded):
    tom = data.patient_id("Goodwin")
    obs = [(i, r) for i, r in observations(data)
           if subject_of(r) == tom and ("8302-2" in {c for _, c in codes_of(r["code"])})]
    assert len(obs) >= 5
    obs.sort(key=lambda x: x[1]["effectiveDateTime"])
    middle = obs[len(obs) // 2][1]["effectiveDateTime"]
    exact = parse_instant(middle).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    values = [middle[:10], middle[:7], middle[:4], exact,
              # the same instant written in another zone
              parse_instant(middle).astimezone(
                  __import__("datetime").timezone(timedelta(hours=-5))).isoformat()]
    return tom, obs, values


def test_observation_subject_code_date_every_prefix(client, data):
    tom, obs, values = _obs_date_cases(data)
    wrong = []
    for prefix in PREFIXES:
        for value in values:
            search_range = value_range(value)
            expected = {i for i, r in obs
                        if date_matches(prefix, value_range(r["effectiveDateTime"]), search_range)}
            body = search(client, "/fhir/Observation",
                          {"subject": f"Patient/{tom}", "code": f"{LOINC}|8302-2",
                           "date": f"{prefix}{value}"})
            if match_ids(body) != expected:
                wrong.append(f"date={prefix}{value}: got {len(match_ids(body))}, "
                             f"expected {len(expected)}")
    assert not wrong, wrong
    # sanity: the cases are not all trivially empty or full
    day = values[0]
    hits = {p: {i for i, r in obs if date_matches(p, value_range(r["effectiveDateTime"]),
                                                   value_range(day))} for p in PREFIXES}
    assert hits["eq"] and hits["lt"] and hits["gt"]


def test_observation_date_range_with_two_prefixes(client, data):
    tom, obs, _ = _obs_date_cases(data)
    dates = sorted(r["effectiveDateTime"] for _, r in obs)
    lo, hi = dates[1][:10], dates[-2][:10]
    expected = {i for i, r in obs
                if date_matches("ge", value_range(r["effectiveDateTime"]), value_range(lo))
                and date_matches("le", value_range(r["effectiveDateTime"]), value_range(hi))}
    body = search(client, "/fhir/Observation", [("subject", tom), ("code", "8302-2"),
                                                 ("date", f"ge{lo}"), ("date", f"le{hi}")])
    assert match_ids(body) == expected
    assert 0 < len(expected) < len(obs)


def test_observation_date_approximately(client, data):
    tom, obs, values = _obs_date_cases(data)
    body = search(client, "/fhir/Observation",
                  {"subject": f"Patient/{tom}", "code": "8302-2", "date": f"ap{values[0]}"})
    found = match_ids(body)
    exact_day = {i for i, r in obs
                 if date_matches("eq", value_range(r["effectiveDateTime"]), value_range(values[0]))}
    # ap includes at least the exact day, and nothing years away
    assert exact_day <= found
    far = {i for i, r in obs if abs(parse_instant(r["effectiveDateTime"])
                                    - value_range(values[0])[0]) > timedelta(days=3 * 365)}
    assert not (found & far)


def test_encounter_period_starts_after_ends_before(client, data):
    """sa/eb differ from gt/lt only for periods: check them on Encounter.period."""
    encs = data.of_type("Encounter")
    starts = sorted(r["period"]["start"] for _, r in encs)
    wrong = []
    for value in (starts[len(starts) // 2][:10], starts[len(starts) // 3]):
        for prefix in ("sa", "eb", "gt", "lt", "eq", "ne"):
            expected = set()
            for i, r in encs:
                lo = value_range(r["period"]["start"])[0]
                hi = value_range(r["period"].get("end", r["period"]["start"]))[1]
                if date_matches(prefix, (lo, hi), value_range(value)):
                    expected.add(i)
            body = search(client, "/fhir/Encounter", {"date": f"{prefix}{value}",
                                                      "_count": "1000"})
            if match_ids(body) != expected:
                wrong.append(f"date={prefix}{value}: got {sorted(match_ids(body) ^ expected)}")
    assert not wrong, wrong


def test_invalid_date_value_is_a_400_naming_it(client, data):
    for bad in ("2020-13-01", "yesterday", "gt2020-02-30", "2020-01-01T25:00"):
        r = client.get("/fhir/Observation", params={"date": bad})
        assert r.status_code == 400, bad
        text = outcome(r)
        assert "date" in text and bad.removeprefix("gt") in text


# ----------------------------------------------------------------------------- chains
def test_chained_subject_identifier(client, data):
    for pid, pat in data.patients.items():
        ident = pat["identifier"][2]
        expected = {i for i, r in observations(data) if subject_of(r) == pid}
        body = search(client, "/fhir/Observation",
                      {"subject:Patient.identifier": f"{ident['system']}|{ident['value']}",
                       "_count": "1000"})
        assert match_ids(body) == expected and expected


def test_chained_subject_name(client, data):
    for q in ("Goodwin", "mclaugh", "maría"):
        pats = {p for p, src in data.patients.items()
                if any(fold(s).startswith(fold(q)) for n in src["name"]
                       for s in [n.get("family", ""), *n.get("given", [])])}
        assert pats
        expected = {i for i, r in observations(data) if subject_of(r) in pats}
        body = search(client, "/fhir/Observation", {"subject.name": q, "_count": "1000"})
        assert match_ids(body) == expected, q


def test_reverse_chain_has(client, data):
    code = "2339-0"  # Glucose
    expected = {subject_of(r) for _, r in observations(data)
                if ("http://loinc.org", code) in codes_of(r["code"])}
    body = search(client, "/fhir/Patient", {"_has:Observation:subject:code": code})
    assert match_ids(body) == expected
    assert expected and expected != set(data.patients)


# ----------------------------------------------------------------------------- include
def test_include_observation_subject(client, data):
    tom = data.patient_id("Goodwin")
    body = search(client, "/fhir/Observation",
                  {"subject": tom, "code": "8302-2", "_include": "Observation:subject"})
    matches = entries(body, "match")
    assert matches and all(e["resource"]["resourceType"] == "Observation" for e in matches)
    assert keys(body, "include") == [("Patient", tom)]
    included = entries(body, "include")[0]["resource"]
    assert included["identifier"] == data.patients[tom]["identifier"]


def test_revinclude_observation_subject_on_patient(client, data):
    tom = data.patient_id("Goodwin")
    expected = {i for i, r in observations(data) if subject_of(r) == tom}
    body = search(client, "/fhir/Patient", {"_id": tom, "_revinclude": "Observation:subject"})
    assert ids(body, "match") == [tom]
    inc = keys(body, "include")
    assert len(inc) == len(set(inc))
    assert {i for t, i in inc} == expected and {t for t, _ in inc} == {"Observation"}


def test_revinclude_provenance_target(client, data):
    tom = data.patient_id("Goodwin")
    prov = {"resourceType": "Provenance", "target": [{"reference": f"Patient/{tom}"}],
            "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": {"display": "test system"}}]}
    r = client.post("/fhir/Provenance", json=prov)
    assert r.status_code == 201, r.text
    body = search(client, "/fhir/Patient", {"_id": tom, "_revinclude": "Provenance:target"})
    assert keys(body, "include") == [("Provenance", r.json()["id"])]


# ----------------------------------------------------------------------------- sort
def _effective(r: dict) -> str:
    return parse_instant(r["effectiveDateTime"]).isoformat()


def test_sort_by_date_ascending_and_descending_across_pages(client, data):
    tom = data.patient_id("Goodwin")
    src = {i: r for i, r in observations(data) if subject_of(r) == tom}
    for order in ("date", "-date"):
        collected = pages(client, "/fhir/Observation",
                          {"subject": tom, "_sort": order, "_count": "17"})
        got = ids(collected)
        assert sorted(got) == sorted(src) and len(collected) > 1
        dates = [_effective(src[i]) for i in got]
        assert dates == sorted(dates, reverse=order.startswith("-")), order


def test_sort_by_last_updated(client, data):
    created = []
    for n in range(5):
        r = client.post("/fhir/Basic", json={"resourceType": "Basic",
                                             "code": {"text": f"sort-{n}"}})
        assert r.status_code == 201
        created.append(r.json()["id"])
    # update the first: it becomes the most recent
    first = client.get(f"/fhir/Basic/{created[0]}").json()
    first["code"]["text"] = "sort-0-updated"
    assert client.put(f"/fhir/Basic/{created[0]}", json=first).status_code == 200
    expected = created[1:] + created[:1]
    assert ids(search(client, "/fhir/Basic", {"_sort": "_lastUpdated"})) == expected
    assert ids(search(client, "/fhir/Basic", {"_sort": "-_lastUpdated"})) == expected[::-1]


# ----------------------------------------------------------------------------- paging
def test_paging_collects_exactly_the_unpaged_answer(client, data):
    unpaged = search(client, "/fhir/Observation", {"_count": "1000"})
    assert next_link(unpaged) is None
    want = ids(unpaged)
    assert len(want) == len(observations(data))
    for count in ("7", "50", str(len(want)), str(len(want) - 1)):
        collected = pages(client, "/fhir/Observation", {"_count": count})
        got = ids(collected)
        assert len(got) == len(set(got)), f"repeats at _count={count}"
        assert set(got) == set(want), f"skips at _count={count}"
        assert all(len(entries(p)) <= int(count) for p in collected)
        assert collected[0]["total"] == len(want)
    # one resource per page
    collected = pages(client, "/fhir/Patient", {"_count": "1"})
    assert len(collected) == len(data.patients) and set(ids(collected)) == set(data.patients)


@pytest.mark.parametrize("sort", [None, "date", "-_lastUpdated"])
def test_paging_is_stable_under_concurrent_creates_and_updates(client, data, sort):
    tom = data.patient_id("Goodwin")
    before = {i: r for i, r in observations(data) if subject_of(r) == tom}
    created: list[str] = []
    original = list(before)

    def write_between(n: int) -> None:
        # create a matching Observation and update two existing ones (one already served,
        # one not yet) so they move in _lastUpdated/date order
        obs = {"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": LOINC, "code": "8302-2"}]},
               "subject": {"reference": f"Patient/{tom}"},
               "effectiveDateTime": f"19{50 + n}-01-01T00:00:00Z"}
        r = client.post("/fhir/Observation", json=obs)
        assert r.status_code == 201
        created.append(r.json()["id"])
        for rid in (original[n % len(original)], original[-(n % len(original)) - 1]):
            cur = client.get(f"/fhir/Observation/{rid}").json()
            cur["effectiveDateTime"] = f"20{30 + n}-06-01T00:00:00Z"
            assert client.put(f"/fhir/Observation/{rid}", json=cur).status_code == 200

    params = {"subject": f"Patient/{tom}", "_count": "10"}
    if sort:
        params["_sort"] = sort
    collected = pages(client, "/fhir/Observation", params, between=write_between)
    got = ids(collected)
    assert len(collected) > 3 and created
    assert len(got) == len(set(got)), "a resource was served twice while writes happened"
    missing = set(before) - set(got)
    assert not missing, f"{len(missing)} resources skipped while writes happened"
    assert set(got) <= set(before) | set(created)


def test_summary_count(client, data):
    tom = data.patient_id("Goodwin")
    expected = sum(1 for _, r in observations(data) if subject_of(r) == tom)
    body = search(client, "/fhir/Observation", {"subject": tom, "_summary": "count"})
    assert body["total"] == expected
    assert not body.get("entry")


def test_elements_keeps_only_requested_elements(client, data):
    tom = data.patient_id("Goodwin")
    body = search(client, "/fhir/Observation", {"subject": tom, "_elements": "code,subject"})
    assert entries(body)
    for e in entries(body):
        res = e["resource"]
        assert set(res) <= {"resourceType", "id", "meta", "code", "subject"}
        assert "code" in res and "subject" in res
        assert any(t.get("code") == "SUBSETTED" for t in res["meta"].get("tag", []))


def test_total_none_omits_total(client, data):
    body = search(client, "/fhir/Observation", {"_total": "none", "_count": "5"})
    assert "total" not in body and len(entries(body)) == 5
    assert "total" in search(client, "/fhir/Observation", {"_count": "5"})


# ----------------------------------------------------------------------------- modifiers
def test_missing_modifier(client, data):
    obs = observations(data)
    without = {i for i, r in obs if "valueQuantity" not in r}
    with_ = {i for i, r in obs if "valueQuantity" in r}
    assert without and with_
    assert match_ids(search(client, "/fhir/Observation",
                            {"value-quantity:missing": "true", "_count": "1000"})) == without
    assert match_ids(search(client, "/fhir/Observation",
                            {"value-quantity:missing": "false", "_count": "1000"})) == with_


def test_string_exact_and_contains(client, data):
    razo = data.patient_id("Razo")
    assert match_ids(search(client, "/fhir/Patient", {"family:exact": "Razo"})) == {razo}
    assert match_ids(search(client, "/fhir/Patient", {"family:exact": "razo"})) == set()
    assert match_ids(search(client, "/fhir/Patient", {"family:exact": "Raz"})) == set()
    given = "María Luisa"
    assert match_ids(search(client, "/fhir/Patient", {"given:exact": given})) == {razo}
    # contains: anywhere in the name, case- and accent-insensitive
    for q in ("azo", "win", "ureAN", "LAUGH"):
        expected = {p for p, src in data.patients.items()
                    if any(fold(q) in fold(n.get("family", "")) for n in src["name"])}
        assert expected
        assert match_ids(search(client, "/fhir/Patient", {"family:contains": q})) == expected, q
    # plain string search is a prefix match, not contains
    assert match_ids(search(client, "/fhir/Patient", {"family": "azo"})) == set()


def test_token_not(client, data):
    tom = data.patient_id("Goodwin")
    mine = [(i, r) for i, r in observations(data) if subject_of(r) == tom]
    expected = {i for i, r in mine if "8302-2" not in {c for _, c in codes_of(r["code"])}}
    body = search(client, "/fhir/Observation",
                  {"subject": tom, "code:not": f"{LOINC}|8302-2", "_count": "1000"})
    assert match_ids(body) == expected and 0 < len(expected) < len(mine)


def test_token_text(client, data):
    obs = observations(data)

    def texts(r):
        c = r["code"]
        return [c.get("text", "")] + [x.get("display", "") for x in c.get("coding", [])]

    for q in ("body weight", "Hemoglobin A1c", "glucose"):
        expected = {i for i, r in obs if any(fold(t).startswith(fold(q)) for t in texts(r))}
        assert expected
        body = search(client, "/fhir/Observation", {"code:text": q, "_count": "1000"})
        found = match_ids(body)
        assert expected <= found, q
        # nothing unrelated: every hit mentions the words
        assert all(any(fold(q) in fold(t) for t in texts(r)) for i, r in obs if i in found), q


def test_quantity_search_with_system_and_unit(client, data):
    obs = observations(data)

    def expected_for(pred):
        return {i for i, r in obs
                if (q := r.get("valueQuantity")) and q.get("system") == UCUM
                and q.get("code") == "mmol/L" and pred(q["value"])}

    gt = expected_for(lambda v: v > 5.4)
    assert gt and len(gt) < len(expected_for(lambda v: True))
    body = search(client, "/fhir/Observation",
                  {"value-quantity": f"gt5.4|{UCUM}|mmol/L", "_count": "1000"})
    assert match_ids(body) == gt
    le = expected_for(lambda v: v <= 5.4)
    body = search(client, "/fhir/Observation",
                  {"value-quantity": f"le5.4|{UCUM}|mmol/L", "_count": "1000"})
    assert match_ids(body) == le
    # the unit matters: no mmol/L value is found under mg/dL
    mgdl = {i for i, r in obs if (q := r.get("valueQuantity")) and q.get("code") == "mg/dL"
            and q["value"] > 5.4}
    body = search(client, "/fhir/Observation",
                  {"value-quantity": f"gt5.4|{UCUM}|mg/dL", "_count": "1000"})
    assert match_ids(body) == mgdl


def test_last_updated_day_precision(client, data):
    everything = set(ids(search(client, "/fhir/Patient", {"_count": "1000"})))
    stamp = entries(search(client, "/fhir/Patient", {"_count": "1"}))[0]["resource"]["meta"][
        "lastUpdated"]
    today = stamp[:10]
    assert match_ids(search(client, "/fhir/Patient", {"_lastUpdated": f"ge{today}",
                                                      "_count": "1000"})) == everything
    assert match_ids(search(client, "/fhir/Patient", {"_lastUpdated": today,
                                                      "_count": "1000"})) == everything
    assert match_ids(search(client, "/fhir/Patient", {"_lastUpdated": f"lt{today}"})) == set()
    assert match_ids(search(client, "/fhir/Patient", {"_lastUpdated": f"gt{today}"})) == set()


def test_last_updated_full_precision_instant(client, data):
    everything = set(ids(search(client, "/fhir/Patient", {"_count": "1000"})))
    r = client.post("/fhir/Patient", json={"resourceType": "Patient",
                                           "name": [{"family": "Later"}]})
    assert r.status_code == 201
    new = r.json()
    cut = new["meta"]["lastUpdated"]  # e.g. 2026-01-01T10:00:00.123456+00:00
    # the sync pattern: "what changed after the last thing I saw" must not return it again
    assert match_ids(search(client, "/fhir/Patient", {"_lastUpdated": f"gt{cut}"})) == set()
    assert match_ids(search(client, "/fhir/Patient", {"_lastUpdated": f"ge{cut}"})) == {new["id"]}
    assert match_ids(search(client, "/fhir/Patient", {"_lastUpdated": f"lt{cut}",
                                                      "_count": "1000"})) == everything


def test_post_search_equals_get_search(client, data):
    tom = data.patient_id("Goodwin")
    params = {"subject": f"Patient/{tom}", "code": f"{LOINC}|29463-7"}
    got = search(client, "/fhir/Observation", params)
    r = client.post("/fhir/Observation/_search", data=params,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_JSON)
    assert match_ids(r.json()) == match_ids(got)
    assert match_ids(got) == {i for i, r in observations(data) if subject_of(r) == tom
                              and ("29463-7" in {c for _, c in codes_of(r["code"])})}


def test_compartment_search(client, data):
    for pid in data.patients:
        expected = {i for i, r in observations(data) if subject_of(r) == pid}
        body = search(client, f"/fhir/Patient/{pid}/Observation", {"_count": "1000"})
        assert match_ids(body) == expected
        body = search(client, f"/fhir/Patient/{pid}/Observation", {"code": "8302-2"})
        assert match_ids(body) == {i for i, r in observations(data) if subject_of(r) == pid and
                                   "8302-2" in {c for _, c in codes_of(r["code"])}}


def test_unknown_search_parameter_is_a_400_naming_it(client, data):
    r = client.get("/fhir/Observation", params={"colour": "blue"})
    assert r.status_code == 400
    assert "colour" in outcome(r)
    lenient = client.get("/fhir/Observation", params={"colour": "blue", "_count": "1"},
                         headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    assert "colour" in str(entries(lenient.json(), "outcome"))


def test_next_link_is_absolute_and_keeps_the_query(client, data):
    body = search(client, "/fhir/Observation", {"code": "8302-2", "_count": "3"})
    link = next_link(body)
    assert link and link.startswith("http://testserver/fhir/Observation?")
    assert "code=8302-2" in link and "_count=3" in link
    second = search(client, relative(link))
    assert set(ids(second)).isdisjoint(ids(body))
