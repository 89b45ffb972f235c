"""The CapabilityStatement: generated from what the server actually does, so it cannot drift."""

from __future__ import annotations

from functools import cache

from .. import __version__
from ..store.search import MODIFIERS, NOT_SUPPORTED

INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type",
                "create", "search-type"]


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
        ]
        res = {
            "type": rtype,
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "conditionalRead": "not-supported",
            "referencePolicy": ["literal", "local"],
            "interaction": [{"code": c} for c in INTERACTIONS],
            "searchParam": params,
            "searchInclude": ["*"] + [f"{rtype}:{c}" for c, sp in
                                      sorted(indexer.params_for(rtype).items())
                                      if sp.type == "reference"],
            "searchRevInclude": ["*"],
        }
        if rtype == "Patient":
            res["operation"] = [{"name": "everything",
                                 "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]
        out.append(res)
    return tuple(out)


def capability_statement(indexer, base_url: str) -> dict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "sharedcare", "version": __version__},
        "implementation": {"description": "sharedcare shared care record", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
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
            "interaction": [{"code": "transaction"}, {"code": "batch"},
                            {"code": "history-system"}],
        }],
    }
