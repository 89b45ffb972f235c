"""Subscription/$status (Subscriptions R5 Backport in R4): a subscription's SubscriptionStatus.

    GET /fhir/Subscription/{id}/$status

Governed as reading the Subscription itself (a subscription the caller may not read answers as
a missing one; one audit event), then the status kept by the notification worker: active,
error (with why), off, and how many events it has had.
"""

from __future__ import annotations

from ...fhir.outcome import FHIRError
from ...fhir.validation import ID_RE
from ...notify.subscriptions import status_parameters
from .http import fhir_response


def handle(api, request):
    sid = request.path_params["id"]
    if not ID_RE.match(sid):
        raise FHIRError.of(400, "invalid", "not a valid Subscription id", "id")
    for name in request.query_params:
        raise FHIRError.of(400, "not-supported", f"$status takes no parameter '{name[:60]}'",
                           name[:60])
    access = api.gov.authenticate(request)
    api.gov.read(access, "Subscription", sid)
    out = status_parameters(api.sc, sid)
    if out is None:  # stored, but refused when it was written: no status to report
        raise FHIRError.of(404, "not-found", f"Subscription/{sid} has no delivery status")
    return fhir_response(out)
