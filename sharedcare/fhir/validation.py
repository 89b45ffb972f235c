"""Validation of incoming resources against the official FHIR R4 JSON schema (jsonschema-rs),
made strict where the official schema is loose, plus the rules a JSON schema cannot say.

The official schema (definitions/fhir.schema.json, kept byte-for-byte as published) leaves every
complex datatype and backbone element without ``"type": "object"``, so ``"code": 5`` or
``"subject": 1.5`` validate, and one such record breaks every page that reads it. It also types
integer, positiveInt and unsignedInt as any JSON number, and xhtml as anything at all. Rather than
walk every resource in Python on the ingest path, the loaded schema is tightened once, at load
time (`_strict_definitions`), and jsonschema-rs does the work:

- every definition with ``properties`` (complex types, backbone elements, resources) must be a
  JSON object; where the element repeats the schema already says ``"type": "array"``, so each
  item must be an object;
- integer / positiveInt / unsignedInt are JSON integers within FHIR's 32-bit ranges
  (positiveInt >= 1, unsignedInt >= 0), in their definitions and in every inlined ``value[x]``;
- base64Binary carries the R4 regex (the inlined ``value[x]`` copies have it, the definition
  does not); xhtml is a string;
- the ``_element`` arrays of primitive extensions may still hold ``null`` (FHIR JSON aligns them
  with the values that way), which Element's new ``"type": "object"`` alone would refuse.

Every other primitive (string, code, id, uri, url, canonical, oid, uuid, date, dateTime, instant,
time, decimal, boolean, markdown) already has its type and regex in the official schema.

NHS numbers: any Identifier with system ``https://fhir.nhs.uk/Id/nhs-number`` (``Patient
.identifier``, ``subject.identifier``, in contained resources and Bundle entries too) must have a
value of exactly 10 digits that `sharedcare.fhir.nhs_number.is_valid` accepts (modulus-11 check
digit; in the Scottish CHI range the first six digits must be a date). A custom schema keyword on
Identifier does this inside the same jsonschema-rs pass, so resources without identifiers pay
nothing.

UK Core: a valid R4 resource whose ``meta.profile`` claims a UK Core profile is also checked
against it (`ukcore.py`); those issues are `ukcore.ProfileIssue`s, and a write refused only for
them is a 422 (`write_status`), where an R4 problem is a 400. `r4_problems` is the R4 check
alone ($validate runs both itself).

Errors inside a contained resource or a Bundle entry are reported at the inner field
(``Bundle.entry[2].resource.code``), not as the schema's "not valid under oneOf". Diagnostics name
the field, never the value in it: they reach logs and feed error lists.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path

import jsonschema_rs
import orjson
from nhs_number import calculate_checksum as _nhs_checksum

from . import ukcore
from .codes import NHS_NUMBER_SYSTEM
from .nhs_number import is_valid as _nhs_is_valid
from .outcome import FHIRError, Issue

DEFINITIONS = Path(__file__).parent / "definitions"
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_ISSUES = 20

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# FHIR R4 primitive regexes the official JSON schema's definitions lack
# (http://hl7.org/fhir/R4/datatypes.html#base64Binary).
BASE64_PATTERN = r"^(\s*([0-9a-zA-Z\+/=]){4}\s*)+$"
_INTEGER_BOUNDS = {  # FHIR integer types -> (minimum, maximum)
    "integer": (INT32_MIN, INT32_MAX),
    "positiveInt": (1, INT32_MAX),
    "unsignedInt": (0, INT32_MAX),
}
NHS_KEYWORD = "sharedcareNhsNumber"  # custom keyword on Identifier (see _NhsNumberKeyword)
# Error messages name the field, never the value in it (they reach logs and feed error lists).
MASK = "the value"
_TEN_DIGITS = re.compile(r"[0-9]{10}")


@cache
def _schema() -> dict:
    """The official R4 JSON schema, as published (other modules read its element types)."""
    return orjson.loads((DEFINITIONS / "fhir.schema.json").read_bytes())


def _strict_definitions(definitions: dict) -> dict:
    """A tightened copy of the official schema's definitions (see the module docstring)."""
    defs = copy.deepcopy(definitions)
    # inlined value[x] copies of the integer types are recognised by their (official) regex
    integer_by_pattern = {defs[name]["pattern"]: name for name in _INTEGER_BOUNDS}
    for name, (low, high) in _INTEGER_BOUNDS.items():
        defs[name].update(type="integer", minimum=low, maximum=high)
    defs["base64Binary"]["pattern"] = BASE64_PATTERN
    defs["xhtml"]["type"] = "string"
    defs["Identifier"][NHS_KEYWORD] = True
    element_ref = "#/definitions/Element"
    for definition in defs.values():
        props = definition.get("properties")
        if props is None:
            continue
        definition["type"] = "object"
        for pname, prop in props.items():
            if prop.get("type") == "number" and prop.get("pattern") in integer_by_pattern:
                low, high = _INTEGER_BOUNDS[integer_by_pattern[prop["pattern"]]]
                prop.update(type="integer", minimum=low, maximum=high)
            items = prop.get("items")
            if pname.startswith("_") and items is not None and items.get("$ref") == element_ref:
                prop["items"] = {"anyOf": [{"type": "null"}, {"$ref": element_ref}]}
    return defs


@cache
def _strict_schema_definitions() -> dict:
    return _strict_definitions(_schema()["definitions"])


@cache
def resource_types() -> frozenset[str]:
    return frozenset(_schema()["discriminator"]["mapping"])


@cache
def _validator(rtype: str):
    # One validator per type against that type's definition: errors then name the field, instead
    # of the whole-schema oneOf reporting "not valid under any of the given schemas".
    return jsonschema_rs.Draft6Validator(
        {"$ref": f"#/definitions/{rtype}", "definitions": _strict_schema_definitions()},
        keywords={NHS_KEYWORD: _NhsNumberKeyword}, mask=MASK,
    )


def _path(root: str, parts) -> str:
    out = root
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _at(node, parts):
    for p in parts:
        node = node[p]
    return node


def _nhs_problem(value) -> str | None:
    """Why `value` is not a valid NHS number, or None when it is."""
    if not isinstance(value, str):
        return None  # Identifier.value is a string: the schema itself says so
    if not _TEN_DIGITS.fullmatch(value):
        return "an NHS number must be exactly 10 digits (no spaces or other characters)"
    if _nhs_is_valid(value):
        return None
    if _nhs_checksum(value[:9]) != int(value[9]):
        return "not a valid NHS number: the modulus-11 check digit does not match"
    # sharedcare.fhir.nhs_number.is_valid also refuses a number in the Scottish CHI range
    # whose first six digits are not a date of birth (DDMMYY)
    return ("not a valid NHS number: in the Scottish CHI range (0100000000-3112999999) "
            "the first six digits must be a date (DDMMYY)")


class _NhsNumberKeyword:
    """The custom schema keyword on Identifier: an NHS-number identifier needs a valid value."""

    def __init__(self, parent_schema, value, schema_path):
        pass

    def validate(self, instance) -> None:
        if (isinstance(instance, dict) and instance.get("system") == NHS_NUMBER_SYSTEM
                and "value" in instance):
            why = _nhs_problem(instance["value"])
            if why:
                raise ValueError(why)


def problems(resource, where: str | None = None) -> list[Issue]:
    """All problems with `resource`, each with its location ("Patient.name[0].given"): R4, and
    the UK Core profiles it claims (`ukcore.ProfileIssue`s)."""
    issues = r4_problems(resource, where)
    if not issues:
        # UK Core profiles constrain valid R4 (and cost a resource that claims none a lookup)
        issues = ukcore.problems(resource, where)
    return issues[:MAX_ISSUES]


def r4_problems(resource, where: str | None = None) -> list[Issue]:
    """The problems of `resource` as FHIR R4 (the JSON schema, ids, NHS numbers)."""
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
    try:
        return _schema_problems(validator, resource, root, issues)
    except ValueError:
        # The validator's recursion limit: no FHIR resource nests hundreds of levels deep.
        return [Issue("structure", "the resource is nested too deeply to be a FHIR resource",
                      root)]


def write_status(issues: list[Issue]) -> int:
    """The HTTP status of a refused write: 422 when the resource is valid R4 but breaks the
    profiles it claims (http://hl7.org/fhir/R4/http.html#2.21.0.10.1), else 400."""
    if issues and all(isinstance(i, ukcore.ProfileIssue) for i in issues):
        return 422
    return 400


def _schema_problems(validator, resource: dict, root: str, issues: list[Issue]) -> list[Issue]:
    if not validator.is_valid(resource):
        for err in validator.iter_errors(resource):
            if isinstance(err.kind, jsonschema_rs.ValidationErrorKind.OneOfNotValid):
                # ResourceList (contained, Bundle.entry.resource, Parameters.parameter.resource)
                # is the only oneOf: say what is wrong inside that resource instead
                found = problems(_at(resource, err.instance_path), _path(root, err.instance_path))
                if found:
                    issues.extend(found)
                    if len(issues) >= MAX_ISSUES:
                        break
                    continue
            held = _null_entry(resource, err.instance_path)
            if held is not None:
                if held:
                    continue  # a repeating primitive's entry that has only extensions
                name, i = err.instance_path[-2], err.instance_path[-1]
                issues.append(Issue("structure", f"{name}[{i}] is null, which stands only for "
                                    f"an entry with extensions in _{name}[{i}]; there are none",
                                    _path(root, err.instance_path)))
            elif isinstance(err.kind, jsonschema_rs.ValidationErrorKind.Custom):
                # only the NHS number keyword is custom: it is about the Identifier's value
                issues.append(Issue("value", err.message,
                                    _path(root, err.instance_path) + ".value"))
            else:
                issues.append(Issue("structure", err.message, _path(root, err.instance_path)))
            if len(issues) >= MAX_ISSUES:
                break
    return issues[:MAX_ISSUES]


def _null_entry(resource: dict, path) -> bool | None:
    """For an error at a null entry of a list: whether `_name` carries that entry's extensions
    (FHIR JSON's way to give a repeating primitive an extension but no value, as HAPI writes
    it: http://hl7.org/fhir/R4/json.html#primitive). None when the error is about anything
    else. The official schema has no way to say this, so it is allowed here."""
    if len(path) < 2 or not isinstance(path[-1], int) or not isinstance(path[-2], str):
        return None
    parent = _at(resource, path[:-2])
    values = parent.get(path[-2]) if isinstance(parent, dict) else None
    if not isinstance(values, list) or values[path[-1]] is not None:
        return None
    extras = parent.get(f"_{path[-2]}")
    return isinstance(extras, list) and path[-1] < len(extras) and isinstance(extras[path[-1]],
                                                                             dict)


def validate(resource, where: str | None = None, status: int = 400) -> None:
    issues = problems(resource, where)
    if issues:
        raise FHIRError(status, issues)
