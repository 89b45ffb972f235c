"""The OpenAPI 3.1 document of the FHIR API, served at /fhir/openapi.json.

Generated from the CapabilityStatement (capability.py: the same resource types, interactions,
search parameters and `OPERATIONS`), so the two cannot disagree, and neither can drift from
what the server does.
"""

from __future__ import annotations

from functools import cache

from ... import __version__
from ...fhir.compartment import patient_compartment_types
from ..capability import OPERATIONS, capability_statement

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
JSON_PATCH = "application/json-patch+json"
RESULT_PARAMS = ["_count", "_sort", "_include", "_revinclude", "_summary", "_elements",
                 "_total", "_cursor"]
ID = {"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _xml(schema: str) -> dict:
    return {"schema": {"type": "string", "description": f"the {schema} in FHIR XML "
                       "(http://hl7.org/fhir/R4/xml.html)"}}


def _body(schema: str = "Resource") -> dict:
    """A FHIR body: JSON or XML (Content-Type in, Accept or _format out)."""
    return {"content": {FHIR_JSON: {"schema": _ref(schema)}, FHIR_XML: _xml(schema)}}


def _responses(ok: str = "200", schema: str | None = "Resource", extra: dict | None = None
               ) -> dict:
    out = {ok: {"description": "success", **(_body(schema) if schema else {})},
           "4XX": {"description": "refused or not found: an OperationOutcome naming why",
                   **_body("OperationOutcome")}}
    out.update(extra or {})
    return out


def _path_param(name: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema or ID}


def _header(name: str, description: str) -> dict:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"},
            "description": description}


def _query(name: str, description: str | None = None) -> dict:
    out = {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
    if description:
        out["description"] = description
    return out


CREATED = {"201": {"description": "created (no resource had this id, or none matched)",
                   **_body()}}
# A Binary also travels as itself (http://hl7.org/fhir/R4/binary.html): any other media type.
RAW = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
PREFER = _header("Prefer", "return=minimal | representation | OperationOutcome")
IF_MATCH = _header("If-Match", 'the version this change is based on, as an ETag (W/"3")')


def _op(op_id: str, summary: str, responses: dict, params: list | None = None,
        body: dict | None = None, tags: list[str] | None = None) -> dict:
    out = {"operationId": op_id, "summary": summary, "responses": responses}
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = {"required": True, **body}
    if tags:
        out["tags"] = tags
    return out


def _patch_body() -> dict:
    return {"content": {JSON_PATCH: {"schema": _ref("JsonPatch")},
                        FHIR_JSON: {"schema": _ref("Parameters")},
                        FHIR_XML: _xml("Parameters"),
                        "application/merge-patch+json": {"schema": {"type": "object"}}}}


def _type_paths(res: dict) -> dict[str, dict]:
    t = res["type"]
    tag = [t]
    search = [_query(p["name"], p.get("documentation")) for p in res.get("searchParam", [])]
    search += [_query(p) for p in RESULT_PARAMS]
    cond = [_query(p["name"]) for p in res.get("searchParam", [])]
    rid = _path_param("id")
    paths = {
        f"/{t}": {
            "get": _op(f"search-{t}", f"search {t}", _responses(schema="Bundle"), search,
                       tags=tag),
            "post": _op(f"create-{t}", f"create a {t} (If-None-Exist: conditional create)",
                        _responses("201", extra={"200": {
                            "description": "If-None-Exist found it: the existing resource",
                            **_body()}}), [PREFER, _header(
                            "If-None-Exist", "create only when this search finds nothing")],
                        _body(), tags=tag),
            "put": _op(f"conditional-update-{t}", f"update the one {t} the search finds",
                       _responses(extra=CREATED), cond + [PREFER, IF_MATCH], _body(), tags=tag),
            "patch": _op(f"conditional-patch-{t}", f"patch the one {t} the search finds",
                         _responses(), cond + [PREFER, IF_MATCH], _patch_body(), tags=tag),
            "delete": _op(f"conditional-delete-{t}", f"delete the one {t} the search finds",
                          _responses("204", None), cond, tags=tag),
        },
        f"/{t}/_search": {
            "post": _op(f"search-post-{t}", f"search {t} (parameters in the body)",
                        _responses(schema="Bundle"), None,
                        {"content": {"application/x-www-form-urlencoded": {
                            "schema": {"type": "object", "additionalProperties": {
                                "type": "string"}}}}}, tags=tag)},
        f"/{t}/_history": {
            "get": _op(f"history-type-{t}", f"history of every {t}",
                       _responses(schema="Bundle"), [_query("_since"), _query("_count")],
                       tags=tag)},
        f"/{t}/{{id}}": {
            "get": _op(f"read-{t}", f"read a {t}", _responses(extra={
                "304": {"description": "not modified (If-None-Match / If-Modified-Since)"}}),
                [rid, _header("If-None-Match", 'the ETag the client holds (W/"3")'),
                 _header("If-Modified-Since", "an HTTP date")], tags=tag),
            "put": _op(f"update-{t}", f"update (or create with this id) a {t}",
                       _responses(extra=CREATED),
                       [rid, PREFER, IF_MATCH], _body(), tags=tag),
            "patch": _op(f"patch-{t}", f"patch a {t}: JSON Patch or FHIRPath Patch",
                         _responses(), [rid, PREFER, IF_MATCH], _patch_body(), tags=tag),
            "delete": _op(f"delete-{t}", f"delete a {t}", _responses("204", None), [rid],
                          tags=tag),
        },
        f"/{t}/{{id}}/_history": {
            "get": _op(f"history-instance-{t}", f"versions of a {t}",
                       _responses(schema="Bundle"), [rid, _query("_since"), _query("_count")],
                       tags=tag)},
        f"/{t}/{{id}}/_history/{{vid}}": {
            "get": _op(f"vread-{t}", f"one version of a {t}", _responses(),
                       [rid, _path_param("vid", {"type": "string", "pattern": "^[0-9]+$"})],
                       tags=tag)},
    }
    if t == "Binary":
        _raw_binary(paths, t)
    return paths


def _raw_binary(paths: dict, t: str) -> None:
    """Binary's own content in and out: any media type; X-Security-Context names what it is
    part of (Patient/{id}, DocumentReference/{id})."""
    context = _header("X-Security-Context", "the resource this content belongs to, e.g. "
                      "Patient/123 or DocumentReference/456 (sets Binary.securityContext)")
    for path, method in ((f"/{t}", "post"), (f"/{t}/{{id}}", "put")):
        op = paths[path][method]
        op["requestBody"]["content"].update(RAW)
        op["parameters"] = op.get("parameters", []) + [context]
        op["responses"]["413"] = {"description": "larger than the server takes",
                                  **_body("OperationOutcome")}
    read = paths[f"/{t}/{{id}}"]["get"]["responses"]["200"]
    read["description"] = "the Binary as FHIR (Accept FHIR JSON or XML), else its content"
    read["content"].update(RAW)


def _system_paths() -> dict[str, dict]:
    sys_tag = ["system"]
    return {
        "/metadata": {"get": {**_op("metadata", "the CapabilityStatement",
                                    _responses(schema="Resource"), tags=sys_tag),
                              "security": []}},
        "/openapi.json": {"get": {**_op("openapi", "this document", {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {
                "schema": {"type": "object"}}}}}, tags=sys_tag), "security": []}},
        "/.well-known/smart-configuration": {"get": {**_op(
            "smart-configuration", "SMART App Launch configuration (endpoints, scopes)",
            {"200": {"description": "SMART configuration", "content": {"application/json": {
                "schema": {"type": "object"}}}}}, tags=sys_tag), "security": []}},
        "/": {
            "get": _op("search-system", "search across types (_type=Patient,Practitioner)",
                       _responses(schema="Bundle"),
                       [_query("_type"), _query("_id"), _query("_lastUpdated")]
                       + [_query(p) for p in RESULT_PARAMS], tags=sys_tag),
            "post": _op("transaction", "a batch or transaction Bundle",
                        _responses(schema="Bundle"), [PREFER], _body("Bundle"), tags=sys_tag)},
        "/_search": {"post": _op("search-system-post", "search across types (form body)",
                                 _responses(schema="Bundle"), None, {"content": {
                                     "application/x-www-form-urlencoded": {"schema": {
                                         "type": "object", "additionalProperties": {
                                             "type": "string"}}}}}, tags=sys_tag)},
        "/_history": {"get": _op("history-system", "history of everything",
                                 _responses(schema="Bundle"),
                                 [_query("_since"), _query("_count")], tags=sys_tag)},
        "/Patient/{id}/{compartment}": {"get": _op(
            "search-compartment", "search one type within a patient's compartment (the person)",
            _responses(schema="Bundle"), [_path_param("id"), _path_param(
                "compartment", {"type": "string",
                                "enum": sorted(patient_compartment_types())})], tags=["Patient"])},
        "/$export-poll/{job}": {
            "get": _op("export-poll", "a bulk export's status, then its manifest",
                       _responses(schema=None, extra={"202": {"description": "in progress"}}),
                       [_path_param("job")], tags=sys_tag),
            "delete": _op("export-cancel", "cancel a bulk export",
                          _responses("202", None), [_path_param("job")], tags=sys_tag)},
        "/$export-file/{job}/{name}.ndjson": {"get": _op(
            "export-file", "one NDJSON file of a finished export", _responses(
                schema=None, extra={"200": {"description": "NDJSON", "content": {
                    "application/fhir+ndjson": {"schema": {"type": "string"}}}}}),
            [_path_param("job"), _path_param("name")],
            tags=sys_tag)},
    }


def _operation_paths(types: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, definition, every, every_path, methods, what in OPERATIONS:
        # an operation on "*" (every type: $validate) is listed under each type's path
        for on, path in ([(t, every_path.replace("{type}", t)) for t in types] if every == "*"
                         else [(every, every_path)]):
            _operation_path(out, name, definition, on, path, methods, what,
                            "-instance" if every == "*" and "{id}" in path else "")
    return out


def _operation_path(out: dict, name: str, definition: str, on: str | None, path: str,
                    methods, what: str, suffix: str) -> None:
    params = [_path_param(p) for p in ("id",) if "{id}" in path]
    if name == "export":
        params += [_query("_type"), _query("_since"), _header(
            "Prefer", "respond-async (required)")]
    elif name == "lastn":
        params += [_query(p) for p in ("patient", "subject", "category", "code", "max")]
    elif name == "everything":
        params += [_query(p) for p in ("_count", "_type", "_since", "_cursor")]
    for method in methods:
        body = _body("Parameters") if method == "POST" else None
        if name == "everything" and method == "POST":
            body = None
        key = f"{name}-{on or 'system'}{suffix}-{method.lower()}"
        ok = "202" if name == "export" else "200"
        answer = {"export": None, "validate": "OperationOutcome"}.get(name, "Bundle")
        out.setdefault(path, {})[method.lower()] = {
            **_op(key, what, _responses(ok, answer), params, body, tags=[on or "system"]),
            "externalDocs": {"url": definition}}


@cache
def _paths(indexer) -> dict:
    cs = capability_statement(indexer, "")
    paths: dict[str, dict] = {}
    for res in cs["rest"][0]["resource"]:
        paths.update(_type_paths(res))
    paths.update(_system_paths())
    types = [r["type"] for r in cs["rest"][0]["resource"]]
    for path, methods in _operation_paths(types).items():
        paths.setdefault(path, {}).update(methods)
    return paths


def document(indexer, base_url: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "sharedcare FHIR R4 API", "version": __version__,
                 "description": "Every request needs a bearer token (SMART on FHIR); every "
                 "answer is governed and audited. Errors are OperationOutcomes."},
        "servers": [{"url": base_url}],
        "paths": _paths(indexer),
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Resource": {"type": "object", "required": ["resourceType"],
                             "properties": {"resourceType": {"type": "string"},
                                            "id": ID}},
                "Bundle": {"type": "object", "required": ["resourceType", "type"],
                           "properties": {"resourceType": {"const": "Bundle"},
                                          "type": {"type": "string"},
                                          "entry": {"type": "array", "items": {
                                              "type": "object"}}}},
                "Parameters": {"type": "object", "required": ["resourceType"],
                               "properties": {"resourceType": {"const": "Parameters"},
                                              "parameter": {"type": "array", "items": {
                                                  "type": "object"}}}},
                "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"],
                                     "properties": {"resourceType": {
                                         "const": "OperationOutcome"},
                                         "issue": {"type": "array", "items": {
                                             "type": "object"}}}},
                "JsonPatch": {"type": "array", "items": {
                    "type": "object", "required": ["op", "path"],
                    "properties": {"op": {"enum": ["add", "remove", "replace", "move", "copy",
                                                   "test"]},
                                   "path": {"type": "string"}, "from": {"type": "string"},
                                   "value": {}}}},
            },
        },
    }
