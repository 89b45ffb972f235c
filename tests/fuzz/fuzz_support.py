"""What every fuzzed FHIR answer must be, and a seeded store to fuzz against."""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, Phase, settings

from sharedcare.fhir.codes import ODS_SYSTEM
from sharedcare.store.repository import WriteOp

EXAMPLES = int(os.environ.get("SHAREDCARE_FUZZ_EXAMPLES", "150"))
ORG = "RTEST"


def fuzz_settings(examples: int | None = None, sc=None):
    """Hypothesis settings for one fuzz property: SHAREDCARE_FUZZ_EXAMPLES examples (a third
    of them on PostgreSQL, which pays a round trip per statement: the same code paths, and the
    large run is an environment variable away).
    No shrinking by default: each example is a real request against a real database, and the
    failure message already names the request. Shrinking runs with SHAREDCARE_FUZZ_SHRINK."""
    examples = examples or EXAMPLES
    if sc is not None and sc.engine.dialect.name == "postgresql":
        examples = max(20, examples // 3)
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("SHAREDCARE_FUZZ_SHRINK"):
        phases.append(Phase.shrink)
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    phases=phases, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def describe(method: str, url: str, body: bytes | None = None) -> str:
    shown = body[:300] if body is not None else b""
    return f"{method} {url[:300]} {shown!r}"


def check_answer(resp, request: str) -> None:
    """No 5xx; every 4xx is an OperationOutcome with an issue that says what is wrong."""
    assert resp.status_code < 500, f"{request} -> {resp.status_code}: {resp.text[:500]}"
    if resp.status_code >= 400:
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise AssertionError(f"{request} -> {resp.status_code} not JSON: {resp.text[:300]}"
                                 ) from None
        assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", \
            f"{request} -> {resp.status_code} is not an OperationOutcome: {resp.text[:300]}"
        issues = body.get("issue") or []
        assert any(isinstance(i, dict) and isinstance(i.get("diagnostics"), str)
                   and i["diagnostics"].strip() for i in issues), \
            f"{request} -> {resp.status_code} has no issue with diagnostics: {resp.text[:300]}"


def check_usable(client) -> None:
    """The server (and its database connection) still answers an ordinary request."""
    resp = client.get("/fhir/Patient?_count=1")
    assert resp.status_code == 200, f"the server stopped answering: {resp.status_code} " \
                                    f"{resp.text[:300]}"


def seed_store(sc) -> None:
    """A few linked resources so searches, chains, includes and $everything have rows."""
    w = sc.store.write
    w([WriteOp("PUT", "Organization", "org-1", {
        "resourceType": "Organization", "identifier": [{"system": ODS_SYSTEM, "value": ORG}],
        "name": "Test Partner System Trust"})], source_org=ORG)
    ops = [WriteOp("PUT", "Patient", "pat-1", {
        "resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}],
        "name": [{"family": "Ørsted-Smith", "given": ["Ann"]}], "gender": "female",
        "birthDate": "1970-01-01", "generalPractitioner": [{"reference": "Organization/org-1"}],
        "address": [{"postalCode": "M1 1AA"}]})]
    for n in range(1, 4):
        ops.append(WriteOp("PUT", "Observation", f"obs-{n}", {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}],
                     "text": "heart rate"},
            "subject": {"reference": "Patient/pat-1"},
            "effectiveDateTime": f"2024-0{n}-01T10:00:00Z",
            "valueQuantity": {"value": 60 + n, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}))
    ops.append(WriteOp("PUT", "Encounter", "enc-1", {
        "resourceType": "Encounter", "status": "in-progress", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/pat-1"},
        "serviceProvider": {"reference": "Organization/org-1"},
        "period": {"start": "2024-01-01"}}))
    ops.append(WriteOp("PUT", "Condition", "cond-1", {
        "resourceType": "Condition", "code": {"text": "asthma"},
        "subject": {"reference": "Patient/pat-1"}, "onsetDateTime": "2001"}))
    w(ops, source_org=ORG)
