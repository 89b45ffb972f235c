"""Patient/$match (IHE PDQm): scored candidates from identity's matching, governed like any
search."""

from __future__ import annotations

from ...fhir.outcome import FHIRError, Issue
from ...fhir.validation import problems
from .http import fhir_response, json_body


def handle(api, request, raw: bytes):
    from ...identity.service import match_handler

    if api.sc is None:
        raise FHIRError.of(501, "not-supported", "$match is not available here")
    access = api.gov.authenticate(request)
    body = json_body(raw)
    found = problems(body, "Parameters") if body.get("resourceType") == "Parameters" else \
        [Issue("invalid", "Patient/$match takes a Parameters resource", "resourceType")]
    if found:
        raise FHIRError(400, found)
    return fhir_response(match_handler(api.sc, access, body))
