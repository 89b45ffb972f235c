"""Patient/$everything: everything about the person (every partner's Patient record of them
and each one's compartment), paged by row key, with no cap. One governed read
(`Governance.everything`: legitimate relationship, the policy inside the query, withheld items
counted, one audit event) per page."""

from __future__ import annotations

import orjson

from ...fhir.outcome import operation_outcome
from .http import fhir_response, searchset, since_param


def handle(api, request):
    pid = request.path_params["id"]
    access = api.gov.authenticate(request)
    q = request.query_params
    count = min(int(q["_count"]), 1000) if q.get("_count", "").isdigit() else 100
    types = [t for t in (q.get("_type") or "").split(",") if t] or None
    since = since_param(q.get("_since"))
    page = api.gov.everything(access, pid, count, q.get("_cursor"), since, types)
    base = api.base(request)
    entries = [{"fullUrl": f"{base}/{s.type}/{s.id}", "resource": orjson.Fragment(s.content),
                "search": {"mode": "match"}} for s in page.matches]
    if page.withheld_notes:
        entries.append({"resource": operation_outcome(page.withheld_notes),
                        "search": {"mode": "outcome"}})
    echo = [(k, v) for k, v in q.multi_items() if k != "_cursor"]
    return fhir_response(searchset(f"{base}/Patient/{pid}/$everything", echo, entries, page))
