"""Every shared Synthea bundle posts as a transaction and reads back as it was sent.

References are rewritten by the server from urn:uuid to Type/id; the expectation rewrites the
source the same way using the transaction-response locations. Organizations and Practitioners
repeated across bundles are conditional creates (sharedcare.loader semantics) and must not
duplicate. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter

import pytest

from ._support import (
    Loaded,
    compartment_patients,
    directory_files,
    entries,
    load_files,
    load_json,
    pages,
    patient_file,
    search,
    strip_meta_id,
    synthea_files,
)

DIRECTORY = ("Organization", "Practitioner")


def _identifier_keys(files, rtype: str) -> set[tuple[str, str]]:
    out = set()
    for f in files:
        for e in load_json(f)["entry"]:
            res = e["resource"]
            if res["resourceType"] == rtype:
                first = next(i for i in res["identifier"] if i.get("system") and i.get("value"))
                out.add((first["system"], first["value"]))
    return out


def _read_all(client, rtype: str) -> dict[str, dict]:
    found = {}
    for e in entries(pages(client, f"/fhir/{rtype}", {"_count": "1000"})):
        res = e["resource"]
        assert res["id"] not in found, f"{rtype}/{res['id']} served twice"
        found[res["id"]] = res
    return found


@pytest.mark.slow
def test_all_synthea_bundles_round_trip(client):
    files = synthea_files()
    assert len(files) == 47
    loaded = load_files(client, files)

    expected_types = Counter(t for t, _, _, created in loaded.items if created)
    source_types = Counter(e["resource"]["resourceType"] for f in files
                           for e in load_json(f)["entry"])
    # everything that is not a directory resource was created, one for one
    for rtype, n in source_types.items():
        if rtype not in DIRECTORY:
            assert expected_types[rtype] == n, rtype

    # directory resources: one per distinct identifier, however often a bundle repeats them
    for rtype in DIRECTORY:
        distinct = _identifier_keys(files, rtype)
        assert expected_types[rtype] == len(distinct), rtype
        assert search(client, f"/fhir/{rtype}", {"_summary": "count"})["total"] == len(distinct)

    # read every type back and compare with the source (ignoring meta and id)
    first_seen: dict[tuple[str, str], dict] = {}
    for rtype, rid, src, created in loaded.items:
        if created:
            first_seen[(rtype, rid)] = src
    differences = []
    for rtype in source_types:
        stored = _read_all(client, rtype)
        want = {rid: src for (t, rid), src in first_seen.items() if t == rtype}
        assert set(stored) == set(want), f"{rtype}: ids differ"
        for rid, src in want.items():
            if strip_meta_id(stored[rid]) != strip_meta_id(src):
                differences.append(f"{rtype}/{rid}")
            # the source's own meta (Synthea tag) survives; the server adds its own
            src_tags = src.get("meta", {}).get("tag", [])
            assert all(t in stored[rid]["meta"].get("tag", []) for t in src_tags), rid
    assert not differences, f"{len(differences)} resources differ, e.g. {differences[:5]}"

    # every repeated directory entry points at the one stored resource
    for rtype, rid, src, created in loaded.items:
        if not created:
            assert rtype in DIRECTORY
            assert (rtype, rid) in first_seen


def test_synthea_resources_read_back_one_by_one(client):
    """A sample through the instance read: every resource of one bundle."""
    loaded = load_files(client, [patient_file("Chet_Hoeger")])
    for rtype, rid, src, created in loaded.items:
        r = client.get(f"/fhir/{rtype}/{rid}")
        assert r.status_code == 200, f"{rtype}/{rid}"
        got = r.json()
        assert got["id"] == rid and got["meta"]["versionId"] == "1"
        assert strip_meta_id(got) == strip_meta_id(src), f"{rtype}/{rid}"


def test_reloading_a_bundle_duplicates_clinical_data_but_not_the_directory(client):
    """A second load of the same bundle creates new clinical resources (plain POSTs) while the
    Organizations and Practitioners stay single: the loader's conditional-create semantics."""
    f = patient_file("Stephen_McLaughlin")
    first = load_files(client, [f])
    orgs = search(client, "/fhir/Organization", {"_summary": "count"})["total"]
    second = load_files(client, [f])
    assert search(client, "/fhir/Organization", {"_summary": "count"})["total"] == orgs
    reused = {(t, i) for t, i, _, created in second.items if not created}
    assert reused == {(t, i) for t, i, _, _ in first.items if t in DIRECTORY}
    assert search(client, "/fhir/Patient", {"_summary": "count"})["total"] == 2


# ----------------------------------------------------------------------------- $everything
def _expected_everything(loaded: Loaded, pid: str) -> set[tuple[str, str]]:
    out = {("Patient", pid)}
    for rtype, rid, src, created in loaded.items:
        if created and pid in compartment_patients(src):
            out.add((rtype, rid))
    return out


def test_everything_pages_collect_exactly_the_compartment(client):
    loaded = load_files(client, directory_files() + [patient_file("Tom_Goodwin"),
                                                     patient_file("Damion_Strosin")])
    for pid in loaded.patients:
        expected = _expected_everything(loaded, pid)
        assert len(expected) > 100  # more than the default page: no cap may truncate it
        for params in ({}, {"_count": "23"}, {"_count": "5000"}):
            collected = pages(client, f"/fhir/Patient/{pid}/$everything", params)
            got = [(e["resource"]["resourceType"], e["resource"]["id"])
                   for e in entries(collected)]
            assert len(got) == len(set(got)), f"repeats with {params}"
            assert set(got) == expected, (params, len(set(got) ^ expected))
            assert collected[0]["total"] == len(expected)
        # nothing of the other patient, nor the directory
        assert not any(t in ("Organization", "Practitioner") for t, _ in expected)


def test_everything_of_unknown_patient_is_404(client):
    r = client.get("/fhir/Patient/nobody/$everything")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_everything_while_resources_are_added_between_pages(client):
    loaded = load_files(client, [patient_file("Tom_Goodwin")])
    pid = next(iter(loaded.patients))
    expected = _expected_everything(loaded, pid)
    added = []

    def write(n):
        r = client.post("/fhir/Observation", json={
            "resourceType": "Observation", "status": "final", "code": {"text": f"added {n}"},
            "subject": {"reference": f"Patient/{pid}"}})
        assert r.status_code == 201
        added.append(("Observation", r.json()["id"]))

    collected = pages(client, f"/fhir/Patient/{pid}/$everything", {"_count": "40"},
                      between=write)
    got = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries(collected)]
    assert len(got) == len(set(got))
    assert expected <= set(got) <= expected | set(added)
