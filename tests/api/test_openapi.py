"""The OpenAPI 3.1 document at /fhir/openapi.json: valid OpenAPI 3.1 (openapi-spec-validator),
generated from the same source as the CapabilityStatement, listing every route the FHIR API
answers; and the CapabilityStatement's operations and interactions."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from sharedcare.api.capability import OPERATIONS
from sharedcare.fhir.compartment import patient_compartment_types

from ..fhir._support import FHIR_JSON


@pytest.fixture
def spec(client):
    r = client.get("/fhir/openapi.json", headers={"Authorization": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return r.json()


def test_the_document_is_valid_openapi_31(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema
    assert spec["servers"] == [{"url": "http://testserver/fhir"}]
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), "operationIds are unique"


def _fhir_routes(sc) -> list[tuple[str, set[str]]]:
    from sharedcare.app import create_app

    out = []
    for route in create_app(sc).routes:
        if isinstance(route, Route) and route.path.startswith("/fhir"):
            out.append((route.path, set(route.methods or ()) - {"HEAD"}))
    return out


def test_every_route_is_listed(spec, sc, client):
    types = [r["type"] for r in client.get("/fhir/metadata").json()["rest"][0]["resource"]]
    paths = spec["paths"]
    missing = []
    for path, methods in _fhir_routes(sc):
        rel = path.removeprefix("/fhir") or "/"
        if rel == "/":
            candidates = ["/"]
        elif rel == "/Patient/{id}/{ctype}":
            candidates = ["/Patient/{id}/{compartment}"]
        elif "{type}" in rel:
            candidates = [rel.replace("{type}", t) for t in types]
        else:
            candidates = [rel]
        for p in candidates:
            if p not in paths:
                missing.append(p)
                continue
            for m in methods:
                if m.lower() not in paths[p]:
                    missing.append(f"{m} {p}")
    assert not missing, missing[:20]
    comp = paths["/Patient/{id}/{compartment}"]["get"]["parameters"][1]["schema"]["enum"]
    assert set(comp) == set(patient_compartment_types())


def test_search_parameters_come_from_the_capability_statement(spec, client):
    cs = client.get("/fhir/metadata").json()
    observation = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    listed = {p["name"] for p in spec["paths"]["/Observation"]["get"]["parameters"]}
    assert {p["name"] for p in observation["searchParam"]} <= listed
    assert {"code", "patient", "_count", "_include"} <= listed
    patch = spec["paths"]["/Observation/{id}"]["patch"]["requestBody"]["content"]
    assert set(patch) == {"application/json-patch+json", FHIR_JSON, "application/fhir+xml",
                          "application/merge-patch+json"}


def test_capability_statement_lists_operations_and_patch(client):
    cs = client.get("/fhir/metadata").json()
    assert "application/json-patch+json" in cs["patchFormat"]
    rest = cs["rest"][0]
    assert {"transaction", "batch", "history-system", "search-system"} <= {
        i["code"] for i in rest["interaction"]}
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"patch"} <= {i["code"] for i in by_type["Condition"]["interaction"]}
    assert {o["name"] for o in by_type["Patient"]["operation"]} >= {
        "everything", "match", "export", "summary"}
    assert {o["name"] for o in by_type["Observation"]["operation"]} == {"lastn", "validate"}
    assert {o["name"] for o in by_type["Group"]["operation"]} == {"export", "validate"}
    assert all("validate" in {o["name"] for o in r["operation"]} for r in rest["resource"])
    assert {o["name"] for o in rest["operation"]} == {"export"}
    for name, definition, *_ in OPERATIONS:
        assert re.match(r"^https?://", definition), name


# ------------------------------------------------------------------ the document is accurate
SAMPLE_TYPES = {"Patient", "Observation", "Encounter", "Practitioner"}


def _documented(op: dict, status: int) -> dict | None:
    responses = op["responses"]
    return responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")


def _request_for(path: str, method: str, op: dict, pid: str):
    url = path.replace("{id}", pid).replace("{vid}", "1").replace(
        "{compartment}", "Observation").replace("{job}", "no-such-job").replace(
        "{name}", "Patient")
    rtype = path.strip("/").split("/")[0]
    body = None
    content = (op.get("requestBody") or {}).get("content") or {}
    headers = {}
    if "application/json-patch+json" in content:
        body, headers["Content-Type"] = b"[]", "application/json-patch+json"
    elif FHIR_JSON in content:
        schema = content[FHIR_JSON]["schema"]["$ref"].rsplit("/", 1)[1]
        doc = {"Resource": {"resourceType": rtype, "id": pid} if "{id}" in path
               else {"resourceType": rtype},
               "Bundle": {"resourceType": "Bundle", "type": "batch", "entry": []},
               "Parameters": {"resourceType": "Parameters"}}[schema]
        import json

        body, headers["Content-Type"] = json.dumps(doc).encode(), FHIR_JSON
    elif "application/x-www-form-urlencoded" in content:
        body, headers["Content-Type"] = b"_count=1", "application/x-www-form-urlencoded"
    return url, body, headers


def test_every_documented_operation_answers_as_documented(spec, client):
    """A bounded conformance run in the manner of schemathesis (which does not install beside
    the pinned jsonschema-rs): every path and method of the document, on a sample of types,
    answers with a documented status and media type, never a 500, errors as
    OperationOutcomes."""
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
    problems = []
    for path, methods in spec["paths"].items():
        head = path.strip("/").split("/")[0]
        if head and head[0].isupper() and head not in SAMPLE_TYPES:
            continue
        for method, op in methods.items():
            url, body, headers = _request_for(path, method, op, pid)
            r = client.request(method.upper(), f"/fhir{url}" if url != "/" else "/fhir",
                               content=body, headers=headers)
            documented = _documented(op, r.status_code)
            if r.status_code >= 500 or documented is None:
                problems.append(f"{method.upper()} {path}: {r.status_code} {r.text[:200]}")
                continue
            media = r.headers.get("content-type", "").split(";")[0]
            if documented.get("content") and r.content and media not in documented["content"]:
                problems.append(f"{method.upper()} {path}: {media} not documented")
            if r.status_code >= 400:
                assert r.json()["resourceType"] == "OperationOutcome", (path, method)
    assert not problems, "\n".join(problems)
