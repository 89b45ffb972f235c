"""Subscribers: FHIR ``Subscription`` resources and organisations' subscriptions.

A ``Subscription`` written through the FHIR API (or any path: ``load``, a Bundle) is checked as
it is written -- a bad one is a 400 ``OperationOutcome`` naming the field, and nothing is
stored -- and mirrored into ``notify_subscription`` in the same transaction, with its owner:
whoever wrote it (their organisation and role govern what it may be told). Two forms:

* **criteria** (R4): ``criteria`` is a search, ``Encounter?class=IMP&status=in-progress``, run
  with the store's own search against the event's resource;
* **topic** (Subscriptions R5 Backport IG in R4): ``criteria`` is one of our topics'
  canonical URLs (``https://fhir.sharedcare.org.uk/SubscriptionTopic/admission`` ...), with an
  optional ``backport-filter-criteria`` search on ``_criteria`` and ``backport-payload-content``
  (``empty`` / ``id-only`` / ``full-resource``) on ``channel._payload``.

Organisation subscriptions (:func:`subscribe`) need no criteria: "tell my practice when any
registered patient is admitted, discharged or dies", delivered by rest-hook, e-mail or the
staff inbox.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlparse

import orjson
from sqlalchemy import Connection, insert, select, update

from ..fhir.outcome import FHIRError
from ..store.repository import Stored, now_utc, source_of
from .channels import literal_refusal
from .events import GOVERNANCE_EVENTS, TOPIC_BASE, TOPICS, forget_criteria, pad, topic_code
from .schema import notify_subscription

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER_EXT = BACKPORT + "backport-filter-criteria"
CONTENT_EXT = BACKPORT + "backport-payload-content"
HEARTBEAT_EXT = BACKPORT + "backport-heartbeat-period"
MIN_HEARTBEAT = int(os.environ.get("SHAREDCARE_NOTIFY_MIN_HEARTBEAT", "60"))
CHANNELS = ("rest-hook", "email", "inbox")
PAYLOADS = ("", "application/fhir+json", "application/json")
CONTENTS = ("empty", "id-only", "full-resource")
SCOPES = ("registered", "caseload")
STATUSES = ("requested", "active", "error", "off")
HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*$")


@dataclass
class Spec:
    kind: str  # criteria | topic
    status: str
    criteria: str
    rtype: str | None
    filter: str | None
    topics: str | None
    channel: str
    endpoint: str
    payload: str
    headers: list[str]
    end: str | None
    heartbeat: int | None = None


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x) -> list:
    return x if isinstance(x, list) else []


def _bad(message: str, where: str) -> FHIRError:
    return FHIRError.of(400, "invalid", message, where)


def _check_search(store, query: str, where: str) -> str:
    """``Type?params`` checked with the store's own search parser; returns the type."""
    rtype, _, qs = query.partition("?")
    if not rtype or not re.fullmatch(r"[A-Z][A-Za-z]+", rtype):
        raise _bad("criteria must be a search: ResourceType?parameters", where)
    if rtype not in store.indexer.supported_types():
        raise _bad(f"{rtype} is not a resource type this server can search", where)
    params = parse_qsl(qs, keep_blank_values=True)
    for name, _ in params:
        if name.startswith("_") and name not in ("_id", "_lastUpdated", "_tag", "_security",
                                                 "_profile", "_source", "_has"):
            raise _bad(f"{name} cannot be used in subscription criteria", where)
    try:
        store.search_builder.parse(rtype, params, False, None)
    except FHIRError as e:
        detail = e.issues[0].diagnostics if e.issues else str(e)
        raise _bad(f"criteria: {detail}", where) from None
    return rtype


def _check_endpoint(channel: str, endpoint: str | None, where: str) -> str:
    endpoint = (endpoint or "").strip()
    if channel == "rest-hook":
        u = urlparse(endpoint)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise _bad("a rest-hook channel needs an http(s) endpoint URL", where)
        refused = literal_refusal(u.hostname)
        if refused:
            raise _bad(refused, where)
    elif channel == "email":
        address = endpoint.removeprefix("mailto:")
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
            raise _bad("an email channel needs an address (mailto:name@example.org)", where)
        endpoint = "mailto:" + address
    return endpoint


def parse(store, res: dict) -> Spec:
    """Check a Subscription resource; FHIRError 400 naming the field when it is wrong."""
    status = res.get("status")
    if status not in STATUSES:
        raise _bad(f"status must be one of {', '.join(STATUSES)}", "Subscription.status")
    criteria = res.get("criteria")
    if not isinstance(criteria, str) or not criteria.strip():
        raise _bad("criteria is required: a search (Encounter?class=IMP) or a topic URL",
                   "Subscription.criteria")
    criteria = criteria.strip()
    channel = res.get("channel")
    if not isinstance(channel, dict):
        raise _bad("channel is required", "Subscription.channel")
    ctype = channel.get("type")
    if ctype not in ("rest-hook", "email"):
        raise _bad("channel.type must be rest-hook or email on this server",
                   "Subscription.channel.type")
    endpoint = channel.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise _bad("endpoint must be a URL", "Subscription.channel.endpoint")
    endpoint = _check_endpoint(ctype, endpoint, "Subscription.channel.endpoint")
    headers = channel.get("header") or []
    if not isinstance(headers, list):
        raise _bad("header must be a list of 'Name: value'", "Subscription.channel.header")
    for i, h in enumerate(headers):
        if not isinstance(h, str) or not HEADER.match(h) or len(h) > 2000:
            raise _bad("each header must be 'Name: value' on one line",
                       f"Subscription.channel.header[{i}]")
    end = res.get("end")
    if end is not None and not isinstance(end, str):
        raise _bad("end must be an instant", "Subscription.end")
    code = topic_code(criteria) if criteria.startswith("http") else None
    if criteria.startswith("http"):
        if code is None:
            raise _bad("unknown topic: use one of " + ", ".join(
                f"{TOPIC_BASE}{c}" for c in TOPICS if c not in GOVERNANCE_EVENTS),
                "Subscription.criteria")
        flt, rtype = None, None
        for ext in _list(_dict(res.get("_criteria")).get("extension")):
            if isinstance(ext, dict) and ext.get("url") == FILTER_EXT:
                value = ext.get("valueString")
                if not isinstance(value, str):
                    raise _bad("backport-filter-criteria needs a valueString search",
                               "Subscription._criteria.extension")
                flt = value.strip() or None
        if flt:
            rtype = _check_search(store, flt, "Subscription._criteria.extension")
        content = "id-only"
        for ext in _list(_dict(channel.get("_payload")).get("extension")):
            if isinstance(ext, dict) and ext.get("url") == CONTENT_EXT:
                content = ext.get("valueCode")
        if content not in CONTENTS:
            raise _bad("backport-payload-content must be empty, id-only or full-resource",
                       "Subscription.channel._payload.extension")
        heartbeat = None
        for ext in _list(channel.get("extension")):
            if isinstance(ext, dict) and ext.get("url") == HEARTBEAT_EXT:
                heartbeat = ext.get("valueUnsignedInt")
                if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) \
                        or not MIN_HEARTBEAT <= heartbeat <= 86_400:
                    raise _bad(f"backport-heartbeat-period must be a valueUnsignedInt of "
                               f"{MIN_HEARTBEAT} to 86400 seconds",
                               "Subscription.channel.extension")
        return Spec("topic", status, criteria, rtype, flt, pad([code]), ctype, endpoint,
                    content, headers, end, heartbeat)
    rtype = _check_search(store, criteria, "Subscription.criteria")
    payload = channel.get("payload") or ""
    if not isinstance(payload, str) or payload not in PAYLOADS:
        raise _bad("payload must be application/fhir+json, or absent for a notification "
                   "without content", "Subscription.channel.payload")
    return Spec("criteria", status, criteria, rtype, None, None, ctype, endpoint, payload,
                headers, end)


def _owner(existing, res: dict) -> dict:
    """Whoever writes a Subscription owns it; the server's own status updates keep the owner."""
    from ..governance.writes import current_writer

    writer = current_writer.get()
    if writer is not None:
        return {"ods": writer.ods, "role": writer.role or "system",
                "username": writer.username if writer.kind == "user" else None,
                "client_kind": "user" if writer.kind == "user" else "system"}
    if existing is not None:
        return {"ods": existing.ods, "role": existing.role, "username": existing.username,
                "client_kind": existing.client_kind}
    return {"ods": source_of(res), "role": "system", "username": None, "client_kind": "system"}


def mirror_subscriptions(store, conn: Connection, written: list[Stored]) -> None:
    """Keep ``notify_subscription`` in step with Subscription resources (the store hook)."""
    for s in written:
        sid = f"fhir:{s.id}"
        existing = conn.execute(select(notify_subscription).where(
            notify_subscription.c.id == sid)).first()
        if s.deleted:
            if existing is not None:
                conn.execute(update(notify_subscription).where(notify_subscription.c.id == sid)
                             .values(status="off"))
            continue
        res = s.json()
        spec = parse(store, res)
        values = {"kind": spec.kind, "resource_id": s.id, "status": spec.status,
                  "criteria": spec.criteria, "rtype": spec.rtype, "filter": spec.filter,
                  "topics": spec.topics, "scope": None, "channel": spec.channel,
                  "endpoint": spec.endpoint, "payload": spec.payload,
                  "headers": orjson.dumps(spec.headers).decode(), "end": spec.end,
                  "heartbeat": spec.heartbeat, **_owner(existing, res)}
        if existing is None:
            conn.execute(insert(notify_subscription), [{
                "id": sid, "created": now_utc(), "events": 0, "sent": 0, "refused": 0,
                "dead": 0, **values}])
        else:
            conn.execute(update(notify_subscription).where(notify_subscription.c.id == sid)
                         .values(**values))
    forget_criteria()


def subscribe(sc, *, ods: str, topics: list[str], channel: str, endpoint: str | None = None,
              role: str = "clinician", scope: str = "registered", username: str | None = None,
              headers: list[str] | None = None) -> str:
    """An organisation's subscription without criteria; returns its id. Checked like a
    Subscription resource (FHIRError 400 naming the field)."""
    from ..governance.policy import ROLE_CATEGORIES
    from ..governance.schema import organisation

    bad = [t for t in topics if t not in TOPICS]
    if not topics or bad:
        raise _bad(f"choose topics from: {', '.join(TOPICS)}", "topics")
    if channel not in CHANNELS:
        raise _bad(f"channel must be one of {', '.join(CHANNELS)}", "channel")
    if scope not in SCOPES:
        raise _bad("scope must be registered (patients registered with the organisation) or "
                   "caseload (any care relationship)", "scope")
    governance_only = all(t in GOVERNANCE_EVENTS for t in topics)
    if role not in ROLE_CATEGORIES or (not ROLE_CATEGORIES[role] and not governance_only):
        raise _bad(f"the {role} role may not see care records, so it cannot be told about "
                   "them", "role")
    endpoint = _check_endpoint(channel, endpoint, "endpoint") if channel != "inbox" else None
    for i, h in enumerate(headers or []):
        if not HEADER.match(h):
            raise _bad("each header must be 'Name: value' on one line", f"header[{i}]")
    sid = f"org:{uuid.uuid4()}"
    with sc.store.begin_write() as conn, conn.begin():
        if conn.execute(select(organisation.c.ods).where(organisation.c.ods == ods)).first() \
                is None:
            raise _bad(f"no organisation {ods}", "ods")
        conn.execute(insert(notify_subscription), [{
            "id": sid, "kind": "org", "resource_id": None, "status": "active", "criteria": None,
            "rtype": None, "filter": None, "topics": pad(topics), "scope": scope, "ods": ods,
            "role": role, "username": username, "client_kind": "user", "channel": channel,
            "endpoint": endpoint, "payload": "id-only",
            "headers": orjson.dumps(headers or []).decode(), "end": None,
            "created": now_utc(), "events": 0, "sent": 0, "refused": 0, "dead": 0}])
    return sid


def set_status(sc, sid: str, status: str) -> bool:
    if status not in STATUSES:
        raise _bad(f"status must be one of {', '.join(STATUSES)}", "status")
    with sc.store.begin_write() as conn, conn.begin():
        return conn.execute(update(notify_subscription).where(notify_subscription.c.id == sid)
                            .values(status=status)).rowcount == 1


def list_subscriptions(sc, ods: str | None = None) -> list[dict]:
    with sc.engine.connect() as conn:
        q = select(notify_subscription).order_by(notify_subscription.c.created)
        if ods:
            q = q.where(notify_subscription.c.ods == ods)
        return [dict(r._mapping) for r in conn.execute(q)]


__all__ = [
    "CHANNELS",
    "TOPICS",
    "Spec",
    "list_subscriptions",
    "mirror_subscriptions",
    "parse",
    "set_status",
    "subscribe",
]


def status_parameters(sc, sid: str) -> dict | None:
    """A Subscriptions Backport ``SubscriptionStatus`` (R4 Parameters, type ``query-status``)
    for a subscription: what ``$status`` answers. ``sid`` is the notification subscription id
    or a FHIR Subscription's id."""
    from .channels import STATUS_PROFILE
    from .events import main_code, topic_url

    with sc.engine.connect() as conn:
        row = conn.execute(select(notify_subscription).where(
            (notify_subscription.c.id == sid) | (notify_subscription.c.resource_id == sid))
        ).first()
    if row is None:
        return None
    topic = row.criteria if row.kind == "topic" else (
        topic_url(main_code(row.topics) or "") if row.topics else None)
    params = [{"name": "subscription", "valueReference": {
                  "reference": f"Subscription/{row.resource_id or row.id}"}},
              {"name": "status", "valueCode": row.status},
              {"name": "type", "valueCode": "query-status"},
              {"name": "events-since-subscription-start", "valueString": str(row.events)}]
    if topic:
        params.insert(1, {"name": "topic", "valueCanonical": topic})
    if row.last_error:
        params.append({"name": "error", "valueCodeableConcept": {"text": row.last_error}})
    return {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]},
            "parameter": params}
