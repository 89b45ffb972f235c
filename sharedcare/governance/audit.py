"""The audit trail: exactly one FHIR AuditEvent (IHE Basic Audit Log Patterns) per access,
written durably -- in the same transaction as the write it records, or in its own transaction
before a read's answer leaves the server -- and chained with a keyed hash so that editing,
deleting, reordering or inserting a row is detected by `sharedcare audit verify`.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from sqlalchemy import Connection, Engine, insert, select, text, update

from .policy import Access, now_text
from .schema import audit_anchor, audit_event

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
    "break-glass": ("break-glass", "E"),
    "declare-relationship": ("declare-relationship", "C"),
    "login": ("login", "E"),
    "login-failed": ("login", "E"),
    "view": ("read", "R"),
}


def load_key(folder: Path) -> bytes:
    """The HMAC key lives beside, not inside, the database: someone who can edit the audit
    table cannot recompute a valid chain without it."""
    path = folder / "audit.key"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


CHAINED = ("seq", "recorded", "username", "client_id", "ods", "role", "purpose", "action",
           "outcome", "patient_id", "entity", "reason", "break_glass", "content", "prev_hash")


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
    _start: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, access: Access, action: str, outcome: str = "0", *,
               patient_id: str | None = None, entity: str | None = None,
               reason: str | None = None, glass: bool = False,
               conn: Connection | None = None, recorded: str | None = None) -> int:
        """Append one event. Inside a caller's transaction (a write) it commits with that
        transaction. Otherwise it is handed to the audit writer and this call returns only once
        the event is committed: durable before the answer leaves, never a lossy queue."""
        args = (access, action, outcome, patient_id, entity, reason, glass, recorded)
        if conn is not None:
            return self._append(conn, *args)
        job = _Job(args)
        self._ensure_writer()
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.seq

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
                    for job in batch:
                        job.seq = self._append(c, *job.args)
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

    def _append(self, conn, access, action, outcome, patient_id, entity, reason, glass, recorded
                ) -> int:
        if conn.dialect.name == "postgresql":
            # One writer at a time extends the chain (SQLite's BEGIN IMMEDIATE does the same).
            conn.execute(text("SELECT pg_advisory_xact_lock(7346001)"))
        last = conn.execute(select(audit_event.c.seq, audit_event.c.hash)
                            .order_by(audit_event.c.seq.desc()).limit(1)).first()
        seq = (last[0] + 1) if last else 1
        recorded = recorded or now_text()
        content = orjson.dumps(audit_resource(access, action, outcome, recorded, patient_id,
                                              entity, reason, glass)).decode()
        row = {"seq": seq, "recorded": recorded, "username": access.username,
               "client_id": access.client_id, "ods": access.ods, "role": access.role,
               "purpose": access.purpose, "action": action, "outcome": outcome,
               "patient_id": patient_id, "entity": entity[:400] if entity else None,
               "reason": reason, "break_glass": glass, "content": content,
               "prev_hash": last[1] if last else GENESIS}
        row["hash"] = row_hash(self.key, row)
        conn.execute(insert(audit_event), [row])
        head = {"seq": seq, "hash": row["hash"], "mac": self._anchor_mac(seq, row["hash"])}
        if conn.execute(update(audit_anchor).where(audit_anchor.c.id == 1).values(**head)
                        ).rowcount == 0:
            conn.execute(insert(audit_anchor), [{"id": 1, **head}])
        return seq

    def _anchor_mac(self, seq: int, head_hash: str) -> str:
        return hmac.new(self.key, f"anchor:{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()

    def verify(self) -> list[str]:
        """Problems found walking the chain from the start: empty when intact."""
        problems = []
        prev_hash, prev_seq = GENESIS, 0
        with self.engine.connect() as conn:
            cols = [audit_event.c[c] for c in CHAINED] + [audit_event.c.hash]
            for r in conn.execute(select(*cols).order_by(audit_event.c.seq)).mappings():
                row = dict(r)
                if row["seq"] != prev_seq + 1:
                    problems.append(f"event {row['seq']}: events {prev_seq + 1}..{row['seq'] - 1}"
                                    " are missing (deleted)")
                if row["prev_hash"] != prev_hash:
                    problems.append(f"event {row['seq']}: does not follow the event before it "
                                    "(deleted, inserted or reordered)")
                if row_hash(self.key, row) != row["hash"]:
                    problems.append(f"event {row['seq']}: its contents were changed after it "
                                    "was recorded")
                prev_hash, prev_seq = row["hash"], row["seq"]
            anchor = conn.execute(select(audit_anchor).where(audit_anchor.c.id == 1)).first()
        # The anchor names the newest event: without it, deleting the latest events (or all
        # of them) would leave a chain that is intact as far as it goes.
        if anchor is None:
            if prev_seq:
                problems.append("the chain's anchor is missing (deleted)")
        elif anchor.mac != self._anchor_mac(anchor.seq, anchor.hash):
            problems.append("the chain's anchor was changed")
        elif (anchor.seq, anchor.hash) != (prev_seq, prev_hash):
            problems.append(f"the newest events are missing: the trail ends at event {prev_seq} "
                            f"but event {anchor.seq} was recorded")
        return problems
