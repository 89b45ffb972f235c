"""Information governance: the one door every read goes through.

    who is asking (authenticate) -> may they, and why (policy, decide) -> the store query with the
    policy inside it -> one audit event -> answer

`Governance` is the public entry point; the FHIR API, the web pages and exports call it, never
the store's read methods directly.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, delete, insert, or_, select, update

from ..fhir.categories import DIRECTORY_TYPES
from ..fhir.compartment import patient_compartment_types
from ..fhir.outcome import FHIRError, Issue
from ..store.repository import (
    PermitAll,
    SearchPage,
    Store,
    Stored,
    WriteOp,
    WriteResult,
    governance_columns,
)
from ..store.schema import compartment, resource
from .audit import AuditTrail
from .auth import (
    TokenService,
    check_password,
    forbidden,
    hash_password,
    parse_scopes,
    unauthorised,
)
from .consent import consent_for, derive_choices
from .policy import (
    BREAK_GLASS_MINUTES,
    BREAK_GLASS_ROLES,
    DIRECT_CARE,
    GLASS_REASON,
    ROLE_CATEGORIES,
    Access,
    Decision,
    ResourcePolicy,
    active_agreements,
    decide,
    explain_relationship,
    now_text,
    one_person,
    secure_binaries,
)
from .relationships import derive_relationships
from .request_audit import current_request
from .schema import (
    agreement,
    agreement_party,
    break_glass,
    care_relationship,
    organisation,
    patient_choice,
    staff,
    staff_role,
)
from .writes import check_role, check_scopes, governed_match, governed_write

MAX_FAILED_LOGINS = 5
LOCKOUT_MINUTES = 15
AGREEMENT_CACHE_SECONDS = 5.0


@dataclass
class PatientView:
    """A governed page of one patient's record, with what was withheld and why."""

    matches: list[Stored]
    total: int | None
    next_cursor: str | None
    withheld_notes: list = field(default_factory=list)
    withheld_sensitive: int = 0
    # Why the viewer may see this record (the relationship check's reasons), so a page that
    # shows "why can I see this?" does not ask again.
    reasons: list[str] = field(default_factory=list)
    glass: bool = False


class Governance:
    def __init__(self, engine: Engine, store: Store, tokens: TokenService, audit: AuditTrail):
        self.engine = engine
        self.store = store
        self.tokens = tokens
        self.audit_trail = audit
        self._agreements: dict[tuple[str, str], tuple[float, dict]] = {}
        store.after_write.append(derive_relationships)
        store.after_write.append(derive_choices)
        store.after_write.append(secure_binaries)  # a Binary joins the record it secures
        # Called as hook(conn, kind, access, patient_id) inside the break-glass and declared-
        # relationship transactions (notify/ puts an event in its outbox there).
        self.event_hooks: list = []

    # ------------------------------------------------------------------ who is asking
    def authenticate(self, request, cookie: bool = True) -> Access:
        """Who is asking. `cookie=False` for requests with effects (a bulk export kick-off is
        a GET that starts work): those need a bearer token."""
        header = request.headers.get("authorization") or ""
        token = None
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        elif cookie and request.cookies.get("sc_session") and request.method in ("GET", "HEAD"):
            # The browser session may read the API (the pages' JSON and CSV); anything that
            # changes data needs a bearer token, so a cross-site form can never write with it.
            token = request.cookies["sc_session"]
        if not token:
            raise unauthorised("sign in first: this request has no access token")
        access = self.access_from_claims(self.tokens.verify(token))
        record = current_request.get()
        if record is not None:
            record.access = access
        return access

    def access_from_claims(self, claims: dict) -> Access:
        access = Access(
            username=claims.get("sub") if claims.get("kind", "user") == "user" else None,
            ods=claims.get("ods"),
            role=claims.get("role", ""),
            purpose=claims.get("purpose", DIRECT_CARE),
            scopes=frozenset((claims.get("scope") or "").split()),
            client_id=claims.get("client_id"),
            kind=claims.get("kind", "user"),
            display_name=claims.get("name"),
            patient_id=claims.get("patient"),
        )
        return self.prepare(access)

    def prepare(self, access: Access) -> Access:
        if access.ods:
            key = (access.ods, access.purpose)
            hit = self._agreements.get(key)
            if hit is None or time.monotonic() - hit[0] > AGREEMENT_CACHE_SECONDS:
                with self.store.reads.connect() as conn:
                    hit = (time.monotonic(), active_agreements(conn, access.ods, access.purpose))
                self._agreements[key] = hit
            access.shared_with = hit[1]
        access.policy = ResourcePolicy(access)
        return access

    def forget_agreements(self) -> None:
        self._agreements.clear()

    def issue_token(self, username: str, ods: str, role: str, purpose: str = DIRECT_CARE,
                    scope: str = "user/*.cruds", lifetime: int = 3600, **extra) -> str:
        """A token for a person in one of the roles they hold (checked here)."""
        with self.store.reads.connect() as conn:
            person = conn.execute(select(staff.c.display_name, staff.c.active)
                                  .where(staff.c.username == username)).first()
            if person is None or not person.active:
                raise FHIRError.of(403, "forbidden", f"no active account '{username}'")
            held = conn.execute(select(staff_role.c.ods).where(
                staff_role.c.username == username, staff_role.c.role == role,
                staff_role.c.ods == ods)).first()
            if held is None:
                raise FHIRError.of(403, "forbidden", f"{username} does not hold the {role} "
                                   f"role at {ods}")
        return self.tokens.issue({"sub": username, "ods": ods, "role": role, "purpose": purpose,
                                  "scope": scope, "kind": "user", "name": person.display_name,
                                  **extra}, lifetime)

    def issue_system_token(self, client_id: str, ods: str, scope: str = "system/*.cruds",
                           purpose: str = DIRECT_CARE, lifetime: int = 3600) -> str:
        """A token for a partner system acting for its organisation (client_credentials)."""
        return self.tokens.issue({"sub": client_id, "client_id": client_id, "ods": ods,
                                  "role": "system", "purpose": purpose, "scope": scope,
                                  "kind": "system"}, lifetime)

    def roles_of(self, username: str) -> list[tuple[str, str, str]]:
        """(ods, organisation name, role) for each role the person holds."""
        with self.store.reads.connect() as conn:
            return [tuple(r) for r in conn.execute(
                select(staff_role.c.ods, organisation.c.name, staff_role.c.role)
                .join(organisation, organisation.c.ods == staff_role.c.ods, isouter=True)
                .where(staff_role.c.username == username).order_by(staff_role.c.ods))]

    def sign_in(self, username: str, password: str) -> bool:
        """Check a local account's password, with lock-out after repeated failures."""
        now = datetime.now(UTC)
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            row = conn.execute(select(staff.c.password_hash, staff.c.failed_logins,
                                      staff.c.locked_until, staff.c.active)
                               .where(staff.c.username == username)).first()
            if row is None or not row.active:
                check_password(None, password)
                return False
            if row.locked_until and row.locked_until > now.isoformat():
                # The same work as a wrong password, so a locked account can't be told apart.
                check_password(row.password_hash, password)
                return False
            if check_password(row.password_hash, password):
                conn.execute(update(staff).where(staff.c.username == username)
                             .values(failed_logins=0, locked_until=None))
                return True
            failed = row.failed_logins + 1
            locked = (now + timedelta(minutes=LOCKOUT_MINUTES)).isoformat() \
                if failed >= MAX_FAILED_LOGINS else None
            conn.execute(update(staff).where(staff.c.username == username)
                         .values(failed_logins=0 if locked else failed, locked_until=locked))
            return False

    def is_locked(self, username: str) -> bool:
        with self.store.reads.connect() as conn:
            until = conn.execute(select(staff.c.locked_until)
                                 .where(staff.c.username == username)).scalar()
        return bool(until and until > datetime.now(UTC).isoformat())

    # ------------------------------------------------------------------ may they
    def require(self, access: Access, rtype: str, perm: str, action: str | None = None,
                entity: str | None = None) -> None:
        """SMART scopes narrow access: the token must carry a scope for this type and action.
        A refusal of a read is audited like any other refused access."""
        if access.scopes is None:
            return
        scopes = parse_scopes(" ".join(access.scopes))
        if not any(s.allows(rtype, perm) for s in scopes):
            reason = f"the access token's scopes do not allow '{perm}' on {rtype}"
            if action:
                self.audit(access, action, "4", entity=entity or rtype, reason=reason)
            raise forbidden(reason)

    def _scope_patient(self, access: Access) -> str | None:
        """With only patient/ scopes, a token is confined to its launch patient."""
        scopes = parse_scopes(" ".join(access.scopes or ()))
        if scopes and all(s.context == "patient" for s in scopes):
            if not access.patient_id:
                raise forbidden("patient/ scopes need a patient in the launch context")
            return access.patient_id
        return None

    def decide(self, access: Access, rtype: str, rid: str) -> Decision:
        with self.store.reads.connect() as conn:
            row = conn.execute(select(resource.c.pk, resource.c.type, resource.c.source_org,
                                      resource.c.category, resource.c.sensitivity)
                               .where(resource.c.type == rtype, resource.c.id == rid)).mappings().first()
            if row is None:
                return Decision("deny", [f"{rtype}/{rid} is not known"])
            patients = [p for (p,) in conn.execute(select(compartment.c.patient_id)
                                                   .where(compartment.c.resource_pk == row["pk"]))]
            return decide(conn, access, dict(row), patients[0] if patients else None)

    # ------------------------------------------------------------------ governed reads
    def read(self, access: Access, rtype: str, rid: str) -> Stored:
        self.require(access, rtype, "r", "read", f"{rtype}/{rid}")
        pinned = self._scope_patient(access)
        try:
            s = self.store.read(rtype, rid, access.policy)
            if pinned and rtype in patient_compartment_types() and \
                    pinned not in self._patients_of(s.pk):
                raise forbidden("this token is confined to another patient's record")
        except FHIRError as e:
            if e.status == 404 and self.store.exists(rtype, rid):
                d = self.decide(access, rtype, rid)
                self.audit(access, "read", "4", entity=f"{rtype}/{rid}",
                           patient_id=self._first_patient(rtype, rid), reason="; ".join(d.reasons))
                raise forbidden(f"you may not see {rtype}/{rid}", d.reasons) from None
            self.audit(access, "read", "4", entity=f"{rtype}/{rid}", reason=str(e))
            raise
        patients = self._patients_of(s.pk)
        self.audit(access, "read", "0", entity=f"{rtype}/{rid}",
                   patient_id=patients[0] if patients else None)
        return s

    def vread(self, access: Access, rtype: str, rid: str, version: int) -> Stored:
        self.require(access, rtype, "r", "vread", f"{rtype}/{rid}")
        s = self.store.vread(rtype, rid, version, access.policy)
        patient = self._first_patient(rtype, rid)
        decision = self._version_decision(access, s)
        if not decision.permitted:
            self.audit(access, "vread", "4", entity=f"{rtype}/{rid}/_history/{version}",
                       patient_id=patient, reason="; ".join(decision.reasons))
            raise forbidden(f"you may not see version {version} of {rtype}/{rid}",
                            decision.reasons)
        self.audit(access, "vread", "0", entity=f"{rtype}/{rid}/_history/{version}",
                   patient_id=patient)
        return s

    def history(self, access: Access, rtype, rid, since, count, before):
        self.require(access, rtype or "*", "r", "history", rtype)
        rows, nxt = self.store.history(access.policy, rtype, rid, since, count, before)
        # The store filters on each resource's current labels; an older version carries its
        # own (it may have been more sensitive), so each is checked on what it was.
        rows = [(m, s, t) for m, s, t in rows if s.deleted or self._version_decision(
            access, s).permitted]
        self.audit(access, "history", "0", entity="/".join(x for x in (rtype, rid) if x) or "*",
                   patient_id=self._first_patient(rtype, rid) if rid else None)
        return rows, nxt

    def _version_decision(self, access: Access, s: Stored) -> Decision:
        """A version is governed by what it was: its own labels, and the patients it belonged
        to then (a result moved to another patient stays with the first in its history)."""
        res = s.json()
        src, cat, sens = governance_columns(res)
        row = {"type": s.type, "source_org": src, "category": cat, "sensitivity": sens}
        patients = [s.id] if s.type == "Patient" else sorted(
            self.store.indexer.index(res).compartments)
        with self.store.reads.connect() as conn:
            decisions = [decide(conn, access, row, p) for p in patients or [None]]
        return next((d for d in decisions if d.permitted), decisions[0])

    def search(self, access: Access, rtype: str | None, params, lenient: bool = False,
               compartment: str | None = None) -> SearchPage:
        # The audit names what was searched for, never the values: a name or a date of birth
        # in a query string is patient data.
        query = "&".join(dict.fromkeys(k for k, _ in params if k != "_cursor"))
        self.require(access, rtype or "*", "s", "search", f"{rtype}?{query}")
        pinned = self._scope_patient(access)
        if pinned:
            if compartment and compartment != pinned:
                raise forbidden("this token is confined to another patient's record")
            compartment = pinned if rtype in patient_compartment_types() else compartment
        try:
            page = self.store.search(rtype, params, access.policy, lenient, compartment)
        except FHIRError as e:
            self.audit(access, "search", "4", entity=f"{rtype}?{query}", reason=str(e),
                       patient_id=compartment)
            raise
        page.withheld_notes = []
        patients = {p for s in page.matches if s.type == "Patient" for p in (s.id,)}
        self.audit(access, "search", "0", entity=f"{rtype}?{query}"[:400],
                   patient_id=compartment or (next(iter(patients)) if len(patients) == 1 else None))
        return page

    def everything(self, access: Access, patient_id: str, count: int = 100,
                   cursor: str | None = None, since: str | None = None,
                   types: list[str] | None = None) -> PatientView:
        self.require(access, "Patient", "r", "everything", f"Patient/{patient_id}/$everything")
        pinned = self._scope_patient(access)
        if pinned and pinned != patient_id:
            raise forbidden("this token is confined to another patient's record")
        reasons = self.check_patient(access, patient_id, "everything")
        # The relationship check reads the viewer's break-glass for the person too; only a
        # person can break glass, so a partner system's view never includes it.
        glass = access.needs_relationship and any(r.startswith(GLASS_REASON) for r in reasons)
        policy = access.policy.for_patient(glass)
        try:
            matches, total, nxt, hidden = self.store.everything(
                patient_id, policy, count, cursor, since, types, policy.withheld_filter())
        except FHIRError as e:
            self.audit(access, "everything", "4", patient_id=patient_id, reason=str(e))
            raise
        view = PatientView(matches, total, nxt, withheld_sensitive=hidden, reasons=reasons,
                           glass=glass)
        if cursor is None and hidden:
            view.withheld_notes = [Issue(
                "suppressed", f"{hidden} item{'s' if hidden != 1 else ''} withheld: sensitive "
                "information your role may not see without breaking glass",
                severity="information")]
        self.audit(access, "everything", "0", patient_id=patient_id,
                   entity=f"Patient/{patient_id}/$everything", glass=glass)
        return view

    def check_patient(self, access: Access, patient_id: str, action: str) -> list[str]:
        """Patient-level decision (legitimate relationship); 403 with reasons when refused."""
        if not ROLE_CATEGORIES.get(access.role) or access.purpose != DIRECT_CARE:
            reason = f"the {access.role} role does not give access to care records"
            self.audit(access, action, "4", patient_id=patient_id, reason=reason)
            raise forbidden("you may not see this patient's record", [reason])
        if not access.needs_relationship:
            return ["partner system acting for its organisation"]
        with self.store.reads.connect() as conn:
            reasons = explain_relationship(conn, access, patient_id)
        if not reasons:
            reason = (f"{access.ods} has no legitimate relationship with this patient: no "
                      "registration, open encounter, active episode, referral or care-team "
                      "membership. Declare one (it will be reviewed) or, in an emergency, "
                      "break glass.")
            self.audit(access, action, "4", patient_id=patient_id, reason=reason)
            raise forbidden("you have no legitimate relationship with this patient", [reason])
        return reasons

    def locate_patient(self, access: Access, nhs_number: str) -> str | None:
        """The id of a Patient record with this NHS number, for someone who may not (yet) see
        it, so they can declare a relationship or break glass. Only an id leaves -- nothing of
        the record -- only for roles that may do either, and the lookup is audited."""
        from ..fhir.codes import NHS_NUMBER_SYSTEM
        from ..identity import nhs_number as nhs
        from ..store.repository import PermitAll

        digits = nhs.normalise(nhs_number)
        if access.role not in BREAK_GLASS_ROLES or access.kind != "user" or not digits \
                or not nhs.is_valid(digits):
            return None
        ids = self.store.match_ids("Patient", f"identifier={NHS_NUMBER_SYSTEM}|{digits}",
                                   limit=1, policy=PermitAll())
        self.audit(access, "locate", "0", patient_id=ids[0] if ids else None,
                   entity="Patient?identifier (NHS number)",
                   reason="located to declare a relationship or break glass")
        return ids[0] if ids else None

    def has_glass(self, access: Access, patient_id: str) -> bool:
        with self.store.reads.connect() as conn:
            return conn.execute(select(break_glass.c.id).where(
                break_glass.c.username == access.username, break_glass.c.ods == access.ods,
                break_glass.c.role == access.role,
                one_person(break_glass.c.patient_id, patient_id),
                break_glass.c.expires > now_text())).first() is not None

    def _patients_of(self, pk: int | None) -> list[str]:
        if pk is None:
            return []
        with self.store.reads.connect() as conn:
            return [p for (p,) in conn.execute(select(compartment.c.patient_id)
                                               .where(compartment.c.resource_pk == pk))]

    def _first_patient(self, rtype, rid) -> str | None:
        if rtype == "Patient":
            return rid
        if not rtype or rtype in DIRECTORY_TYPES:
            return None
        with self.store.reads.connect() as conn:
            return conn.execute(select(compartment.c.patient_id).join(
                resource, resource.c.pk == compartment.c.resource_pk).where(
                resource.c.type == rtype, resource.c.id == rid).limit(1)).scalar()

    # ------------------------------------------------------------------ governed writes
    def write(self, access: Access, ops: list[WriteOp], conn=None, *, action: str | None = None,
              entity: str | None = None, joint: bool = False) -> list[WriteResult]:
        """The one door for writes asked for by a person or partner system: scopes, role,
        targets the caller may see, legitimate relationship, controller rule, and one audit
        event committed with the write (governance/writes.py). `joint` is for records
        maintained jointly (care plans written in sharedcare): any partner who may see and
        write them may update them, and they keep their authoring organisation."""
        if action is None:
            action = {"POST": "create", "PUT": "update", "DELETE": "delete"}[ops[0].method] \
                if len(ops) == 1 else "transaction"
        if conn is not None:
            return governed_write(self, access, ops, conn, action, entity, joint)
        # Decided, written and audited again as a whole if it loses a race with another writer.
        return self.store.run_write_unit(
            lambda c: governed_write(self, access, ops, c, action, entity, joint))

    def require_write(self, access: Access, rtype: str) -> None:
        """May this caller create `rtype` at all (scopes and role)? For forms, before the
        write itself is decided by `write`."""
        check_scopes(access, [WriteOp("POST", rtype, "", None)])
        check_role(access)

    def match(self, access: Access, rtype: str, query: str, conn=None, limit: int = 2
              ) -> list[str]:
        """Conditional matches as the caller sees the store (never a hidden record)."""
        return governed_match(self.store, access, rtype, query, conn, limit)

    # ------------------------------------------------------------------ audit
    def audit(self, access: Access, action: str, outcome: str = "0", **kw) -> int:
        record = current_request.get()
        if record is not None:
            record.audited = True
        return self.audit_trail.record(access, action, outcome, **kw)

    # ------------------------------------------------------------------ emergency and declared
    def break_glass(self, access: Access, patient_id: str, reason: str,
                    minutes: int = BREAK_GLASS_MINUTES) -> int:
        if access.role not in BREAK_GLASS_ROLES or access.kind != "user":
            raise forbidden(f"the {access.role} role cannot break glass")
        reason = (reason or "").strip()
        if len(reason) < 10:
            raise FHIRError.of(400, "required", "breaking glass needs a reason (at least 10 "
                               "characters) that the IG lead will review")
        start = datetime.now(UTC)
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(insert(break_glass), [{
                "username": access.username, "ods": access.ods, "role": access.role,
                "patient_id": patient_id, "reason": reason,
                "started": start.strftime("%Y-%m-%dT%H:%M:%S.%f"),
                "expires": (start + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%f")}])
            for hook in self.event_hooks:
                hook(conn, "break-glass", access, patient_id)
            return self.audit(access, "break-glass", "0", patient_id=patient_id,
                                           reason=reason, glass=True, conn=conn)

    def declare_relationship(self, access: Access, patient_id: str, reason: str,
                             days: int = 30) -> None:
        reason = (reason or "").strip()
        if len(reason) < 10:
            raise FHIRError.of(400, "required", "a declared relationship needs a reason (at "
                               "least 10 characters); the IG lead reviews every one")
        if access.role not in BREAK_GLASS_ROLES:
            raise forbidden(f"the {access.role} role cannot declare a care relationship")
        now = datetime.now(UTC)
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(insert(care_relationship), [{
                "patient_id": patient_id, "ods": access.ods, "kind": "declared",
                "username": access.username, "reason": reason, "review_status": "pending",
                "created": now.strftime("%Y-%m-%dT%H:%M:%S.%f"),
                "expires": (now + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%f")}])
            for hook in self.event_hooks:
                hook(conn, "declared-relationship", access, patient_id)
            self.audit(access, "declare-relationship", "0", patient_id=patient_id,
                                    reason=reason, conn=conn)

    # ------------------------------------------------------------------ administration
    def add_organisation(self, ods: str, name: str, kind: str, **extra) -> None:
        from .schema import organisation as org

        with self.engine.begin() as conn:
            conn.execute(delete(org).where(org.c.ods == ods))
            conn.execute(insert(org), [{"ods": ods, "name": name, "kind": kind, **extra}])

    def add_staff(self, username: str, display_name: str, roles: list[tuple[str, str]],
                  password: str | None = None, **extra) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(staff_role).where(staff_role.c.username == username))
            conn.execute(delete(staff).where(staff.c.username == username))
            conn.execute(insert(staff), [{
                "username": username, "display_name": display_name,
                "password_hash": hash_password(password) if password else None,
                "failed_logins": 0, "active": True, **extra}])
            if roles:
                conn.execute(insert(staff_role), [{"username": username, "ods": o, "role": r}
                                                  for o, r in roles])

    def add_agreement(self, id: str, title: str, parties: list[str], purposes: list[str],
                      categories: list[str], status: str = "draft", effective: str | None = None,
                      end: str | None = None, summary: str | None = None,
                      signatures: list[tuple[str, str, str]] = ()) -> None:
        stamp = now_text()
        signed = {o: (u, t) for o, u, t in signatures}
        with self.engine.begin() as conn:
            conn.execute(delete(agreement_party).where(agreement_party.c.agreement_id == id))
            conn.execute(delete(agreement).where(agreement.c.id == id))
            conn.execute(insert(agreement), [{
                "id": id, "title": title, "purposes": " ".join(purposes),
                "categories": " ".join(categories), "status": status, "effective": effective,
                "end": end, "summary": summary, "created": stamp, "updated": stamp}])
            conn.execute(insert(agreement_party), [
                {"agreement_id": id, "ods": o, "signed_by": signed.get(o, (None, None))[0],
                 "signed_at": signed.get(o, (None, None))[1]} for o in parties])
        self.forget_agreements()

    def set_agreement_status(self, id: str, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(agreement).where(agreement.c.id == id)
                         .values(status=status, updated=now_text()))
        self.forget_agreements()

    def record_choice(self, patient_id: str, kind: str, ods: str | None = None,
                      recorded_by: str | None = None) -> str:
        """Record a patient's choice as a FHIR Consent (governance/consent.py); returns its id.
        The policy reads it through patient_choice, kept from Consents as they are written."""
        res = consent_for(patient_id, kind, ods)
        if recorded_by:
            res["performer"] = [{"display": recorded_by}]
        rid = str(uuid.uuid4())
        # Kept with the record it was recorded against: that organisation controls it.
        with self.store.reads.connect() as conn:
            controller = conn.execute(select(resource.c.source_org).where(
                resource.c.type == "Patient", resource.c.id == patient_id)).scalar()
        self.store.write([WriteOp("PUT", "Consent", rid, res)], source_org=controller)
        return rid

    def withdraw_choice(self, patient_id: str, kind: str, ods: str | None = None) -> int:
        """Withdraw the patient's matching choices: their Consents become inactive (kept, as
        the record of what the patient asked and when). Returns how many were withdrawn."""
        match = and_(patient_choice.c.patient_id == patient_id, patient_choice.c.kind == kind,
                     or_(patient_choice.c.ods == ods,
                         and_(patient_choice.c.ods.is_(None), ods is None)))
        with self.store.reads.connect() as conn:
            sources = sorted({s for (s,) in conn.execute(
                select(patient_choice.c.source).where(match, patient_choice.c.source.isnot(None)))})
        ops = []
        for src in sources:
            s = self.store.read("Consent", src.split("/", 1)[1], PermitAll())
            ops.append(WriteOp("PUT", "Consent", s.id, {**s.json(), "status": "inactive"}))
        if ops:
            self.store.write(ops)
        with self.engine.begin() as conn:  # choices recorded before they were Consents
            legacy = conn.execute(delete(patient_choice).where(
                match, patient_choice.c.source.is_(None))).rowcount
        return len(ops) + legacy


__all__ = ["Access", "AuditTrail", "Decision", "Governance", "PatientView", "ResourcePolicy",
           "TokenService"]
