"""The bulk ingest path (issue 16, P1): COPY on PostgreSQL, one lookup per conditional
reference a Bundle, references rewritten without re-parsing what needs no rewrite -- and the
same answers, the same refusals and nothing half-written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from sharedcare.api import bundle as bundles
from sharedcare.fhir.outcome import FHIRError
from sharedcare.loader import Loader
from sharedcare.store import bulk
from sharedcare.store.repository import PermitAll
from sharedcare.store.schema import idx_token, resource, resource_version

ORG_ID = {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RBULK"}


def _observations(n: int, subject: str, performer: str | None = None) -> list[dict]:
    out = []
    for i in range(n):
        obs = {"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": f"{1000 + i}-1"}]},
               "subject": {"reference": subject},
               "effectiveDateTime": "2024-01-02T03:04:05Z",
               "valueQuantity": {"value": i, "unit": "kg", "system": "http://unitsofmeasure.org",
                                 "code": "kg"}}
        if performer:
            obs["performer"] = [{"reference": performer}]
        out.append({"fullUrl": f"urn:uuid:00000000-0000-0000-0000-{i:012d}", "resource": obs,
                    "request": {"method": "POST", "url": "Observation"}})
    return out


def _bundle(entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _patient_entry() -> dict:
    return {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
            "resource": {"resourceType": "Patient", "name": [{"family": "Bulk"}]},
            "request": {"method": "POST", "url": "Patient"}}


def test_a_bundle_written_by_copy_reads_back_and_searches(sc):
    """Enough rows for COPY on PostgreSQL (executemany on SQLite): every version, index row
    and compartment row is there, and searches find them."""
    out = bundles.process(sc.store, _bundle(
        [_patient_entry(), *_observations(40, "urn:uuid:11111111-1111-1111-1111-111111111111")]),
        "", "RBULK")
    assert all(e["response"]["status"] == "201 Created" for e in out["entry"])
    pid = out["entry"][0]["response"]["location"].split("/")[1]
    with sc.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(resource)).scalar() == 41
        assert c.execute(select(func.count()).select_from(resource_version)).scalar() == 41
        assert c.execute(select(func.count()).select_from(idx_token).where(
            idx_token.c.param == "code")).scalar() == 40
    page = sc.store.search("Observation", [("subject", f"Patient/{pid}"),
                                           ("code", "http://loinc.org|1005-1")], PermitAll())
    assert len(page.matches) == 1
    everything, total, _, _ = sc.store.everything(pid, PermitAll(), count=100)
    assert total == 41 and len(everything) == 41


def test_copy_keeps_unique_keys_and_raises_as_an_insert_would(pg_sc):
    """A COPY that breaks a unique key fails as an INSERT does (IntegrityError), so
    run_write_unit still knows a lost race, and the transaction writes nothing."""
    stamp = "2024-01-01T00:00:00.000000"
    row = {"type": "Patient", "id": "dup", "version": 1, "last_updated": stamp,
           "deleted": False, "content": "{}", "source_org": None, "category": None,
           "sensitivity": "", "partition_key": "dup"}
    cols = [c.name for c in resource.columns if c.name != "pk"]
    rows = [tuple(row[c] for c in cols)] * 2 + [
        tuple({**row, "id": f"p{i}"}[c] for c in cols) for i in range(bulk.COPY_MIN_ROWS)]
    with pytest.raises(IntegrityError), pg_sc.engine.begin() as c:
        bulk.insert_rows(c, resource, rows, skip=("pk",))
    with pg_sc.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(resource)).scalar() == 0


def test_a_conditional_reference_is_looked_up_once_a_bundle(sc):
    bundles.process(sc.store, _bundle([{"resource": {
        "resourceType": "Organization", "identifier": [ORG_ID], "name": "Bulk Trust"},
        "request": {"method": "POST", "url": "Organization"}}]), "", "RBULK")
    calls = []
    writer = bundles.Writer(sc.store, "RBULK")

    def match(rtype, query, conn, limit=2):
        calls.append((rtype, query))
        return writer.match(rtype, query, conn, limit)

    ref = f"Organization?identifier={ORG_ID['system']}|{ORG_ID['value']}"
    entries = bundles.parse_entries(_bundle(
        [_patient_entry(), *_observations(5, "urn:uuid:11111111-1111-1111-1111-111111111111",
                                          ref)]))
    with sc.store.begin_write() as conn, conn.begin():
        ops, _, _ = bundles.plan_writes(sc.store, entries, conn, match)
    assert calls == [("Organization", ref.split("?", 1)[1])]
    org = ops[1].resource["performer"][0]["reference"]
    assert org.startswith("Organization/") and all(
        op.resource["performer"][0]["reference"] == org for op in ops[1:])
    patient = f"Patient/{ops[0].rid}"
    assert all(op.resource["subject"]["reference"] == patient for op in ops[1:])


def test_a_conditional_reference_that_matches_nothing_refuses_the_whole_bundle(sc):
    before = _count(sc)
    with pytest.raises(FHIRError) as err:
        bundles.process(sc.store, _bundle(
            [_patient_entry(), *_observations(
                3, "urn:uuid:11111111-1111-1111-1111-111111111111",
                "Organization?identifier=https://example.org|none")]), "", "RBULK")
    assert err.value.status == 400
    assert "matches 0 resources" in str(err.value) and "Bundle.entry[1]" in str(err.value)
    assert _count(sc) == before


def test_references_are_rewritten_only_when_they_need_it():
    res = {"resourceType": "Observation", "subject": {"reference": "Patient/1"}}
    unresolved, conditional = [], []
    assert bundles.resolve_references(res, {"urn:uuid:x": "Patient/2"}, unresolved,
                                      conditional) is res
    # escaped characters in a reference are read as JSON says
    odd = {"resourceType": "Observation", "subject": {"reference": 'urn:uuid:a"b\\c'}}
    out = bundles.resolve_references(odd, {'urn:uuid:a"b\\c': "Patient/3"}, [], [])
    assert out["subject"]["reference"] == "Patient/3" and odd["subject"]["reference"] != out[
        "subject"]["reference"]
    bundles.resolve_references({"resourceType": "Observation", "subject": {
        "reference": "urn:uuid:missing"}, "performer": [{"reference": "Practitioner?x=1"}]},
        {}, unresolved, conditional)
    assert unresolved == ["urn:uuid:missing"] and conditional == ["Practitioner?x=1"]
    # one already looked up is rewritten in the same pass
    conditional.clear()
    out = bundles.resolve_references({"resourceType": "Observation", "performer": [
        {"reference": "Practitioner?x=1"}]}, {}, [], conditional, {"Practitioner?x=1":
                                                                    "Practitioner/9"})
    assert out["performer"][0]["reference"] == "Practitioner/9" and conditional == []


def test_loading_synthea_twice_adds_nothing(sc, tmp_path):
    """The load receipt still goes with the Bundle's data (COPY in the same transaction)."""
    import lzma
    from pathlib import Path

    src = sorted((Path(__file__).parents[1] / "data" / "fhir" / "synthea").glob("*.json.xz"))
    files = []
    for f in src[:2]:
        dest = tmp_path / f.name.removesuffix(".xz")
        dest.write_bytes(lzma.decompress(f.read_bytes()))
        files.append(dest)
    first = Loader(sc.store, source_org="RBULK")
    for f in files:
        first.load_file(f)
    assert first.loaded > 100 and not first.rejected
    n = _count(sc)
    again = Loader(sc.store, source_org="RBULK")
    for f in files:
        again.load_file(f)
    assert again.loaded == 0 and again.skipped > 0 and _count(sc) == n


def _count(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(select(func.count()).select_from(resource)).scalar()
