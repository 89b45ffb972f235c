"""Validation of incoming resources against the official FHIR R4 JSON schema (jsonschema-rs),
plus the structural rules a client trips over that a JSON schema cannot say."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import jsonschema_rs
import orjson

from .outcome import FHIRError, Issue

DEFINITIONS = Path(__file__).parent / "definitions"
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_ISSUES = 20


@cache
def _schema() -> dict:
    return orjson.loads((DEFINITIONS / "fhir.schema.json").read_bytes())


@cache
def resource_types() -> frozenset[str]:
    return frozenset(_schema()["discriminator"]["mapping"])


@cache
def _validator(rtype: str):
    # One validator per type against that type's definition: errors then name the field, instead
    # of the whole-schema oneOf reporting "not valid under any of the given schemas".
    return jsonschema_rs.Draft6Validator(
        {"$ref": f"#/definitions/{rtype}", "definitions": _schema()["definitions"]}
    )


def _path(root: str, parts) -> str:
    out = root
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def problems(resource, where: str | None = None) -> list[Issue]:
    """All problems with `resource`, each with its location ("Patient.name[0].given")."""
    if not isinstance(resource, dict):
        return [Issue("structure", "a resource must be a JSON object", where)]
    rtype = resource.get("resourceType")
    root = where or (rtype if isinstance(rtype, str) else "resource")
    if not isinstance(rtype, str) or not rtype:
        return [Issue("structure", "resourceType is missing", root)]
    if rtype not in resource_types():
        return [Issue("not-supported", f"'{rtype}' is not a FHIR R4 resource type", root)]
    rid = resource.get("id")
    issues: list[Issue] = []
    if rid is not None and not (isinstance(rid, str) and ID_RE.match(rid)):
        issues.append(Issue("value", "id must be 1-64 of A-Z a-z 0-9 - .", f"{root}.id"))
    validator = _validator(rtype)
    if not validator.is_valid(resource):
        for err in validator.iter_errors(resource):
            issues.append(Issue("structure", err.message, _path(root, err.instance_path)))
            if len(issues) >= MAX_ISSUES:
                break
    return issues


def validate(resource, where: str | None = None, status: int = 400) -> None:
    issues = problems(resource, where)
    if issues:
        raise FHIRError(status, issues)
