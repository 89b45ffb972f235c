"""HTTP pieces every FHIR interaction shares: FHIR JSON responses, content negotiation (FHIR
JSON or XML, and raw Binary content), the headers of a stored resource, `Prefer: return=` on
writes, and conditional reads (`If-None-Match`, `If-Modified-Since`)."""

from __future__ import annotations

import base64
import binascii
import os
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

import orjson
from starlette.responses import Response

from ...fhir.outcome import FHIRError, Issue, operation_outcome
from ...fhir.validation import ID_RE
from ...fhir.xml import resource_to_xml, xml_to_resource
from ...store.repository import Stored, instant

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
RETURN_PREFERENCES = ("minimal", "representation", "OperationOutcome")


def fhir_response(body, status: int = 200, headers: dict | None = None) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(content, status, headers=headers, media_type=FHIR_JSON)


def error_response(err: FHIRError) -> Response:
    return fhir_response(err.outcome(), err.status, err.headers)


def resource_headers(s: Stored) -> dict:
    return {"ETag": s.etag, "Last-Modified": instant(s.last_updated),
            "Location": f"{s.type}/{s.id}/_history/{s.version}"}


def prefer_return(headers) -> str | None:
    """The `return` preference of a `Prefer` header (RFC 7240; FHIR's minimal, representation,
    OperationOutcome), or None. Unknown preferences are ignored, as RFC 7240 asks."""
    for part in (headers.get("prefer") or "").split(","):
        for token in part.split(";"):
            key, _, value = token.strip().partition("=")
            if key.strip().lower() == "return":
                value = value.strip().strip('"')
                for known in RETURN_PREFERENCES:
                    if value.lower() == known.lower():
                        return known
    return None


def written_response(request, s: Stored, status: int, what: str) -> Response:
    """The answer to a create, update or patch, shaped by `Prefer: return=`: the resource
    (the default), nothing, or an OperationOutcome saying what was done."""
    headers = resource_headers(s)
    pref = prefer_return(request.headers)
    if pref == "minimal":
        return Response(status_code=status, headers=headers)
    if pref == "OperationOutcome":
        return fhir_response(write_outcome(s, what), status, headers)
    return fhir_response(s.content, status, headers)


def write_outcome(s: Stored, what: str) -> dict:
    return operation_outcome([Issue("informational", f"{s.type}/{s.id} {what}: now version "
                                    f"{s.version}", severity="information")])


# ------------------------------------------------------------------ content negotiation
# http://hl7.org/fhir/R4/http.html#mime-type: _format overrides Accept; these _format values and
# media types mean the two formats (application/json+fhir and xml+fhir are the pre-R4 types).
JSON, XML, RAW = "json", "xml", "raw"
_KINDS = {
    "json": JSON, "application/json": JSON, "application/fhir+json": JSON,
    "application/json+fhir": JSON, "text/json": JSON,
    "xml": XML, "text/xml": XML, "application/xml": XML, "application/fhir+xml": XML,
    "application/xml+fhir": XML,
}
_ANY = ("*/*", "application/*")
# Largest Binary body taken (bytes of content); SHAREDCARE_MAX_BINARY_BYTES overrides.
MAX_BINARY = int(os.environ.get("SHAREDCARE_MAX_BINARY_BYTES", str(20 * 1024 * 1024)))
# Raw content is a partner's file: never sniffed, never run as a page of this site.
RAW_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


def _media(value: str) -> str:
    # a '+' in a query string arrives as a space: _format=application/fhir+xml
    return value.split(";")[0].strip().lower().replace(" ", "+")


def format_of(media_type: str | None) -> str | None:
    """json or xml for a FHIR media type or _format value, else None."""
    return _KINDS.get(_media(media_type or ""))


def _accepted(header: str) -> list[str]:
    """The media ranges of an Accept header, best first (q-values; ties keep their order);
    q=0 means 'not this'."""
    ranked = []
    for i, part in enumerate(header.split(",")):
        media, *params = part.split(";")
        q = 1.0
        for p in params:
            key, _, value = p.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media.strip() and q > 0:
            ranked.append((-q, i, _media(media)))
    return [m for _, _, m in sorted(ranked)]


def response_format(request, binary: bool = False) -> str:
    """The format to answer in: json or xml, or raw -- the content itself -- when `binary` (a
    Binary read) and the client asked for something other than FHIR (binary.html).

    `_format` overrides Accept. Without either (or with */*), a FHIR answer is in the format of
    the request's body (XML in, XML out), else JSON, and a Binary is its raw content. An Accept
    that names only formats the server cannot give is a 406; so is an unknown _format."""
    fmt = request.query_params.get("_format")
    if fmt:
        kind = format_of(fmt)
        if kind is None:
            raise FHIRError.of(406, "not-supported", f"_format '{fmt[:60]}' is not supported: "
                               "use json or xml (or application/fhir+json, "
                               "application/fhir+xml)", "_format")
        return kind
    default = RAW if binary else (format_of(request.headers.get("content-type")) or JSON)
    accept = request.headers.get("accept")
    if not accept or not accept.strip():
        return default
    for media in _accepted(accept):
        kind = format_of(media)
        if kind:
            return kind
        if media in _ANY or binary:
            return default
    raise FHIRError.of(406, "not-supported", f"cannot answer in {accept[:80]}: this server "
                       f"speaks {FHIR_JSON} and {FHIR_XML}", "Accept")


def negotiated(response: Response, fmt: str) -> Response:
    """A FHIR JSON response in the negotiated format: unchanged for JSON, converted to FHIR XML,
    or -- raw, for a Binary read -- the Binary's own content with its content type."""
    if fmt == JSON or response.media_type != FHIR_JSON or not response.body:
        return response
    resource = orjson.loads(response.body)
    headers = {k: v for k, v in response.headers.items()
               if k not in ("content-length", "content-type")}
    if fmt == RAW:
        if response.status_code != 200 or resource.get("resourceType") != "Binary":
            return response
        return binary_content(resource, headers)
    return Response(resource_to_xml(resource), response.status_code, headers=headers,
                    media_type=f"{FHIR_XML}; charset=utf-8")


def binary_content(binary: dict, headers: dict) -> Response:
    """A Binary as itself: its bytes, its contentType, and its securityContext as the
    X-Security-Context header (http.html#binary)."""
    try:
        data = base64.b64decode(binary.get("data") or "", validate=False)
    except (binascii.Error, ValueError):
        raise FHIRError.of(500, "exception", "the stored Binary's data is not base64") from None
    headers = {**headers, **RAW_HEADERS}
    ref = (binary.get("securityContext") or {}).get("reference")
    if ref:
        headers["X-Security-Context"] = ref
    return Response(data, 200, headers=headers,
                    media_type=binary.get("contentType") or "application/octet-stream")


def request_body(request, raw: bytes) -> tuple[bytes, bool]:
    """The request body as FHIR JSON, whatever the client sent, and whether it was converted:
    FHIR XML (by its Content-Type) converted, and -- for a Binary create or update -- any other
    content type stored as the Binary's content (binary.html; X-Security-Context sets
    securityContext). Other bodies (JSON, JSON Patch, form posts) are passed through."""
    media = _media(request.headers.get("content-type") or "")
    path = request.path_params
    binary_write = path.get("type") == "Binary" and (
        (request.method == "POST" and "id" not in path) or
        (request.method == "PUT" and "id" in path))
    if binary_write:
        length = request.headers.get("content-length")
        size = int(length) if length and length.isdigit() else len(raw)
        # a FHIR Binary carries its content as base64: a third larger
        limit = MAX_BINARY if format_of(media) is None else MAX_BINARY * 4 // 3 + 65536
        if max(size, len(raw)) > limit:
            raise FHIRError.of(413, "too-long", f"the Binary is larger than this server takes "
                               f"({MAX_BINARY // (1024 * 1024)} MiB)")
    if not raw:
        return raw, False
    kind = format_of(media)
    if kind == XML:
        return orjson.dumps(xml_to_resource(raw)), True
    if binary_write and kind is None and media not in ("", "application/x-www-form-urlencoded"):
        binary = {"resourceType": "Binary", "contentType": media,
                  "data": base64.b64encode(raw).decode("ascii")}
        if "id" in path:
            binary["id"] = path["id"]
        context = request.headers.get("x-security-context")
        if context:
            binary["securityContext"] = {"reference": _security_context(context)}
        return orjson.dumps(binary), True
    return raw, False


def _security_context(value: str) -> str:
    ref = value.strip()
    rtype, _, rid = ref.partition("/")
    if not (rtype[:1].isupper() and rtype.isalpha() and ID_RE.match(rid)):
        raise FHIRError.of(400, "invalid", "X-Security-Context must be a reference Type/id "
                           "(e.g. Patient/123 or DocumentReference/456)", "X-Security-Context")
    return ref



# ------------------------------------------------------------------ conditional reads
def _versions(header: str) -> set[str] | None:
    """If-None-Match's entity tags as version ids; None for '*'."""
    out = set()
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return None
        tag = tag.removeprefix("W/")
        out.add(tag.strip('"'))
    return out


def _http_date(value: str) -> datetime:
    """If-Modified-Since: an HTTP-date (RFC 9110), or -- as FHIR clients also send -- an
    ISO 8601 instant."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise FHIRError.of(400, "invalid", f"If-Modified-Since '{value[:60]}' is not an "
                               "HTTP date (e.g. Wed, 21 Oct 2026 07:28:00 GMT)",
                               "If-Modified-Since") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def last_modified(s: Stored) -> datetime:
    return datetime.fromisoformat(s.last_updated).replace(tzinfo=UTC)


def not_modified(request, s: Stored) -> Response | None:
    """304 when the client's copy is current: If-None-Match (the version's ETag, or '*')
    decides when present, otherwise If-Modified-Since (to the second, as HTTP dates are)."""
    headers = {"ETag": s.etag, "Last-Modified": format_datetime(last_modified(s), usegmt=True)}
    if_none = request.headers.get("if-none-match")
    if if_none:
        versions = _versions(if_none)
        if versions is None or str(s.version) in versions:
            return Response(status_code=304, headers=headers)
        return None
    since = request.headers.get("if-modified-since")
    if since and last_modified(s).replace(microsecond=0) <= _http_date(since):
        return Response(status_code=304, headers=headers)
    return None


def searchset(path: str, echo: list[tuple[str, str]], entries: list[dict], page) -> dict:
    """A searchset Bundle: the entries, a self link echoing the request and a next link when
    there is a further page, and the total when it was counted."""
    from urllib.parse import urlencode

    links = [{"relation": "self", "url": f"{path}?{urlencode(echo)}"}]
    if page.next_cursor:
        links.append({"relation": "next",
                      "url": f"{path}?{urlencode(echo + [('_cursor', page.next_cursor)])}"})
    out = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    if page.total is not None:
        out["total"] = page.total
    return out


# ------------------------------------------------------------------ request bodies and parameters
def json_body(raw: bytes) -> dict:
    """A request body that must be one JSON object (a resource)."""
    if not raw:
        raise FHIRError.of(400, "invalid", "the request has no body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise FHIRError.of(400, "structure", f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise FHIRError.of(400, "structure", "the body must be a JSON object")
    if b"\\u0000" in raw and _has_nul(body):
        raise FHIRError.of(400, "invalid", "the body contains a NUL character (\\u0000), which "
                           "FHIR strings may not hold")
    return body


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def since_param(value: str | None) -> str | None:
    """_since as the stored timestamp form (from the start of what it names)."""
    if not value:
        return None
    from ...store.search import instant_range

    try:
        return instant_range(value)[0]
    except ValueError as e:
        raise FHIRError.of(400, "invalid", f"_since: {e}", "_since") from None
