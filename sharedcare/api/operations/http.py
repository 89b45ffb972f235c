"""HTTP pieces every FHIR interaction shares: FHIR JSON responses, the headers of a stored
resource, `Prefer: return=` on writes, and conditional reads (`If-None-Match`,
`If-Modified-Since`)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

import orjson
from starlette.responses import Response

from ...fhir.outcome import FHIRError, Issue, operation_outcome
from ...store.repository import Stored, instant

FHIR_JSON = "application/fhir+json"
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
