"""batch and transaction Bundles.

A transaction is one database transaction: every entry is checked (validation, urn:uuid and
conditional references, If-Match, conditional create/update) before anything is written, and any
failure rolls the whole Bundle back with an OperationOutcome naming the entry.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass

import orjson

from ..fhir.outcome import FHIRError, Issue, operation_outcome
from ..fhir.validation import ID_RE, resource_types
from ..store.repository import PermitAll, Store, Stored, WriteOp, WriteResult, instant

# Processing order the FHIR spec gives for transactions.
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: dict | None
    if_none_exist: str | None
    if_match: str | None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def parse_entries(bundle: dict) -> list[Entry]:
    out = []
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FHIRError.of(400, "structure", "Bundle.entry must be an array", "Bundle.entry")
    for n, e in enumerate(entries):
        where = f"Bundle.entry[{n}]"
        if not isinstance(e, dict):
            raise FHIRError.of(400, "structure", "entry must be an object", where)
        req = e.get("request")
        if not isinstance(req, dict) or not req.get("method") or not req.get("url"):
            raise FHIRError.of(400, "required", "entry.request.method and url are required",
                               f"{where}.request")
        method = str(req["method"]).upper()
        if method not in ORDER:
            raise FHIRError.of(400, "not-supported", f"method {method} is not supported",
                               f"{where}.request.method")
        res = e.get("resource")
        if method in ("POST", "PUT", "PATCH") and not isinstance(res, dict):
            raise FHIRError.of(400, "required", f"{method} needs a resource", f"{where}.resource")
        out.append(Entry(n, method, str(req["url"]).lstrip("/"), e.get("fullUrl"), res,
                         req.get("ifNoneExist"), req.get("ifMatch")))
    return out


def _version_of(etag: str | None, where: str) -> int | None:
    if etag is None:
        return None
    v = etag.strip()
    v = v.removeprefix("W/")
    v = v.strip('"')
    if not v.isdigit():
        raise FHIRError.of(400, "invalid", f"If-Match '{etag}' is not a version ETag", where)
    return int(v)


def _split_url(url: str, where: str) -> tuple[str, str | None, str | None]:
    """'Patient/1' -> (Patient, 1, None); 'Patient?x=y' -> (Patient, None, 'x=y')."""
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in resource_types():
        raise FHIRError.of(400, "invalid", f"'{url}' does not name a resource type",
                           f"{where}.request.url")
    return parts[0], (parts[1] if len(parts) > 1 else None), (query or None)


# (a JSON string: any character but a quote or a backslash, or a backslash escape)
REFERENCE = re.compile(rb'"reference":"((?:[^"\\]|\\.)*)"')


def resolve_references(resource: dict, mapping: dict[str, str], unresolved: list[str],
                       conditional: list[str], matched: dict[str, str] | None = None) -> dict:
    """`resource` with every Reference.reference found in `mapping` replaced; references to
    bundle-local ids missing from it go to `unresolved`, conditional ones ("Type?query") to
    `conditional` -- unless `matched` (conditional references already looked up) has them.
    Runs on every resource of every Bundle, so it works on the serialised JSON (one regex pass)
    rather than walking the tree in Python."""
    raw = orjson.dumps(resource)
    if b'"reference"' not in raw:
        return resource
    swapped = False

    def swap(m: re.Match) -> bytes:
        nonlocal swapped
        text = m.group(1)
        # JSON string escapes only when there is a backslash; else the bytes are the value
        value = orjson.loads(b'"' + text + b'"') if b"\\" in text else text.decode()
        target = mapping.get(value)
        if target is None and matched:
            target = matched.get(value)
        if target is not None:
            swapped = True
            return b'"reference":' + orjson.dumps(target)
        if value.startswith(("urn:uuid:", "urn:oid:")):
            unresolved.append(value)
        elif "?" in value and "/" not in value.split("?", 1)[0]:
            conditional.append(value)
        return m.group(0)

    out = REFERENCE.sub(swap, raw)
    # Nothing to rewrite (references already Type/id, as most feeds send them): the resource
    # as it was, not a parse of its own serialisation.
    return orjson.loads(out) if swapped else resource


class Writer:
    """How a Bundle's entries are matched and written. The system's own (`sharedcare load`,
    feeds' mapped messages) sees and writes everything as the source organisation; the FHIR
    API passes a `GovernedWriter`, so a person's Bundle goes through the governance decision."""

    def __init__(self, store: Store, source_org: str | None = None):
        self.store = store
        self.source_org = source_org

    def match(self, rtype: str, query: str, conn, limit: int = 2) -> list[str]:
        return self.store.match_ids(rtype, query, conn, limit=limit, policy=PermitAll())

    def read(self, rtype: str, rid: str, conn) -> Stored:
        """The current version a PATCH entry applies to."""
        return self.store.read(rtype, rid, PermitAll(), conn)

    def write(self, ops: list[WriteOp], conn, entity: str | None = None) -> list[WriteResult]:
        return self.store.write(ops, conn, self.source_org)

    def refused(self, entry: Entry, err: FHIRError) -> None:
        """A batch entry that failed on its own (its transaction already rolled back)."""

    def answered(self, entry: Entry, response: dict, conn) -> None:
        """A batch entry that wrote nothing (a conditional create that matched, a delete of
        nothing): still one access."""


class GovernedWriter(Writer):
    def __init__(self, gov, access):
        super().__init__(gov.store, access.ods)
        self.gov = gov
        self.access = access

    def match(self, rtype: str, query: str, conn, limit: int = 2) -> list[str]:
        return self.gov.match(self.access, rtype, query, conn, limit)

    def read(self, rtype: str, rid: str, conn) -> Stored:
        # As the caller sees the store: a hidden resource is a missing one (404).
        return self.store.read(rtype, rid, self.access.policy, conn)

    def write(self, ops: list[WriteOp], conn, entity: str | None = None) -> list[WriteResult]:
        return self.gov.write(self.access, ops, conn, entity=entity)

    def answered(self, entry: Entry, response: dict, conn) -> None:
        location = (response.get("response") or {}).get("location")
        self.gov.audit(self.access, "read" if location else "delete", "0",
                       entity=location or f"{entry.where} {entry.url.split('?')[0]} (no match)",
                       conn=conn)

    def refused(self, entry: Entry, err: FHIRError) -> None:
        self.gov.audit(self.access, {"POST": "create", "PUT": "update", "PATCH": "update",
                                     "DELETE": "delete"}.get(
            entry.method, "read"), "4", entity=f"{entry.where} {entry.url.split('?')[0]}"[:400],
            reason=str(err)[:1000])


def process(store: Store, bundle: dict, base_url: str, source_org: str | None = None) -> dict:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FHIRError.of(400, "invalid", "expected a Bundle")
    btype = bundle.get("type")
    writer = Writer(store, source_org)
    if btype == "transaction":
        return transaction(writer, bundle, base_url)
    if btype == "batch":
        return batch(writer, bundle, base_url)
    raise FHIRError.of(400, "invalid", f"Bundle.type must be transaction or batch, not {btype}",
                       "Bundle.type")


def transaction(writer: Writer, bundle: dict, base_url: str, prefer: str | None = None) -> dict:
    """`prefer` is the request's `Prefer: return=`: `representation` puts each written
    resource in its entry, `OperationOutcome` an outcome in each response."""
    entries = parse_entries(bundle)
    with writer.store.begin_write() as conn, conn.begin():
        ops, op_entries, responses = plan_writes(writer.store, entries, conn, writer.match,
                                                 writer.read)
        results = writer.write(ops, conn, f"Bundle ({len(entries)} entries)") if ops else []
    for index, result in zip(op_entries, results, strict=True):
        responses[index] = _response_entry(result, base_url, prefer)
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [responses[e.index] for e in entries]}


def plan_writes(store: Store, entries: list[Entry], conn, match=None, read=None
                ) -> tuple[list[WriteOp], list[int], dict[int, dict]]:
    """Turn entries into write operations: ids assigned, references resolved, conditions met.

    `match(rtype, query, conn, limit)` finds conditional matches and `read(rtype, id, conn)`
    the version a PATCH entry applies to (the caller's view of the store; the system's own view
    when not given).
    Returns the operations, the entry index of each, and the ready responses of entries that
    need no write (a conditional create that matched, a delete of nothing).
    """
    match = match or Writer(store).match
    read = read or Writer(store).read
    mapping: dict[str, str] = {}
    ops: list[WriteOp] = []
    op_entries: list[int] = []
    responses: dict[int, dict] = {}
    ordered = sorted(entries, key=lambda e: (ORDER[e.method], e.index))
    # Pass 1: decide every entry's target id, so all urn:uuid references can be rewritten.
    targets: dict[int, tuple[str, str, str]] = {}  # index -> (method, type, id)
    for e in ordered:
        if e.method in ("GET", "HEAD"):
            raise FHIRError.of(400, "not-supported", "GET entries are only allowed in a batch",
                               f"{e.where}.request.method")
        rtype, rid, query = _split_url(e.url, e.where)
        if e.method == "PATCH":
            if query and not rid:
                found = match(rtype, query, conn)
                if len(found) != 1:
                    raise FHIRError.of(412 if found else 404, "not-found" if not found else
                                       "multiple-matches", f"conditional patch '{e.url}' "
                                       f"matches {len(found)} resources (exactly one is "
                                       "required)", f"{e.where}.request.url")
                rid = found[0]
            if not rid:
                raise FHIRError.of(400, "invalid", "PATCH needs Type/id or Type?query",
                                   f"{e.where}.request.url")
            targets[e.index] = ("PATCH", rtype, rid)
            if e.full_url:
                mapping[e.full_url] = f"{rtype}/{rid}"
            continue
        if e.resource is not None and e.resource.get("resourceType") != rtype:
            raise FHIRError.of(400, "invalid",
                               f"resourceType {e.resource.get('resourceType')!r} does not match "
                               f"request.url {e.url!r}", f"{e.where}.resource.resourceType")
        if e.method == "POST":
            existing = match(rtype, e.if_none_exist, conn) if e.if_none_exist else []
            if len(existing) > 1:
                raise FHIRError.of(412, "multiple-matches",
                                   f"ifNoneExist '{e.if_none_exist}' matches several {rtype}",
                                   f"{e.where}.request.ifNoneExist")
            if existing:
                targets[e.index] = ("NOOP", rtype, existing[0])
            else:
                targets[e.index] = ("POST", rtype, str(uuid.uuid4()))
        elif e.method == "PUT":
            if query:
                found = match(rtype, query, conn)
                if len(found) > 1:
                    raise FHIRError.of(412, "multiple-matches",
                                       f"conditional update '{e.url}' matches several resources",
                                       f"{e.where}.request.url")
                given = e.resource.get("id")
                if given is not None and not (isinstance(given, str) and ID_RE.match(given)):
                    raise FHIRError.of(400, "value", "id must be 1-64 of A-Z a-z 0-9 - .",
                                       f"{e.where}.resource.id")
                rid = found[0] if found else (given or str(uuid.uuid4()))
            if not rid:
                raise FHIRError.of(400, "invalid", "PUT needs Type/id or Type?query",
                                   f"{e.where}.request.url")
            if e.resource.get("id") not in (None, rid) and not query:
                raise FHIRError.of(400, "invalid", f"resource id does not match {e.url}",
                                   f"{e.where}.resource.id")
            targets[e.index] = ("PUT", rtype, rid)
        elif e.method == "DELETE":
            if query:
                found = match(rtype, query, conn)
                if len(found) > 1:
                    raise FHIRError.of(412, "multiple-matches",
                                       f"conditional delete '{e.url}' matches several resources",
                                       f"{e.where}.request.url")
                rid = found[0] if found else None
            targets[e.index] = ("DELETE", rtype, rid or "")
        else:
            raise FHIRError.of(400, "not-supported", f"{e.method} is not supported in a Bundle",
                               f"{e.where}.request.method")
        if e.full_url:
            _, rt, i = targets[e.index]
            mapping[e.full_url] = f"{rt}/{i}"
    # Pass 2: rewrite references, resolve conditional references, build write operations.
    # A conditional reference is looked up once a Bundle (Synthea names the same Practitioner
    # and Organization in most entries) and then rewritten in the same pass as the urn:uuid
    # ones: nothing is written before this pass ends, so the answer cannot change within it.
    matched: dict[str, str] = {}
    for e in ordered:
        method, rtype, rid = targets[e.index]
        if method == "NOOP":
            responses[e.index] = {"response": {"status": "200 OK", "location": f"{rtype}/{rid}"}}
            continue
        if method == "DELETE" and not rid:
            responses[e.index] = {"response": {"status": "204 No Content"}}
            continue
        if method == "PATCH":
            ops.append(_patched(read, e, rtype, rid, mapping, conn))
            op_entries.append(e.index)
            continue
        res = None
        if e.resource is not None:
            unresolved: list[str] = []
            conditional: list[str] = []
            res = resolve_references(e.resource, mapping, unresolved, conditional, matched)
            if unresolved:
                raise FHIRError.of(400, "invalid",
                                   f"reference {unresolved[0]} does not resolve to any entry "
                                   "in this Bundle", f"{e.where}.resource")
            if conditional:
                cmap = {}
                for ref in conditional:
                    if ref not in matched:
                        ctype, _, cq = ref.partition("?")
                        found = match(ctype, cq, conn)
                        if len(found) != 1:
                            raise FHIRError.of(
                                412 if found else 400, "invalid",
                                f"conditional reference {ref} matches {len(found)} resources "
                                "(exactly one is required)", f"{e.where}.resource")
                        matched[ref] = f"{ctype}/{found[0]}"
                    cmap[ref] = matched[ref]
                res = resolve_references(res, cmap, [], [])
        ops.append(WriteOp(method, rtype, rid, res, _version_of(e.if_match, e.where),
                           f"{e.where}.resource"))
        op_entries.append(e.index)
    return ops, op_entries, responses


def _patched(read, e: Entry, rtype: str, rid: str, mapping: dict[str, str], conn) -> WriteOp:
    """A PATCH entry as the update it makes. Its resource is a FHIRPath Patch (Parameters) or a
    JSON Patch carried in a Binary (contentType application/json-patch+json), as FHIR says."""
    from .operations import patch as patching

    current = read(rtype, rid, conn)
    if_match = _version_of(e.if_match, f"{e.where}.request.ifMatch")
    if if_match is not None and if_match != current.version:
        raise FHIRError.of(412, "conflict", f"{rtype}/{rid} is at version {current.version}, "
                           f"not {if_match} (ifMatch)", f"{e.where}.request.ifMatch")
    body = e.resource or {}
    try:
        if body.get("resourceType") == "Binary":
            if body.get("contentType") != patching.JSON_PATCH:
                raise FHIRError.of(400, "invalid", "a PATCH entry's Binary must have "
                                   f"contentType {patching.JSON_PATCH}", "contentType")
            try:
                document = orjson.loads(base64.b64decode(body.get("data") or "", validate=True))
            except (ValueError, orjson.JSONDecodeError):
                raise FHIRError.of(400, "structure", "the Binary's data is not base64 of a JSON "
                                   "Patch", "data") from None
            if not isinstance(document, list):
                raise FHIRError.of(400, "structure", "a JSON Patch is an array of operations",
                                   "data")
            after = patching.apply_json_patch(current.json(), document)
        elif body.get("resourceType") == "Parameters":
            after = patching.apply_fhirpath_patch(current.json(), patching.checked_parameters(
                body))
        else:
            raise FHIRError.of(400, "invalid", "a PATCH entry's resource is a Parameters "
                               "(FHIRPath Patch) or a Binary holding a JSON Patch",
                               "resourceType")
        patching.check_result(after, rtype, rid)
    except FHIRError as err:
        raise FHIRError(err.status, [Issue(i.code, i.diagnostics, f"{e.where}.resource"
                                           + (f".{i.expression}" if i.expression else ""),
                                           i.severity) for i in err.issues]) from None
    unresolved: list[str] = []
    after = resolve_references(after, mapping, unresolved, [])
    if unresolved:
        raise FHIRError.of(400, "invalid", f"reference {unresolved[0]} does not resolve to any "
                           "entry in this Bundle", f"{e.where}.resource")
    return WriteOp("PUT", rtype, rid, after, current.version, f"{e.where}.resource")


def _response_entry(r: WriteResult, base_url: str, prefer: str | None = None) -> dict:
    s = r.stored
    if s.deleted:
        out = {"response": {"status": "204 No Content"}}
        if prefer == "OperationOutcome":
            out["response"]["outcome"] = operation_outcome([Issue(
                "informational", f"{s.type}/{s.id} deleted", severity="information")])
        return out
    status = "201 Created" if r.created else "200 OK"
    out = {
        "fullUrl": f"{base_url}/{s.type}/{s.id}",
        "response": {
            "status": status,
            "location": f"{s.type}/{s.id}/_history/{s.version}",
            "etag": s.etag,
            "lastModified": instant(s.last_updated),
        },
    }
    if prefer == "representation":
        out["resource"] = orjson.Fragment(s.content)
    elif prefer == "OperationOutcome":
        out["response"]["outcome"] = operation_outcome([Issue(
            "informational", f"{s.type}/{s.id} {'created' if r.created else 'updated'}: now "
            f"version {s.version}", severity="information")])
    return out


def batch(writer: Writer, bundle: dict, base_url: str, reader=None,
          prefer: str | None = None) -> dict:
    """Each entry on its own: a failure becomes that entry's OperationOutcome, not the Bundle's."""
    entries = parse_entries(bundle)
    out = []
    for e in entries:
        try:
            if e.method in ("GET", "HEAD"):
                if reader is None:
                    raise FHIRError.of(400, "not-supported", "GET entries are not supported here")
                out.append({"resource": reader(e.url), "response": {"status": "200 OK"}})
                continue
            with writer.store.begin_write() as conn, conn.begin():
                ops, _, responses = plan_writes(writer.store, [e], conn, writer.match,
                                                writer.read)
                results = writer.write(ops, conn) if ops else []
                if not results:
                    writer.answered(e, responses[e.index], conn)
            out.append(_response_entry(results[0], base_url, prefer) if results
                       else responses[e.index])
        except FHIRError as err:
            writer.refused(e, err)
            issues = [Issue(i.code, i.diagnostics, i.expression) for i in err.issues]
            out.append({"response": {"status": str(err.status),
                                     "outcome": operation_outcome(issues)}})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}
