"""Partner feeds: configuration, HL7 v2 / FHIR / NDJSON / CSV ingestion, provenance, quality.

Everything is kept in the store as FHIR resources, so it is versioned, searchable and governed
like any other data:

* a feed is an ``Endpoint`` (identifier ``FEED_ID_SYSTEM|feed_id``, managingOrganization the
  partner's ODS code, ``status`` test/active/suspended for onboarding/live/paused, the kind as
  ``connectionType`` and the mapping as a JSON string extension);
* every accepted message/batch writes one ``Provenance`` (the receipt) in the *same* transaction
  as its data, at an id derived from (feed, message control id): a redelivered message finds its
  receipt and changes nothing, and a crash before commit leaves neither data nor receipt, so the
  sender -- which was not ACKed -- sends it again;
* every resource carries ``meta.source = codes.feed_source(ods, feed)``, the source-organisation
  tag and (HL7 v2) the source message time in ``meta.extension`` (``MESSAGE_TIME_EXT``): an entry
  older than what is stored is skipped, so a late A01 never overwrites an A08;
* rejected messages leave no clinical trace; a data-free ``OperationOutcome`` (reason, location,
  control id) is kept per rejection for the quality report (``record_rejects=False`` turns it off).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote

import orjson
from sqlalchemy import bindparam, false, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from ..api.bundle import parse_entries, plan_writes
from ..fhir import codes
from ..fhir.codes import BASE, NHS_NUMBER_SYSTEM, ODS_SYSTEM, SOURCE_ORG_SYSTEM, feed_source
from ..fhir.outcome import FHIRError
from ..identity import nhs_number
from ..logsafe import log_failure
from ..store.repository import PermitAll, StaleRead, Store, WriteOp, instant, now_utc
from ..store.schema import resource as resource_table
from .hl7v2 import HL7Error, build_ack, to_fhir

log = logging.getLogger(__name__)

_NS = uuid.UUID("3d0a7c55-2f7e-4b0e-8f57-5e1b4c1f2a77")
FEED_ID_SYSTEM = f"{BASE}/Id/feed"
FEED_KIND_SYSTEM = f"{BASE}/CodeSystem/feed-kind"
FEED_STATUS_EXT = f"{BASE}/StructureDefinition/feed-status"
FEED_MAPPING_EXT = f"{BASE}/StructureDefinition/feed-mapping"
MESSAGE_TIME_EXT = f"{BASE}/StructureDefinition/source-message-time"
RECEIPT_SYSTEM = f"{BASE}/Id/feed-receipt"
REJECT_SYSTEM = f"{BASE}/CodeSystem/feed-reject"
KINDS = ("fhir", "hl7v2", "csv")
STATUSES = {"onboarding": "test", "live": "active", "paused": "suspended"}
_STATUS_OF = {v: k for k, v in STATUSES.items()}
MANDATORY_PATIENT = ("name", "birthDate", "gender", "address")


class FeedError(Exception):
    """A feed-level refusal (unknown or paused feed, wrong kind). No patient data in the text."""


@dataclass
class Feed:
    ods: str
    feed_id: str
    kind: str
    status: str
    mapping: dict | None = None
    endpoint_id: str = ""

    @property
    def source(self) -> str:
        return feed_source(self.ods, self.feed_id)


@dataclass
class IngestResult:
    outcome: str  # accepted | duplicate
    receipt: str  # Provenance id
    written: list[str] = field(default_factory=list)  # 'Type/id/_history/v'
    stale: list[str] = field(default_factory=list)  # 'Type/id' skipped as older than stored
    merges: list[tuple[str, str]] = field(default_factory=list)  # (survivor id, retired id)
    warnings: list[str] = field(default_factory=list)


def endpoint_id(feed_id: str) -> str:
    return str(uuid.uuid5(_NS, f"feed|{feed_id}"))


def receipt_id(ods: str, feed_id: str, message_id: str) -> str:
    return str(uuid.uuid5(_NS, f"receipt|{ods}|{feed_id}|{message_id}"))


def message_key(mapped, raw: str) -> str:
    """What identifies one HL7 v2 message on a feed: its control id (MSH-10) and a digest of its
    segments. A redelivery repeats both; two different messages that reuse a control id (senders
    restarting counters, test systems replaying templates) are different data, not duplicates."""
    import hashlib
    import re

    segments = [s.rstrip() for s in re.split(r"\r\n|\n|\r", raw.lstrip("\ufeff")) if s.strip()]
    digest = hashlib.sha256("\r".join(segments).encode("utf-8")).hexdigest()[:32]
    return f"{mapped.control_id}|{digest}"


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _parse_ts(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def message_time_of(res: dict) -> datetime | None:
    for ext in (res.get("meta") or {}).get("extension") or ():
        if ext.get("url") == MESSAGE_TIME_EXT:
            return _parse_ts(ext.get("valueInstant"))
    return None


def stamp(res: dict, ods: str, feed_id: str, message_time: datetime | None = None) -> dict:
    """meta.source, the source-organisation tag (the feed's organisation is the controller,
    whatever the sender wrote) and the source message time."""
    meta = dict(res.get("meta") or {})
    meta["source"] = feed_source(ods, feed_id)
    tags = [t for t in meta.get("tag") or [] if t.get("system") != SOURCE_ORG_SYSTEM]
    meta["tag"] = [*tags, {"system": SOURCE_ORG_SYSTEM, "code": ods}]
    if message_time is not None:
        exts = [e for e in meta.get("extension") or [] if e.get("url") != MESSAGE_TIME_EXT]
        meta["extension"] = [*exts, {"url": MESSAGE_TIME_EXT, "valueInstant": _ts(message_time)}]
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    return {**res, "meta": meta}


@dataclass(eq=False)
class _Pending:
    """One HL7 v2 message waiting for the group commit."""
    feed: Feed
    mapped: object
    raw: str
    result: IngestResult | None = None
    error: Exception | None = None
    done: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


@dataclass(eq=False)
class _Plan:
    """What one HL7 v2 message writes (``keep`` None: a redelivery, nothing to write)."""
    rid: str
    keep: list[WriteOp] | None
    stale: list[str] = field(default_factory=list)
    merges: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    keys: set = field(default_factory=set)

    def result(self, results) -> IngestResult:
        return IngestResult("accepted", self.rid,
                            [f"{r.stored.type}/{r.stored.id}/_history/{r.stored.version}"
                             for r in results], self.stale, self.merges, self.warnings)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _OrgPolicy:
    """Bookkeeping view of one controller's rows (quality report) -- never for a person."""

    def __init__(self, ods: str):
        self.ods = ods

    def resource_filter(self):
        return resource_table.c.source_org == self.ods


def _transient(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError | StaleRead):
        # a concurrent writer created the same receipt/Person, or changed a Person the
        # identity hook read: retry sees it
        return True
    if isinstance(exc, OperationalError | DBAPIError):
        text = str(exc).lower()
        return any(s in text for s in ("locked", "serializ", "deadlock", "could not obtain"))
    return False


class FeedService:
    def __init__(self, sc, *, record_rejects: bool = True, cache_seconds: float = 1.0,
                 group_max: int = 64):
        # Identity is not the feeds' business: the store's identity hook links every Patient
        # written (sharedcare.identity.hook), whatever path wrote it.
        self.sc = sc
        self.store: Store = sc.store
        self.record_rejects = record_rejects
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Feed | None]] = {}
        self._routes: tuple[float, list[Feed]] | None = None  # hl7v2 feeds, for MSH routing
        self._lock = threading.Lock()
        # SQLite has one writer: queue writers on a lock here instead of on SQLite's busy handler,
        # which sleeps in growing steps (4 connections were slower than 1 without this).
        self._writer = threading.Lock() if sc.engine.dialect.name == "sqlite" else _NoLock()
        # Group commit of HL7 v2 messages (see _group_commit).
        self.group_max = group_max
        self._gc_lock = threading.Lock()
        self._gc_queue: list[_Pending] = []
        self._gc_busy = False
        self._before_commit = None  # tests: called inside the transaction, before COMMIT
        self._match_sql: dict = {}
        self._current_sql: dict = {}

    # ================================================================== configuration
    def add_feed(self, ods: str, feed_id: str, kind: str, mapping: dict | None = None,
                 status: str = "onboarding") -> Feed:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if not ods or not feed_id:
            raise ValueError("ods and feed_id are required")
        existing = self.get_feed(feed_id, cached=False)
        if existing is not None and existing.ods != ods:
            raise ValueError(f"feed {feed_id} already belongs to {existing.ods}")
        feed = Feed(ods, feed_id, kind, status, mapping, endpoint_id(feed_id))
        self._save(feed)
        return feed

    def _save(self, feed: Feed) -> None:
        res = {
            "resourceType": "Endpoint",
            "meta": {"source": feed.source,
                     "tag": [{"system": SOURCE_ORG_SYSTEM, "code": feed.ods}]},
            "extension": [{"url": FEED_STATUS_EXT, "valueCode": feed.status}],
            "identifier": [{"system": FEED_ID_SYSTEM, "value": feed.feed_id}],
            "status": STATUSES[feed.status],
            "connectionType": {"system": FEED_KIND_SYSTEM, "code": feed.kind},
            "name": f"{feed.ods} {feed.kind} feed {feed.feed_id}",
            "managingOrganization": {"identifier": {"system": ODS_SYSTEM, "value": feed.ods}},
            "payloadType": [{"coding": [{"system": FEED_KIND_SYSTEM, "code": feed.kind}]}],
            "address": feed.source,
        }
        if feed.mapping is not None:
            res["extension"].append({"url": FEED_MAPPING_EXT,
                                     "valueString": orjson.dumps(feed.mapping).decode()})
        self.store.write([WriteOp("PUT", "Endpoint", feed.endpoint_id, res)])
        with self._lock:
            self._cache[feed.feed_id] = (time.monotonic(), feed)
            self._routes = None

    @staticmethod
    def _feed_of(res: dict) -> Feed:
        status = next((e.get("valueCode") for e in res.get("extension") or []
                       if e.get("url") == FEED_STATUS_EXT), None) or _STATUS_OF.get(
            res.get("status"), "paused")
        mapping = next((orjson.loads(e["valueString"]) for e in res.get("extension") or []
                        if e.get("url") == FEED_MAPPING_EXT), None)
        feed_id = next(i["value"] for i in res["identifier"] if i["system"] == FEED_ID_SYSTEM)
        ods = res["managingOrganization"]["identifier"]["value"]
        return Feed(ods, feed_id, res["connectionType"]["code"], status, mapping, res["id"])

    def get_feed(self, feed_id: str, cached: bool = True) -> Feed | None:
        now = time.monotonic()
        if cached:
            with self._lock:
                hit = self._cache.get(feed_id)
            if hit and now - hit[0] < self.cache_seconds:
                return hit[1]
        try:
            feed = self._feed_of(self.store.read("Endpoint", endpoint_id(feed_id),
                                                 PermitAll()).json())
        except FHIRError:
            feed = None
        with self._lock:
            self._cache[feed_id] = (now, feed)
        return feed

    def list_feeds(self, ods: str | None = None) -> list[Feed]:
        feeds = []
        for s in self.store.iter_current(PermitAll(), ["Endpoint"]):
            res = s.json()
            if any(i.get("system") == FEED_ID_SYSTEM for i in res.get("identifier") or []):
                feed = self._feed_of(res)
                if ods is None or feed.ods == ods:
                    feeds.append(feed)
        return sorted(feeds, key=lambda f: (f.ods, f.feed_id))

    def set_status(self, feed_id: str, status: str) -> Feed:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        feed = self.get_feed(feed_id, cached=False)
        if feed is None:
            raise KeyError(f"no feed {feed_id}")
        feed.status = status
        self._save(feed)
        return feed

    def _accepting(self, feed_id: str | None, kind: str) -> Feed:
        if not feed_id:
            raise FeedError("no feed is configured for this sender")
        feed = self.get_feed(feed_id)
        if feed is None:
            raise FeedError(f"feed {feed_id} is not configured")
        if feed.status == "paused":
            raise FeedError(f"feed {feed_id} is paused: input is not being accepted")
        if feed.kind != kind:
            raise FeedError(f"feed {feed_id} is a {feed.kind} feed, not {kind}")
        return feed

    def feed_for_message(self, raw: str) -> str | None:
        """Route an HL7 v2 message without a fixed feed: a live/onboarding hl7v2 feed whose mapping
        lists the sending facility (MSH-4) or application (MSH-3) in ``senders``, or named so."""
        first = raw.lstrip("\ufeff").replace("\n", "\r").split("\r", 1)[0]
        parts = first.split("|")
        names = {p.split("^")[0] for p in parts[2:4] if p}
        # The hl7v2 feeds, kept as long as a feed's configuration (cache_seconds): reading
        # every Endpoint for every message was a store scan per message.
        now = time.monotonic()
        with self._lock:
            routes = self._routes
        if routes is None or now - routes[0] >= self.cache_seconds:
            routes = (now, [f for f in self.list_feeds() if f.kind == "hl7v2"])
            with self._lock:
                self._routes = routes
        for feed in routes[1]:
            senders = set((feed.mapping or {}).get("senders") or [])
            if feed.feed_id in names or names & senders:
                return feed.feed_id
        return None

    # ================================================================== HL7 v2
    def ingest_hl7(self, raw: str, feed_id: str | None = None) -> str:
        """One HL7 v2 message -> ACK text. AA only after commit; NACK (AE/AR + ERR) otherwise."""
        ack, _ = self.ingest_hl7_detail(raw, feed_id)
        return ack

    def ingest_hl7_detail(self, raw: str, feed_id: str | None = None
                          ) -> tuple[str, IngestResult | None]:
        """Parse and map here (in the caller's thread, outside any transaction), then apply the
        message in the group commit: concurrent callers' messages share one transaction, one
        savepoint each, and each caller gets its ACK only after that transaction committed."""
        feed = None
        try:
            feed = self._accepting(feed_id or self.feed_for_message(raw), "hl7v2")
            mapped = to_fhir(raw, source_org=feed.ods, feed_id=feed.feed_id)
            pending = _Pending(feed, mapped, raw)
            self._group_commit(pending)
            if pending.error is not None:
                raise pending.error
            return build_ack(raw), pending.result
        except FeedError as e:
            err = HL7Error("AR", "207", "MSH", str(e))
        except HL7Error as e:
            err = e
        except FHIRError as e:
            # A mapped resource the store will not take; the location, never the values.
            where = next((i.expression for i in e.issues if i.expression), None) or "message"
            err = HL7Error("AE", "207", None, f"mapped data failed FHIR validation at {where}")
        except Exception as e:  # noqa: BLE001 - any failure is a NACK, never a crash
            log_failure(log, "HL7 v2 ingest failed", e)
            return build_ack(raw, "AE", HL7Error("AE", "207", None,
                                                 "Application internal error")), None
        self._record_reject(feed, raw, err)
        return build_ack(raw, err.ack_code, err), None

    def _retrying(self, fn, attempts: int = 4):
        for n in range(attempts):
            try:
                return fn()
            except (OperationalError, IntegrityError, DBAPIError) as e:
                if n == attempts - 1 or not _transient(e):
                    raise
                time.sleep(0.01 * (2 ** n))

    # ------------------------------------------------------------------ group commit
    def _group_commit(self, pending: _Pending) -> None:
        """Apply one message, together with whatever other callers queued meanwhile.

        No timer and no thread of its own: the first caller to find no commit in progress leads
        one, taking every message queued (up to ``group_max``) into one transaction; callers
        that arrive while it runs queue up, and when it ends the oldest of them leads the next.
        So one connection pays nothing extra, and under load the commit (and the SQLite write
        lock, and the PostgreSQL round trips of BEGIN/COMMIT) is shared. Messages are applied in
        queue order; a connection has one message in flight (the listener waits for its ACK), so
        each connection's messages are applied in the order sent. Returns only after the
        transaction holding the message committed (or failed: ``pending.error``)."""
        with self._gc_lock:
            self._gc_queue.append(pending)
            lead = not self._gc_busy
            if lead:
                self._gc_busy = True
        if not lead:
            pending.wake.wait()
            if pending.done:
                return
        # This caller leads a commit (its own message is first in the queue).
        try:
            while True:
                with self._gc_lock:
                    batch = self._gc_queue[:self.group_max]
                    del self._gc_queue[:len(batch)]
                try:
                    self._commit_group(batch)
                finally:
                    for p in batch:
                        if p.result is None and p.error is None:
                            # interrupted: a NACK (the sender resends; a receipt that did commit
                            # makes the resend a duplicate) -- never an ACK without a commit
                            p.error = RuntimeError("group commit interrupted")
                        p.done = True
                        if p is not pending:
                            p.wake.set()
                if pending.done:
                    break
        finally:
            with self._gc_lock:
                if self._gc_queue:  # hand over to the oldest waiter
                    self._gc_queue[0].wake.set()
                else:
                    self._gc_busy = False

    def _commit_group(self, batch: list[_Pending]) -> None:
        """One transaction for the batch, a savepoint per message: a message that fails rolls
        back alone (``error`` set, NACKed by its caller) and the others still commit. A
        transient failure (lock, serialization, a concurrent writer's receipt) retries the whole
        batch; on the last attempt it fails only its own message."""
        attempts = 4
        for n in range(attempts):
            for p in batch:
                p.result, p.error = None, None
            try:
                with self._writer, self.store.begin_write() as conn, conn.begin():
                    if len(batch) == 1:
                        p = batch[0]
                        p.result = self._apply_hl7(conn, p.feed, p.mapped, p.raw)
                    else:
                        self._apply_group(conn, batch, retry=n < attempts - 1)
                    if self._before_commit is not None:
                        self._before_commit(batch)  # tests: fail here, nothing may be ACKed
                return
            except Exception as e:  # noqa: BLE001 - the transaction failed: retry, or NACK all
                if n < attempts - 1 and _transient(e):
                    time.sleep(0.01 * (2 ** n))
                    continue
                # Nothing of the batch committed: every message is NACKed (one whose own
                # savepoint had failed keeps its own reason).
                for p in batch:
                    p.result = None
                    if p.error is None:
                        p.error = e
                return

    def _commit_hl7(self, feed: Feed, mapped, raw: str) -> IngestResult:
        """One message in its own transaction (the group commit's unit, alone)."""
        with self.store.begin_write() as conn, conn.begin():
            return self._apply_hl7(conn, feed, mapped, raw)

    def _apply_group(self, conn, batch: list[_Pending], retry: bool) -> None:
        """Several messages in one transaction, in queue order. Consecutive messages that touch
        nothing in common (resources, identifiers; same controller; no merge) are written as one
        unit -- one Store.write, so one set of statements for all of them -- in a savepoint; if
        that unit fails, its messages are written one by one, each in its own savepoint, so a
        bad message is NACKed alone. A message that shares something with the unit being built
        is planned again after that unit is written, so it sees it (as it would one by one)."""
        i = 0
        while i < len(batch):
            group: list[tuple[_Pending, _Plan]] = []
            used: set[tuple] = set()
            j = i
            while j < len(batch):
                p = batch[j]
                try:
                    plan = self._plan_hl7(conn, p.feed, p.mapped, p.raw)
                except Exception as e:  # this message's NACK (or a retry)
                    if retry and _transient(e):
                        raise
                    p.error = e
                    j += 1
                    continue
                if plan.keep is None:
                    p.result = IngestResult("duplicate", plan.rid)
                    j += 1
                    continue
                if group and (plan.keys & used or plan.merges
                              or p.feed.ods != group[0][0].feed.ods):
                    break  # planned again once the group is written
                group.append((p, plan))
                used |= plan.keys
                j += 1
                if plan.merges:
                    break
            if group:
                self._write_group(conn, group, retry)
            i = j

    def _write_group(self, conn, group: list[tuple[_Pending, _Plan]], retry: bool) -> None:
        savepoint = conn.begin_nested()
        try:
            results = self.store.write([op for _, plan in group for op in plan.keep], conn,
                                       source_org=group[0][0].feed.ods)
        except Exception as e:  # one of them is bad: each on its own
            savepoint.rollback()
            if retry and _transient(e):
                raise
            if len(group) == 1:
                group[0][0].error = e
                return
            for p, plan in group:
                one = conn.begin_nested()
                try:
                    p.result = plan.result(self.store.write(plan.keep, conn,
                                                            source_org=p.feed.ods))
                except Exception as e1:  # this message's NACK (or a retry)
                    one.rollback()
                    if retry and _transient(e1):
                        raise
                    p.error = e1
                else:
                    one.commit()
            return
        savepoint.commit()
        k = 0
        for p, plan in group:
            p.result = plan.result(results[k:k + len(plan.keep)])
            k += len(plan.keep)

    def _apply_hl7(self, conn, feed: Feed, mapped, raw: str) -> IngestResult:
        """Plan and write one message in ``conn``'s transaction."""
        plan = self._plan_hl7(conn, feed, mapped, raw)
        if plan.keep is None:
            return IngestResult("duplicate", plan.rid)
        return plan.result(self.store.write(plan.keep, conn, source_org=feed.ods))

    def _plan_hl7(self, conn, feed: Feed, mapped, raw: str) -> _Plan:
        """What one message writes (reads only): the receipt check, the conditional matches,
        the message-time check against the current versions, merges, the receipt."""
        ods, mtime = feed.ods, mapped.message_time
        rid = receipt_id(ods, feed.feed_id, message_key(mapped, raw))
        bundle = orjson.loads(orjson.dumps(mapped.bundle))
        tag_q = f"&_tag={quote(SOURCE_ORG_SYSTEM, safe=':/')}|{quote(ods, safe='')}"
        for e in bundle["entry"]:
            res = e["resource"]
            if res["resourceType"] == "Provenance":
                e["request"]["url"] = f"Provenance/{rid}"
                res["id"] = rid
                e["resource"] = stamp(res, ods, feed.feed_id)
                continue
            if "?" in e["request"]["url"]:
                # A conditional update only ever matches this organisation's own records.
                e["request"]["url"] += tag_q
            e["resource"] = stamp(res, ods, feed.feed_id, mtime)
        entries = parse_entries(bundle)
        # The receipt and every conditional update's matches in one statement.
        conditions = [tuple(e.url.split("?", 1)) for e in entries
                      if e.method == "PUT" and "?" in e.url and "/" not in e.url.split("?")[0]]
        duplicate, found = self._lookups(conn, rid, conditions)
        if duplicate:
            return _Plan(rid, None)

        def match(rtype, query, conn, limit=2):
            hit = found.get((rtype, query)) if limit == 2 else None
            return hit if hit is not None else self._match(rtype, query, conn, limit)

        ops, _, _ = plan_writes(self.store, entries, conn, match)
        current = self._current(conn, [(o.rtype, o.rid) for o in ops if o.method == "PUT"])
        keep, stale = [], []
        for op in ops:
            cur = current.get((op.rtype, op.rid))
            cur_t = message_time_of(cur) if cur else None
            if op.rtype != "Provenance" and cur_t is not None and cur_t > mtime:
                stale.append(f"{op.rtype}/{op.rid}")
            else:
                keep.append(op)
        merges: list[tuple[str, str]] = []
        for survivor_key, retired_key in mapped.merges:
            merges.append(self._merge_ops(conn, feed, mtime, ops, keep, current,
                                          survivor_key, retired_key))
        prov = next(o for o in keep if o.rtype == "Provenance")
        self._finish_receipt(prov.resource, keep, stale, mapped.warnings)
        # What another message of the same group must not touch for the two to be written as
        # one unit: the same resources, or the same identifiers (looked up or written).
        keys: set[tuple] = set()
        for rtype, query in conditions:
            idents = [v for n, v in parse_qsl(query) if n == "identifier"]
            keys.update(("ident", rtype, v) for v in idents)
            if not idents:
                keys.add(("query", rtype, query))
        for op in keep:
            keys.add((op.rtype, op.rid))
            for i in (op.resource or {}).get("identifier") or ():
                if isinstance(i, dict):
                    keys.add(("ident", op.rtype, f"{i.get('system') or ''}|{i.get('value')}"))
        return _Plan(rid, keep, stale, merges, list(mapped.warnings), keys)

    # ------------------------------------------------------------------ prepared lookups
    # The three reads of every message (receipt, conditional-update matches, current versions)
    # as statements built once and reused with new values, so SQLAlchemy neither rebuilds nor
    # recompiles them per message (they were a third of a message's time).
    def _exists(self, conn, rtype: str, rid: str) -> bool:
        """Store.exists, prepared."""
        stmt = self._match_sql.get("exists")
        if stmt is None:
            stmt = self._match_sql["exists"] = (
                select(resource_table.c.pk).where(resource_table.c.type == bindparam("t"),
                                                  resource_table.c.id == bindparam("i"),
                                                  resource_table.c.deleted == false()).limit(1))
        return conn.execute(stmt, {"t": rtype, "i": rid}).first() is not None

    def _lookups(self, conn, rid: str, conditions: list[tuple[str, str]]
                 ) -> tuple[bool, dict[tuple[str, str], list[str]]]:
        """Is the receipt ``Provenance/rid`` stored, and the (at most 2) ids each conditional
        ``(type, query)`` matches -- one UNION ALL round trip, prepared per message shape.
        Conditions without the prepared shape are left out (``_match`` answers them)."""
        from urllib.parse import parse_qsl

        from sqlalchemy import literal, union_all

        shape, values, asked = [], {"rid": rid}, []
        for rtype, query in dict.fromkeys(conditions):
            params = parse_qsl(query, keep_blank_values=True)
            vals = self._token_values(rtype, params)
            names = tuple(n for n, _ in params)
            if vals is None or self._match_statement_cached(rtype, names) is False:
                continue
            k = len(asked)
            shape.append((rtype, names))
            values.update({f"q{k}{n}": v for n, v in vals.items()})
            asked.append((rtype, query))
        key = ("lookups", tuple(shape))
        stmt = self._match_sql.get(key)
        if stmt is None:
            receipt = (select(literal(-1).label("k"), resource_table.c.id)
                       .where(resource_table.c.type == "Provenance",
                              resource_table.c.id == bindparam("rid"),
                              resource_table.c.deleted == false()))
            parts = [receipt]
            for k, (rtype, names) in enumerate(shape):
                sub = self._match_statement(rtype, names, 2, prefix=f"q{k}",
                                            label=k).subquery()
                parts.append(select(sub.c.k, sub.c.id))
            stmt = self._match_sql[key] = parts[0] if len(parts) == 1 else union_all(*parts)
        found: dict[tuple[str, str], list[str]] = {c: [] for c in asked}
        duplicate = False
        for k, i in conn.execute(stmt, values):
            if k == -1:
                duplicate = True
            else:
                found[asked[k]].append(i)
        return duplicate, found

    def _token_values(self, rtype: str, params: list[tuple[str, str]]) -> dict | None:
        """{'s0': system, 'c0': code, ...} when every parameter is one ``system|code`` (and not
        a Patient NHS number, which matches the whole person); None otherwise."""
        if not params:
            return None
        values: dict[str, str] = {}
        for k, (name, raw) in enumerate(params):
            system, bar, code = raw.partition("|")
            if (not bar or not system or not code or "," in raw or "\\" in raw
                    or (rtype == "Patient" and name == "identifier"
                        and system == NHS_NUMBER_SYSTEM)):
                return None
            values[f"s{k}"], values[f"c{k}"] = system, code
        return values

    def _match_statement_cached(self, rtype: str, names: tuple[str, ...]):
        key = (rtype, names, 2)
        stmt = self._match_sql.get(key)
        if stmt is None:
            stmt = self._match_sql[key] = self._match_statement(rtype, names, 2)
        return stmt

    def _match(self, rtype: str, query: str, conn, limit: int = 2) -> list[str]:
        """The system's conditional match (Writer.match: Store.match_ids with PermitAll), with
        the HL7 feed's shape -- every parameter a token ``system|code`` (identifier, _tag) --
        as one prepared statement per (type, parameter names). Anything else (modifiers,
        several values, escapes, a Patient NHS number, which matches the whole person) goes to
        Store.match_ids."""
        from urllib.parse import parse_qsl

        params = parse_qsl(query, keep_blank_values=True)
        values = self._token_values(rtype, params)
        stmt = None
        if values is not None:
            key = (rtype, tuple(n for n, _ in params), limit)
            stmt = self._match_sql.get(key)
            if stmt is None:
                stmt = self._match_sql[key] = self._match_statement(rtype, key[1], limit)
        if stmt is None or stmt is False:
            return self.store.match_ids(rtype, query, conn, limit=limit, policy=PermitAll())
        return list(conn.execute(stmt, values).scalars())

    def _match_statement(self, rtype: str, names: tuple[str, ...], limit: int,
                         prefix: str = "", label: int | None = None):
        """What SearchBuilder builds for ``name=system|code`` token parameters (one
        ``pk IN (index rows)`` per parameter), with bound values; False if a name is not a
        plain token parameter of the type."""
        from sqlalchemy import literal

        from ..store.schema import idx_token

        try:
            known = self.store.indexer.params_for(rtype)
        except ValueError:
            return False
        conds = [resource_table.c.type == rtype, resource_table.c.deleted == false()]
        for k, name in enumerate(names):
            sp = known.get(name)
            if sp is None or sp.type != "token" or name.startswith("_") and name != "_tag":
                return False
            conds.append(resource_table.c.pk.in_(
                select(idx_token.c.resource_pk).where(
                    idx_token.c.type == sp.base, idx_token.c.param == sp.code,
                    idx_token.c.code == bindparam(f"{prefix}c{k}"),
                    idx_token.c.system == bindparam(f"{prefix}s{k}"))))
        cols = [resource_table.c.id] if label is None else [
            literal(label).label("k"), resource_table.c.id]
        return select(*cols).where(*conds).limit(limit)

    def _current(self, conn, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Current content of the given (type, id)s: one statement, a UNION ALL of one IN list
        per type, so each part uses the (type, id) index (a row-value IN list is a full scan on
        SQLite: it made every message slower as the store grew). Prepared per list of types."""
        from sqlalchemy import union_all

        by_type: dict[str, list[str]] = {}
        for t, i in dict.fromkeys(keys):
            by_type.setdefault(t, []).append(i)
        if not by_type:
            return {}
        types = tuple(by_type)
        stmt = self._current_sql.get(types)
        if stmt is None:
            parts = [select(resource_table.c.type, resource_table.c.id, resource_table.c.content)
                     .where(resource_table.c.type == t,
                            resource_table.c.id.in_(bindparam(f"ids{k}", expanding=True)),
                            resource_table.c.deleted == false())
                     for k, t in enumerate(types)]
            stmt = self._current_sql[types] = parts[0] if len(parts) == 1 else union_all(*parts)
        out: dict[tuple[str, str], dict] = {}
        for t, i, c in conn.execute(stmt, {f"ids{k}": by_type[t] for k, t in enumerate(types)}):
            out[(t, i)] = orjson.loads(c)
        return out

    @staticmethod
    def _finish_receipt(prov: dict, keep: list[WriteOp], stale: list[str],
                        warnings: list[str]) -> None:
        written = {f"{o.rtype}/{o.rid}" for o in keep if o.rtype != "Provenance"}
        targets = [t for t in prov.get("target") or [] if t.get("reference") in written]
        if targets:
            prov["target"] = targets
        if stale:
            prov["reason"] = [{"text": f"{len(stale)} entries older than the stored data were "
                                       "not applied (message time)"}]
        if warnings:
            prov.setdefault("extension", []).extend(
                {"url": f"{BASE}/StructureDefinition/feed-warning", "valueString": w[:500]}
                for w in warnings[:20])

    def _merge_ops(self, conn, feed: Feed, mtime: datetime, ops: list[WriteOp],
                   keep: list[WriteOp], current: dict, survivor_key: str,
                   retired_key: str) -> tuple[str, str]:
        """A40/A47 (v2-to-FHIR IG): the retired Patient gets ``link`` replaced-by the survivor and
        ``active=false``; the survivor's ``replaces`` link gets the retired Patient's reference.
        Nothing is deleted or re-pointed, so :meth:`unmerge` can restore it from history."""
        s_sys, _, s_val = survivor_key.partition("|")
        r_sys, _, r_val = retired_key.partition("|")

        def has(res, sys, val):
            return any(i.get("system") == sys and i.get("value") == val
                       for i in res.get("identifier") or [])

        survivor_op = next(o for o in ops if o.rtype == "Patient" and has(o.resource, s_sys, s_val))
        sid = survivor_op.rid
        q = (f"identifier={quote(r_sys, safe=':/')}|{quote(r_val, safe='')}"
             f"&_tag={quote(SOURCE_ORG_SYSTEM, safe=':/')}|{quote(feed.ods, safe='')}")
        found = [i for i in self.store.match_ids("Patient", q, conn, limit=5,
                                                   policy=PermitAll()) if i != sid]
        retired_id = found[0] if found else str(uuid.uuid5(_NS, f"retired|{feed.ods}|{retired_key}"))
        if found:
            old = current.get(("Patient", retired_id)) or self.store.read(
                "Patient", retired_id, PermitAll(), conn).json()
        else:
            old = {"resourceType": "Patient", "identifier": [{"system": r_sys, "value": r_val}]}
        links = [lk for lk in old.get("link") or []
                 if (lk.get("other") or {}).get("reference") != f"Patient/{sid}"]
        links.append({"other": {"reference": f"Patient/{sid}"}, "type": "replaced-by"})
        retired = stamp({**old, "active": False, "link": links}, feed.ods, feed.feed_id,
                        max(mtime, message_time_of(old) or mtime))
        keep[:] = [o for o in keep if (o.rtype, o.rid) != ("Patient", retired_id)]
        keep.insert(len(keep) - 1, WriteOp("PUT", "Patient", retired_id, retired))
        # The survivor: on this message's version, or (if that was stale) on the stored one.
        if survivor_op in keep:
            surv = survivor_op.resource
        else:
            surv = dict(current[("Patient", sid)])
            keep.insert(len(keep) - 1, WriteOp("PUT", "Patient", sid, surv))
            survivor_op = keep[-2]
        links = [lk for lk in surv.get("link") or []
                 if not ((lk.get("other") or {}).get("identifier") or {}).get("value") == r_val
                 and (lk.get("other") or {}).get("reference") != f"Patient/{retired_id}"]
        links.append({"other": {"reference": f"Patient/{retired_id}",
                                "identifier": {"system": r_sys, "value": r_val}},
                      "type": "replaces"})
        survivor_op.resource = {**surv, "link": links}
        return sid, retired_id

    def unmerge(self, survivor_id: str, retired_id: str, reason: str = "unmerge") -> None:
        """Undo a merge: the retired Patient goes back to its last version before it was marked
        replaced-by the survivor; the survivor loses its ``replaces`` link. New versions, so the
        merge and the unmerge both stay in history."""
        def replaced_by(res):
            return any(lk.get("type") == "replaced-by"
                       and (lk.get("other") or {}).get("reference") == f"Patient/{survivor_id}"
                       for lk in res.get("link") or [])

        history, _ = self.store.history(PermitAll(), "Patient", retired_id, count=1000)
        before = next((s.json() for _, s, _ in history if s.content and not replaced_by(s.json())),
                      None)
        retired = self.store.read("Patient", retired_id, PermitAll()).json()
        if not replaced_by(retired):
            raise FHIRError.of(409, "conflict",
                               f"Patient/{retired_id} is not merged into Patient/{survivor_id}")
        if before is None:  # created by the merge itself: reactivate without the link
            before = {**retired, "active": True,
                      "link": [lk for lk in retired.get("link") or [] if lk.get("type") !=
                               "replaced-by"]}
        if not before.get("link"):
            before.pop("link", None)
        survivor = self.store.read("Patient", survivor_id, PermitAll()).json()
        links = [lk for lk in survivor.get("link") or []
                 if not (lk.get("type") == "replaces"
                         and (lk.get("other") or {}).get("reference") == f"Patient/{retired_id}")]
        survivor = {**survivor, "link": links} if links else {
            k: v for k, v in survivor.items() if k != "link"}
        ods = next((t["code"] for t in survivor["meta"].get("tag") or []
                    if t.get("system") == SOURCE_ORG_SYSTEM), None)
        now = datetime.now(UTC)
        ops = []
        for rid, res in ((retired_id, before), (survivor_id, survivor)):
            meta = dict(res.get("meta") or {})
            exts = [e for e in meta.get("extension") or [] if e.get("url") != MESSAGE_TIME_EXT]
            meta["extension"] = [*exts, {"url": MESSAGE_TIME_EXT, "valueInstant": _ts(now)}]
            ops.append(WriteOp("PUT", "Patient", rid, {**res, "meta": meta}))
        prov = {
            "resourceType": "Provenance",
            "target": [{"reference": f"Patient/{retired_id}"},
                       {"reference": f"Patient/{survivor_id}"}],
            "recorded": instant(now_utc()),
            "activity": {"text": "unmerge"},
            "reason": [{"text": reason[:500]}],
            "agent": [{"who": {"display": "sharedcare identity service"}}],
        }
        ops.append(WriteOp("POST", "Provenance", str(uuid.uuid4()), prov))
        with self.store.begin_write() as conn, conn.begin():
            self.store.write(ops, conn, source_org=ods)

    # ================================================================== rejects
    def _record_reject(self, feed: Feed | None, raw, err: HL7Error | str,
                       kind: str = "hl7v2", message_id: str | None = None) -> None:
        """A data-free note of a rejected message for the quality report."""
        if not self.record_rejects or feed is None:
            return
        if isinstance(err, HL7Error):
            code, location, text = err.error_code, err.location, err.text
            if message_id is None:
                message_id = _control_id(raw)
        else:
            code, location, text = "reject", None, str(err)
        outcome = {
            "resourceType": "OperationOutcome",
            "meta": {"source": feed.source, "tag": [{"system": SOURCE_ORG_SYSTEM,
                                                     "code": feed.ods}]},
            "issue": [{"severity": "error", "code": "processing",
                       "details": {"coding": [{"system": REJECT_SYSTEM, "code": kind}],
                                   "text": text[:500]},
                       **({"expression": [location]} if location else {}),
                       **({"diagnostics": f"message {message_id[:64]}"} if message_id else {})}],
        }
        try:
            self.store.write([WriteOp("POST", "OperationOutcome", str(uuid.uuid4()), outcome)])
        except Exception as e:  # noqa: BLE001 - recording a reject must not fail the NACK
            log_failure(log, "could not record a rejected message", e)

    # ================================================================== FHIR
    def ingest_fhir_bundle(self, bundle: dict, feed_id: str) -> dict:
        """A transaction Bundle pushed by a partner: stamped (meta.source, controller tag), one
        Provenance, one database transaction. A Bundle with an ``identifier`` already received on
        this feed changes nothing. Returns the transaction-response Bundle."""
        feed = self._accepting_fhir(feed_id)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or \
                bundle.get("type") != "transaction":
            raise FHIRError.of(400, "invalid", "expected a transaction Bundle")
        bundle = orjson.loads(orjson.dumps(bundle))
        for e in bundle.get("entry") or []:
            if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                e["resource"] = stamp(e["resource"], feed.ods, feed.feed_id)
        ident = (bundle.get("identifier") or {}).get("value")
        rid = receipt_id(feed.ods, feed.feed_id, f"bundle|{ident}" if ident
                         else f"bundle|{uuid.uuid4()}")
        entries = parse_entries(bundle)

        def commit():
            with self.store.begin_write() as conn, conn.begin():
                if ident and self.store.exists("Provenance", rid, conn):
                    return None
                ops, op_entries, responses = plan_writes(self.store, entries, conn)
                ops.append(WriteOp("PUT", "Provenance", rid,
                                   self._provenance(feed, ops, ident or "transaction", "bundle")))
                results = self.store.write(ops, conn, source_org=feed.ods)
                return op_entries, results[:-1], responses

        try:
            out = self._retrying(commit)
        except FHIRError as e:
            self._record_reject(feed, None, str(e)[:500], "fhir", ident)
            raise
        from ..api.bundle import _response_entry

        if out is None:
            return {"resourceType": "Bundle", "type": "transaction-response", "entry": [],
                    "meta": {"tag": [{"system": REJECT_SYSTEM, "code": "duplicate"}]}}
        op_entries, results, responses = out
        for index, result in zip(op_entries, results, strict=True):
            responses[index] = _response_entry(result, "")
        return {"resourceType": "Bundle", "type": "transaction-response",
                "entry": [responses[e.index] for e in entries]}

    def _accepting_fhir(self, feed_id: str) -> Feed:
        try:
            return self._accepting(feed_id, "fhir")
        except FeedError as e:
            raise FHIRError.of(403 if "paused" in str(e) else 404, "forbidden"
                               if "paused" in str(e) else "not-found", str(e)) from None

    def _provenance(self, feed: Feed, ops: list[WriteOp], message_id: str, what: str) -> dict:
        targets = [{"reference": f"{o.rtype}/{o.rid}"} for o in ops if o.method != "DELETE"]
        return stamp({
            "resourceType": "Provenance",
            "target": targets or [{"display": "no resources"}],
            "recorded": instant(now_utc()),
            "activity": {"text": f"{feed.kind} {what}"},
            "agent": [{"type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                "code": "author"}]},
                "who": {"identifier": {"system": ODS_SYSTEM, "value": feed.ods}}}],
            "entity": [{"role": "source", "what": {
                "identifier": {"system": f"{RECEIPT_SYSTEM}/{feed.ods}/{feed.feed_id}",
                               "value": message_id[:200]},
                "display": f"{feed.kind} {what} {message_id[:100]}"}}],
        }, feed.ods, feed.feed_id)

    def ingest_ndjson(self, path: str | Path, feed_id: str, batch: int = 500) -> dict:
        """An NDJSON drop: each batch one transaction with its Provenance (receipt id from the file
        name and line range, so a re-sent file changes nothing). Returns counts and each rejected
        line with its reason."""
        feed = self._accepting_fhir(feed_id)
        path = Path(path)
        rejected: list[dict] = []
        good: list[tuple[int, dict]] = []
        from ..fhir.validation import problems

        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError:
                rejected.append({"line": n, "reason": "not valid JSON"})
                continue
            issues = problems(res) if isinstance(res, dict) else []
            if not isinstance(res, dict) or issues:
                rejected.append({"line": n, "reason": "; ".join(
                    f"{i.expression or ''}: {i.diagnostics}" for i in issues)[:500]
                    or "not a resource"})
                continue
            good.append((n, stamp(res, feed.ods, feed.feed_id)))
        loaded = duplicates = 0
        for i in range(0, len(good), batch):
            chunk = good[i:i + batch]
            message_id = f"ndjson|{path.name}|{chunk[0][0]}-{chunk[-1][0]}"
            rid = receipt_id(feed.ods, feed.feed_id, message_id)
            ops = [WriteOp("PUT", r["resourceType"], r.get("id") or str(
                uuid.uuid5(_NS, f"{feed.feed_id}|{path.name}|{n}")), r) for n, r in chunk]

            def commit(ops=ops, rid=rid, message_id=message_id):
                with self.store.begin_write() as conn, conn.begin():
                    if self.store.exists("Provenance", rid, conn):
                        return False
                    self.store.write(ops + [WriteOp("PUT", "Provenance", rid, self._provenance(
                        feed, ops, message_id, "ndjson"))], conn, source_org=feed.ods)
                    return True
            try:
                if self._retrying(commit):
                    loaded += len(ops)
                else:
                    duplicates += len(ops)
            except FHIRError as e:
                for n, _ in chunk:
                    rejected.append({"line": n, "reason": str(e)[:300]})
        for r in rejected:
            self._record_reject(feed, None, f"line {r['line']}: {r['reason']}", "ndjson")
        return {"loaded": loaded, "duplicates": duplicates, "rejected": rejected}

    # ================================================================== CSV
    def ingest_csv(self, csv_path, feed_id: str, all_or_nothing: bool = False):
        from .csv_feed import load

        feed = self._accepting(feed_id, "csv")
        return load(csv_path, feed.mapping or {}, feed_id, service=self,
                    all_or_nothing=all_or_nothing)

    # ================================================================== quality
    def quality_report(self, ods: str, stale_after_hours: float = 24.0) -> dict:
        """Data quality of one partner, computed from the store."""
        policy = _OrgPolicy(ods)
        patients = valid = invalid = missing_nhs = 0
        missing: Counter = Counter()
        seen_nhs: Counter = Counter()
        for s in self.store.iter_current(policy, ["Patient"]):
            res = s.json()
            if res.get("active") is False:
                continue
            patients += 1
            nhs_values = [i.get("value") for i in res.get("identifier") or []
                          if i.get("system") == NHS_NUMBER_SYSTEM]
            if any(nhs_number.is_valid(v) for v in nhs_values):
                valid += 1
                seen_nhs[nhs_number.normalise(nhs_values[0])] += 1
            elif nhs_values:
                invalid += 1
            else:
                missing_nhs += 1
            for f in MANDATORY_PATIENT:
                if not res.get(f):
                    missing[f] += 1
        feeds: dict[str, dict] = {f.feed_id: {"kind": f.kind, "status": f.status, "messages": 0,
                                              "last_message": None, "rejected": 0,
                                              "reject_reasons": Counter(), "lateness_s": []}
                                  for f in self.list_feeds(ods)}

        def feed_of(res) -> str | None:
            src = (res.get("meta") or {}).get("source") or ""
            prefix = f"{BASE}/feed/{ods}/"
            return src[len(prefix):] if src.startswith(prefix) else None

        for s in self.store.iter_current(policy, ["Provenance"]):
            res = s.json()
            fid = feed_of(res)
            if fid is None:
                continue
            f = feeds.setdefault(fid, {"kind": "?", "status": "?", "messages": 0,
                                       "last_message": None, "rejected": 0,
                                       "reject_reasons": Counter(), "lateness_s": []})
            f["messages"] += 1
            arrived = instant(s.last_updated)
            if f["last_message"] is None or arrived > f["last_message"]:
                f["last_message"] = arrived
            event = _parse_ts(res.get("recorded"))
            if event is not None:
                f["lateness_s"].append((_parse_ts(arrived) - event).total_seconds())
        for s in self.store.iter_current(policy, ["OperationOutcome"]):
            res = s.json()
            fid = feed_of(res)
            if fid is None:
                continue
            f = feeds.setdefault(fid, {"kind": "?", "status": "?", "messages": 0,
                                       "last_message": None, "rejected": 0,
                                       "reject_reasons": Counter(), "lateness_s": []})
            f["rejected"] += 1
            for issue in res.get("issue") or []:
                f["reject_reasons"][((issue.get("details") or {}).get("text") or "?")[:120]] += 1
        now = datetime.now(UTC)
        stale = []
        for fid, f in feeds.items():
            last = _parse_ts(f["last_message"])
            if f["status"] == "live" and (last is None or
                                          (now - last).total_seconds() > stale_after_hours * 3600):
                stale.append(fid)
            lat = sorted(f.pop("lateness_s"))
            f["median_lateness_s"] = lat[len(lat) // 2] if lat else None
            f["reject_reasons"] = dict(f["reject_reasons"].most_common(10))
        return {
            "ods": ods,
            "generated": instant(now_utc()),
            "patients": patients,
            "nhs_number": {"valid": valid, "invalid": invalid, "missing": missing_nhs,
                           "valid_share": round(valid / patients, 4) if patients else None},
            "duplicate_nhs_numbers": sum(1 for c in seen_nhs.values() if c > 1),
            "missing_mandatory": {f: missing[f] for f in MANDATORY_PATIENT},
            "records_rejected": sum(f["rejected"] for f in feeds.values()),
            "stale_feeds": sorted(stale),
            "feeds": feeds,
        }


def _control_id(raw) -> str | None:
    if not isinstance(raw, str):
        return None
    first = raw.lstrip("\ufeff").replace("\n", "\r").split("\r", 1)[0]
    parts = first.split("|")
    if parts[0] != "MSH" or len(parts) < 10:
        return None
    value = parts[9]
    return value if value.isprintable() and len(value) <= 64 else None


# ====================================================================== MLLP
def mllp_handler(service: FeedService, feed_id: str | None = None):
    """The coroutine serve_mllp calls per message: the blocking store work runs in a thread, so
    the event loop keeps accepting connections and reading other messages meanwhile."""

    async def handle(raw: str) -> str:
        return await asyncio.to_thread(service.ingest_hl7, raw, feed_id)

    return handle


def attach_mllp(app, sc, host: str, port: int, feed_id: str | None = None):
    """Run the MLLP listener inside the web app's lifespan (``sharedcare serve --mllp-port``).
    Messages are routed to a feed by MSH-3/MSH-4 (see FeedService.feed_for_message) unless
    ``feed_id`` (or $SHAREDCARE_MLLP_FEED) fixes one."""
    import contextlib
    import os

    from .hl7v2 import serve_mllp

    service = FeedService(sc)
    feed_id = feed_id or os.environ.get("SHAREDCARE_MLLP_FEED") or None
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        server = await serve_mllp(host, port, mllp_handler(service, feed_id))
        app.state.mllp_server = server
        try:
            async with previous(a) as state:
                yield state
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    app.router.lifespan_context = lifespan
    return service


__all__ = ["FEED_ID_SYSTEM", "MESSAGE_TIME_EXT", "Feed", "FeedError", "FeedService",
           "IngestResult", "attach_mllp", "codes", "mllp_handler", "receipt_id", "stamp"]
