"""The FHIR resource store: versioned writes with their search index, and governed reads.

Every read takes an `AccessPolicy` and puts its SQL predicate inside the query itself, so what a
viewer may not see is never fetched, counted, paged or included. Writes run in one database
transaction each (a whole Bundle in one), so nothing is ever half-written.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.sql.elements import ColumnElement

from ..fhir.categories import category_of
from ..fhir.codes import DATA_CATEGORY_SYSTEM, SENSITIVITY_SYSTEM, SOURCE_ORG_SYSTEM
from ..fhir.compartment import patient_compartment_types
from ..fhir.outcome import FHIRError, Issue, not_found
from ..fhir.validation import problems, write_status
from . import bulk
from .db import read_only, replica_reads
from .indexing import Indexer, IndexRows, fulltext
from .partitioning import is_partitioned, partition_key
from .persons import patients_of_person
from .schema import (
    compartment,
    idx_date,
    idx_number,
    idx_reference,
    idx_string,
    idx_token,
    idx_uri,
    resource,
    resource_key,
    resource_version,
)
from .search import SearchBuilder, SearchRequest

SNAPSHOT_LIFETIME = timedelta(hours=1)
INDEX_WRITE = (idx_token, idx_string, idx_date, idx_number, idx_reference, idx_uri, compartment)
MAX_TEXT = 255


class AccessPolicy(Protocol):
    """What a viewer may read, as one SQL predicate over the `resource` table."""

    def resource_filter(self) -> ColumnElement | None: ...


class PermitAll:
    """The system's own access, for writes' bookkeeping and operator tools -- never for a user."""

    def resource_filter(self) -> ColumnElement | None:
        return None


@dataclass
class Stored:
    type: str
    id: str
    version: int
    last_updated: str
    content: bytes | None  # JSON as served; None for a deleted version
    deleted: bool = False
    pk: int | None = None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    def json(self) -> dict:
        return orjson.loads(self.content) if self.content else {}


T = TypeVar("T")


@dataclass
class WriteOp:
    """One write inside a unit of work."""

    method: str  # POST | PUT | DELETE
    rtype: str
    rid: str
    resource: dict | None
    if_match: int | None = None
    where: str = ""  # location for error messages, e.g. "Bundle.entry[3]"
    # For a write a hook derived from what it read before the unit locked its rows (identity's
    # Person links): the version it read, 0 for none. A different version at lock time means
    # another writer changed the resource in between; the unit is done again from the start
    # (StaleRead) rather than overwrite that writer's change.
    read_version: int | None = None


class StaleRead(Exception):
    """A write hook read a resource that another writer changed before this unit locked it."""


@dataclass
class WriteResult:
    stored: Stored
    created: bool
    unchanged: bool = False


@dataclass
class SearchPage:
    matches: list[Stored]
    includes: list[Stored]
    total: int | None
    next_cursor: str | None
    request: SearchRequest
    warnings: list[Issue] = field(default_factory=list)
    withheld_notes: list[Issue] = field(default_factory=list)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def instant(last_updated: str) -> str:
    """Stored timestamps are naive UTC; FHIR instants carry the zone."""
    return last_updated + "+00:00"


def source_of(res: dict) -> str | None:
    for tag in (res.get("meta") or {}).get("tag") or ():
        if tag.get("system") == SOURCE_ORG_SYSTEM:
            return tag.get("code")
    return None


def stamp_source(res: dict, ods: str) -> dict:
    meta = res.get("meta") or {}
    tags = meta.get("tag") or []
    if any(t.get("system") == SOURCE_ORG_SYSTEM for t in tags):
        return res
    return {**res, "meta": {**meta, "tag": [*tags, {"system": SOURCE_ORG_SYSTEM, "code": ods}]}}


def keep_labels(security: list, prior: str) -> list:
    """An update keeps the sensitivity labels the current version carries: a client that
    rebuilds a resource without them (an edit form, a partner's full replace) must not make a
    sensitive record readable. Labels come off only by an explicit operation, never by omission."""
    have = {s.get("code") for s in security if isinstance(s, dict)
            and s.get("system") == SENSITIVITY_SYSTEM}
    missing = [code for code in prior.split() if code not in have]
    return list(security) + [{"system": SENSITIVITY_SYSTEM, "code": c} for c in missing]


def governance_columns(res: dict) -> tuple[str | None, str | None, str]:
    meta = res.get("meta") or {}
    source = category = None
    for tag in meta.get("tag") or ():
        if tag.get("system") == SOURCE_ORG_SYSTEM:
            source = tag.get("code")
        elif tag.get("system") == DATA_CATEGORY_SYSTEM:
            category = tag.get("code")
    labels = sorted({s.get("code") for s in meta.get("security") or ()
                     if s.get("system") == SENSITIVITY_SYSTEM and s.get("code")})
    category = category_of(res.get("resourceType", ""), category)
    return source, category, (" " + " ".join(labels) + " ") if labels else ""


class Store:
    def __init__(self, engine: Engine, indexer: Indexer | None = None):
        self.engine = engine
        self.reads = read_only(engine)  # reads that write nothing (store.db.read_only)
        self.indexer = indexer or Indexer()
        self.search_builder = SearchBuilder(self.indexer, engine.dialect.name)
        # Named hook point: called inside every write transaction with what was written
        # (governance keeps care relationships current here).
        from .persons import maintain_person_links

        self.after_write: list = [maintain_person_links]
        # Named hook point: called inside every write transaction before anything is written,
        # with the unit's operations; returns more operations for the same unit (identity adds
        # the Person links of the Patients written, so both land in one batch of statements).
        # Their results go to the after_write hooks but not back to the caller.
        self.before_write: list = []
        self._partitioned: bool | None = None  # PostgreSQL hash partitions (migration 0006)

    def partitioned(self, conn: Connection) -> bool:
        """Is the record hash-partitioned here (so `resource_key` holds the unique (type, id))?
        Asked once per store: the layout is chosen when the database is migrated."""
        if self._partitioned is None:
            self._partitioned = is_partitioned(conn)
        return self._partitioned

    # ------------------------------------------------------------------ writes
    def begin_write(self):
        """A write transaction (BEGIN IMMEDIATE on SQLite)."""
        return self.engine.connect().execution_options(write=True)

    def write(self, ops: list[WriteOp], conn: Connection | None = None,
              source_org: str | None = None) -> list[WriteResult]:
        """Write in one transaction. `source_org` stamps resources that arrive without a
        source-organisation tag: whoever writes a record is its controller."""
        # Validate before anything reads the resource (its meta, its tags): a malformed
        # resource is a 400 naming the field, never a crash further in.
        issues: list[Issue] = []
        for op in ops:
            if op.resource is not None:
                issues.extend(problems(op.resource, op.where or None))
        if issues:  # 400, or 422 when valid R4 breaks a claimed (UK Core) profile
            raise FHIRError(write_status(issues), issues)
        if source_org:
            for op in ops:
                if op.resource is not None:
                    claimed = source_of(op.resource)
                    if claimed not in (None, source_org):
                        raise FHIRError.of(403, "forbidden",
                                           f"{source_org} cannot write records as {claimed}",
                                           op.where or None)
                    op.resource = stamp_source(op.resource, source_org)
        if conn is not None:
            return self._write(conn, ops, source_org)
        return self.run_write_unit(lambda c: self._write(c, ops, source_org))

    def run_write_unit(self, work: Callable[[Connection], T]) -> T:
        """`work(conn)` in one write transaction, done again when it loses a race with another
        writer: a concurrent writer created or versioned one of its resources first (the unique
        (type, id) and (resource, version) keys caught it), changed a resource a write hook read
        (StaleRead), or PostgreSQL broke a deadlock. The unit rolled back whole, so it runs again
        on top of theirs, hooks and reads afresh. A conflict of the unit's own making fails every
        time. Everything a caller does in `work` (its audit event, a load receipt) goes with it."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self.begin_write() as c, c.begin():
                    return work(c)
            except (IntegrityError, OperationalError, StaleRead) as e:
                if attempt == WRITE_ATTEMPTS - 1 or not _concurrent(e):
                    raise
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise AssertionError("unreachable")

    def create(self, res: dict) -> WriteResult:
        rid = str(uuid.uuid4())
        return self.write([WriteOp("POST", res["resourceType"], rid, res)])[0]

    def _write(self, conn: Connection, ops: list[WriteOp], writer: str | None = None
               ) -> list[WriteResult]:
        asked = len(ops)
        for hook in self.before_write:
            ops = ops + hook(conn, ops)
        keys = list({(op.rtype, op.rid) for op in ops})
        existing: dict[tuple[str, str], tuple[int, int, bool]] = {}
        part_of: dict[tuple[str, str], str] = {}  # partition_key of the stored row
        labels_of: dict[tuple[str, str], str] = {}
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        # One lookup per type, so the (type, id) unique index is used: a row-value IN list is
        # a full scan on SQLite, which made ingest slow down as the store grew.
        # The per-type SELECTs go as one UNION ALL statement: one round trip for a message
        # that writes a Patient, an Encounter, a Location and a Practitioner.
        if by_type and conn.dialect.name == "postgresql":
            # Writers run side by side here: lock the rows this unit will version (in pk order,
            # so two units lock alike), and a concurrent writer of one of them waits for this
            # one and then reads the version it made. FOR UPDATE cannot take a UNION, so the
            # per-type lookups are one OR (each still an index probe). Each type's ids go as
            # one array parameter (`= ANY`): a Bundle's 500 ids as 500 placeholders cost more
            # to compile and for the driver to parse than the lookup itself.
            groups = list(by_type.items())
            found = [(_LOCK_SQL + " OR ".join(["(type = %s AND id = ANY(%s))"] * len(part))
                      + " ORDER BY pk FOR UPDATE",
                      tuple(x for t, ids in part for x in (t, ids)))
                     for part in _chunks(groups, 20)]
        else:
            # Written out rather than built as Core statements: constructing and compiling a
            # Bundle's IN lists of 500 ids was ~4% of ingest on SQLite.
            lookups = [(_LOCK_SQL + f"type = ? AND id IN ({', '.join('?' * len(chunk))})",
                        (t, *chunk))
                       for t, ids in by_type.items() for chunk in _chunks(ids, 500)]
            found = [(" UNION ALL ".join(q for q, _ in part),
                      tuple(x for _, params in part for x in params))
                     for part in _chunks(lookups, 20)]
        for stmt in found:
            rows = conn.exec_driver_sql(*stmt)
            for t, i, pk, v, d, src, sens, part in rows:
                existing[(t, i)] = (pk, v, d)
                part_of[(t, i)] = part
                if sens and not d:
                    labels_of[(t, i)] = sens
                # Each organisation stays controller of its own records: only it may change
                # or delete them (writes by the system itself carry no writer).
                if writer and not d and src not in (None, writer):
                    raise FHIRError.of(403, "forbidden",
                                       f"{t}/{i} is controlled by {src}; only {src} may change "
                                       "or delete it")

        for op in ops:
            if op.read_version is not None:
                prior = existing.get((op.rtype, op.rid))
                if (prior[1] if prior and not prior[2] else 0) != op.read_version:
                    raise StaleRead(f"{op.rtype}/{op.rid} changed after it was read")

        stamp = now_utc()
        new_rows, upd_rows, del_rows, version_rows, results = [], [], [], [], []
        # Resources whose partition key changed (e.g. an Observation's subject moved to another
        # patient): their older versions follow them, so the record stays together.
        moved: list[dict] = []
        indexed: list[tuple[tuple[str, str], IndexRows | None]] = []
        # _text / _content: the last write of a key in the unit wins
        texts: dict[tuple[str, str], tuple[str, str] | None] = {}
        for op in ops:
            key = (op.rtype, op.rid)
            prior = existing.get(key)
            if op.if_match is not None:
                current = prior[1] if prior and not prior[2] else None
                if current != op.if_match:
                    raise FHIRError.of(
                        412, "conflict",
                        f"{op.rtype}/{op.rid} is at version {current or 'none'}, "
                        f"not {op.if_match} (If-Match)", op.where or None)
            if op.method == "DELETE":
                if prior is None or prior[2]:
                    results.append(WriteResult(Stored(op.rtype, op.rid, prior[1] if prior else 0,
                                                      stamp, None, True), False, True))
                    continue
                version = prior[1] + 1
                existing[key] = (prior[0], version, True)
                # Governance columns stay as they were: who may see the tombstone (410) is
                # who could see the resource.
                del_rows.append({"b_pk": prior[0], "b_part": part_of[key], "version": version,
                                 "last_updated": stamp, "deleted": True, "content": None})
                version_rows.append((key, version, "DELETE", True, None))
                indexed.append((key, None))
                texts[key] = None
                results.append(WriteResult(Stored(op.rtype, op.rid, version, stamp, None, True),
                                           False))
                continue
            res = dict(op.resource)
            res["id"] = op.rid
            version = (prior[1] + 1) if prior else 1
            meta = dict(res.get("meta") or {})
            if key in labels_of:
                meta["security"] = keep_labels(meta.get("security") or [], labels_of[key])
            meta["versionId"] = str(version)
            meta["lastUpdated"] = instant(stamp)
            res["meta"] = meta
            content = orjson.dumps(res)
            src, cat, sens = governance_columns(res)
            rows = self.indexer.index(res)
            part = partition_key(op.rtype, op.rid, rows.compartments)
            row = {"version": version, "last_updated": stamp, "deleted": False,
                   "content": content.decode(), "source_org": src, "category": cat,
                   "sensitivity": sens, "partition_key": part}
            if prior:
                upd_rows.append({"b_pk": prior[0], "b_part": part_of[key], **row})
                if part_of[key] != part:
                    moved.append({"b_pk": prior[0], "b_part": part_of[key], "b_type": op.rtype,
                                  "b_id": op.rid, "partition_key": part})
            else:
                new_rows.append({"type": op.rtype, "id": op.rid, **row})
            part_of[key] = part
            existing[key] = (prior[0] if prior else None, version, False)
            version_rows.append((key, version, op.method, False, row["content"]))
            indexed.append((key, rows))
            texts[key] = fulltext.text_rows(res)
            results.append(WriteResult(
                Stored(op.rtype, op.rid, version, stamp, content, False), prior is None or prior[2]))

        if new_rows:
            # Duplicate (type, id) inside one unit of work: keep them as successive versions.
            seen: dict[tuple[str, str], dict] = {}
            for r in new_rows:
                k = (r["type"], r["id"])
                if k in seen:
                    raise FHIRError.of(400, "duplicate", f"{k[0]}/{k[1]} is written twice")
                seen[k] = r
            pks = _allocate_pks(conn, len(new_rows))
            if self.partitioned(conn):
                # The unique (type, id): a concurrent create of the same id fails here (and
                # the unit is done again on top of it).
                conn.execute(insert(resource_key), [
                    {"type": r["type"], "id": r["id"], "pk": pk,
                     "partition_key": r["partition_key"]}
                    for r, pk in zip(new_rows, pks, strict=True)])
            cols = [c.name for c in resource.columns]
            bulk.insert_rows(conn, resource, [
                tuple(pk if c == "pk" else r[c] for c in cols)
                for r, pk in zip(new_rows, pks, strict=True)])
            for r, pk in zip(new_rows, pks, strict=True):
                existing[(r["type"], r["id"])] = (pk, r["version"], False)
        # The old partition key in the predicate: one partition to look in.
        by_row = and_(resource.c.pk == bindparam("b_pk"),
                      resource.c.partition_key == bindparam("b_part"))
        for rows in (upd_rows, del_rows):
            if rows:
                conn.execute(update(resource).where(by_row), rows)
        if moved:
            # A changed key moves the row to its new partition (the UPDATE above); its older
            # versions and its (type, id) entry follow.
            v = resource_version.c
            conn.execute(update(resource_version).where(
                v.resource_pk == bindparam("b_pk"), v.partition_key == bindparam("b_part"))
                .values(partition_key=bindparam("partition_key")), moved)
            if self.partitioned(conn):
                conn.execute(update(resource_key).where(
                    resource_key.c.type == bindparam("b_type"),
                    resource_key.c.id == bindparam("b_id"))
                    .values(partition_key=bindparam("partition_key")), moved)
        if upd_rows or del_rows:
            stale = [r["b_pk"] for r in upd_rows + del_rows]
            parts = sorted({r["b_part"] for r in upd_rows + del_rows})
            for t in INDEX_WRITE:
                for chunk in _chunks(stale, 500):
                    # Index rows sit in their resource's (old) partition; compartment rows in
                    # their patients' partitions.
                    conds = [t.c.resource_pk.in_(chunk)]
                    if t is not compartment:
                        conds.append(t.c.partition_key.in_(parts))
                    conn.execute(delete(t).where(*conds))
            fulltext.delete_rows(conn, stale)
        if version_rows:
            bulk.insert_rows(conn, resource_version, [
                (existing[k][0], v, stamp, m, d, c, part_of[k])
                for k, v, m, d, c in version_rows], skip=("seq",))
        self._insert_index(conn, [(existing[k][0], k[0], rows, part_of[k])
                                  for k, rows in indexed if rows])
        fulltext.insert_rows(conn, [(existing[k][0], *words) for k, words in texts.items()
                                    if words], [part_of[k] for k, words in texts.items()
                                                if words])
        for hook in self.after_write:
            hook(conn, results)
        return results[:asked]

    def _insert_index(self, conn: Connection, items: list[tuple[int, str, IndexRows, str]]
                      ) -> None:
        # The hottest loop of ingest: rows go to the driver's executemany as plain tuples,
        # skipping SQLAlchemy's per-row parameter processing (a third of ingest time otherwise).
        tok, st, dt, num, ref, uri, comp = [], [], [], [], [], [], []
        # The last column is partition_key: the resource's, and a compartment row's own patient.
        for pk, rtype, rows, k in items:
            tok += [(pk, rtype, p, _cut(s), _cut(c), _cut(tx), k) for p, s, c, tx in rows.tokens]
            st += [(pk, rtype, p, v[:MAX_TEXT], e[:MAX_TEXT], k) for p, v, e in rows.strings]
            dt += [(pk, rtype, p, lo, hi, k) for p, lo, hi in rows.dates]
            num += [(pk, rtype, p, lo, hi, v, _cut(s), _cut(c, 64), _cut(u, 64), k)
                    for p, lo, hi, v, s, c, u in rows.numbers]
            ref += [(pk, rtype, p, tt, _cut(ti, 64), _cut(url, 512), k)
                    for p, tt, ti, url in rows.references]
            uri += [(pk, rtype, p, u[:512], k) for p, u in rows.uris]
            comp += [(pk, patient, patient) for patient in rows.compartments]
        for table, batch in ((idx_token, tok), (idx_string, st), (idx_date, dt),
                             (idx_number, num), (idx_reference, ref), (idx_uri, uri),
                             (compartment, comp)):
            bulk.insert_rows(conn, table, batch)

    # ------------------------------------------------------------------ reads
    def _visible(self, policy: AccessPolicy) -> list[ColumnElement]:
        pred = policy.resource_filter()
        return [pred] if pred is not None else []

    def _by_id(self, rtype: str, rid: str, conn: Connection | None = None
               ) -> list[ColumnElement]:
        """The resource `rtype/rid`: partitioned, its partition too (from `resource_key`, a
        value PostgreSQL prunes with when the statement runs), so one partition is read."""
        conds = [resource.c.type == rtype, resource.c.id == rid]
        if self._partitioned is None:
            if conn is not None:
                self.partitioned(conn)
            else:
                with self.engine.connect() as c:
                    self.partitioned(c)
        if self._partitioned:
            conds.append(resource.c.partition_key == select(resource_key.c.partition_key).where(
                resource_key.c.type == rtype, resource_key.c.id == rid).scalar_subquery())
        return conds

    def read(self, rtype: str, rid: str, policy: AccessPolicy, conn: Connection | None = None
             ) -> Stored:
        stmt = select(resource.c.pk, resource.c.version, resource.c.last_updated,
                      resource.c.deleted, resource.c.content).where(
            *self._by_id(rtype, rid, conn), *self._visible(policy))
        row = self._one(stmt, conn)
        if row is None:
            raise not_found(rtype, rid)
        pk, version, lu, deleted, content = row
        if deleted:
            raise FHIRError(410, [Issue("deleted", f"{rtype}/{rid} was deleted")],
                            {"ETag": f'W/"{version}"'})
        return Stored(rtype, rid, version, lu, content.encode(), False, pk)

    def exists(self, rtype: str, rid: str, conn: Connection | None = None) -> bool:
        stmt = select(resource.c.pk).where(resource.c.type == rtype, resource.c.id == rid,
                                           resource.c.deleted == false())
        return self._one(stmt, conn) is not None

    def vread(self, rtype: str, rid: str, version: int, policy: AccessPolicy) -> Stored:
        stmt = (
            select(resource_version.c.version, resource_version.c.last_updated,
                   resource_version.c.deleted, resource_version.c.content)
            .join(resource, and_(resource.c.pk == resource_version.c.resource_pk,
                                 resource.c.partition_key == resource_version.c.partition_key))
            .where(*self._by_id(rtype, rid), resource_version.c.version == version,
                   *self._visible(policy))
        )
        row = self._one(stmt)
        if row is None:
            raise FHIRError.of(404, "not-found", f"{rtype}/{rid} has no version {version}")
        v, lu, deleted, content = row
        if deleted:
            raise FHIRError.of(410, "deleted", f"{rtype}/{rid} version {v} is a deletion")
        return Stored(rtype, rid, v, lu, content.encode(), False)

    # ------------------------------------------------------------------ reads: primary or replica
    replica = None  # a store.db.ReadReplica, when SHAREDCARE_DATABASE_READ_URL names one

    def _reader(self) -> Engine:
        """Where this request's searches, history, $everything and exports read: the replica
        when there is one and this request may use it (store.db.ReadReplicaMiddleware decides,
        keeping read-your-writes), else the primary."""
        if self.replica is not None and replica_reads():
            return self.replica.reads
        return self.reads

    def history(self, policy: AccessPolicy, rtype: str | None = None, rid: str | None = None,
                since: str | None = None, count: int = 50, before_seq: int | None = None
                ) -> tuple[list[tuple[str, Stored, str]], int | None]:
        """Newest first. Returns ((method, Stored, type) ..., next before_seq)."""
        conds = list(self._visible(policy))
        if rtype and rid:  # one resource: one partition
            conds += self._by_id(rtype, rid)
        elif rtype:
            conds.append(resource.c.type == rtype)
        if since:
            conds.append(resource_version.c.last_updated >= since)
        if before_seq:
            conds.append(resource_version.c.seq < before_seq)
        stmt = (
            select(resource.c.type, resource.c.id, resource_version.c.version,
                   resource_version.c.last_updated, resource_version.c.deleted,
                   resource_version.c.content, resource_version.c.method, resource_version.c.seq)
            # (a resource's versions share its partition key: the join stays in the partition)
            .join(resource, and_(resource.c.pk == resource_version.c.resource_pk,
                                 resource.c.partition_key == resource_version.c.partition_key))
            .where(*conds)
            .order_by(resource_version.c.seq.desc())
            .limit(count + 1)
        )
        with self._reader().connect() as conn:
            rows = conn.execute(stmt).all()
        if (rid and not rows and before_seq is None and not self.exists(rtype, rid)
                and not self._any_version(rtype, rid)):
            raise not_found(rtype, rid)
        out = [(m, Stored(t, i, v, lu, c.encode() if c else None, d), t)
               for t, i, v, lu, d, c, m, _ in rows[:count]]
        nxt = rows[count - 1][7] if len(rows) > count else None
        return out, nxt

    def _any_version(self, rtype, rid) -> bool:
        return self._one(select(resource.c.pk).where(resource.c.type == rtype,
                                                     resource.c.id == rid)) is not None

    def _one(self, stmt, conn: Connection | None = None):
        if conn is not None:
            return conn.execute(stmt).first()
        with self.reads.connect() as c:
            return c.execute(stmt).first()

    # ------------------------------------------------------------------ search
    def search(self, rtype: str | None, params: list[tuple[str, str]], policy: AccessPolicy,
               lenient: bool = False, compartment_of: str | None = None) -> SearchPage:
        visible = self._visible(policy)
        req = self.search_builder.parse(rtype, params, lenient, visible[0] if visible else None)
        where = [resource.c.deleted == false(), *req.clauses, *visible]
        if rtype:
            where.insert(0, resource.c.type == rtype)
        with self._reader().connect() as conn:
            if compartment_of is not None:
                # The compartment follows the person: every partner's record of them.
                where.append(resource.c.pk.in_(
                    in_compartments(patients_of_person(conn, compartment_of))))
            total = None

            def count() -> int:
                return conn.execute(select(func.count()).select_from(resource).where(*where)
                                    ).scalar_one()

            if req.summary == "count":
                return SearchPage([], [], count() if req.total != "none" else None, None, req,
                                  req.warnings)
            if req.sort or req.rank:
                matches, nxt = self._sorted_page(conn, req, where)
            else:
                matches, nxt = self._keyset_page(conn, req, where)
            if req.total != "none" and req.cursor is None:
                # A first page that holds every match is its own count: the count statement
                # (the policy over every match again) is only for results that run on.
                total = len(matches) if nxt is None and req.count else count()
            includes = self._includes(conn, req, matches, policy, compartment_of)
        return SearchPage(matches, includes, total, nxt, req, req.warnings)

    def _keyset_page(self, conn, req: SearchRequest, where) -> tuple[list[Stored], str | None]:
        # Pages follow the immutable row key: a resource created or updated between pages can
        # neither push another onto the next page (repeat) nor pull one back (skip).
        conds = list(where)
        if req.cursor:
            if not req.cursor.isdigit():
                raise FHIRError.of(400, "invalid", "the paging cursor is not valid", "_cursor")
            conds.append(resource.c.pk > int(req.cursor))
        stmt = (select(resource.c.pk, resource.c.type, resource.c.id, resource.c.version,
                       resource.c.last_updated, resource.c.content)
                .where(*conds).order_by(resource.c.pk).limit(req.count + 1))
        rows = conn.execute(stmt).all()
        out = [Stored(t, i, v, lu, c.encode(), False, pk) for pk, t, i, v, lu, c in rows[:req.count]]
        nxt = str(rows[req.count - 1][0]) if len(rows) > req.count and req.count else None
        return out, nxt

    def _sorted_page(self, conn, req: SearchRequest, where) -> tuple[list[Stored], str | None]:
        from .schema import search_result

        # A sorted search's order can change when a resource is updated between pages, so its
        # matches are snapshotted on the first page and later pages read the snapshot.
        if req.cursor:
            sid, _, offset = req.cursor.partition(":")
            if not offset.isdigit():
                raise FHIRError.of(400, "invalid", "the paging cursor is not valid", "_cursor")
            start = int(offset)
            snapshot = (select(search_result.c.resource_pk).where(
                search_result.c.search_id == sid, search_result.c.rank >= start,
                search_result.c.rank < start + req.count + 1).order_by(search_result.c.rank))
            if conn.engine.pool is self.engine.pool:
                pks = conn.execute(snapshot).scalars().all()
            else:  # reading a replica: the snapshot was written to the primary, which has it
                with self.engine.connect() as primary:
                    pks = primary.execute(snapshot).scalars().all()
            if not pks and start > 0:
                raise FHIRError.of(410, "expired", "this search's pages have expired; search again")
        else:
            # _sort, else the relevance of _text/_content (best first); then the row key.
            order = ([self._sort_expr(req.rtype, k) for k in req.sort]
                     or [sum(req.rank[1:], req.rank[0]).desc()]) + [resource.c.pk]
            pks = conn.execute(select(resource.c.pk).where(*where).order_by(*order)
                               ).scalars().all()
            start, sid = 0, None
            if len(pks) > req.count:
                sid = str(uuid.uuid4())
                stamp = now_utc()
                expired = (datetime.now(UTC) - SNAPSHOT_LIFETIME).strftime("%Y-%m-%dT%H:%M:%S")
                with self.begin_write() as w, w.begin():
                    # Snapshots live for a while, long enough to page through; older ones go.
                    w.execute(delete(search_result).where(search_result.c.created < expired))
                    w.execute(insert(search_result), [
                        {"search_id": sid, "rank": n, "resource_pk": pk, "created": stamp}
                        for n, pk in enumerate(pks)])
            pks = pks[: req.count + 1]
        page = pks[: req.count]
        # The viewer's predicate applies to every page, not only the first: a cursor is a
        # bookmark, never a permission.
        rows = {r.pk: r for r in conn.execute(
            select(resource.c.pk, resource.c.type, resource.c.id, resource.c.version,
                   resource.c.last_updated, resource.c.content, resource.c.deleted)
            .where(resource.c.pk.in_(page), *where)).all()}
        out = [Stored(r.type, r.id, r.version, r.last_updated, r.content.encode(), False, r.pk)
               for pk in page if (r := rows.get(pk)) is not None and not r.deleted]
        nxt = None
        if len(pks) > req.count:
            if not req.cursor:
                nxt = f"{sid}:{req.count}"
            else:
                nxt = f"{req.cursor.partition(':')[0]}:{start + req.count}"
        return out, nxt

    def _sort_expr(self, rtype: str | None, key):
        from .schema import INDEX_TABLES

        if key.param == "_id":
            col = resource.c.id
        elif key.param == "_lastUpdated":
            col = resource.c.last_updated
        else:
            sp = self.indexer.params_for(rtype)[key.param]
            t = INDEX_TABLES[sp.type]
            value = {"string": "value", "date": "low", "token": "code", "number": "value",
                     "quantity": "value", "reference": "target_id", "uri": "uri"}[sp.type]
            # Correlated subquery: ascending sorts by a resource's smallest value of the
            # parameter, descending by its largest (as the FHIR spec suggests).
            agg = func.max if key.descending else func.min
            col = (select(agg(t.c[value])).where(t.c.resource_pk == resource.c.pk,
                                                  t.c.param == sp.code).scalar_subquery())
        return col.desc() if key.descending else col.asc()

    def _includes(self, conn, req: SearchRequest, matches: list[Stored], policy: AccessPolicy,
                  compartment_of: str | None = None) -> list[Stored]:
        if not matches or not (req.includes or req.revincludes):
            return []
        visible = self._visible(policy)
        if compartment_of is not None:
            # A search confined to one patient's record stays confined in what it includes.
            visible.append(or_(
                resource.c.type.not_in(sorted(patient_compartment_types())),
                resource.c.pk.in_(in_compartments(patients_of_person(conn, compartment_of)))))
        seen = {(m.type, m.id) for m in matches}
        out: list[Stored] = []
        frontier = matches
        for depth in range(3):
            found: list[Stored] = []
            pks = [m.pk for m in frontier]
            for inc in req.includes:
                if depth and not inc.iterate:
                    continue
                conds = [idx_reference.c.resource_pk.in_(pks), idx_reference.c.target_id.isnot(None)]
                if inc.param != "*":
                    conds += [idx_reference.c.type == inc.source_type,
                              idx_reference.c.param == inc.param]
                if inc.target_type:
                    conds.append(idx_reference.c.target_type == inc.target_type)
                # A join on (type, id), which the unique index serves; a row-value IN over a
                # subquery would scan the whole resource table on SQLite.
                targets = (select(idx_reference.c.target_type, idx_reference.c.target_id)
                           .where(*conds).distinct().subquery())
                stmt = (select(resource.c.pk, resource.c.type, resource.c.id, resource.c.version,
                               resource.c.last_updated, resource.c.content)
                        .join(targets, and_(resource.c.type == targets.c.target_type,
                                            resource.c.id == targets.c.target_id))
                        .where(resource.c.deleted == false(), *visible))
                found += [Stored(t, i, v, lu, c.encode(), False, pk)
                          for pk, t, i, v, lu, c in conn.execute(stmt)]
            for inc in req.revincludes:
                if depth and not inc.iterate:
                    continue
                ids_by_type: dict[str, list[str]] = {}
                for m in frontier:
                    ids_by_type.setdefault(m.type, []).append(m.id)
                ref = idx_reference.c
                conds = [or_(*[and_(ref.target_type == t, ref.target_id.in_(ids))
                               for t, ids in ids_by_type.items()])]
                if inc.param != "*":
                    conds += [idx_reference.c.type == inc.source_type,
                              idx_reference.c.param == inc.param]
                sources = select(idx_reference.c.resource_pk).where(*conds)
                stmt = (select(resource.c.pk, resource.c.type, resource.c.id, resource.c.version,
                               resource.c.last_updated, resource.c.content)
                        .where(resource.c.pk.in_(sources), resource.c.deleted == false(),
                               *visible))
                found += [Stored(t, i, v, lu, c.encode(), False, pk)
                          for pk, t, i, v, lu, c in conn.execute(stmt)]
            frontier = []
            for s in found:
                if (s.type, s.id) not in seen:
                    seen.add((s.type, s.id))
                    out.append(s)
                    frontier.append(s)
            if not frontier:
                break
        return out

    # ------------------------------------------------------------------ $everything
    def everything(self, patient_id: str, policy: AccessPolicy, count: int = 100,
                   cursor: str | None = None, since: str | None = None,
                   types: list[str] | None = None, withheld: ColumnElement | None = None
                   ) -> tuple[list[Stored], int | None, str | None, int]:
        """Everything about the person: every resource in the compartments of each partner's
        Patient record of them (and those Patients), paged by row key.

        Returns the page, the total (first page only), the next cursor, and -- when a
        `withheld` predicate is given -- how many of the person's resources it matches,
        counted in the same pass as the total."""
        visible = self._visible(policy)
        if since:
            since_clause = [resource.c.last_updated >= since]
        else:
            since_clause = []
        if cursor is not None and not cursor.isdigit():
            raise FHIRError.of(400, "invalid", "the paging cursor is not valid", "_cursor")
        with self._reader().connect() as conn:
            pat = conn.execute(select(resource.c.pk).where(
                resource.c.type == "Patient", resource.c.id == patient_id,
                resource.c.deleted == false(), *visible)).first()
            if pat is None:
                raise not_found("Patient", patient_id)
            members = in_compartments(patients_of_person(conn, patient_id))
            scope = [resource.c.deleted == false(), *since_clause]
            if types:
                scope.append(resource.c.type.in_(types))
            total, hidden = None, 0
            if cursor is None:
                shown = and_(*visible) if visible else true()
                # Each row is shown (1), withheld (2) or neither (0). A withheld row is one the
                # viewer is not shown, so CASE works the withheld predicate out only for rows
                # the policy did not show, and the policy once a row (OFFSET 0 keeps
                # PostgreSQL from pulling the CASE up into each sum, which works it out twice).
                kinds = select(case((shown, 1), (withheld if withheld is not None else false(),
                                                 2), else_=0).label("k")).where(
                    resource.c.pk.in_(members), *scope).offset(0).subquery()
                total, hidden = conn.execute(select(
                    func.coalesce(func.sum(case((kinds.c.k == 1, 1), else_=0)), 0),
                    func.coalesce(func.sum(case((kinds.c.k == 2, 1), else_=0)), 0))).one()
            rows = self._everything_page(conn, members, scope + visible,
                                         int(cursor) if cursor else 0, count + 1, total)
        out = [Stored(t, i, v, lu, c.encode(), False, pk) for pk, t, i, v, lu, c in rows[:count]]
        nxt = str(rows[count - 1][0]) if len(rows) > count else None
        return out, total, nxt, int(hidden)

    @staticmethod
    def _everything_page(conn: Connection, members, where: list, after: int, want: int,
                         shown: int | None = None) -> list:
        """Up to `want` of the person's rows after row key `after` that `where` (the policy)
        lets through, in row-key order. The policy is applied to a window of the compartment's
        next row keys, not to every row after the cursor, so paging a record of thousands of
        rows costs each page about a page of work rather than the rest of the record; a
        window the policy thins out is followed by a larger one. `shown`, the number of rows
        the policy shows in the whole record (first page), says when every one is in."""
        cols = (resource.c.pk, resource.c.type, resource.c.id, resource.c.version,
                resource.c.last_updated, resource.c.content)
        rows: list = []
        window = 2 * want
        while True:
            keys = (members.where(compartment.c.resource_pk > after)
                    .order_by(compartment.c.resource_pk).limit(window))
            rows += conn.execute(select(*cols).where(resource.c.pk.in_(keys), *where)
                                 .order_by(resource.c.pk).limit(want - len(rows))).all()
            if len(rows) >= want or len(rows) == shown:
                return rows
            ahead = keys.subquery()
            seen, last = conn.execute(select(func.count(), func.max(ahead.c.resource_pk))).one()
            if seen < window:
                return rows  # the window reached the end of the record
            after, window = last, window * 4

    # ------------------------------------------------------------------ conditional helpers
    def match_ids(self, rtype: str, query: str, conn: Connection | None = None,
                  limit: int = 2, *, policy: AccessPolicy) -> list[str]:
        """Ids matching a conditional query ('identifier=sys|val') as `policy` sees the store,
        at most `limit`. There is no default policy: every caller says whose view it is
        (`PermitAll()` only for the system's own bookkeeping)."""
        from urllib.parse import parse_qsl

        params = parse_qsl(query, keep_blank_values=True)
        if not params:
            raise FHIRError.of(400, "invalid", f"empty conditional query for {rtype}")
        visible = self._visible(policy)
        req = self.search_builder.parse(rtype, params, False, visible[0] if visible else None)
        stmt = (select(resource.c.id).where(resource.c.type == rtype, resource.c.deleted == false(),
                                            *req.clauses, *visible).limit(limit))
        if conn is not None:
            return list(conn.execute(stmt).scalars())
        with self.reads.connect() as c:
            return list(c.execute(stmt).scalars())

    def iter_current(self, policy: AccessPolicy, types: Iterable[str] | None = None,
                     since: str | None = None, batch: int = 2000) -> Iterator[Stored]:
        """Every current resource the policy allows, in row order, streamed in batches."""
        last = 0
        while True:
            conds = [resource.c.deleted == false(), resource.c.pk > last, *self._visible(policy)]
            if types:
                conds.append(resource.c.type.in_(list(types)))
            if since:
                conds.append(resource.c.last_updated >= since)
            with self._reader().connect() as conn:
                rows = conn.execute(
                    select(resource.c.pk, resource.c.type, resource.c.id, resource.c.version,
                           resource.c.last_updated, resource.c.content)
                    .where(*conds).order_by(resource.c.pk).limit(batch)).all()
            if not rows:
                return
            for pk, t, i, v, lu, c in rows:
                yield Stored(t, i, v, lu, c.encode(), False, pk)
            last = rows[-1][0]


_LOCK_SQL = ("SELECT type, id, pk, version, deleted, source_org, sensitivity, partition_key "
             "FROM resource WHERE ")


def _allocate_pks(conn: Connection, n: int) -> list[int]:
    """Row keys for n new resources, taken in one round trip so the rows can go in one
    executemany (RETURNING would make SQLAlchemy insert them one at a time on SQLite)."""
    if conn.dialect.name == "postgresql":
        return list(conn.exec_driver_sql(
            "SELECT nextval(pg_get_serial_sequence('resource', 'pk')) "
            f"FROM generate_series(1, {int(n)})").scalars())
    # SQLite: the write transaction holds the database's only write lock (BEGIN IMMEDIATE).
    top = conn.exec_driver_sql("SELECT COALESCE(MAX(pk), 0) FROM resource").scalar()
    return list(range(top + 1, top + 1 + n))


def _cut(s: str | None, n: int = MAX_TEXT) -> str | None:
    return s[:n] if s is not None and len(s) > n else s


WRITE_ATTEMPTS = 5


def _concurrent(e: Exception) -> bool:
    """Whether a failed write unit lost a race with another writer (worth doing again)."""
    if isinstance(e, IntegrityError | StaleRead):
        return True
    text = str(e).lower()
    # "moved to another partition": the row this unit waited to lock was moved by a concurrent
    # update of its partition key (PostgreSQL, partitioned layout).
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked",
                                   "moved to another partition"))


def move_partition(conn: Connection, pk: int, rtype: str, rid: str, key: str) -> None:
    """Give a stored resource -- its row, versions, index rows and text -- the partition key
    `key`, in the caller's transaction (PostgreSQL moves the rows between partitions). For a
    write hook that puts a resource in a patient's record after the store indexed it (a Binary
    secured by that patient's DocumentReference). Compartment rows keep their own patient's."""
    for t in (resource_version, *(t for t in INDEX_WRITE if t is not compartment)):
        conn.execute(update(t).where(t.c.resource_pk == pk).values(partition_key=key))
    conn.execute(update(resource).where(resource.c.pk == pk).values(partition_key=key))
    if conn.dialect.name == "postgresql":  # (on SQLite the text table is FTS5, keyless)
        conn.exec_driver_sql(f"UPDATE {fulltext.TABLE} SET partition_key = %s "
                             "WHERE resource_pk = %s", (key, pk))
        if is_partitioned(conn):
            conn.execute(update(resource_key).where(
                resource_key.c.type == rtype, resource_key.c.id == rid)
                .values(partition_key=key))


def in_compartments(patients: list[str]):
    """SELECT the pks of the resources in these patients' compartments. Compartment rows are
    partitioned by their own patient, so the key in the predicate confines the lookup to one
    partition per patient (PostgreSQL prunes the rest)."""
    return select(compartment.c.resource_pk).where(compartment.c.patient_id.in_(patients),
                                                    compartment.c.partition_key.in_(patients))


def _chunks(seq, n):
    seq = list(seq)
    for i in range(0, len(seq), n):
        yield seq[i: i + n]


__all__ = [
    "AccessPolicy",
    "PermitAll",
    "SearchPage",
    "Store",
    "Stored",
    "WriteOp",
    "WriteResult",
    "in_compartments",
    "move_partition",
]
