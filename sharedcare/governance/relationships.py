"""Legitimate relationships derived from the record itself, kept current at write time.

A named hook on the store's write path: when a Patient, Encounter, EpisodeOfCare, ServiceRequest
or CareTeam is written, the relationships it implies (registered with a practice, an open
encounter, an active episode, a referral, care-team membership) are replaced in the same
transaction, so the policy is a cheap indexed lookup at read time.

Who wrote it matters. A partner system's feed describes care that happened; its relationships
count for the organisation at once. A person writing through the API or the pages could
otherwise grant themselves access by recording an encounter, so what their write implies counts
only for them and waits for the IG lead's review, like a declared relationship.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection, delete, insert, select

from ..fhir.codes import ODS_SYSTEM
from ..store.repository import WriteResult
from ..store.schema import idx_token, resource
from .policy import now_text
from .schema import care_relationship
from .writes import current_writer

# Only care that is happening now is a legitimate relationship: not a planned encounter, not a
# draft referral.
OPEN_ENCOUNTER = {"arrived", "triaged", "in-progress", "onleave"}
ACTIVE_EPISODE = {"waitlist", "active"}
DERIVED_TYPES = {"Patient", "Encounter", "EpisodeOfCare", "ServiceRequest", "CareTeam"}


def _patient_of(res: dict) -> str | None:
    for key in ("subject", "patient"):
        ref = (res.get(key) or {}).get("reference") or ""
        if ref.startswith("Patient/"):
            return ref.split("/", 1)[1]
    return None


def _org_refs(res: dict) -> list[dict]:
    """Organisation references each derived type carries, with the relationship kind."""
    t = res["resourceType"]
    status = res.get("status")
    if t == "Patient":
        return [("registered", r) for r in res.get("generalPractitioner") or []]
    if t == "Encounter" and status in OPEN_ENCOUNTER and res.get("serviceProvider"):
        return [("encounter", res["serviceProvider"])]
    if t == "EpisodeOfCare" and status in ACTIVE_EPISODE and res.get("managingOrganization"):
        return [("episode", res["managingOrganization"])]
    if t == "ServiceRequest" and status == "active":
        return [("referral", r) for r in res.get("performer") or []]
    if t == "CareTeam" and status in (None, "proposed", "active"):
        refs = [("care-team", r) for r in res.get("managingOrganization") or []]
        refs += [("care-team", p["member"]) for p in res.get("participant") or []
                 if isinstance(p.get("member"), dict)]
        return refs
    return []


class OdsResolver:
    """Organization/{id} -> ODS code, from the Organization's identifier."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.cache: dict[str, str | None] = {}

    def __call__(self, ref: dict) -> str | None:
        ident = ref.get("identifier") or {}
        if ident.get("system") == ODS_SYSTEM:
            return ident.get("value")
        target = ref.get("reference") or ""
        if not target.startswith("Organization/"):
            return None
        oid = target.split("/", 1)[1]
        if oid not in self.cache:
            self.cache[oid] = self.conn.execute(
                select(idx_token.c.code).join(resource, resource.c.pk == idx_token.c.resource_pk)
                .where(resource.c.type == "Organization", resource.c.id == oid,
                       idx_token.c.param == "identifier", idx_token.c.system == ODS_SYSTEM)
            ).scalar()
        return self.cache[oid]


def derive_relationships(conn: Connection, results: list[WriteResult]) -> None:
    touched = [r.stored for r in results if r.stored.type in DERIVED_TYPES]
    if not touched:
        return
    # A resource just created has established nothing yet (a deleted one's rows went with it).
    sources = [f"{r.stored.type}/{r.stored.id}" for r in results
               if r.stored.type in DERIVED_TYPES and not r.created]
    # What partners' records already established stays the organisation's: a person's edit
    # that changes nothing about the relationship (a phone number) must not make it theirs.
    established = set()
    if sources:
        established = {(r.patient_id, r.ods, r.kind, r.source) for r in conn.execute(
            select(care_relationship.c.patient_id, care_relationship.c.ods,
                   care_relationship.c.kind, care_relationship.c.source)
            .where(care_relationship.c.source.in_(sources),
                   care_relationship.c.username.is_(None)))}
        conn.execute(delete(care_relationship).where(care_relationship.c.source.in_(sources)))
    ods_of = OdsResolver(conn)
    rows = []
    stamp = now_text()
    writer = current_writer.get()
    person = writer.username if writer is not None and writer.needs_relationship else None
    for s in touched:
        if s.deleted or not s.content:
            continue
        res = orjson.loads(s.content)
        patient = s.id if s.type == "Patient" else _patient_of(res)
        if not patient:
            continue
        for kind, ref in _org_refs(res):
            ods = ods_of(ref) if isinstance(ref, dict) else None
            if ods:
                source = f"{s.type}/{s.id}"
                mine = person if (patient, ods, kind, source) not in established else None
                rows.append({"patient_id": patient, "ods": ods, "kind": kind,
                             "source": source, "created": stamp,
                             "username": mine,
                             "review_status": "pending" if mine else None,
                             "reason": f"derived from {source} written by {mine}"
                             if mine else None})
    if rows:
        conn.execute(insert(care_relationship), rows)
