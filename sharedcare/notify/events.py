"""Which writes are events, and the outbox hook that records them in the write's transaction.

An event is a fact about one version of one resource (``Encounter/123`` version 4 was an
admission) -- never its content. The rules:

=====================  ==========================================================================
``encounter-start``    an Encounter becomes arrived / triaged / in-progress (created so, or moved)
``admission``          ... of an inpatient class (IMP, ACUTE, NONAC)
``emergency``          ... of the emergency class (EMER): an A&E attendance
``encounter-end``      an Encounter becomes finished
``discharge``          ... of an inpatient or emergency class
``death``              a Patient's death is recorded (deceasedDateTime, or deceasedBoolean true)
``result``             an Observation or DiagnosticReport is written (new or amended)
``care-plan``          a CarePlan is created or changed
``document``           a DocumentReference is received (created or replaced)
``objection``          a Consent (a patient's choice) is recorded
``break-glass``,       from :class:`~sharedcare.governance.Governance` in its own transaction
``declared-relationship``
=====================  ==========================================================================

Any other write is recorded only when an active criteria ``Subscription`` names its type (so
``Condition?code=...`` works too). The hook costs one batched INSERT per unit of work that has
events, nothing otherwise; the previous version of an Encounter or Patient is read (one query)
only when an update may be a transition.
"""

from __future__ import annotations

import time

import orjson
from sqlalchemy import Connection, insert, select

from ..store.repository import WriteResult, now_utc, source_of
from ..store.schema import resource, resource_version
from .schema import notify_event, notify_subscription

TOPIC_BASE = "https://fhir.sharedcare.org.uk/SubscriptionTopic/"
TOPICS = {
    "admission": "a patient was admitted",
    "discharge": "a patient was discharged",
    "emergency": "a patient attended the emergency department",
    "encounter-start": "an encounter started",
    "encounter-end": "an encounter finished",
    "death": "a patient's death was recorded",
    "result": "a new or amended result",
    "care-plan": "a care plan was created or changed",
    "document": "a document was received",
    "objection": "a patient's choice about sharing was recorded",
    "break-glass": "someone broke glass to see a patient's record",
    "declared-relationship": "someone declared a care relationship with a patient",
}
GOVERNANCE_EVENTS = ("break-glass", "declared-relationship")
# The most telling code first: an admission is also an encounter start.
PRIORITY = ("death", "admission", "emergency", "discharge", "result", "care-plan", "document",
            "objection", "break-glass", "declared-relationship", "encounter-start",
            "encounter-end")
OPEN = {"arrived", "triaged", "in-progress", "onleave"}
INPATIENT = {"IMP", "ACUTE", "NONAC"}
EMERGENCY = {"EMER"}
RULE_TYPES = {"Encounter", "Patient", "Observation", "DiagnosticReport", "CarePlan",
              "DocumentReference", "Consent"}
CRITERIA_CACHE_SECONDS = 2.0


def topic_url(code: str) -> str:
    return TOPIC_BASE + code


def topic_code(url: str) -> str | None:
    if url.startswith(TOPIC_BASE) and url[len(TOPIC_BASE):] in TOPICS:
        return url[len(TOPIC_BASE):]
    return None


def _class(res: dict) -> str | None:
    c = res.get("class")
    return c.get("code") if isinstance(c, dict) else None


def _dead(res: dict) -> bool:
    return bool(res.get("deceasedDateTime")) or res.get("deceasedBoolean") is True


def kinds_of(rtype: str, res: dict, prior: dict | None, created: bool) -> list[str]:
    """The event codes of one write (``prior``: the previous version, if it was read)."""
    if rtype == "Encounter":
        status, klass = res.get("status"), _class(res)
        before = None if created or prior is None else prior.get("status")
        out = []
        if status in OPEN and before not in OPEN:
            out.append("encounter-start")
            if klass in INPATIENT:
                out.append("admission")
            if klass in EMERGENCY:
                out.append("emergency")
        if status == "finished" and before != "finished":
            out.append("encounter-end")
            if klass in INPATIENT | EMERGENCY:
                out.append("discharge")
        return out
    if rtype == "Patient":
        return ["death"] if _dead(res) and not (prior is not None and _dead(prior)) else []
    return {"Observation": ["result"], "DiagnosticReport": ["result"], "CarePlan": ["care-plan"],
            "DocumentReference": ["document"], "Consent": ["objection"]}.get(rtype, [])


def patient_of(rtype: str, rid: str, res: dict) -> str | None:
    if rtype == "Patient":
        return rid
    for key in ("subject", "patient"):
        ref = res.get(key)
        if isinstance(ref, dict):
            target = ref.get("reference") or ""
            if target.startswith("Patient/"):
                return target.split("/", 1)[1][:64]
    return None


def main_code(kinds: str | None, wanted: str | None = None) -> str | None:
    """The event's most telling code (among those a subscriber wanted, when given)."""
    have = set((kinds or "").split())
    if wanted:
        have &= set(wanted.split()) or have
    return next((c for c in PRIORITY if c in have), None)


def pad(codes) -> str:
    return " " + " ".join(codes) + " "


# ------------------------------------------------------------------ criteria types, cached
_criteria: dict[int, tuple[float, frozenset[str]]] = {}


def criteria_types(conn: Connection) -> frozenset[str]:
    """Types named by active (or requested) criteria Subscriptions, re-read every 2 s."""
    key = id(conn.engine)
    hit = _criteria.get(key)
    if hit is None or time.monotonic() - hit[0] > CRITERIA_CACHE_SECONDS:
        types = frozenset(t for (t,) in conn.execute(
            select(notify_subscription.c.rtype).distinct().where(
                notify_subscription.c.kind.in_(("criteria", "topic")),
                notify_subscription.c.status.in_(("requested", "active")),
                notify_subscription.c.rtype.isnot(None))) if t)
        hit = (time.monotonic(), types)
        _criteria[key] = hit
    return hit[1]


def forget_criteria() -> None:
    _criteria.clear()


def _priors(conn: Connection, wanted: list[tuple[str, str, int]]) -> dict[tuple[str, str], dict]:
    """The previous version of each (type, id, version), in one query."""
    if not wanted:
        return {}
    ids = sorted({i for _, i, _ in wanted})
    versions = sorted({v - 1 for _, _, v in wanted})
    want = {(t, i, v - 1) for t, i, v in wanted}
    rows = conn.execute(
        select(resource.c.type, resource.c.id, resource_version.c.version,
               resource_version.c.content)
        .join(resource, resource.c.pk == resource_version.c.resource_pk)
        .where(resource.c.type.in_(sorted({t for t, _, _ in wanted})), resource.c.id.in_(ids),
               resource_version.c.version.in_(versions)))
    return {(t, i): orjson.loads(c) for t, i, v, c in rows if (t, i, v) in want and c}


def record_events(store, conn: Connection, results: list[WriteResult]) -> None:
    """The store hook: one batched insert of this unit of work's events (none: no query)."""
    from .subscriptions import mirror_subscriptions

    subs = [r.stored for r in results if r.stored.type == "Subscription" and not r.unchanged]
    if subs:
        mirror_subscriptions(store, conn, subs)
    wanted = None
    candidates = []
    for r in results:
        s = r.stored
        if r.unchanged or s.deleted or s.type == "Subscription":
            continue
        if s.type in RULE_TYPES:
            candidates.append(r)
            continue
        if wanted is None:
            wanted = criteria_types(conn)
        if s.type in wanted:
            candidates.append(r)
    if not candidates:
        return
    priors = _priors(conn, [(r.stored.type, r.stored.id, r.stored.version) for r in candidates
                            if r.stored.type in ("Encounter", "Patient") and not r.created
                            and r.stored.version > 1])
    stamp = now_utc()
    rows = []
    for r in candidates:
        s = r.stored
        res = s.json()
        kinds = kinds_of(s.type, res, priors.get((s.type, s.id)), r.created)
        if not kinds:
            if wanted is None:
                wanted = criteria_types(conn)
            if s.type not in wanted:
                continue
        rows.append({"created": stamp, "kinds": pad(kinds), "rtype": s.type, "rid": s.id,
                     "version": s.version, "patient_id": patient_of(s.type, s.id, res),
                     "ods": source_of(res), "actor": None, "dispatched": False})
    if rows:
        conn.execute(insert(notify_event), rows)


def record_governance_event(conn: Connection, kind: str, access, patient_id: str) -> None:
    """Break-glass or a declared relationship: an event in the same transaction as the row."""
    conn.execute(insert(notify_event), [{
        "created": now_utc(), "kinds": pad([kind]), "rtype": "Patient", "rid": patient_id,
        "version": 0, "patient_id": patient_id, "ods": access.ods,
        "actor": (access.username or access.client_id or "")[:100] or None,
        "dispatched": False}])


def install(store) -> None:
    """Register the outbox hook on a store (once)."""
    if not any(getattr(h, "_notify_hook", False) for h in store.after_write):
        def hook(conn, results, store=store):
            record_events(store, conn, results)
        hook._notify_hook = True
        store.after_write.append(hook)


__all__ = ["GOVERNANCE_EVENTS", "TOPICS", "install", "kinds_of", "record_events",
           "record_governance_event", "topic_code", "topic_url"]
