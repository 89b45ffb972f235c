"""The CapabilityStatement: generated from what the server actually does, so it cannot drift."""

from __future__ import annotations

from functools import cache

from .. import __version__
from ..store.search import MODIFIERS, NOT_SUPPORTED

INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance",
                "history-type", "create", "search-type"]
SYSTEM_INTERACTIONS = ["transaction", "batch", "history-system", "search-system"]

HL7_OPS = "http://hl7.org/fhir/OperationDefinition"
# Every operation the server answers, and where: the CapabilityStatement and the OpenAPI
# document (operations/openapi.py) are both generated from this list.
# (name, canonical definition, resource type or None for system level, path under /fhir,
#  HTTP methods, what it does)
OPERATIONS = [
    ("everything", f"{HL7_OPS}/Patient-everything", "Patient", "/Patient/{id}/$everything",
     ("GET", "POST"), "everything about the person, paged, governed like a read"),
    ("match", f"{HL7_OPS}/Patient-match", "Patient", "/Patient/$match", ("POST",),
     "IHE PDQm patient matching: scored candidates"),
    ("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export", "Patient",
     "/Patient/$export", ("GET",), "FHIR Bulk Data export of every patient's data"),
    ("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export", "Group",
     "/Group/{id}/$export", ("GET",), "FHIR Bulk Data export of a group's data"),
    ("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export", None, "/$export",
     ("GET",), "FHIR Bulk Data export of the whole system"),
    ("lastn", f"{HL7_OPS}/Observation-lastn", "Observation", "/Observation/$lastn", ("GET",),
     "the latest max Observations of each code for one patient"),
    ("summary", "http://hl7.org/fhir/uv/ips/OperationDefinition/summary", "Patient",
     "/Patient/{id}/$summary", ("GET",), "an International Patient Summary document"),
    ("status", ("http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
                "backport-subscription-status"), "Subscription", "/Subscription/{id}/$status", ("GET",),
     "a subscription's SubscriptionStatus (Subscriptions Backport)"),
    # on "*": every resource type
    ("validate", f"{HL7_OPS}/Resource-validate", "*", "/{type}/$validate", ("POST",),
     ("validate a resource (FHIR R4 and its UK Core profiles): an OperationOutcome, nothing "
      "written")),
    ("validate", f"{HL7_OPS}/Resource-validate", "*", "/{type}/{id}/$validate", ("POST",),
     ("validate an update (or mode=delete) of this resource: an OperationOutcome, nothing "
      "written")),
]


@cache
def _resources(indexer) -> tuple:
    out = []
    for rtype in sorted(indexer.supported_types()):
        params = [
            {"name": code, "type": sp.type, "definition": sp.url,
             "documentation": f"modifiers: {', '.join(sorted(MODIFIERS.get(sp.type, ())))}"}
            for code, sp in sorted(indexer.params_for(rtype).items())
            if sp.type not in ("composite", "special") and code not in NOT_SUPPORTED
            and indexer.is_indexed(rtype, code)
        ]
        params += [
            {"name": "_id", "type": "token"},
            {"name": "_lastUpdated", "type": "date"},
            # full text (store/indexing/fulltext.py): words, "phrases", AND, OR, NOT, ()
            {"name": "_text", "type": "string",
             "definition": "http://hl7.org/fhir/SearchParameter/DomainResource-text",
             "documentation": "the narrative; ranked by relevance unless _sort is given"},
            {"name": "_content", "type": "string",
             "definition": "http://hl7.org/fhir/SearchParameter/Resource-content",
             "documentation": "the whole resource with its text/* attachments and Binaries; "
                              "ranked by relevance unless _sort is given"},
        ]
        res = {
            "type": rtype,
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "conditionalRead": "full-support",  # If-Modified-Since, If-None-Match
            "referencePolicy": ["literal", "local"],
            "interaction": [{"code": c} for c in INTERACTIONS],
            "searchParam": params,
            "searchInclude": ["*"] + [f"{rtype}:{c}" for c, sp in
                                      sorted(indexer.params_for(rtype).items())
                                      if sp.type == "reference"],
            "searchRevInclude": ["*"],
        }
        out.append(_with_operations(res))
    from ..notify.capability import subscription_resource

    # stored by the generic routes, served by notify/
    out.append(_with_operations(subscription_resource()))
    return tuple(out)


def _with_operations(res: dict) -> dict:
    named = {name: definition for name, definition, on, *_ in OPERATIONS
             if on in (res["type"], "*")}
    ops = [{"name": name, "definition": definition} for name, definition in named.items()]
    if ops:
        res["operation"] = [*res.get("operation", []), *ops]
    return res


def capability_statement(indexer, base_url: str) -> dict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "sharedcare", "version": __version__},
        "implementation": {"description": "sharedcare shared care record", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json",
                        "application/fhir+xml", "application/merge-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": False,
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"}]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "token", "valueUri": base_url.rsplit("/fhir", 1)[0] + "/auth/token"},
                        {"url": "authorize",
                         "valueUri": base_url.rsplit("/fhir", 1)[0] + "/auth/authorize"}]}],
            },
            "resource": list(_resources(indexer)),
            "interaction": [{"code": c} for c in SYSTEM_INTERACTIONS],
            "operation": [{"name": name, "definition": definition}
                          for name, definition, on, *_ in OPERATIONS if on is None],
        }],
    }
