"""Every write a person or a partner system asks for, decided in one place.

    scopes allow it -> the role may write -> each target the caller may see -> (people) a
    legitimate relationship with every patient it touches -> the store's controller rule ->
    one audit event in the write's own transaction

Conditional writes (If-None-Exist, conditional update and delete, conditional references in a
Bundle) look for matches under the caller's policy: a resource the caller may not see is no match,
so a write can never answer "does this patient have that condition?" for someone who may not ask.
Refusals raise FHIRError; the request's audit record (request_audit.py) records them once the
refused transaction has rolled back.
"""

from __future__ import annotations

from contextvars import ContextVar

from sqlalchemy import Connection, false, select

from ..fhir.outcome import FHIRError
from ..store.repository import Store, WriteOp, WriteResult
from ..store.schema import compartment, resource
from .auth import forbidden, parse_scopes
from .policy import DIRECT_CARE, Access, explain_relationship

# SMART v2: c create, r read, u update, d delete, s search.
PERMISSION = {"POST": "c", "PUT": "u", "DELETE": "d"}
WRITING_ROLES = frozenset({"clinician", "nurse", "allied-health", "social-worker", "sysadmin"})

# Who is writing, for hooks on the store's write path (relationships derived from a person's own
# write wait for review; those from partner systems' feeds stay automatic).
current_writer: ContextVar[Access | None] = ContextVar("sharedcare_writer", default=None)


def check_scopes(access: Access, ops: list[WriteOp]) -> None:
    if access.scopes is None:
        return
    scopes = parse_scopes(" ".join(access.scopes))
    for op in ops:
        perm = PERMISSION[op.method]
        if not any(s.allows(op.rtype, perm) for s in scopes):
            raise forbidden(f"the access token's scopes do not allow '{perm}' on {op.rtype}")


def check_role(access: Access) -> None:
    if access.kind != "system" and access.role not in WRITING_ROLES:
        raise forbidden(f"the {access.role} role cannot write to the record")
    if access.purpose != DIRECT_CARE:
        # Planning and research read governed extracts; they never change the record.
        raise forbidden(f"a token for {access.purpose} cannot write to the record")


def check_targets(store: Store, access: Access, ops: list[WriteOp], conn: Connection) -> None:
    """An update or delete must name a resource the caller may see. The refusal does not say
    who controls it or what it is: that would describe a record the caller may not read."""
    policy = access.policy.resource_filter() if access.policy is not None else None
    if policy is None:
        return
    by_type: dict[str, list[str]] = {}
    for op in ops:
        if op.method != "POST":
            by_type.setdefault(op.rtype, []).append(op.rid)
    # Two queries a type, not two an entry: a partner's Bundle of hundreds of updates is the
    # ingest path.
    for rtype, ids in by_type.items():
        for i in range(0, len(ids), 500):
            chunk = ids[i: i + 500]
            where = [resource.c.type == rtype, resource.c.id.in_(chunk),
                     resource.c.deleted == false()]
            current = set(conn.execute(select(resource.c.id).where(*where)).scalars())
            if not current:
                continue
            visible = set(conn.execute(select(resource.c.id).where(*where, policy)).scalars())
            hidden = sorted(current - visible)
            if hidden:
                raise forbidden(f"you may not change {rtype}/{hidden[0]}")


def patients_touched(store: Store, ops: list[WriteOp], conn: Connection) -> set[str]:
    """Every patient whose record the writes change: those the new content belongs to and those
    the current versions belong to (moving a result to another patient touches both)."""
    out: set[str] = set()
    for op in ops:
        if op.resource is not None:
            out.update(store.indexer.index({**op.resource, "id": op.rid}).compartments)
        if op.method != "POST":
            out.update(conn.execute(
                select(compartment.c.patient_id)
                .join(resource, resource.c.pk == compartment.c.resource_pk)
                .where(resource.c.type == op.rtype, resource.c.id == op.rid)).scalars())
    return out


def check_relationships(store: Store, access: Access, ops: list[WriteOp],
                        conn: Connection) -> None:
    """A person writes only into the records of patients they have a legitimate relationship
    with (or have broken glass for). Registering a new patient is the one write that has none
    to show: a patient not yet in the store is not checked."""
    if not access.needs_relationship:
        return
    for patient in sorted(patients_touched(store, ops, conn)):
        if not store.exists("Patient", patient, conn):
            continue
        if not explain_relationship(conn, access, patient):
            raise forbidden("you have no legitimate relationship with this patient, so you "
                            "cannot change their record",
                            [(f"{access.ods} has no registration, open encounter, episode, "
                              "referral, care-team membership or declared relationship for "
                              "this patient")])


def governed_write(gov, access: Access, ops: list[WriteOp], conn: Connection,
                   action: str, entity: str | None, joint: bool = False) -> list[WriteResult]:
    """Decide, write and audit in the caller's transaction (`conn`)."""
    check_scopes(access, ops)
    check_role(access)
    check_targets(gov.store, access, ops, conn)
    check_relationships(gov.store, access, ops, conn)
    token = current_writer.set(access)
    try:
        results = gov.store.write(ops, conn, source_org=None if joint else access.ods)
    finally:
        current_writer.reset(token)
    patient = None
    if len(results) == 1:
        s = results[0].stored
        patient = s.id if s.type == "Patient" else conn.execute(
            select(compartment.c.patient_id).join(resource, resource.c.pk == compartment.c.resource_pk)
            .where(resource.c.type == s.type, resource.c.id == s.id).limit(1)).scalar()
        entity = entity or f"{s.type}/{s.id}"
    gov.audit(access, action, "0", patient_id=patient, entity=entity, conn=conn)
    return results


def governed_match(store: Store, access: Access, rtype: str, query: str,
                   conn: Connection | None = None, limit: int = 2) -> list[str]:
    """Conditional matching as the caller sees the store."""
    if access.scopes is not None:
        scopes = parse_scopes(" ".join(access.scopes))
        if not any(s.allows(rtype, "s") or s.allows(rtype, "r") for s in scopes):
            raise forbidden(f"the access token's scopes do not allow searching {rtype}")
    if access.policy is None:
        raise FHIRError.of(500, "exception", "a conditional write needs the caller's policy")
    return store.match_ids(rtype, query, conn, limit=limit, policy=access.policy)
