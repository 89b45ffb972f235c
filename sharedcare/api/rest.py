"""The FHIR R4 REST API at /fhir.

Every handler reads straight through: who is asking (governance.authenticate) -> may they, and why
(governance.policy) -> the store query with that policy inside it -> one audit event -> answer.
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..fhir.outcome import FHIRError, Issue, operation_outcome
from ..fhir.validation import ID_RE, resource_types
from ..governance import Access, Governance
from ..governance.request_audit import current_request
from ..logsafe import log_failure
from ..store.repository import Store, Stored, WriteOp, instant
from . import bundle as bundles
from .capability import capability_statement
from .operations import everything as everything_op
from .operations import lastn as lastn_op
from .operations import match as match_op
from .operations import openapi as openapi_op
from .operations import patch as patch_op
from .operations import status as status_op
from .operations import summary as summary_op
from .operations import validate as validate_op
from .operations.http import (
    FHIR_JSON,
    JSON,
    error_response,
    fhir_response,
    json_body,
    negotiated,
    not_modified,
    prefer_return,
    request_body,
    response_format,
    searchset,
    since_param,
    written_response,
)
from .operations.http import resource_headers as _resource_headers

log = logging.getLogger(__name__)
# Longest query parameter value taken: longer ones are refused, not run (a 60,000-character
# :contains would otherwise be a pattern the database cannot compile).
MAX_PARAM = 2048
MAX_INT = 2**63 - 1


def _check_type(rtype: str) -> None:
    if rtype not in resource_types():
        raise FHIRError.of(404, "not-supported", f"'{rtype}' is not a FHIR R4 resource type")


_body = json_body
_since = since_param


def _check_request(request: Request) -> None:
    """What no handler can take, refused before any of them runs: malformed ids in the path,
    NUL characters, overlong parameters, integers past 64 bits."""
    for key in ("id", "vid"):
        value = request.path_params.get(key)
        if value is not None and not ID_RE.match(value):
            raise FHIRError.of(400, "invalid", f"'{value[:80]}' is not a valid FHIR {key} "
                               "(1-64 of A-Z a-z 0-9 - .)")
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise FHIRError.of(400, "invalid", "a search parameter contains a NUL character", name)
        if len(value) > MAX_PARAM:
            raise FHIRError.of(400, "too-long", f"the value of {name[:60]} is longer than "
                               f"{MAX_PARAM} characters", name[:60])
        if name in ("_count", "_before_seq", "_cursor") and value.isdigit() and \
                int(value) > MAX_INT:
            raise FHIRError.of(400, "invalid", f"{name} is out of range", name)
    vid = request.path_params.get("vid")
    if vid is not None and vid.isdigit() and int(vid) > MAX_INT:
        raise FHIRError.of(404, "not-found", "no such version")


def _version(etag: str | None) -> int | None:
    return bundles._version_of(etag, "If-Match") if etag else None


class FhirApi:
    def __init__(self, store: Store, governance: Governance, sc=None):
        self.store = store
        self.gov = governance
        self.sc = sc  # the whole application, for operations that span packages ($match)

    def base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/fhir"

    @staticmethod
    def version_of(etag: str | None) -> int | None:
        return _version(etag)

    def routes(self) -> list[Route]:
        h = self.handle
        return [
            Route("/fhir/metadata", h(self.metadata), methods=["GET"]),
            Route("/fhir/openapi.json", h(self.openapi), methods=["GET"]),
            Route("/fhir", h(self.system), methods=["GET", "POST"]),
            Route("/fhir/", h(self.system), methods=["GET", "POST"]),
            Route("/fhir/_search", h(self.system_search_post), methods=["POST"]),
            Route("/fhir/_history", h(self.history), methods=["GET"]),
            Route("/fhir/Patient/$match", h(self.match), methods=["POST"]),
            Route("/fhir/Patient/{id}/$everything", h(self.everything), methods=["GET", "POST"]),
            Route("/fhir/Patient/{id}/$summary", h(self.summary), methods=["GET"]),
            Route("/fhir/Observation/$lastn", h(self.lastn), methods=["GET"]),
            Route("/fhir/Subscription/{id}/$status", h(self.status), methods=["GET"]),
            Route("/fhir/{type}/$validate", h(self.validate), methods=["POST"]),
            Route("/fhir/{type}/{id}/$validate", h(self.validate), methods=["POST"]),
            Route("/fhir/{type}", h(self.type_level),
                  methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            Route("/fhir/{type}/_search", h(self.search_post), methods=["POST"]),
            Route("/fhir/{type}/_history", h(self.history), methods=["GET"]),
            Route("/fhir/{type}/{id}", h(self.instance),
                  methods=["GET", "PUT", "DELETE", "PATCH"]),
            Route("/fhir/{type}/{id}/_history", h(self.history), methods=["GET"]),
            Route("/fhir/{type}/{id}/_history/{vid}", h(self.vread), methods=["GET"]),
            Route("/fhir/Patient/{id}/{ctype}", h(self.compartment_search), methods=["GET"]),
        ]

    def handle(self, fn):
        """Read the body on the event loop, then run the (blocking, database-bound) handler in
        the thread pool so one slow query never stalls other requests.

        Content negotiation happens here, once, for every interaction: the answer's format
        (JSON, XML, or a Binary's raw content) from _format / Accept, and a body in FHIR XML --
        or a Binary's raw content -- becomes the FHIR JSON every handler reads.

        The one place a surprise becomes an answer: a FHIRError is its OperationOutcome, and
        anything else a 500 OperationOutcome (the connection kept), logged by type and place
        only -- an exception's message can quote patient data. The request's audit record
        (governance/request_audit.py) learns the reason."""

        async def endpoint(request: Request) -> Response:
            record = current_request.get()
            fmt = JSON
            try:
                path = request.path_params
                fmt = response_format(request, binary=request.method == "GET" and path.get(
                    "type") == "Binary" and "id" in path)
                body = await request.body()
                _check_request(request)

                def run() -> Response:
                    raw, converted = request_body(request, body)
                    if converted:
                        _declare_fhir_json(request)
                    return negotiated(fn(request, raw), fmt)

                return await run_in_threadpool(run)
            except FHIRError as e:
                if record is not None:
                    record.reason = str(e)[:1000]
                return negotiated(error_response(e), fmt)
            except Exception as e:  # noqa: BLE001 - the last line of defence, see docstring
                log_failure(log, f"{request.method} {fn.__name__}", e)
                if record is not None:
                    record.reason = f"unexpected {type(e).__name__}"
                return negotiated(error_response(FHIRError(500, [Issue(
                    "exception", "the server could not complete this request; it has been "
                    "logged (without its data) for the operators")])), fmt)

        return endpoint

    # ------------------------------------------------------------------ handlers
    def metadata(self, request: Request, raw: bytes) -> Response:
        return fhir_response(capability_statement(self.store.indexer, self.base(request)))

    def openapi(self, request: Request, raw: bytes) -> Response:
        return Response(orjson.dumps(openapi_op.document(self.store.indexer, self.base(request))),
                        media_type="application/json")

    def system(self, request: Request, raw: bytes) -> Response:
        if request.method == "GET":
            return self._search(request, None, list(request.query_params.multi_items()))
        access = self.gov.authenticate(request)
        body = _body(raw)
        if body.get("resourceType") != "Bundle":
            raise FHIRError.of(400, "invalid", "POST to the base URL takes a batch or transaction Bundle")
        writer = bundles.GovernedWriter(self.gov, access)
        btype = body.get("type")
        prefer = prefer_return(request.headers)
        if btype == "batch":
            result = bundles.batch(writer, body, self.base(request),
                                   reader=lambda url: self._batch_read(access, url),
                                   prefer=prefer)
        elif btype == "transaction":
            result = bundles.transaction(writer, body, self.base(request), prefer=prefer)
        else:
            raise FHIRError.of(400, "invalid", f"Bundle.type must be transaction or batch, not "
                               f"{str(btype)[:40]}", "Bundle.type")
        return fhir_response(result)

    def _batch_read(self, access: Access, url: str) -> dict:
        path, _, query = url.partition("?")
        parts = [p for p in path.split("/") if p]
        if not parts or len(parts) > 2 or parts[0] not in resource_types() or (
                len(parts) == 2 and not ID_RE.match(parts[1])):
            raise FHIRError.of(400, "not-supported", f"a batch GET takes Type/id or Type?query, "
                               f"not '{url[:80]}'")
        if len(parts) == 2:
            s = self.gov.read(access, parts[0], parts[1])
            return s.json()
        page = self.gov.search(access, parts[0], parse_qsl(query))
        return self._searchset(page, "", parts[0], [])

    def type_level(self, request: Request, raw: bytes) -> Response:
        rtype = request.path_params["type"]
        _check_type(rtype)
        if request.method == "GET":
            return self._search(request, rtype, list(request.query_params.multi_items()))
        if request.method == "PATCH":
            return patch_op.handle(self, request, raw)
        access = self.gov.authenticate(request)
        query = request.url.query
        # Conditional writes match under the caller's policy (Governance.match), inside the
        # write's own transaction: what the caller may not see is no match.
        if request.method == "DELETE":
            if not query:
                raise FHIRError.of(400, "invalid", "conditional delete needs search parameters")
            with self.store.begin_write() as conn, conn.begin():
                ids = self.gov.match(access, rtype, query, conn)
                if len(ids) > 1:
                    raise FHIRError.of(412, "multiple-matches",
                                       "the conditions match several resources")
                if ids:
                    self.gov.write(access, [WriteOp("DELETE", rtype, ids[0], None)], conn)
                else:
                    self.gov.audit(access, "delete", "0", entity=f"{rtype} (conditional: no match)",
                                   conn=conn)
            return Response(status_code=204)
        body = _body(raw)
        if body.get("resourceType") != rtype:
            raise FHIRError.of(400, "invalid", f"resourceType must be {rtype}", "resourceType")
        if request.method == "PUT":
            # Conditional update: PUT Type?query.
            if not query:
                raise FHIRError.of(400, "invalid", "PUT needs an id or search parameters")
            with self.store.begin_write() as conn, conn.begin():
                ids = self.gov.match(access, rtype, query, conn)
                if len(ids) > 1:
                    raise FHIRError.of(412, "multiple-matches",
                                       "the conditions match several resources")
                if_match = _version(request.headers.get("if-match"))
                if not ids and if_match is not None:
                    raise FHIRError.of(412, "conflict", "no resource matches the conditions, so "
                                       "there is no version for If-Match to check")
                given = body.get("id")
                if given is not None and not (isinstance(given, str) and ID_RE.match(given)):
                    raise FHIRError.of(400, "value", "id must be 1-64 of A-Z a-z 0-9 - .", "id")
                rid = ids[0] if ids else (given or str(uuid.uuid4()))
                result = self.gov.write(access, [WriteOp("PUT", rtype, rid, body, if_match)],
                                        conn)[0]
            return written_response(request, result.stored, 201 if result.created else 200,
                                    "created" if result.created else "updated")
        # POST: create, or conditional create with If-None-Exist.
        cond = request.headers.get("if-none-exist")
        with self.store.begin_write() as conn, conn.begin():
            if cond:
                ids = self.gov.match(access, rtype, cond.lstrip("?"), conn)
                if len(ids) > 1:
                    raise FHIRError.of(412, "multiple-matches",
                                       "If-None-Exist matches several resources")
                if ids:
                    s = self.store.read(rtype, ids[0], access.policy, conn)
                    self.gov.audit(access, "read", "0", entity=f"{rtype}/{s.id}",
                                   reason="If-None-Exist matched an existing resource", conn=conn)
                    return written_response(request, s, 200, "already exists (If-None-Exist)")
            result = self.gov.write(access, [WriteOp("POST", rtype, str(uuid.uuid4()), body)],
                                    conn)[0]
        return written_response(request, result.stored, 201, "created")

    def system_search_post(self, request: Request, raw: bytes) -> Response:
        form = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        return self._search(request, None, list(request.query_params.multi_items()) + form)

    def search_post(self, request: Request, raw: bytes) -> Response:
        rtype = request.path_params["type"]
        _check_type(rtype)
        form = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        params = list(request.query_params.multi_items()) + form
        return self._search(request, rtype, params)

    def compartment_search(self, request: Request, raw: bytes) -> Response:
        ctype = request.path_params["ctype"]
        _check_type(ctype)
        return self._search(request, ctype, list(request.query_params.multi_items()),
                                  compartment=request.path_params["id"])

    def _search(self, request: Request, rtype: str | None, params,
                compartment: str | None = None):
        access = self.gov.authenticate(request)
        lenient = "handling=lenient" in (request.headers.get("prefer") or "")
        if rtype is None:
            rtype, params = _system_params(params)
        page = self.gov.search(access, rtype, params, lenient=lenient, compartment=compartment)
        if rtype is None:
            path = self.base(request)
        elif compartment is None:
            path = f"{self.base(request)}/{rtype}"
        else:
            path = f"{self.base(request)}/Patient/{compartment}/{rtype}"
        return fhir_response(self._searchset(page, path, rtype, params))

    def _searchset(self, page, path: str, rtype: str, params) -> dict:
        req = page.request
        base = (path.rsplit("/", 1)[0] if rtype else path) if path else ""
        entries = [{"fullUrl": f"{base}/{s.type}/{s.id}" if base else f"{s.type}/{s.id}",
                    "resource": _shape(s, req), "search": {"mode": "match"}}
                   for s in page.matches]
        entries += [{"fullUrl": f"{base}/{s.type}/{s.id}" if base else f"{s.type}/{s.id}",
                     "resource": _shape(s, req), "search": {"mode": "include"}}
                    for s in page.includes]
        warnings = page.warnings + page.withheld_notes
        if warnings:
            entries.append({"resource": operation_outcome(warnings), "search": {"mode": "outcome"}})
        return searchset(path, req.echo, entries, page)

    def instance(self, request: Request, raw: bytes) -> Response:
        rtype, rid = request.path_params["type"], request.path_params["id"]
        _check_type(rtype)
        access = self.gov.authenticate(request)
        if request.method == "GET":
            s = self.gov.read(access, rtype, rid)
            return not_modified(request, s) or fhir_response(s.content, 200,
                                                             _resource_headers(s))
        if request.method == "PATCH":
            return patch_op.handle(self, request, raw)
        if request.method == "DELETE":
            result = self.gov.write(access, [WriteOp("DELETE", rtype, rid, None)])[0]
            return Response(status_code=204, headers={"ETag": result.stored.etag})
        body = _body(raw)
        if body.get("resourceType") != rtype:
            raise FHIRError.of(400, "invalid", f"resourceType must be {rtype}", "resourceType")
        if body.get("id") != rid:
            raise FHIRError.of(400, "invalid", f"the resource id must be '{rid}' (the URL's id)", "id")
        result = self.gov.write(access, [WriteOp("PUT", rtype, rid, body,
                                                 _version(request.headers.get("if-match")))])[0]
        return written_response(request, result.stored, 201 if result.created else 200,
                                "created" if result.created else "updated")

    def everything(self, request: Request, raw: bytes) -> Response:
        return everything_op.handle(self, request)

    def match(self, request: Request, raw: bytes) -> Response:
        return match_op.handle(self, request, raw)

    def lastn(self, request: Request, raw: bytes) -> Response:
        return lastn_op.handle(self, request)

    def summary(self, request: Request, raw: bytes) -> Response:
        return summary_op.handle(self, request)

    def status(self, request: Request, raw: bytes) -> Response:
        return status_op.handle(self, request)

    def validate(self, request: Request, raw: bytes) -> Response:
        _check_type(request.path_params["type"])
        return validate_op.handle(self, request, raw)

    def vread(self, request: Request, raw: bytes) -> Response:
        rtype, rid, vid = (request.path_params[k] for k in ("type", "id", "vid"))
        _check_type(rtype)
        if not vid.isdigit():
            raise FHIRError.of(400, "invalid", "version ids are whole numbers")
        access = self.gov.authenticate(request)
        s = self.gov.vread(access, rtype, rid, int(vid))
        return not_modified(request, s) or fhir_response(s.content, 200, _resource_headers(s))

    def history(self, request: Request, raw: bytes) -> Response:
        rtype = request.path_params.get("type")
        rid = request.path_params.get("id")
        if rtype:
            _check_type(rtype)
        access = self.gov.authenticate(request)
        q = request.query_params
        count = int(q["_count"]) if q.get("_count", "").isdigit() else 50
        before = int(q["_before_seq"]) if q.get("_before_seq", "").isdigit() else None
        since = _since(q.get("_since"))
        rows, nxt = self.gov.history(access, rtype, rid, since, min(count, 1000), before)
        base = self.base(request)
        entries = []
        for method, s, t in rows:
            e = {"fullUrl": f"{base}/{t}/{s.id}",
                 "request": {"method": method, "url": f"{t}/{s.id}" if method != "POST" else t},
                 "response": {"status": "410 Gone" if s.deleted else "200 OK",
                              "etag": s.etag, "lastModified": instant(s.last_updated)}}
            if not s.deleted:
                e["resource"] = orjson.Fragment(s.content)
            entries.append(e)
        path = request.url.path
        links = [{"relation": "self", "url": str(request.url)}]
        if nxt:
            qs = [(k, v) for k, v in q.multi_items() if k != "_before_seq"] + [("_before_seq", str(nxt))]
            links.append({"relation": "next", "url": f"{str(request.base_url).rstrip('/')}{path}?{urlencode(qs)}"})
        return fhir_response({"resourceType": "Bundle", "type": "history", "link": links,
                              "entry": entries})



def _declare_fhir_json(request: Request) -> None:
    """After request_body converted the body (XML, raw Binary), its Content-Type says what the
    handlers now read: FHIR JSON."""
    request.scope["headers"] = [(k, v) for k, v in request.scope["headers"]
                                if k != b"content-type"] + [(b"content-type", FHIR_JSON.encode())]
    request.__dict__.pop("_headers", None)


def _system_params(params) -> tuple[str | None, list]:
    """System-level search: `_type` must name resource types (each checked here, so the
    refusal names it); the store searches across them with the common parameters. One type
    is that type's own search, with all of its parameters."""
    types = []
    for name, value in params:
        if name == "_type":
            for t in value.split(","):
                if t.strip() not in resource_types():
                    raise FHIRError.of(400, "invalid", f"_type: '{t.strip()[:60]}' is not a "
                                       "FHIR R4 resource type", "_type")
                types.append(t.strip())
    if len(set(types)) == 1:
        return types[0], [(k, v) for k, v in params if k != "_type"]
    return None, params


def _shape(s: Stored, req) -> object:
    """_summary / _elements shaping; untouched resources are passed through without re-parsing."""
    if req.summary in (None, "false") and not req.elements:
        return orjson.Fragment(s.content)
    res = s.json()
    keep = {"resourceType", "id", "meta"}
    if req.summary == "text":
        keep |= {"text"}
        res = {k: v for k, v in res.items() if k in keep}
    elif req.summary == "data":
        res.pop("text", None)
    if req.elements:
        res = {k: v for k, v in res.items() if k in keep or k in req.elements}
    meta = dict(res.get("meta") or {})
    meta["tag"] = list(meta.get("tag") or []) + [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}]
    res["meta"] = meta
    return res


__all__ = ["FhirApi", "error_response", "fhir_response"]
