"""The delivery worker: outbox -> deliveries -> governed sends, durable across crashes.

The server runs it (``attach_notify_worker`` wires it into the Starlette lifespan). Each pass:

1. **activate**: FHIR Subscriptions ``requested`` become ``active`` (the resource is updated);
   those past their ``end`` become ``off``.
2. **dispatch**: undispatched outbox events, oldest first, are matched against active
   subscribers (criteria by the store's own search on the event's resource; organisations by
   the patient's registration or care relationship with them; topics by event code) and one
   ``notify_delivery`` row is made per match, in one transaction that marks the events
   dispatched. One dispatcher at a time (a PostgreSQL advisory lock; SQLite's write lock), so
   delivery order is event order.
3. **deliver**: a subscriber with a due delivery is *claimed* with a lease (``FOR UPDATE SKIP
   LOCKED`` on PostgreSQL, so several servers share the work), and its deliveries go out in
   order, one at a time. At send time the subscriber's organisation and role must be allowed to
   read the resource under the same policy reads use -- otherwise the delivery is *refused*:
   counted, audited, never sent. A sent or refused delivery is one audit event, committed with
   its status. A failure is retried with exponential back-off and jitter, and after
   ``MAX_ATTEMPTS`` is dead-lettered (``/notifications/dead-letters`` retries it); later
   deliveries wait for an earlier one being retried, so a subscriber never sees them out of
   order.

Nothing lives only in memory: a worker killed mid-send leaves a lease that expires, and the next
worker sends again with the same ``Idempotency-Key`` (at least once; the key makes it once).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

from sqlalchemy import (
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from ..background import PollingWorker, attach
from ..fhir.outcome import FHIRError
from ..governance.policy import (
    GLASS_REASON,
    Access,
    counted_relationship,
    explain_relationship,
    one_person,
)
from ..governance.schema import break_glass, care_relationship
from ..logsafe import log_failure
from ..store.repository import PermitAll, Stored, WriteOp, now_utc
from ..store.schema import compartment, resource
from .channels import SENDERS, DeliveryFailed, send_heartbeat
from .events import GOVERNANCE_EVENTS, main_code
from .schema import notify_delivery, notify_event, notify_inbox, notify_subscription

log = logging.getLogger(__name__)

LEASE_SECONDS = float(os.environ.get("SHAREDCARE_NOTIFY_LEASE", "60"))
MAX_ATTEMPTS = int(os.environ.get("SHAREDCARE_NOTIFY_MAX_ATTEMPTS", "6"))
BACKOFF_BASE = float(os.environ.get("SHAREDCARE_NOTIFY_BACKOFF", "1.0"))  # seconds
BACKOFF_CAP = 3600.0
FLUSH_EVERY = 100
BATCH = 200  # deliveries a subscriber's turn takes (checked together, sent in order)
DISPATCH_LOCK = 7346013
KEEP_DAYS = 7.0  # events that went to nobody are kept this long
PRUNE_EVERY = 600.0


def later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")


def backoff(attempts: int, base: float | None = None) -> float:
    """Exponential back-off with full jitter around it: base * 2^(n-1) * [0.5, 1.5)."""
    base = BACKOFF_BASE if base is None else base
    return min(BACKOFF_CAP, base * (2 ** max(0, attempts - 1))) * (0.5 + random.random())


class NotifyWorker(PollingWorker):
    thread_name = "notify-worker"

    def __init__(self, sc, lease_seconds: float | None = None, max_attempts: int | None = None,
                 backoff_base: float | None = None, threads: int = 8):
        self.sc = sc
        self.store = sc.store
        self.gov = sc.governance
        self.lease_seconds = lease_seconds or LEASE_SECONDS
        self.max_attempts = max_attempts or MAX_ATTEMPTS
        self.backoff_base = BACKOFF_BASE if backoff_base is None else backoff_base
        self.threads = threads if sc.engine.dialect.name == "postgresql" else min(threads, 4)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:64]
        self.pg = sc.engine.dialect.name == "postgresql"
        self._pool: ThreadPoolExecutor | None = None
        self._pruned = time.monotonic()
        # Test hook: called after a subscriber's deliveries are claimed, before any is sent.
        self.after_claim = None

    # ------------------------------------------------------------------ 1. activate
    def activate(self) -> int:
        # The idle worker's looks (here, dispatch, claim, heartbeats) read without a
        # transaction (store.db.read_only): four passes a second cost a statement each.
        with self.sc.store.reads.connect() as conn:
            rows = conn.execute(select(notify_subscription.c.resource_id,
                                       notify_subscription.c.status, notify_subscription.c.end)
                                .where(notify_subscription.c.resource_id.isnot(None),
                                       or_(notify_subscription.c.status == "requested",
                                           and_(notify_subscription.c.end.isnot(None),
                                                notify_subscription.c.status != "off")))).all()
        n = 0
        for rid, status, end in rows:
            ended = _passed(end)
            if ended:
                n += self._set_resource_status(rid, "off", "the subscription's end has passed")
            elif status == "requested":
                n += self._set_resource_status(rid, "active")
        return n

    def _set_resource_status(self, rid: str, status: str, error: str | None = None) -> int:
        try:
            s = self.store.read("Subscription", rid, PermitAll())
        except FHIRError:
            return 0
        res = s.json()
        if res.get("status") == status:
            return 0
        res["status"] = status
        if error:
            res["error"] = error
        else:
            res.pop("error", None)
        try:
            self.store.write([WriteOp("PUT", "Subscription", rid, res, if_match=s.version)])
        except FHIRError:  # changed meanwhile: the next pass looks again
            return 0
        except SQLAlchemyError as e:  # another worker wrote it at the same moment
            log_failure(log, "subscription status update failed", e)
            return 0
        return 1

    # ------------------------------------------------------------------ 2. dispatch
    def dispatch(self, limit: int = 1000) -> int:
        # Look before taking the write lock: an idle worker must not hold up writers (SQLite
        # has one write lock for the whole database).
        with self.sc.store.reads.connect() as conn:
            if conn.execute(select(notify_event.c.id).where(
                    notify_event.c.dispatched == false()).limit(1)).first() is None:
                return 0
        with self.store.begin_write() as conn, conn.begin():
            if self.pg and not conn.execute(
                    text(f"SELECT pg_try_advisory_xact_lock({DISPATCH_LOCK})")).scalar():
                return 0
            q = (select(notify_event).where(notify_event.c.dispatched == false())
                 .order_by(notify_event.c.id).limit(limit))
            if self.pg:
                q = q.with_for_update(skip_locked=True)
            events = conn.execute(q).all()
            if not events:
                return 0
            now = now_utc()
            subs = [s for s in conn.execute(select(notify_subscription).where(
                notify_subscription.c.status.in_(("active", "error")))).all()
                if not _passed(s.end)]
            made: list[dict] = []
            counts: dict[str, int] = {s.id: s.events for s in subs}
            governance = [e for e in events if _codes(e) & set(GOVERNANCE_EVENTS)]
            if governance:
                subs += self._governance_subscribers(conn, governance, subs)
                counts.update({s.id: s.events for s in subs if s.id not in counts})
            for sub in subs:
                for ev in self._matches(conn, sub, events):
                    counts[sub.id] += 1
                    made.append({"event_id": ev.id, "subscription_id": sub.id,
                                 "event_number": counts[sub.id], "status": "pending",
                                 "attempts": 0, "next_attempt": now, "created": now})
            made.sort(key=lambda d: (d["event_id"], d["subscription_id"]))
            if made:
                conn.execute(insert(notify_delivery), made)
                for sid in {d["subscription_id"] for d in made}:
                    conn.execute(update(notify_subscription).where(
                        notify_subscription.c.id == sid).values(events=counts[sid]))
            ids = [e.id for e in events]
            for i in range(0, len(ids), 500):
                conn.execute(update(notify_event).where(notify_event.c.id.in_(ids[i:i + 500]))
                             .values(dispatched=True))
        return len(events)

    def _governance_subscribers(self, conn, events, subs) -> list:
        """Break-glass and declared relationships go to the acting organisation's IG lead, in
        the inbox, without anyone subscribing (an IG lead can add e-mail as well)."""
        have = {s.ods for s in subs if s.kind == "governance"}
        out = []
        for ods in sorted({e.ods for e in events if e.ods} - have):
            sid = f"ig:{ods}"
            if conn.execute(select(notify_subscription.c.id).where(
                    notify_subscription.c.id == sid)).first() is None:
                conn.execute(insert(notify_subscription), [{
                    "id": sid, "kind": "governance", "status": "active",
                    "topics": " " + " ".join(GOVERNANCE_EVENTS) + " ", "ods": ods,
                    "role": "ig-lead", "client_kind": "user", "channel": "inbox",
                    "payload": "id-only", "headers": "[]", "created": now_utc(), "events": 0,
                    "sent": 0, "refused": 0, "dead": 0}])
            row = conn.execute(select(notify_subscription).where(
                notify_subscription.c.id == sid)).first()
            if row.status in ("active", "error"):
                out.append(row)
        return out

    def _matches(self, conn, sub, events) -> list:
        topics = set((sub.topics or "").split())
        if sub.kind == "governance":
            return [e for e in events if _codes(e) & topics and e.ods == sub.ods]
        clinical = [e for e in events if e.version > 0]
        if sub.kind == "org":
            own = [e for e in events if e.version == 0 and _codes(e) & topics
                   and e.ods == sub.ods]
            hits = [e for e in clinical if _codes(e) & topics and e.patient_id]
            if not hits:
                return own
            rel = [care_relationship.c.ods == sub.ods, care_relationship.c.username.is_(None),
                   or_(care_relationship.c.expires.is_(None),
                       care_relationship.c.expires > now_utc())]
            if sub.scope == "registered":
                rel.append(care_relationship.c.kind == "registered")
            # The relationship is usually on the very record the event is about: one query for
            # all of them; the others are looked for across the person's records.
            patients = sorted({e.patient_id for e in hits})
            known = {p: True for i in range(0, len(patients), 500)
                     for p in conn.execute(select(care_relationship.c.patient_id).where(
                         care_relationship.c.patient_id.in_(patients[i:i + 500]), *rel)
                     ).scalars()}
            for p in patients:
                if p not in known:
                    known[p] = conn.execute(select(care_relationship.c.patient_id).where(
                        one_person(care_relationship.c.patient_id, p), *rel).limit(1)
                    ).first() is not None
            out = [e for e in hits if known[e.patient_id]]
            return sorted(own + out, key=lambda e: e.id)
        if sub.kind == "topic":
            hits = [e for e in clinical if _codes(e) & topics]
            if sub.filter and hits:
                return self._search_match(sub.filter, hits)
            return hits
        if sub.kind == "criteria":
            hits = [e for e in clinical if e.rtype == sub.rtype]
            return self._search_match(sub.criteria, hits) if hits else []
        return []

    def _search_match(self, query: str, events) -> list:
        """Which events' resources match a search, by the store's own search with ``_id``."""
        rtype, _, qs = query.partition("?")
        candidates = [e for e in events if e.rtype == rtype]
        found: set[str] = set()
        ids = sorted({e.rid for e in candidates})
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            params = parse_qsl(qs, keep_blank_values=True) + [
                ("_id", ",".join(chunk)), ("_count", str(len(chunk))), ("_total", "none")]
            try:
                page = self.store.search(rtype, params, PermitAll())
            except FHIRError as e:
                log_failure(log, "subscription criteria failed", e)
                return []
            found.update(s.id for s in page.matches)
        return [e for e in candidates if e.rid in found]

    # ------------------------------------------------------------------ 3. deliver
    def claim(self, limit: int = 16) -> list[str]:
        """Claim subscribers whose next delivery is due (lease: one worker per subscriber)."""
        now = now_utc()
        head = (select(notify_delivery.c.next_attempt)
                .where(notify_delivery.c.subscription_id == notify_subscription.c.id,
                       notify_delivery.c.status == "pending")
                .order_by(notify_delivery.c.id).limit(1).scalar_subquery())
        free = or_(notify_subscription.c.lease_until.is_(None),
                   notify_subscription.c.lease_until < now)
        ready = and_(notify_subscription.c.status.in_(("active", "error")), free, head <= now)
        until = later(self.lease_seconds)
        with self.sc.store.reads.connect() as conn:  # look first, without the write lock
            if conn.execute(select(notify_subscription.c.id).where(ready).limit(1)
                            ).first() is None:
                return []
        with self.store.begin_write() as conn, conn.begin():
            q = select(notify_subscription.c.id).where(ready).limit(limit)
            if self.pg:
                q = q.with_for_update(skip_locked=True)
            ids = list(conn.execute(q).scalars())
            claimed = []
            for sid in ids:
                if conn.execute(update(notify_subscription).where(
                        notify_subscription.c.id == sid, free).values(
                        lease_owner=self.name, lease_until=until)).rowcount == 1:
                    claimed.append(sid)
        return claimed

    def _renew(self, sid: str) -> bool:
        with self.store.begin_write() as conn, conn.begin():
            return conn.execute(update(notify_subscription).where(
                notify_subscription.c.id == sid, notify_subscription.c.lease_owner == self.name)
                .values(lease_until=later(self.lease_seconds))).rowcount == 1

    def _release(self, sid: str) -> None:
        with self.store.begin_write() as conn, conn.begin():
            conn.execute(update(notify_subscription).where(
                notify_subscription.c.id == sid, notify_subscription.c.lease_owner == self.name)
                .values(lease_owner=None, lease_until=None))

    def access_of(self, sub) -> Access:
        """The subscriber as a reader: its organisation and role (a person's own declared
        relationships count when a person subscribed), prepared like any request's access."""
        return self.gov.prepare(Access(
            username=sub.username, ods=sub.ods, role=sub.role, kind=sub.client_kind,
            display_name=f"notification subscription {sub.id}"[:100]))

    def serve(self, sid: str) -> int:
        """Send a claimed subscriber's due deliveries, in order. Returns how many finished."""
        try:
            return self._serve(sid)
        finally:
            self._release(sid)

    def _serve(self, sid: str) -> int:
        with self.sc.engine.connect() as conn:
            sub = conn.execute(select(notify_subscription).where(
                notify_subscription.c.id == sid)).first()
            rows = conn.execute(
                select(notify_delivery.c.id.label("delivery_id"), notify_delivery.c.attempts,
                       notify_delivery.c.next_attempt, notify_delivery.c.event_number,
                       notify_event)
                .join(notify_event, notify_event.c.id == notify_delivery.c.event_id)
                .where(notify_delivery.c.subscription_id == sid,
                       notify_delivery.c.status == "pending")
                .order_by(notify_delivery.c.id).limit(BATCH)).all()
        if sub is None or not rows:
            return 0
        if self.after_claim is not None:
            self.after_claim(sid, rows)
        access = self.access_of(sub)
        visible = self.visible(access, rows)
        done: list[tuple] = []
        finished = 0
        now = now_utc()
        renewed = time.monotonic()
        for d in rows:
            if d.next_attempt > now:
                break  # an earlier delivery is waiting to be retried: keep the order
            if time.monotonic() - renewed > self.lease_seconds / 3:
                # A slow receiver must not outlast the lease: keep it, or stop if another
                # worker has taken the subscriber over.
                finished += self._flush(sub, access, done)
                done = []
                if not self._renew(sid):
                    return finished
                renewed = time.monotonic()
            ok, stored, reason = self.govern(sub, access, d, visible)
            if not ok:
                done.append((d, "refused", reason))
            elif sub.channel == "inbox":
                done.append((d, "sent", None))
            else:
                try:
                    SENDERS[sub.channel](sub, d, d.event_number, stored)
                except DeliveryFailed as e:
                    finished += self._flush(sub, access, done)
                    done = []
                    if not self._failed(sub, d, str(e)):
                        break  # will be retried: nothing after it may overtake it
                    finished += 1
                    continue
                except Exception as e:  # noqa: BLE001 - a bug in one send must not stop others
                    log_failure(log, "notification send failed", e)
                    finished += self._flush(sub, access, done)
                    done = []
                    if not self._failed(sub, d, type(e).__name__):
                        break
                    finished += 1
                    continue
                done.append((d, "sent", None))
            if len(done) >= FLUSH_EVERY:
                finished += self._flush(sub, access, done)
                done = []
        finished += self._flush(sub, access, done)
        return finished

    def visible(self, access: Access, rows) -> dict[tuple[str, str], Stored]:
        """The events' resources this subscriber may read now, under the policy reads use.

        A person or an organisation's staff (who need a legitimate relationship) are checked
        as ``$everything`` checks them: the relationship once per patient
        (``explain_relationship``, as ``Governance.check_patient``), then the patient-confined
        policy (agreements, role, sensitivity -- lifted by break-glass -- and objections) inside
        one query per type, confined to resources still in that patient's record. A partner
        system needs no relationship: the full read policy goes inside the query."""
        by_type: dict[str, set[str]] = {}
        patients: set[str] = set()
        for d in rows:
            if d.version > 0:
                by_type.setdefault(d.rtype, set()).add(d.rid)
                if d.patient_id:
                    patients.add(d.patient_id)
        out: dict[tuple[str, str], Stored] = {}
        if not by_type or access.policy is None:
            return out
        with self.sc.engine.connect() as conn:
            if not access.needs_relationship:
                self._select(conn, by_type, access.policy.resource_filter(), out)
                return out
            groups: dict[bool, list[str]] = {False: [], True: []}
            direct, glass = self._related(conn, access, sorted(patients))
            for p in sorted(patients):
                if p in glass:
                    groups[True].append(p)
                elif p in direct:
                    groups[False].append(p)
                else:  # perhaps through another of the person's records: the full check
                    reasons = explain_relationship(conn, access, p)
                    if reasons:
                        groups[any(r.startswith(GLASS_REASON) for r in reasons)].append(p)
            for glass, related in groups.items():
                if not related:
                    continue
                mine = resource.c.pk.in_(select(compartment.c.resource_pk).where(
                    compartment.c.patient_id.in_(related)))
                self._select(conn, by_type,
                             and_(access.policy.for_patient(glass).resource_filter(), mine),
                             out)
            # Directory resources and records of no patient: the full policy decides.
            loose = {t: {d.rid for d in rows if d.rtype == t and not d.patient_id}
                     for t in by_type}
            loose = {t: ids for t, ids in loose.items() if ids}
            if loose:
                self._select(conn, loose, access.policy.resource_filter(), out)
        return out

    @staticmethod
    def _related(conn, access: Access, patients: list[str]) -> tuple[set[str], set[str]]:
        """Patients with a counted relationship, and with break-glass, recorded against that
        very record (one query each for the batch; the rules are the policy's own)."""
        direct: set[str] = set()
        glass: set[str] = set()
        now = now_utc()
        r = care_relationship
        for i in range(0, len(patients), 500):
            chunk = patients[i:i + 500]
            direct.update(conn.execute(select(r.c.patient_id).where(
                r.c.patient_id.in_(chunk), r.c.ods == access.ods,
                or_(r.c.expires.is_(None), r.c.expires > now),
                *counted_relationship(r, access))).scalars())
            if access.username:
                glass.update(conn.execute(select(break_glass.c.patient_id).where(
                    break_glass.c.patient_id.in_(chunk),
                    break_glass.c.username == access.username,
                    break_glass.c.ods == access.ods, break_glass.c.role == access.role,
                    break_glass.c.expires > now)).scalars())
        return direct, glass

    @staticmethod
    def _select(conn, by_type: dict[str, set[str]], pred, out: dict) -> None:
        for rtype, ids in by_type.items():
            ids = sorted(ids)
            for i in range(0, len(ids), 500):
                where = [resource.c.type == rtype, resource.c.id.in_(ids[i:i + 500]),
                         resource.c.deleted == false()]
                if pred is not None:
                    where.append(pred)
                for rid, v, lu, content in conn.execute(select(
                        resource.c.id, resource.c.version, resource.c.last_updated,
                        resource.c.content).where(*where)):
                    out[(rtype, rid)] = Stored(rtype, rid, v, lu, content.encode())

    def govern(self, sub, access: Access, ev, visible: dict | None = None
               ) -> tuple[bool, Stored | None, str | None]:
        """May this subscriber read the event's resource now? (under its policy)"""
        codes = _codes(ev)
        if ev.version == 0 and codes & set(GOVERNANCE_EVENTS):
            # Governance events name no clinical content: they go to the IG lead of the
            # organisation that acted, whose role sees no records at all.
            if sub.kind in ("governance", "org") and sub.ods == ev.ods:
                return True, None, None
            return False, None, "governance events go to the acting organisation only"
        if visible is None:
            visible = self.visible(access, [ev])
        stored = visible.get((ev.rtype, ev.rid))
        if stored is not None:
            return True, stored, None
        if not self.store.exists(ev.rtype, ev.rid):
            return False, None, "the record was deleted"
        d = self.gov.decide(access, ev.rtype, ev.rid)
        return False, None, "; ".join(d.reasons)[:900] or "not permitted"

    def _flush(self, sub, access: Access, done: list[tuple]) -> int:
        """Record finished deliveries, their audit events and inbox rows in one transaction."""
        if not done:
            return 0
        stamp = now_utc()
        with self.store.begin_write() as conn, conn.begin():
            sent = refused = 0
            inbox = []
            # Still pending (and locked until commit): another worker whose lease outlived ours
            # may have finished some; those are neither counted nor audited twice.
            q = select(notify_delivery.c.id).where(
                notify_delivery.c.id.in_([d.delivery_id for d, _, _ in done]),
                notify_delivery.c.status == "pending")
            if self.pg:
                q = q.with_for_update()
            pending = set(conn.execute(q).scalars())
            done = [x for x in done if x[0].delivery_id in pending]
            if done:
                conn.execute(update(notify_delivery).where(
                    notify_delivery.c.id == bindparam("b_id")).values(
                    status=bindparam("b_status"), done=stamp, attempts=bindparam("b_attempts"),
                    last_error=None), [
                    {"b_id": d.delivery_id, "b_status": status,
                     "b_attempts": d.attempts + (status == "sent")} for d, status, _ in done])
            for d, status, reason in done:
                if status == "sent":
                    sent += 1
                    if sub.channel == "inbox":
                        inbox.append({"delivery_id": d.delivery_id, "ods": sub.ods,
                                      "role": sub.role if sub.kind == "governance" else None,
                                      "kind": _first_code(d, sub) or "write", "focus": f"{d.rtype}/{d.rid}",
                                      "patient_id": d.patient_id, "created": stamp})
                else:
                    refused += 1
                self.gov.audit(access, "notify", "0" if status == "sent" else "4",
                               patient_id=d.patient_id,
                               # which subscription is in notify_delivery: its id names an
                               # organisation by code, which pages must not show
                               entity=f"{d.rtype}/{d.rid} via {sub.channel}",
                               reason=reason if status != "sent" else
                               f"notification {_first_code(d, sub) or 'write'} sent", conn=conn)
            if inbox:
                conn.execute(insert(notify_inbox), inbox)
            values = {"sent": notify_subscription.c.sent + sent,
                      "refused": notify_subscription.c.refused + refused,
                      "lease_until": later(self.lease_seconds)}
            if sent:
                values["last_sent"] = now_utc()
            if sent and sub.status == "error":
                values["status"] = "active"
            conn.execute(update(notify_subscription).where(
                notify_subscription.c.id == sub.id).values(**values))
        if sent and sub.status == "error" and sub.resource_id:
            self._set_resource_status(sub.resource_id, "active")
        return sent + refused

    def _failed(self, sub, d, error: str) -> bool:
        """Record a failed attempt; True when it was dead-lettered (the queue moves on)."""
        attempts = d.attempts + 1
        dead = attempts >= self.max_attempts
        with self.store.begin_write() as conn, conn.begin():
            conn.execute(update(notify_delivery).where(
                notify_delivery.c.id == d.delivery_id, notify_delivery.c.status == "pending")
                .values(status="dead" if dead else "pending", attempts=attempts,
                        next_attempt=later(backoff(attempts, self.backoff_base)),
                        last_error=error[:200], done=now_utc() if dead else None))
            values = {"last_error": error[:200]}
            if dead:
                values["dead"] = notify_subscription.c.dead + 1
                if sub.kind in ("criteria", "topic"):
                    values["status"] = "error"
            conn.execute(update(notify_subscription).where(
                notify_subscription.c.id == sub.id).values(**values))
        if dead and sub.resource_id:
            self._set_resource_status(sub.resource_id, "error",
                                      f"a notification could not be delivered after "
                                      f"{attempts} attempts ({error[:100]})")
        return dead

    # ------------------------------------------------------------------ passes
    def prune(self, older_than_days: float = KEEP_DAYS) -> int:
        """Forget dispatched events that nobody was sent (most of them) after a while; events
        with deliveries stay while their deliveries do (the dead-letter page shows them)."""
        cutoff = (datetime.now(UTC) - timedelta(days=older_than_days)).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")
        delivered = select(notify_delivery.c.id).where(
            notify_delivery.c.event_id == notify_event.c.id).exists()
        with self.store.begin_write() as conn, conn.begin():
            return conn.execute(delete(notify_event).where(
                notify_event.c.dispatched == true(), notify_event.c.created < cutoff,
                ~delivered)).rowcount

    def heartbeats(self) -> int:
        """Topic subscriptions with a heartbeat period that have been sent nothing for that long
        get a heartbeat (no event, no patient data): the receiver knows the channel is alive.
        Each is claimed by an UPDATE guarded on last_sent, so one server sends it; a failed
        heartbeat is not retried (the next period sends another)."""
        with self.store.reads.connect() as conn:
            subs = conn.execute(select(notify_subscription).where(
                notify_subscription.c.heartbeat.isnot(None),
                notify_subscription.c.status == "active",
                notify_subscription.c.channel == "rest-hook")).all()
        sent = 0
        for sub in subs:
            cutoff = later(-sub.heartbeat)
            if (sub.last_sent or sub.created) > cutoff or _passed(sub.end):
                continue
            with self.store.begin_write() as conn, conn.begin():
                quiet = (notify_subscription.c.last_sent <= cutoff if sub.last_sent else
                         notify_subscription.c.last_sent.is_(None))
                if not conn.execute(update(notify_subscription).where(
                        notify_subscription.c.id == sub.id, quiet)
                        .values(last_sent=now_utc())).rowcount:
                    continue  # another worker sent it
            try:
                send_heartbeat(sub)
                sent += 1
            except DeliveryFailed as e:
                log_failure(log, "heartbeat not delivered", e)
        return sent

    def run_once(self) -> int:
        """One pass: activate, dispatch, deliver. Returns how much work was done."""
        if time.monotonic() - self._pruned > PRUNE_EVERY:
            self._pruned = time.monotonic()
            try:
                self.prune()
            except SQLAlchemyError as e:
                log_failure(log, "notification prune failed", e)
        work = self.activate() + self.dispatch() + self.heartbeats()
        claimed = self.claim()
        if not claimed:
            return work
        if len(claimed) == 1 or self.threads <= 1:
            return work + sum(self.serve(sid) for sid in claimed)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="notify-send")
        return work + sum(self._pool.map(self.serve, claimed))

    def drain(self, timeout: float = 30.0, settle: float = 0.0) -> int:
        """Work until nothing is due (tests, operators). Returns the amount of work done."""
        total, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.run_once()
            total += n
            if not n:
                if settle <= 0:
                    return total
                time.sleep(settle)
                if not self.run_once():
                    return total
        return total

    def stop(self, event: threading.Event, timeout: float = 30.0) -> None:
        super().stop(event, timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _passed(end: str | None) -> bool:
    """Is a FHIR instant (or date) in the past? Unreadable: not passed (the resource was
    checked when written)."""
    if not end:
        return False
    try:
        when = datetime.fromisoformat(end)  # 3.11 reads a trailing Z
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when < datetime.now(UTC)


def _codes(ev) -> set[str]:
    return set((ev.kinds or "").split())


def _first_code(ev, sub=None) -> str | None:
    return main_code(ev.kinds, sub.topics if sub is not None else None)


def retry_dead(sc, delivery_ids: list[int] | None = None, subscription_id: str | None = None
               ) -> int:
    """Put dead-lettered deliveries back in their queue (now, attempts from zero)."""
    conds = [notify_delivery.c.status == "dead"]
    if delivery_ids is not None:
        conds.append(notify_delivery.c.id.in_(delivery_ids))
    if subscription_id is not None:
        conds.append(notify_delivery.c.subscription_id == subscription_id)
    with sc.store.begin_write() as conn, conn.begin():
        return conn.execute(update(notify_delivery).where(*conds).values(
            status="pending", attempts=0, next_attempt=now_utc(), done=None)).rowcount


def counts(sc) -> dict[str, int]:
    with sc.engine.connect() as conn:
        return dict(conn.execute(select(notify_delivery.c.status, func.count())
                                 .group_by(notify_delivery.c.status)).all())


def attach_notify_worker(app, sc, interval: float | None = None) -> None:
    """Run a delivery worker for the web app's lifetime (its Starlette lifespan).
    ``SHAREDCARE_NOTIFY_WORKER=0`` turns it off (another process runs it)."""
    attach(app, lambda: NotifyWorker(sc), "notify", 0.25, interval)
