"""The governance decision: who may see which resources, for what purpose, and why.

The rules are written once, as data (the tables below) and as one function per rule. They are
used two ways: `ResourcePolicy.resource_filter()` turns them into a single SQL predicate that the
store puts inside every query, and `decide()` evaluates them on one resource to explain the
answer in plain English ("why can't I see this?").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import orjson
from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from ..fhir.categories import DIRECTORY_TYPES
from ..fhir.codes import DATA_CATEGORY_SYSTEM
from ..fhir.compartment import patient_compartment_types, secured_reference
from ..fhir.outcome import FHIRError
from ..store.partitioning import partition_key
from ..store.persons import same_person
from ..store.repository import move_partition
from ..store.schema import compartment, person_link, resource
from .policy_clause import PolicyClause
from .schema import agreement, agreement_party, break_glass, care_relationship, patient_choice

DIRECT_CARE = "direct-care"
PURPOSES = ("direct-care", "planning", "research")

CLINICAL = ("demographics", "gp-summary", "encounters", "results", "documents", "care-plans",
            "mental-health", "social-care", "care-home-notes", "other")
# Which data categories each role may see for direct care (own organisation's data included).
ROLE_CATEGORIES: dict[str, frozenset[str]] = {
    "clinician": frozenset(CLINICAL),
    "nurse": frozenset(CLINICAL),
    "allied-health": frozenset(set(CLINICAL) - {"social-care"}),
    "social-worker": frozenset({"demographics", "encounters", "documents", "care-plans",
                                "social-care", "care-home-notes"}),
    "admin": frozenset({"demographics", "encounters"}),
    "ig-lead": frozenset(),
    "programme-lead": frozenset(),
    "sysadmin": frozenset(),
    "patient": frozenset(),
    # A partner system (client_credentials) acting for its organisation.
    "system": frozenset(CLINICAL),
}
ROLES = tuple(r for r in ROLE_CATEGORIES if r != "system")
# Sensitive labels each role may see in another organisation's data without breaking glass.
ROLE_SENSITIVITY: dict[str, frozenset[str]] = {
    "clinician": frozenset({"mental-health", "safeguarding"}),
    "nurse": frozenset({"mental-health", "safeguarding"}),
    "social-worker": frozenset({"safeguarding"}),
}
SENSITIVE = ("sexual-health", "mental-health", "safeguarding", "gender-identity",
             "assisted-conception")
# Roles that may break glass (clinical roles with a duty of care in an emergency).
BREAK_GLASS_ROLES = frozenset({"clinician", "nurse", "allied-health", "social-worker"})
GLASS_REASON = "you broke glass"  # how explain_relationship's break-glass reasons begin
BREAK_GLASS_MINUTES = 240


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


# "Now" inside the policy SQL: a bound parameter whose value is taken when each statement runs,
# so one built predicate stays right for as long as it is reused (an expiring relationship or
# break-glass stops counting on the next query, never on the next rebuild).
NOW = bindparam("gov_now", callable_=now_text, type_=String)

# Built predicates, per policy shape: building one costs more than running $everything's queries
# (issue 16). A predicate is a pure function of the key below: every fact that changes with time
# or data (relationships, break-glass, objections, person links, labels) is read by the SQL when
# it runs; the agreements are in the key, as `Governance.prepare` read them for this request.
_BUILT: dict[tuple, ColumnElement] = {}
_BUILT_MAX = 1024


def one_of(column: ColumnElement, values) -> ColumnElement:
    """`column IN (v1, v2, ...)` for the policy's constant lists, with one bound parameter per
    value rendered when the statement is compiled. A plain `in_(list)` is an "expanding"
    parameter that SQLAlchemy re-renders into the SQL text on every execution, and the driver
    then re-parses the long text it made: together about 45% of a governed search's CPU on
    PostgreSQL (py-spy, docs/performance.md). The lists belong to the policy's cached shape
    (`_built`), so the rendered statement is the same on every request of that shape."""
    return column.in_([literal(v, column.type) for v in sorted(values)])


def _shape(access: Access) -> tuple:
    return (access.username, access.ods, access.role, access.purpose, access.kind,
            tuple(sorted((k, tuple(sorted(v))) for k, v in access.shared_with.items())),
            None if access.scopes is None else tuple(sorted(access.scopes)))


def _built(key: tuple, build) -> ColumnElement:
    hit = _BUILT.get(key)
    if hit is None:
        if len(_BUILT) >= _BUILT_MAX:
            _BUILT.clear()
        hit = _BUILT[key] = PolicyClause(build())
    return hit


@dataclass
class Access:
    """Who is asking: one person in one chosen role at one organisation, or a partner system."""

    username: str | None
    ods: str | None
    role: str
    purpose: str = DIRECT_CARE
    # SMART scopes of the token used, which can only narrow the policy; None when the access
    # did not come through a token (the server's own pages and tools).
    scopes: frozenset[str] | None = None
    client_id: str | None = None
    kind: str = "user"  # user | system
    display_name: str | None = None
    patient_id: str | None = None  # a patient's own account
    # Filled by Governance per request: what agreements and relationships allow.
    shared_with: dict[str, frozenset[str]] = field(default_factory=dict)  # source ods -> categories
    policy: ResourcePolicy | None = None

    @property
    def needs_relationship(self) -> bool:
        return self.kind == "user"


@dataclass
class Decision:
    effect: str  # permit | deny | filter
    reasons: list[str]

    @property
    def permitted(self) -> bool:
        return self.effect != "deny"


def active_agreements(conn: Connection, ods: str, purpose: str, today: str | None = None
                      ) -> dict[str, frozenset[str]]:
    """source organisation -> data categories it shares with `ods` for `purpose`, today."""
    today = today or date.today().isoformat()
    mine = select(agreement_party.c.agreement_id).where(agreement_party.c.ods == ods)
    rows = conn.execute(
        select(agreement.c.id, agreement.c.purposes, agreement.c.categories,
               agreement_party.c.ods)
        .join(agreement_party, agreement_party.c.agreement_id == agreement.c.id)
        .where(agreement.c.id.in_(mine), agreement.c.status == "active",
               or_(agreement.c.effective.is_(None), agreement.c.effective <= today),
               or_(agreement.c.end.is_(None), agreement.c.end >= today))
    ).all()
    out: dict[str, set[str]] = {}
    for _aid, purposes, categories, party in rows:
        if purpose in purposes.split():
            out.setdefault(party, set()).update(categories.split())
    return {k: frozenset(v) for k, v in out.items()}


class ResourcePolicy:
    """The SQL form of the rules for one Access."""

    def __init__(self, access: Access):
        self.access = access

    # Each rule as SQL over the `resource` row -----------------------------------------
    def agreement_rule(self) -> ColumnElement:
        a = self.access
        ors = [resource.c.source_org == a.ods] if a.ods else []
        # Partners sharing the same categories make one clause: a system's fifteen partners
        # under one agreement are `source_org IN (15) AND category IN (8)`, not 15 clauses.
        sources_of: dict[frozenset[str], list[str]] = {}
        for src, cats in a.shared_with.items():
            if src != a.ods and cats:
                sources_of.setdefault(frozenset(cats), []).append(src)
        for cats, sources in sorted(sources_of.items(), key=lambda kv: sorted(kv[1])):
            ors.append(and_(one_of(resource.c.source_org, sources),
                            one_of(resource.c.category, cats)))
        return or_(*ors) if ors else false()

    def category_rule(self) -> ColumnElement:
        # Always an explicit list: a category nobody has classified is nobody's to see.
        cats = ROLE_CATEGORIES.get(self.access.role, frozenset())
        return one_of(resource.c.category, cats) if cats else false()

    def sensitivity_rule(self, glass: bool = True) -> ColumnElement:
        """Labelled data from another organisation is withheld unless the role may see every
        label on it -- or the viewer has broken glass for that patient. Any label the role is
        not explicitly allowed (including one this table has never heard of) withholds."""
        allowed = sorted(ROLE_SENSITIVITY.get(self.access.role, frozenset()))
        # The column holds ' label label ' (sorted, unique): strip the allowed labels and
        # whatever remains is a label this role may not see.
        rest = resource.c.sensitivity
        for label in allowed:
            rest = func.replace(rest, f" {label} ", " ")
        cond = or_(resource.c.sensitivity == "", rest == " ")
        if self.access.ods:
            cond = or_(cond, resource.c.source_org == self.access.ods)
        if glass and self.access.needs_relationship:
            cond = or_(cond, self._glass_exists())
        return cond

    def objection_rule(self) -> ColumnElement:
        """A patient's objection stops sharing of other organisations' data about them."""
        a = self.access
        c = compartment.alias("oc")
        o = patient_choice.alias("oo")
        kinds = [o.c.kind == "objection-all",
                 and_(o.c.kind == "objection-from", o.c.ods == resource.c.source_org),
                 and_(o.c.kind == "objection-to", o.c.ods == literal(a.ods))]
        if self.access.purpose != DIRECT_CARE:
            # The national data opt-out applies to planning and research, never direct care.
            kinds.append(o.c.kind == "national-opt-out")
        # NOT EXISTS correlated on the row: an index probe per row, not a re-sorted subquery.
        objected = for_person_of_row(c, o.c.patient_id, or_(*kinds))
        own = resource.c.source_org == a.ods if a.ods else false()
        return or_(own, not_(objected))

    def relationship_rule(self) -> ColumnElement:
        """The row's patient has a legitimate relationship with the viewer (or glass broken).

        A correlated EXISTS, probed per candidate row through the compartment and relationship
        indexes, rather than `pk IN (every resource of every related patient)`, which a GP
        practice of thousands of patients would materialise on every query."""
        if not self.access.needs_relationship:
            return true()
        a = self.access
        c = compartment.alias("rc")
        r = care_relationship.alias("rr")
        related = for_person_of_row(
            c, r.c.patient_id, r.c.ods == a.ods,
            or_(r.c.expires.is_(None), r.c.expires > NOW),
            *counted_relationship(r, a))
        return or_(related, self._glass_exists())

    def _glass_exists(self) -> ColumnElement:
        a = self.access
        c = compartment.alias("gc")
        g = break_glass.alias("gg")
        return for_person_of_row(
            c, g.c.patient_id, g.c.username == a.username, g.c.ods == a.ods, g.c.role == a.role,
            g.c.expires > NOW)

    def scope_rule(self) -> ColumnElement | None:
        """SMART scopes narrow what may be read to the types they name: included, revincluded,
        $everything and exported resources alike. None when the scopes name every type."""
        if self.access.scopes is None:
            return None
        from .auth import parse_scopes

        types: set[str] = set()
        for s in parse_scopes(" ".join(self.access.scopes)):
            if "r" in s.perms or "s" in s.perms:
                if s.rtype == "*":
                    return None
                types.add(s.rtype)
        return one_of(resource.c.type, types) if types else false()

    def resource_filter(self) -> ColumnElement:
        # Built once per policy shape (see _BUILT): every query of every request with the same
        # viewer, role, agreements and scopes reuses the same expression.
        if self._filter is None:
            self._filter = _built(("all", *_shape(self.access)), self._build_scoped)
        return self._filter

    def _build_scoped(self) -> ColumnElement:
        built = self._build()
        scoped = self.scope_rule()
        return built if scoped is None else and_(scoped, built)

    _filter: ColumnElement | None = None

    def _build(self) -> ColumnElement:
        a = self.access
        if a.purpose != DIRECT_CARE or not ROLE_CATEGORIES.get(a.role):
            # Secondary uses run through population/ with their own governed extracts; roles
            # without direct-care categories see only directory data.
            return one_of(resource.c.type, DIRECTORY_TYPES)
        patient_data = and_(
            self.agreement_rule(), self.category_rule(), self.sensitivity_rule(),
            self.objection_rule(),
            or_(not_(one_of(resource.c.type, patient_compartment_types())),
                self.relationship_rule()))
        return or_(one_of(resource.c.type, DIRECTORY_TYPES), patient_data)

    def for_patient(self, glass: bool) -> PatientPolicy:
        return PatientPolicy(self, glass)


class PatientPolicy:
    """The same rules for reads confined to one patient's record whose legitimate relationship
    has already been established (Governance.check_patient): the per-row relationship and
    break-glass subqueries become constants, which keeps $everything an index walk."""

    def __init__(self, base: ResourcePolicy, glass: bool):
        self.base = base
        self.glass = glass
        self._filter: ColumnElement | None = None
        self._withheld: ColumnElement | None = None

    def resource_filter(self) -> ColumnElement:
        if self._filter is None:
            self._filter = _built(("patient", self.glass, *_shape(self.base.access)),
                                  self._build_filter)
        return self._filter

    def _build_filter(self) -> ColumnElement:
        b = self.base
        sensitive_ok = true() if self.glass else b.sensitivity_rule(glass=False)
        built = or_(one_of(resource.c.type, DIRECTORY_TYPES),
                    and_(b.agreement_rule(), b.category_rule(), sensitive_ok,
                         b.objection_rule()))
        scoped = b.scope_rule()
        return built if scoped is None else and_(scoped, built)

    def withheld_filter(self) -> ColumnElement:
        """What the viewer would see but for sensitivity labels (announced, never shown)."""
        if self._withheld is None:
            self._withheld = _built(("withheld", self.glass, *_shape(self.base.access)),
                                    self._build_withheld)
        return self._withheld

    def _build_withheld(self) -> ColumnElement:
        b = self.base
        return false() if self.glass else and_(
            not_(one_of(resource.c.type, DIRECTORY_TYPES)), b.agreement_rule(),
            b.category_rule(), b.objection_rule(), not_(b.sensitivity_rule(glass=False)),
            *([s] if (s := b.scope_rule()) is not None else []))


def decide(conn: Connection, access: Access, row: dict, patient_id: str | None) -> Decision:
    """Explain the decision on one resource row (type, source_org, category, sensitivity)."""
    reasons: list[str] = []
    rtype = row["type"]
    if rtype in DIRECTORY_TYPES:
        return Decision("permit", [f"{rtype} is directory information, open to all staff"])
    if access.purpose != DIRECT_CARE or not ROLE_CATEGORIES.get(access.role):
        return Decision("deny", [f"the {access.role} role does not give access to care records"])
    deny: list[str] = []
    src = row.get("source_org")
    cat = row.get("category")
    if src == access.ods:
        reasons.append(f"it was recorded by your organisation ({src})")
    elif src in access.shared_with and cat in access.shared_with[src]:
        reasons.append(f"an active sharing agreement with {src} covers {cat} for direct care")
    else:
        deny.append(f"no active sharing agreement lets {src or 'its source'} share {cat} "
                    f"data with {access.ods} for direct care")
    if cat not in ROLE_CATEGORIES.get(access.role, frozenset()):
        deny.append(f"the {access.role} role does not include {cat} information")
    glass = False
    if patient_id is None and access.needs_relationship and \
            rtype in patient_compartment_types():
        # As the query does: a record of a kind that belongs to a patient but names none (a
        # Person that links nobody, an Observation without a subject) has no relationship.
        deny.append("it belongs to no patient's record, so no legitimate relationship covers it")
    if patient_id is not None and access.needs_relationship:
        rels = explain_relationship(conn, access, patient_id)
        glass = any(r.startswith(GLASS_REASON) for r in rels)
        if rels:
            reasons.extend(rels)
        else:
            deny.append(f"{access.ods} has no legitimate relationship with this patient "
                        "(registration, open encounter, episode, referral, care team or a "
                        "declared relationship)")
    labels = [s for s in (row.get("sensitivity") or "").split() if s]
    # Sensitivity is only mentioned to someone who could otherwise see the entry: telling a
    # stranger that an entry is sensitive is itself a disclosure.
    if labels and src != access.ods and not glass and not deny:
        hidden = [s for s in labels if s not in ROLE_SENSITIVITY.get(access.role, frozenset())]
        if hidden:
            # Say that it is sensitive, never which kind: the label itself discloses.
            deny.append(f"it is sensitive information, withheld from the {access.role} role "
                        f"outside the organisation that recorded it; break glass if this is an "
                        "emergency")
    if patient_id is not None and src != access.ods:
        for kind, ods in conn.execute(select(patient_choice.c.kind, patient_choice.c.ods)
                                      .where(one_person(patient_choice.c.patient_id,
                                                         patient_id))):
            if kind == "objection-all" or (kind == "objection-from" and ods == src) or (
                    kind == "objection-to" and ods == access.ods):
                deny.append("the patient has objected to this sharing")
    if deny:
        return Decision("deny", deny)
    return Decision("permit", reasons)


def for_person_of_row(c, recorded_for, *conds) -> ColumnElement:
    """EXISTS a row (relationship, choice, break-glass) recorded against the person of any of
    the resource row's compartment patients -- `one_person` per row, as indexed probes: the
    row's compartment patients (by row key), then for each, the rows recorded against that
    patient, or against the person's other records through person_link. One EXISTS with
    `recorded_for = p OR recorded_for IN (same person as p)` cannot use the index on
    `recorded_for`: PostgreSQL walked every relationship of the viewer's organisation
    (thousands at a GP practice), or every patient choice, for every candidate row. The probe
    of the recorded rows is an EXISTS of its own inside the compartment's, so that SQLite (no
    planner statistics) cannot start from the organisation's relationships either."""
    mine = person_link.alias(f"{c.name}_pm")
    theirs = person_link.alias(f"{c.name}_pt")
    def probe(patient, outer):
        # OFFSET 0 keeps PostgreSQL from pulling the probe up into a join, which it planned
        # as a scan of every patient choice per row (its estimate of the kinds filter is 1).
        return exists(select(literal(1)).where(recorded_for == patient, *conds).offset(0)
                      .correlate(resource, outer))

    direct = exists().where(c.c.resource_pk == resource.c.pk, probe(c.c.patient_id, c))
    linked = exists().where(c.c.resource_pk == resource.c.pk, mine.c.patient_id == c.c.patient_id,
                            theirs.c.person_key == mine.c.person_key,
                            theirs.c.patient_id != mine.c.patient_id,
                            probe(theirs.c.patient_id, theirs))
    return or_(direct, linked)


def one_person(recorded_for, patient) -> ColumnElement:
    """A relationship, choice or break-glass recorded against any of the person's Patient
    records covers all of them (store/persons.py keeps who is the same person)."""
    return or_(recorded_for == patient, recorded_for.in_(same_person(patient)))


def counted_relationship(r, access: Access) -> list[ColumnElement]:
    """Which care_relationship rows count for this viewer: those derived from partner systems'
    records count for the whole organisation; one a person declared, or derived from their own
    write, counts only for that person (and the IG lead reviews it); a rejected one not at all."""
    return [or_(r.c.username.is_(None), r.c.username == access.username),
            or_(r.c.review_status.is_(None), r.c.review_status != "rejected")]


def _explain_statement():
    """One statement, built once: the viewer's relationships and break-glass for the person,
    as (part, kind, source, username, reason, review). The person's records are an IN over
    `the patient UNION ALL the person's other records`, which each probe answers through its
    (ods, patient) or (username, patient) index; `one_person`'s OR would keep the planner off
    the patient column and walk every relationship of the organisation (thousands at a GP
    practice) on every check."""
    pid, ods, user, role, now = (bindparam("x_patient", type_=String),
                                 bindparam("x_ods", type_=String),
                                 bindparam("x_user", type_=String),
                                 bindparam("x_role", type_=String),
                                 bindparam("x_now", type_=String))

    def person():
        return union_all(select(pid.label("patient_id")), same_person(pid))

    r, g = care_relationship, break_glass
    rels = select(literal(0).label("part"), r.c.kind, r.c.source, r.c.username, r.c.reason,
                  r.c.review_status).where(
        r.c.patient_id.in_(person()), r.c.ods == ods,
        or_(r.c.expires.is_(None), r.c.expires > now))
    glass = select(literal(1).label("part"), literal("glass"), literal(None, String),
                   literal(None, String), g.c.reason, literal(None, String)).where(
        g.c.username == user, g.c.patient_id.in_(person()), g.c.ods == ods, g.c.role == role,
        g.c.expires > now)
    return union_all(rels, glass)


_EXPLAIN = None


def explain_relationship(conn: Connection, access: Access, patient_id: str) -> list[str]:
    """The legitimate relationships that let `access` see this patient, in words."""
    global _EXPLAIN
    if _EXPLAIN is None:
        _EXPLAIN = _explain_statement()
    out, glass = [], []
    rows = conn.execute(_EXPLAIN, {"x_patient": patient_id, "x_ods": access.ods,
                                   "x_user": access.username, "x_role": access.role,
                                   "x_now": now_text()}).all()
    for part, kind, source, username, reason, review in rows:
        if part == 1:
            glass.append(f"{GLASS_REASON}: {reason}")
            continue
        if username and username != access.username or review == "rejected":
            continue
        out.append({
            "registered": f"the patient is registered with {access.ods}",
            "encounter": f"the patient has an open encounter at {access.ods} ({source})",
            "episode": f"the patient has an active episode of care at {access.ods} ({source})",
            "referral": f"the patient has been referred to {access.ods} ({source})",
            "care-team": f"{access.ods} is in the patient's care team ({source})",
            "declared": f"you declared a relationship: {reason}",
        }.get(kind, kind))
    return out + glass


# ------------------------------------------------------------------ Binary: part of what it secures
def secure_binaries(conn: Connection, results) -> None:
    """A store `after_write` hook (inside the write's transaction): a Binary whose
    securityContext is a resource other than a Patient (the DocumentReference of a clinic
    letter) joins the compartment of that resource's patients, takes its category and adds its
    sensitivity labels -- it is read as that record is (fhir/compartment.py). A Binary secured by
    a Patient is already in that patient's compartment (the indexer puts it there).

    A person writing a Binary must say whose record it belongs to: one in no patient's record
    is refused (422), and so is one in the record of a patient the writer has no legitimate
    relationship with (403). Partner systems' feeds may store unattached content (no person
    then sees it)."""
    from .writes import current_writer

    writer = current_writer.get()
    for result in results:
        s = result.stored
        if s.type != "Binary" or s.deleted or not s.content:
            continue
        binary = orjson.loads(s.content)
        target = secured_reference(binary)
        row = conn.execute(select(resource.c.pk, resource.c.sensitivity,
                                  resource.c.partition_key).where(
            resource.c.type == "Binary", resource.c.id == s.id)).one()
        patients = set(conn.execute(select(compartment.c.patient_id).where(
            compartment.c.resource_pk == row.pk)).scalars())
        if target is not None and target[0] != "Patient" and \
                target[0] in patient_compartment_types():
            secured = conn.execute(select(
                resource.c.pk, resource.c.category, resource.c.sensitivity).where(
                resource.c.type == target[0], resource.c.id == target[1],
                resource.c.deleted == false())).first()
            if secured is not None:
                theirs = set(conn.execute(select(compartment.c.patient_id).where(
                    compartment.c.resource_pk == secured.pk)).scalars())
                if theirs - patients:
                    conn.execute(compartment.insert(), [
                        {"resource_pk": row.pk, "patient_id": p, "partition_key": p}
                        for p in sorted(theirs - patients)])
                patients |= theirs
                # and into that record's partition (store/partitioning.py)
                key = partition_key("Binary", s.id, patients)
                if key != row.partition_key:
                    move_partition(conn, row.pk, "Binary", s.id, key)
                labels = sorted(set((row.sensitivity or "").split())
                                | set((secured.sensitivity or "").split()))
                values = {"sensitivity": f" {' '.join(labels)} " if labels else ""}
                if not _tagged_category(binary):
                    values["category"] = secured.category
                conn.execute(resource.update().where(resource.c.pk == row.pk).values(**values))
        if writer is None or not writer.needs_relationship:
            continue
        if not patients:
            raise FHIRError.of(422, "business-rule", "a Binary written by a person must belong "
                               "to a patient's record: give securityContext Patient/{id} or the "
                               "DocumentReference it belongs to (the X-Security-Context header "
                               "for raw content)", "Binary.securityContext")
        for patient in sorted(patients):
            if not explain_relationship(conn, writer, patient):
                from .auth import forbidden

                raise forbidden("you have no legitimate relationship with the patient whose "
                                "record this Binary belongs to")


def _tagged_category(res: dict) -> bool:
    return any(t.get("system") == DATA_CATEGORY_SYSTEM
               for t in (res.get("meta") or {}).get("tag") or () if isinstance(t, dict))
