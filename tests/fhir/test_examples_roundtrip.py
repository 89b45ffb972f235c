"""Every official FHIR R4 example in ../shared/fhir/examples round-trips through PUT and GET.

An example the server refuses is acceptable only when it really violates the official R4 JSON
schema -- checked here against ../shared/fhir/definitions/fhir.schema.json (the whole schema, with
its resourceType discriminator) -- and the refusal is a 400 OperationOutcome.
"""

from __future__ import annotations

import json
from functools import cache

import jsonschema_rs
import pytest

from ._support import FHIR_JSON, load_json, shared, strip_meta_id

# Official examples that violate the R4 JSON schema (known errata of the 4.0.1 examples).
# The test below proves each entry really is schema-invalid, so this list cannot hide bugs.
SCHEMA_INVALID: set[str] = {
    # performer display holds a no-break space (U+00A0); R4 string pattern ^[ \r\n\t\S]+$
    # treats it as whitespace other than space/CR/LF/TAB, so the example is schema-invalid
    "DiagnosticReport-gingival-mass.json",
}


@cache
def _official_validator():
    schema = json.loads(shared("fhir", "definitions", "fhir.schema.json").read_text())
    return jsonschema_rs.Draft6Validator(schema)


def schema_errors(res: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.instance_path))}: {e.message}"[:200]
            for e in _official_validator().iter_errors(res)][:5]


def example_files():
    return sorted(shared("fhir", "examples").glob("*.json"))


@pytest.mark.slow
def test_every_official_example_round_trips(client):
    files = example_files()
    assert len(files) > 400
    refused, wrong, differs, ok = {}, [], [], 0
    for f in files:
        res = load_json(f)
        rtype, rid = res["resourceType"], res["id"]
        r = client.put(f"/fhir/{rtype}/{rid}", json=res, headers={"Content-Type": FHIR_JSON})
        if r.status_code == 400:
            body = r.json()
            assert body["resourceType"] == "OperationOutcome", f.name
            refused[f.name] = body["issue"][0].get("diagnostics", "")
            continue
        if r.status_code not in (200, 201):
            wrong.append(f"{f.name}: {r.status_code} {r.text[:200]}")
            continue
        got = client.get(f"/fhir/{rtype}/{rid}")
        assert got.status_code == 200, f.name
        stored = got.json()
        if strip_meta_id(stored) != strip_meta_id(res) or stored["id"] != rid:
            differs.append(f.name)
            continue
        # the example's own meta (profiles, security labels, tags) is kept
        for key in ("profile", "security", "tag"):
            for item in res.get("meta", {}).get(key, []):
                assert item in stored["meta"].get(key, []), (f.name, key, item)
        ok += 1
    assert not wrong, wrong
    assert not differs, f"{len(differs)} examples read back different: {differs[:10]}"
    # every refusal must be a real schema violation
    unjustified = {name: why for name, why in refused.items()
                   if not schema_errors(load_json(shared("fhir", "examples", name)))}
    assert not unjustified, f"valid examples refused: {unjustified}"
    assert set(refused) == SCHEMA_INVALID, {n: refused[n] for n in set(refused) - SCHEMA_INVALID}
    assert ok == len(files) - len(refused)


def test_listed_schema_invalid_examples_really_are_invalid():
    for name in sorted(SCHEMA_INVALID):
        assert schema_errors(load_json(shared("fhir", "examples", name))), name
