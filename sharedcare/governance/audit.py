"""The audit trail: exactly one FHIR AuditEvent (IHE Basic Audit Log Patterns) per access,
written durably -- in the same transaction as the write it records, or in its own transaction
before a read's answer leaves the server -- and chained with a keyed hash so that editing,
deleting, reordering or inserting a row is detected by `sharedcare audit verify`.

The database cannot vouch for itself against being rolled back to an older copy or emptied, so
the head of the chain is also signed into checkpoints kept outside it (`audit checkpoint`, and
the server's checkpoint directory), which `audit verify --checkpoint` holds the trail to. The
key comes from $SHAREDCARE_AUDIT_KEY_FILE, ideally somewhere the database's users cannot read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import re
import secrets
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import Connection, Engine, exists, func, insert, select, text

from .policy import Access, now_text
from .schema import audit_anchor, audit_event, organisation, staff

log = logging.getLogger("sharedcare.audit")

GENESIS = "0" * 64
ACTIONS = {
    # action -> (BALP subtype / restful interaction, FHIR AuditEvent.action)
    "read": ("read", "R"),
    "vread": ("vread", "R"),
    "search": ("search-type", "E"),
    "everything": ("operation", "E"),
    "history": ("history-instance", "R"),
    "create": ("create", "C"),
    "update": ("update", "U"),
    "delete": ("delete", "D"),
    "transaction": ("transaction", "C"),
    "export": ("operation", "E"),
    "validate": ("operation", "E"),
    "break-glass": ("break-glass", "E"),
    "declare-relationship": ("declare-relationship", "C"),
    "login": ("login", "E"),
    "login-failed": ("login", "E"),
    "view": ("read", "R"),
}


ENV_KEY_FILE = "SHAREDCARE_AUDIT_KEY_FILE"
ENV_CHECKPOINT_DIR = "SHAREDCARE_AUDIT_CHECKPOINT_DIR"
ENV_CHECKPOINT_MINUTES = "SHAREDCARE_AUDIT_CHECKPOINT_MINUTES"
ENV_CHECKPOINT_EVENTS = "SHAREDCARE_AUDIT_CHECKPOINT_EVENTS"
KEY_BYTES = 32


def key_path(folder: Path) -> Path:
    """Where the audit key lives: $SHAREDCARE_AUDIT_KEY_FILE, else `audit.key` in `folder` (the
    data directory's keys/ folder -- beside the database, which `key_warning` points out)."""
    env = os.environ.get(ENV_KEY_FILE)
    return Path(env).expanduser() if env else Path(folder) / "audit.key"


def load_key(folder: Path) -> bytes:
    """The HMAC key of the audit chain and its checkpoints: someone who can edit the audit table
    but cannot read this file cannot recompute a valid chain. Made (0600) on first use."""
    return read_or_create_key(key_path(folder))


def read_or_create_key(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Write a full key under a temporary name, then link it into place: a process starting
        # at the same moment either sees no file or the whole key, and only one key ever wins.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-key-")  # mode 0600
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"the audit key file {path} holds {len(key)} bytes; a key needs at "
                         "least 16 (restore the key file, or point SHAREDCARE_AUDIT_KEY_FILE at it)")
    return key


def key_warning(key_file: Path, data_dir: Path) -> str | None:
    """A warning when the audit key sits inside the data directory (the default): whoever copies
    that directory -- with its database file -- has the key too, and can rewrite the trail and
    recompute every hash and checkpoint signature."""
    try:
        key_file, data_dir = Path(key_file).resolve(), Path(data_dir).resolve()
    except OSError:
        return None
    if not key_file.is_relative_to(data_dir):
        return None
    return (f"the audit key {key_file} is inside the data directory {data_dir}: anyone with a "
            "copy of that directory (the database file included) also has the key, and could "
            "rewrite the audit trail and re-sign it undetected. Move the key where the database's "
            "users and backups cannot read it, e.g.\n"
            f"  sudo install -d -m 700 -o $USER /etc/sharedcare && mv {key_file} "
            "/etc/sharedcare/audit.key\n"
            f"and set {ENV_KEY_FILE}=/etc/sharedcare/audit.key for the server and the CLI.")


CHAINED = ("seq", "recorded", "username", "client_id", "ods", "role", "purpose", "action",
           "outcome", "patient_id", "entity", "reason", "break_glass", "content", "prev_hash")


_EVENT_COLUMNS = [c.name for c in audit_event.columns]
_HEAD_SQL = "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1"
_INSERT_SQL = (f"INSERT INTO audit_event ({', '.join(_EVENT_COLUMNS)}) "
               f"VALUES ({', '.join(':' + c for c in _EVENT_COLUMNS)})")
_ANCHOR_SQL = "UPDATE audit_anchor SET seq = :seq, hash = :hash, mac = :mac WHERE id = 1"


_PSYCOPG = {sql: re.sub(r":(\w+)", r"%(\1)s", sql) for sql in (_INSERT_SQL, _ANCHOR_SQL)}


def _named(conn: Connection):
    """`:name` placeholders as the driver wants them (psycopg: `%(name)s`; sqlite3 as is)."""
    return _PSYCOPG.__getitem__ if conn.dialect.name == "postgresql" else str


def row_hash(key: bytes, row: dict) -> str:
    payload = orjson.dumps([row.get(c) for c in CHAINED])
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def audit_resource(access: Access, action: str, outcome: str, recorded: str,
                   patient_id: str | None, entity: str | None, reason: str | None,
                   glass: bool) -> dict:
    subtype, fhir_action = ACTIONS.get(action, (action, "E"))
    agent = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                             "code": "IRCP", "display": "information recipient"}]},
        "who": {"display": access.display_name or access.username or access.client_id or "unknown"},
        "requestor": True,
    }
    if access.username:
        agent["who"]["identifier"] = {"system": "https://fhir.sharedcare.org.uk/Id/user",
                                      "value": access.username}
    if access.ods:
        agent["role"] = [{"text": access.role}]
    ev = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest", "display": "Restful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": fhir_action,
        "recorded": recorded[:19] + "Z",
        "outcome": outcome,
        "purposeOfEvent": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": "ETREAT" if glass else {"direct-care": "TREAT", "planning": "HOPERAT",
                                            "research": "HRESCH"}.get(access.purpose, "TREAT")}],
            "text": access.purpose}],
        "agent": [agent],
        "source": {"observer": {"display": "sharedcare"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                             "code": "4", "display": "Application Server"}]},
        "entity": [],
    }
    if access.ods:
        agent["who"]["extension"] = [{"url": "https://fhir.sharedcare.org.uk/StructureDefinition/organisation",
                                      "valueString": access.ods}]
    if patient_id:
        ev["entity"].append({"what": {"reference": f"Patient/{patient_id}"},
                             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                      "code": "1", "display": "Person"},
                             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                      "code": "1", "display": "Patient"}})
    if entity:
        ev["entity"].append({"description": entity[:400],
                             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                      "code": "2", "display": "System Object"}})
    if reason:
        ev["outcomeDesc"] = reason[:1000]
    if not ev["entity"]:
        del ev["entity"]
    return ev


# ------------------------------------------------------------------------------ checkpoints
CHECKPOINT_FORMAT = "sharedcare-audit-checkpoint/1"
CHECKPOINT_FIELDS = ("format", "seq", "hash", "count", "recorded", "created", "mac")


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint (as opposed to a forged one, which reads fine
    and fails its signature)."""


@dataclass(frozen=True)
class Checkpoint:
    """The trail's head at one moment, signed with the audit key and kept outside the database:
    the newest event's sequence number, hash and time, and how many events there were. A
    database rolled back to an older copy, truncated or emptied cannot match it."""

    seq: int
    hash: str
    count: int
    recorded: str | None  # the newest event's time
    created: str          # when the checkpoint was made
    mac: str
    source: str = ""      # where it was read from ("file:line"), for messages; not signed

    @staticmethod
    def payload(seq: int, head: str, count: int, recorded: str | None, created: str) -> bytes:
        return b"checkpoint:" + orjson.dumps([CHECKPOINT_FORMAT, seq, head, count, recorded,
                                              created])

    @classmethod
    def sign(cls, key: bytes, seq: int, head: str, count: int, recorded: str | None,
             created: str | None = None) -> Checkpoint:
        created = created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        mac = hmac.new(key, cls.payload(seq, head, count, recorded, created),
                       hashlib.sha256).hexdigest()
        return cls(seq, head, count, recorded, created, mac)

    def signed_by(self, key: bytes) -> bool:
        good = hmac.new(key, self.payload(self.seq, self.hash, self.count, self.recorded,
                                          self.created), hashlib.sha256).hexdigest()
        return hmac.compare_digest(good, self.mac)

    def to_json(self) -> bytes:
        return orjson.dumps({"format": CHECKPOINT_FORMAT, "seq": self.seq, "hash": self.hash,
                             "count": self.count, "recorded": self.recorded,
                             "created": self.created, "mac": self.mac})

    @classmethod
    def from_json(cls, line: bytes | str, source: str) -> Checkpoint:
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise CheckpointError(f"{source}: not JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source}: not a sharedcare audit checkpoint (expected "
                                  f'"format": "{CHECKPOINT_FORMAT}")')
        missing = [f for f in CHECKPOINT_FIELDS if f not in d]
        if missing:
            raise CheckpointError(f"{source}: checkpoint lacks {', '.join(missing)}")
        types = {"seq": int, "count": int, "hash": str, "created": str, "mac": str}
        for name, kind in types.items():
            if not isinstance(d[name], kind) or isinstance(d[name], bool):
                raise CheckpointError(f"{source}: checkpoint field {name!r} must be "
                                      f"{'a number' if kind is int else 'text'}")
        if d["recorded"] is not None and not isinstance(d["recorded"], str):
            raise CheckpointError(f"{source}: checkpoint field 'recorded' must be text")
        return cls(d["seq"], d["hash"], d["count"], d["recorded"], d["created"], d["mac"],
                   source)

    def describe(self) -> str:
        at = f", {self.recorded[:19]}Z" if self.recorded else ""
        return (f"{self.source or 'checkpoint'} (made {self.created}: {events(self.count)}, "
                f"up to event {self.seq}{at})")


def read_checkpoints(paths: list[Path]) -> list[Checkpoint]:
    """Checkpoints from files (one JSON object per line; a file may hold one or many) and
    directories (every *.json / *.jsonl file in them). Unreadable input raises CheckpointError
    naming the file and line; nothing is half-read."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(f for f in path.iterdir()
                           if f.is_file() and f.suffix in (".json", ".jsonl"))
            if not found:
                raise CheckpointError(f"{path}: no checkpoint files (*.json, *.jsonl) in it")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise CheckpointError(f"{path}: no such checkpoint file or directory")
    out = []
    for f in files:
        try:
            lines = f.read_bytes().splitlines()
        except OSError as e:
            raise CheckpointError(f"{f}: cannot be read ({e.strerror})") from None
        got = [Checkpoint.from_json(line, f"{f}:{n}") for n, line in enumerate(lines, 1)
               if line.strip()]
        if not got:
            raise CheckpointError(f"{f}: empty, no checkpoint in it")
        if len(got) == 1:  # a one-checkpoint file is named by the file alone
            got = [Checkpoint(**{**got[0].__dict__, "source": str(f)})]
        out.extend(got)
    return out


def append_checkpoint(path: Path, cp: Checkpoint) -> None:
    """Add one checkpoint line to a file (created if missing). One write() of a whole line in
    append mode, so several server processes appending to one file never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, cp.to_json() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"


@dataclass
class Report:
    """What `verify` found: problems (empty when intact), the trail's size and newest event,
    and the newest checkpoint it agreed with."""

    problems: list[str]
    events: int = 0
    last_seq: int = 0
    checkpoints: int = 0
    newest: Checkpoint | None = None

    @property
    def after_newest(self) -> int:
        return self.last_seq - self.newest.seq if self.newest else self.events


@dataclass
class _Job:
    args: tuple
    done: threading.Event = field(default_factory=threading.Event)
    seq: int = 0
    error: Exception | None = None


@dataclass
class AuditTrail:
    engine: Engine
    key: bytes
    _queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)
    _writer: threading.Thread | None = field(default=None, repr=False)
    key_file: Path | None = None
    # Checkpoints appended outside the database by the server (see checkpoint_to_dir).
    checkpoint_dir: Path | None = None
    checkpoint_minutes: float = 5.0
    checkpoint_events: int = 1000
    _start: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _checkpointer: threading.Thread | None = field(default=None, repr=False)
    _wake: threading.Event = field(default_factory=threading.Event, repr=False)
    _stopping: bool = field(default=False, repr=False)
    _since: int = field(default=0, repr=False)
    _last_checkpoint: Checkpoint | None = field(default=None, repr=False)

    @classmethod
    def open(cls, engine: Engine, keys: Path) -> AuditTrail:
        """The trail as the application uses it: key from $SHAREDCARE_AUDIT_KEY_FILE (else
        keys/audit.key), checkpoints to $SHAREDCARE_AUDIT_CHECKPOINT_DIR every
        $SHAREDCARE_AUDIT_CHECKPOINT_MINUTES (5) or $SHAREDCARE_AUDIT_CHECKPOINT_EVENTS (1000)
        events, and the chain's anchor laid down when the database is new."""
        key_file = key_path(keys)
        folder = os.environ.get(ENV_CHECKPOINT_DIR)
        trail = cls(engine, read_or_create_key(key_file), key_file=key_file,
                    checkpoint_dir=Path(folder).expanduser() if folder else None,
                    checkpoint_minutes=float(os.environ.get(ENV_CHECKPOINT_MINUTES) or 5),
                    checkpoint_events=int(os.environ.get(ENV_CHECKPOINT_EVENTS) or 1000))
        trail.initialise()
        return trail

    def initialise(self) -> None:
        """Lay down the signed anchor of an empty chain when the database is new (no events, no
        records). From then on the anchor always exists, so a database that holds records but
        no anchor has had its events and anchor deleted: to pass as "never audited" a deleter
        would have to forge the anchor (needing the key) or delete every record as well."""
        with self.engine.connect() as c:
            if c.execute(select(audit_anchor.c.id)).first() is not None:
                return
        with self.engine.connect().execution_options(write=True) as c, c.begin():
            self._lock(c)
            if c.execute(select(audit_anchor.c.id)).first() is not None:
                return
            if c.execute(select(audit_event.c.seq).limit(1)).first() or self._holds_records(c):
                return  # not new: verify reports the missing anchor
            c.execute(insert(audit_anchor), [{"id": 1, "seq": 0, "hash": GENESIS,
                                              "mac": self._anchor_mac(0, GENESIS)}])

    @staticmethod
    def _holds_records(conn) -> bool:
        from ..store.schema import resource

        return bool(conn.execute(select(
            exists(select(organisation.c.ods)) | exists(select(staff.c.username))
            | exists(select(resource.c.id)))).scalar())

    @staticmethod
    def _lock(conn) -> None:
        if conn.dialect.name == "postgresql":
            # One writer at a time extends the chain (SQLite's BEGIN IMMEDIATE does the same).
            conn.execute(text("SELECT pg_advisory_xact_lock(7346001)"))

    def record(self, access: Access, action: str, outcome: str = "0", *,
               patient_id: str | None = None, entity: str | None = None,
               reason: str | None = None, glass: bool = False,
               conn: Connection | None = None, recorded: str | None = None) -> int:
        """Append one event. Inside a caller's transaction (a write) it commits with that
        transaction. Otherwise it is handed to the audit writer and this call returns only once
        the event is committed: durable before the answer leaves, never a lossy queue."""
        args = (access, action, outcome, patient_id, entity, reason, glass, recorded)
        if conn is not None:
            seq = self._append(conn, *args)
        else:
            job = _Job(args)
            self._ensure_writer()
            self._queue.put(job)
            job.done.wait()
            if job.error is not None:
                raise job.error
            seq = job.seq
        if self.checkpoint_dir is not None:
            self._count_for_checkpoint()
        return seq

    def _ensure_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            with self._start:
                if self._writer is None or not self._writer.is_alive():
                    self._writer = threading.Thread(target=self._write_batches, daemon=True,
                                                    name="audit-writer")
                    self._writer.start()

    def _write_batches(self) -> None:
        # Group commit: events waiting together share one transaction (one commit), in arrival
        # order. Concurrent readers then cost one commit per batch, not one each.
        while True:
            batch = [self._queue.get()]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                with self.engine.connect().execution_options(write=True) as c, c.begin():
                    for job, seq in zip(batch, self._append_many(c, [j.args for j in batch]),
                                        strict=True):
                        job.seq = seq
            except Exception:  # noqa: BLE001 - retried one by one so one bad event fails alone
                for job in batch:
                    try:
                        with self.engine.connect().execution_options(write=True) as c, \
                                c.begin():
                            job.seq = self._append(c, *job.args)
                    except Exception as e:  # noqa: BLE001 - handed to the waiting caller
                        job.error = e
            for job in batch:
                job.done.set()

    def _append(self, conn, *args) -> int:
        return self._append_many(conn, [args])[0]

    def _append_many(self, conn, events: list[tuple]) -> list[int]:
        """Extend the chain by `events` in order: one lock, one read of the head, one insert of
        every row and one anchor update, however many events the writer gathered (per event
        these were four statements, which is what held audited requests back under load)."""
        self._lock(conn)
        last = conn.exec_driver_sql(_HEAD_SQL).first()
        seq, prev = (last[0], last[1]) if last else (0, GENESIS)
        rows = []
        for access, action, outcome, patient_id, entity, reason, glass, recorded in events:
            seq += 1
            recorded = recorded or now_text()
            content = orjson.dumps(audit_resource(access, action, outcome, recorded, patient_id,
                                                  entity, reason, glass)).decode()
            row = {"seq": seq, "recorded": recorded, "username": access.username,
                   "client_id": access.client_id, "ods": access.ods, "role": access.role,
                   "purpose": access.purpose, "action": action, "outcome": outcome,
                   "patient_id": patient_id, "entity": entity[:400] if entity else None,
                   "reason": reason, "break_glass": glass, "content": content,
                   "prev_hash": prev}
            row["hash"] = prev = row_hash(self.key, row)
            rows.append(row)
        # The statements are written once (per paramstyle) rather than built per batch: with
        # one event a batch (a quiet server) building them was half the writer's CPU.
        named = _named(conn)
        conn.exec_driver_sql(named(_INSERT_SQL), rows)
        head = {"seq": seq, "hash": prev, "mac": self._anchor_mac(seq, prev)}
        if conn.exec_driver_sql(named(_ANCHOR_SQL), head).rowcount == 0:
            conn.execute(insert(audit_anchor), [{"id": 1, **head}])
        return [r["seq"] for r in rows]

    def _anchor_mac(self, seq: int, head_hash: str) -> str:
        return hmac.new(self.key, f"anchor:{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()

    # ---------------------------------------------------------------- checkpoints
    def head(self, conn) -> tuple[int, str, str | None, int]:
        """(newest seq, its hash, its time, number of events), read in one statement so the
        four agree; (0, GENESIS, None, 0) for an empty trail."""
        n = select(func.count()).select_from(audit_event).scalar_subquery()
        row = conn.execute(select(audit_event.c.seq, audit_event.c.hash, audit_event.c.recorded,
                                  n).order_by(audit_event.c.seq.desc()).limit(1)).first()
        return (row[0], row[1], row[2], row[3]) if row else (0, GENESIS, None, 0)

    def checkpoint(self) -> Checkpoint:
        """A signed checkpoint of the trail as it is now (committed events only)."""
        with self.engine.connect() as c:
            seq, head, recorded, count = self.head(c)
        return Checkpoint.sign(self.key, seq, head, count, recorded)

    def checkpoint_to_dir(self, folder: Path | None = None) -> Checkpoint | None:
        """Append a checkpoint to today's file in the checkpoint directory when the trail has
        grown since the last one. Two cheap queries; never signs a trail that no longer
        matches the checkpoint this process wrote before (it logs that instead)."""
        folder = Path(folder or self.checkpoint_dir)
        last = self._last_checkpoint
        with self.engine.connect() as c:
            seq, head, recorded, count = self.head(c)
            if last is not None:
                if (seq, head) == (last.seq, last.hash):
                    return None
                was = c.execute(select(audit_event.c.hash).where(audit_event.c.seq == last.seq)
                                ).scalar() if last.seq else GENESIS
                if was != last.hash:
                    log.error("audit checkpoint NOT written: event %s no longer has the hash "
                              "checkpointed at %s (the trail was truncated, rolled back or "
                              "rewritten); run `sharedcare audit verify --checkpoint %s`",
                              last.seq, last.created, folder)
                    return None
        cp = Checkpoint.sign(self.key, seq, head, count, recorded)
        day = cp.created[:10]
        append_checkpoint(folder / f"audit-checkpoints-{day}.jsonl", cp)
        self._last_checkpoint = cp
        return cp

    def _count_for_checkpoint(self) -> None:
        # Cheap on the request path: a counter and, every N events, a wake-up; the checkpoint
        # itself is written by its own thread.
        if self._checkpointer is None or not self._checkpointer.is_alive():
            with self._start:
                if self._checkpointer is None or not self._checkpointer.is_alive():
                    self._checkpointer = threading.Thread(
                        target=self._write_checkpoints, daemon=True, name="audit-checkpointer")
                    self._checkpointer.start()
        self._since += 1
        if self._since >= self.checkpoint_events:
            self._since = 0
            self._wake.set()

    def _write_checkpoints(self) -> None:
        self._last_checkpoint = self._newest_in_dir()
        while not self._stopping:
            try:
                self.checkpoint_to_dir()
            except Exception as e:  # noqa: BLE001 - logged without data; retried next time
                log.error("audit checkpoint not written: %s", type(e).__name__)
            self._wake.wait(self.checkpoint_minutes * 60)
            self._wake.clear()
            time.sleep(0.05)  # let a burst's events commit before reading the head

    def stop_checkpoints(self) -> None:
        """Stop the checkpoint thread (tests; a server process simply exits)."""
        thread = self._checkpointer
        if thread is not None and thread.is_alive():
            self._stopping = True
            self._wake.set()
            thread.join(10)

    def _newest_in_dir(self) -> Checkpoint | None:
        """The newest checkpoint already in the directory (its newest file only), so a
        restarted server does not sign over a trail rolled back while it was down."""
        try:
            files = sorted(Path(self.checkpoint_dir).glob("audit-checkpoints-*.jsonl"))
            found = [cp for cp in read_checkpoints(files[-1:]) if cp.signed_by(self.key)]
        except (OSError, CheckpointError):
            return None
        return max(found, key=lambda cp: cp.seq, default=None)

    # ---------------------------------------------------------------- verification
    def verify(self, checkpoints: list[Checkpoint] = ()) -> list[str]:
        """Problems found walking the chain from the start (and comparing it with any
        checkpoints kept outside the database): empty when intact."""
        return self.report(checkpoints).problems

    def report(self, checkpoints: list[Checkpoint] = ()) -> Report:
        problems = []
        good = []
        for cp in checkpoints:
            if cp.signed_by(self.key):
                good.append(cp)
            else:
                problems.append(f"checkpoint {cp.source or ''}: its signature does not verify -- "
                                "it was forged or edited, or signed with another audit key")
        wanted = sorted({cp.seq for cp in good if cp.seq > 0})
        hash_at: dict[int, str] = {}
        count_at: dict[int, int] = {}
        i = n = changed = 0
        prev_hash, prev_seq = GENESIS, 0
        with self.engine.connect() as conn:
            cols = [audit_event.c[c] for c in CHAINED] + [audit_event.c.hash]
            for r in conn.execute(select(*cols).order_by(audit_event.c.seq)).mappings():
                row = dict(r)
                while i < len(wanted) and wanted[i] < row["seq"]:
                    count_at[wanted[i]] = n  # that event is missing
                    i += 1
                n += 1
                if i < len(wanted) and wanted[i] == row["seq"]:
                    hash_at[row["seq"]], count_at[row["seq"]] = row["hash"], n
                    i += 1
                if row["seq"] != prev_seq + 1:
                    problems.append(f"event {row['seq']}: events {prev_seq + 1}..{row['seq'] - 1}"
                                    " are missing (deleted)")
                if row["prev_hash"] != prev_hash:
                    problems.append(f"event {row['seq']}: does not follow the event before it "
                                    "(deleted, inserted or reordered)")
                if row_hash(self.key, row) != row["hash"]:
                    changed += 1
                    problems.append(f"event {row['seq']}: its contents were changed after it "
                                    "was recorded")
                prev_hash, prev_seq = row["hash"], row["seq"]
            anchor = conn.execute(select(audit_anchor).where(audit_anchor.c.id == 1)).first()
            records = anchor is None and not n and self._holds_records(conn)
        # The anchor names the newest event: without it, deleting the latest events (or all
        # of them) would leave a chain that is intact as far as it goes. It is laid down when
        # the database is new, so a database with records but no anchor lost it.
        if anchor is None:
            if n:
                problems.append("the chain's anchor is missing (deleted)")
            elif records:
                problems.append("the audit trail is empty and its anchor is missing, yet the "
                                "database holds records: every event and the anchor were "
                                "deleted")
        elif anchor.mac != self._anchor_mac(anchor.seq, anchor.hash):
            if n and changed == n:  # nothing matches: most likely the wrong key, say so once
                problems = [p for p in problems if "contents were changed" not in p]
                problems.append(f"none of the {events(n)} nor the anchor match their keyed "
                                f"hashes: the audit key in use ({self.key_file or 'given'}) is "
                                "not the one this trail was written with -- or every event "
                                "was rewritten")
            else:
                problems.append("the chain's anchor was changed")
        elif (anchor.seq, anchor.hash) != (prev_seq, prev_hash):
            if anchor.seq > prev_seq:
                problems.append(f"the newest events are missing: the trail ends at event "
                                f"{prev_seq} but event {anchor.seq} was recorded")
            else:
                problems.append(f"the chain's anchor names event {anchor.seq}, but the trail "
                                f"runs to event {prev_seq}: the anchor was replaced with an "
                                "older one")
        for cp in good:
            problems.extend(self._against(cp, prev_seq, n, hash_at, count_at))
        newest = max(good, key=lambda cp: (cp.seq, cp.created), default=None)
        return Report(problems, n, prev_seq, len(good), newest)

    @staticmethod
    @staticmethod
    def _against(cp: Checkpoint, last_seq: int, n: int, hash_at: dict, count_at: dict
                 ) -> list[str]:
        if cp.seq == 0:
            return []
        if cp.seq > last_seq:
            if n == 0:
                problem = (f"every event was deleted: checkpoint {cp.describe()}; the database "
                           "holds none")
            else:
                lost = (f"event {cp.seq} is" if cp.seq == last_seq + 1
                        else f"events {last_seq + 1}..{cp.seq} are")
                problem = (f"{lost} missing: checkpoint {cp.describe()}, but the trail ends at "
                           f"event {last_seq} -- truncated, or rolled back to an older copy of "
                           "the database")
        elif cp.seq not in hash_at:
            problem = f"event {cp.seq} is missing (deleted): checkpoint {cp.describe()}"
        elif hash_at[cp.seq] != cp.hash:
            problem = (f"event {cp.seq} no longer has the hash recorded by checkpoint "
                       f"{cp.describe()}: the trail was rolled back to an older copy of the "
                       "database, or rewritten")
        elif count_at[cp.seq] != cp.count:
            problem = (f"checkpoint {cp.describe()}, but the database holds "
                       f"{events(count_at[cp.seq])} up to event {cp.seq}")
        else:
            return []
        return [problem]
