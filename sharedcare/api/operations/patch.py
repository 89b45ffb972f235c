"""PATCH: JSON Patch (RFC 6902, `application/json-patch+json`), FHIRPath Patch (a
`Parameters` resource of `operation` parts, `application/fhir+json`), and -- for clients such
as fhirpy that send part of a resource -- JSON Merge Patch (RFC 7386,
`application/merge-patch+json`, or `application/json` with a body that is not Parameters).

The patch is applied to the current version the caller may see, read inside the write's own
transaction, and the result is written through the one write door (`Governance.write`) as an
update: a controller-only write, `If-Match` honoured, validated, audited once. A resource the
caller may not see answers exactly as a missing one (404), so a patch is never an oracle.

    PATCH /fhir/{type}/{id}       the resource
    PATCH /fhir/{type}?{search}   conditional patch: exactly one match the caller may see
"""

from __future__ import annotations

import copy
import re
from functools import cache

import jsonpatch
import jsonpointer
import orjson

from ...fhir.outcome import FHIRError, Issue
from ...fhir.validation import problems
from ...store.repository import WriteOp
from .http import written_response

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
FHIRPATH_OPS = ("add", "insert", "delete", "replace", "move")


# ------------------------------------------------------------------ the HTTP interaction
def handle(api, request, raw: bytes):
    """PATCH on an instance or, with a query and no id, a conditional patch."""
    rtype = request.path_params["type"]
    rid = request.path_params.get("id")
    access = api.gov.authenticate(request)
    kind = _kind(request.headers.get("content-type") or "")
    kind, document = _document(raw, kind)
    if_match = api.version_of(request.headers.get("if-match"))
    store = api.store
    with store.begin_write() as conn, conn.begin():
        if rid is None:
            query = request.url.query
            if not query:
                raise FHIRError.of(400, "invalid", "PATCH needs an id or search parameters")
            ids = api.gov.match(access, rtype, query, conn)
            if len(ids) > 1:
                raise FHIRError.of(412, "multiple-matches",
                                   "the conditions match several resources")
            if not ids:
                raise FHIRError.of(404, "not-found", f"no {rtype} matches the conditions")
            rid = ids[0]
        # Read as the caller sees the store: hidden and missing are the same 404.
        current = store.read(rtype, rid, access.policy, conn)
        if if_match is not None and if_match != current.version:
            raise FHIRError.of(412, "conflict", f"{rtype}/{rid} is at version "
                               f"{current.version}, not {if_match} (If-Match)", "If-Match")
        before = current.json()
        if kind == "json-patch":
            after = apply_json_patch(before, document)
        elif kind == "merge-patch":
            after = apply_merge_patch(before, document)
        else:
            after = apply_fhirpath_patch(before, document)
        check_result(after, rtype, rid)
        result = api.gov.write(access, [WriteOp("PUT", rtype, rid, after, current.version)],
                               conn, entity=f"{rtype}/{rid} (patch)")[0]
    return written_response(request, result.stored, 200, "patched")


def _kind(content_type: str) -> str:
    media = content_type.split(";")[0].strip().lower()
    if media == JSON_PATCH:
        return "json-patch"
    if media == MERGE_PATCH:
        return "merge-patch"
    if media == "application/json":
        return "json"
    if media in ("application/fhir+json", ""):
        return "fhirpath-patch"
    raise FHIRError(415, [Issue("not-supported", f"PATCH takes {JSON_PATCH} (JSON Patch), "
                                f"application/fhir+json (FHIRPath Patch Parameters) or "
                                f"{MERGE_PATCH}, not {media[:80]}", "Content-Type")])


def _document(raw: bytes, kind: str) -> tuple[str, object]:
    if not raw:
        raise FHIRError.of(400, "invalid", "the PATCH request has no body")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise FHIRError.of(400, "structure", f"the body is not valid JSON: {e}") from None
    if kind == "json-patch":
        if not isinstance(doc, list):
            raise FHIRError.of(400, "structure", "a JSON Patch is an array of operations")
        return kind, doc
    if kind == "json":
        kind = "fhirpath-patch" if isinstance(doc, dict) and \
            doc.get("resourceType") == "Parameters" else "merge-patch"
    if kind == "merge-patch":
        if not isinstance(doc, dict):
            raise FHIRError.of(400, "structure", "a JSON Merge Patch is an object")
        return kind, doc
    if not isinstance(doc, dict) or doc.get("resourceType") != "Parameters":
        raise FHIRError.of(400, "invalid", "a FHIRPath Patch is a Parameters resource (send "
                           f"a JSON Patch as {JSON_PATCH})", "resourceType")
    return kind, checked_parameters(doc)


def checked_parameters(doc: dict) -> dict:
    found = problems(doc, "Parameters")
    if found:
        raise FHIRError(400, found)
    return doc


def apply_merge_patch(resource: dict, patch: dict) -> dict:
    """RFC 7386: objects merge, null removes, anything else (arrays too) replaces."""
    out = dict(resource)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def check_result(after: dict, rtype: str, rid: str) -> None:
    """The patched resource must still be this resource, and valid: 422 naming each field."""
    if not isinstance(after, dict):
        raise FHIRError.of(422, "processing", "the patch does not leave a resource")
    if after.get("resourceType") != rtype:
        raise FHIRError.of(422, "processing", f"a patch may not change resourceType (must stay "
                           f"{rtype})", "resourceType")
    if after.get("id") != rid:
        raise FHIRError.of(422, "processing", f"a patch may not change id (must stay '{rid}')",
                           "id")
    found = problems(after, rtype)
    if found:
        raise FHIRError(422, [Issue(i.code, f"the patched resource is not valid: "
                                    f"{i.diagnostics}", i.expression) for i in found])


# ------------------------------------------------------------------ JSON Patch
def apply_json_patch(resource: dict, operations: list) -> dict:
    """RFC 6902 through the jsonpatch library. A malformed operation is 400; one that cannot
    be applied (a missing path, a failed `test`) is 422, naming the operation and its path."""
    for n, op in enumerate(operations):
        if not isinstance(op, dict) or op.get("op") not in (
                "add", "remove", "replace", "move", "copy", "test") or \
                not isinstance(op.get("path"), str):
            raise FHIRError.of(400, "invalid", "each JSON Patch operation needs op (add, remove, "
                               "replace, move, copy, test) and a path", f"[{n}]")
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            raise FHIRError.of(400, "required", f"{op['op']} needs a value", f"[{n}].value")
        if op["op"] in ("move", "copy") and not isinstance(op.get("from"), str):
            raise FHIRError.of(400, "required", f"{op['op']} needs from", f"[{n}].from")
    out = resource
    for n, op in enumerate(operations):
        try:
            out = jsonpatch.JsonPatch([op]).apply(out, in_place=False)
        except jsonpatch.JsonPatchTestFailed as e:
            raise FHIRError.of(422, "processing", f"test failed: {e}", op["path"]) from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise FHIRError.of(422, "processing", f"operation {n} ({op['op']}) cannot be "
                               f"applied: {e}", op["path"]) from None
    return out


# ------------------------------------------------------------------ FHIRPath Patch
def apply_fhirpath_patch(resource: dict, parameters: dict) -> dict:
    """FHIRPath Patch (http://hl7.org/fhir/R4/fhirpatch.html): each `operation` parameter's
    parts say type, path, and name / value / index / source / destination. fhirpathpy finds
    what `path` selects; the change is made where it found it."""
    out = copy.deepcopy(resource)
    params = parameters.get("parameter") or []
    if not params:
        raise FHIRError.of(400, "required", "the Parameters hold no operation", "Parameters.parameter")
    for n, p in enumerate(params):
        where = f"Parameters.parameter[{n}]"
        if p.get("name") != "operation":
            raise FHIRError.of(400, "invalid", "a FHIRPath Patch parameter is named operation",
                               f"{where}.name")
        parts = _parts(p, where)
        kind = parts.get("type")
        if kind not in FHIRPATH_OPS:
            raise FHIRError.of(400, "invalid", f"operation type must be one of "
                               f"{', '.join(FHIRPATH_OPS)}", f"{where}.part(type)")
        path = parts.get("path")
        if not isinstance(path, str) or not path:
            raise FHIRError.of(400, "required", "operation needs a path", f"{where}.part(path)")
        _apply_one(out, kind, path, parts, where)
    return out


def _parts(param: dict, where: str) -> dict:
    out: dict = {}
    for part in param.get("part") or []:
        name = part.get("name")
        if name in ("type", "path", "name"):
            out[name] = next((v for k, v in part.items() if k.startswith("value")), None)
        elif name in ("index", "source", "destination"):
            value = part.get("valueInteger")
            if not isinstance(value, int) or value < 0:
                raise FHIRError.of(400, "invalid", f"{name} must be a valueInteger of 0 or more",
                                   f"{where}.part({name})")
            out[name] = value
        elif name == "value":
            out["value"] = _value(part, f"{where}.part(value)")
            out["value_type"] = next((k[5:] for k in part if k.startswith("value")
                                      and k != "value"), None)
        else:
            raise FHIRError.of(400, "invalid", f"unknown operation part '{str(name)[:40]}'",
                               f"{where}.part")
    return out


def _value(part: dict, where: str):
    """A part's value[x], or -- for a complex value given as parts -- the object they make."""
    for key, v in part.items():
        if key.startswith("value") and key != "value":
            return v
    if part.get("part"):
        obj: dict = {}
        for sub in part["part"]:
            name = sub.get("name")
            if not isinstance(name, str) or not name:
                raise FHIRError.of(400, "required", "a value part needs a name", where)
            v = _value(sub, f"{where}.part({name})")
            if name in obj:
                obj[name] = (obj[name] if isinstance(obj[name], list) else [obj[name]]) + [v]
            else:
                obj[name] = v
        return obj
    raise FHIRError.of(400, "required", "operation value needs a value[x] or parts", where)


def _select(resource: dict, path: str, where: str) -> list:
    from fhirpathpy import evaluate
    from fhirpathpy.models import models

    try:
        return evaluate(resource, path, {}, models["r4"], {"returnRawData": True})
    except Exception as e:  # noqa: BLE001 - fhirpathpy raises many kinds on a bad expression
        raise FHIRError.of(400, "invalid", f"path '{path[:200]}' is not a FHIRPath expression "
                           f"this server can evaluate ({type(e).__name__})",
                           f"{where}.part(path)") from None


SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")


def _locate(resource: dict, node, where: str):
    """Where fhirpathpy found `node`: (container, key or index) in `resource`. fhirpathpy
    names each place it visits (`Patient.name[0].given[1]`); a choice element appears under
    its short name (`Observation.value`) and is found under its typed key (`valueQuantity`)."""
    prop = getattr(node, "propName", None)
    if not prop:
        if getattr(node, "data", None) is resource:
            return None, None
        raise FHIRError.of(422, "processing", "the path selects something that is not an "
                           "element of the resource", f"{where}.part(path)")
    segments = SEGMENT.findall(prop)
    parent, holder, key = None, resource, None
    steps = segments[1:]
    for n, (name, index) in enumerate(steps):
        if not isinstance(holder, dict):
            raise FHIRError.of(422, "processing", f"cannot follow {prop}", f"{where}.part(path)")
        key = name if name in holder else next(
            (k for k in holder if k.startswith(name) and k[len(name):][:1].isupper()), None)
        if key is None:
            raise FHIRError.of(422, "processing", f"{prop} is not in the resource",
                               f"{where}.part(path)")
        parent, holder = holder, holder[key]
        if index:
            if not isinstance(holder, list) or int(index) >= len(holder):
                raise FHIRError.of(422, "processing", f"{prop} is not in the resource",
                                   f"{where}.part(path)")
            parent, key, holder = holder, int(index), holder[int(index)]
        elif isinstance(holder, list) and n < len(steps) - 1:
            raise FHIRError.of(422, "processing", f"cannot follow {prop}", f"{where}.part(path)")
    return parent, key


def _one(resource: dict, path: str, where: str):
    found = _select(resource, path, where)
    if len(found) != 1:
        raise FHIRError.of(422, "processing", f"path '{path[:200]}' must select exactly one "
                           f"element; it selects {len(found)}", f"{where}.part(path)")
    return found[0]


def _list_at(resource: dict, path: str, where: str) -> list:
    """The list a path names (insert and move work on lists): `Patient.identifier`."""
    found = _select(resource, path, where)
    if not found:
        raise FHIRError.of(422, "processing", f"path '{path[:200]}' selects no list",
                           f"{where}.part(path)")
    places = [_locate(resource, n, where) for n in found]
    lists = {id(c): c for c, k in places if isinstance(c, list) and isinstance(k, int)}
    if len(lists) != 1 or len(places) != len(lists[next(iter(lists))]):
        raise FHIRError.of(422, "processing", f"path '{path[:200]}' must select one list",
                           f"{where}.part(path)")
    return next(iter(lists.values()))


def _apply_one(resource: dict, kind: str, path: str, parts: dict, where: str) -> None:
    if kind == "delete":
        found = _select(resource, path, where)
        if not found:
            return  # deleting what is not there is not an error (FHIRPath Patch)
        if len(found) > 1:
            raise FHIRError.of(422, "processing", f"path '{path[:200]}' selects {len(found)} "
                               "elements; delete takes one", f"{where}.part(path)")
        container, key = _locate(resource, found[0], where)
        if container is None:
            raise FHIRError.of(422, "processing", "cannot delete the resource itself",
                               f"{where}.part(path)")
        del container[key]
        _tidy(resource)
        return
    if kind == "replace":
        _need(parts, "value", where)
        container, key = _locate(resource, _one(resource, path, where), where)
        if container is None:
            raise FHIRError.of(422, "processing", "cannot replace the resource itself",
                               f"{where}.part(path)")
        base = SEGMENT.findall(_last_name(resource, path, where))
        if isinstance(key, str) and base and key != base[0][0] and parts.get("value_type"):
            # a choice element (value[x]) takes the type of its new value
            del container[key]
            key = base[0][0] + parts["value_type"]
        container[key] = parts["value"]
        return
    if kind == "add":
        _need(parts, "name", where)
        _need(parts, "value", where)
        target = _one(resource, path, where)
        container, key = _locate(resource, target, where)
        obj = resource if container is None else container[key]
        if not isinstance(obj, dict):
            raise FHIRError.of(422, "processing", f"path '{path[:200]}' is not an element that "
                               "can hold others", f"{where}.part(path)")
        name, value = parts["name"], parts["value"]
        if parts.get("value_type") and _is_choice(getattr(target, "path", None), name,
                                                  parts["value_type"], resource):
            name = name + parts["value_type"]
        if isinstance(obj.get(name), list):
            obj[name].append(value)
        elif name in obj:
            raise FHIRError.of(422, "processing", f"'{name}' already has a value (use replace)",
                               f"{where}.part(name)")
        else:
            obj[name] = [value] if _repeats(getattr(target, "path", None), name, resource) \
                and not isinstance(value, list) else value
        return
    if kind == "insert":
        _need(parts, "value", where)
        _need(parts, "index", where)
        items = _list_at(resource, path, where)
        if parts["index"] > len(items):
            raise FHIRError.of(422, "processing", f"index {parts['index']} is past the end of "
                               f"the list ({len(items)} items)", f"{where}.part(index)")
        items.insert(parts["index"], parts["value"])
        return
    # move
    _need(parts, "source", where)
    _need(parts, "destination", where)
    items = _list_at(resource, path, where)
    src, dst = parts["source"], parts["destination"]
    if src >= len(items) or dst >= len(items):
        raise FHIRError.of(422, "processing", f"source and destination must be below the "
                           f"list's length ({len(items)})", f"{where}.part(source)")
    items.insert(dst, items.pop(src))


def _need(parts: dict, name: str, where: str) -> None:
    if parts.get(name) is None:
        raise FHIRError.of(400, "required", f"this operation needs {name}", f"{where}.part({name})")


def _tidy(node) -> None:
    """Empty lists and objects left by a delete are removed (FHIR JSON has none)."""
    if isinstance(node, dict):
        for k in list(node):
            _tidy(node[k])
            if node[k] in ([], {}):
                del node[k]
    elif isinstance(node, list):
        for v in node:
            _tidy(v)
        node[:] = [v for v in node if v not in ([], {})]


def _last_name(resource: dict, path: str, where: str) -> str:
    """The element name a single-element path ends on, as fhirpathpy names it."""
    found = _select(resource, path, where)
    prop = getattr(found[0], "propName", None) or ""
    return prop.rsplit(".", 1)[-1]


@cache
def _definitions() -> dict:
    from ...fhir.validation import _schema

    return _schema()["definitions"]


def _properties(type_path: str | None, resource: dict) -> dict:
    """The R4 schema's properties of the type fhirpathpy names (`HumanName`,
    `Observation.component` -> `Observation_Component`)."""
    defs = _definitions()
    candidates = []
    if type_path:
        candidates.append(type_path)
        if "." in type_path:
            head, *_, last = type_path.split(".")
            candidates.append(f"{head}_{last[:1].upper()}{last[1:]}")
    else:
        candidates.append(resource.get("resourceType", ""))
    for c in candidates:
        if c in defs:
            return defs[c].get("properties", {})
    return {}


def _is_choice(type_path: str | None, name: str, value_type: str, resource: dict) -> bool:
    props = _properties(type_path, resource)
    return name not in props and f"{name}{value_type}" in props


def _repeats(type_path: str | None, name: str, resource: dict) -> bool:
    """Does element `name` of the type fhirpathpy names repeat (an array in the R4 schema)?"""
    prop = _properties(type_path, resource).get(name)
    return prop is not None and prop.get("type") == "array"

