"""An independent oracle for sharedcare's information-governance rules.

Written from the rules as stated in the issue "Information governance: who may see what, and why"
(and the role tables in the design), NOT from sharedcare.governance.policy: it never imports the
product's policy, and it derives care relationships from the FHIR resources itself.

A viewer (organisation, role, purpose, kind) sees a resource iff it is directory data, or all of:
  (a) its source organisation is the viewer's, or an ACTIVE agreement (status active and
      effective <= today <= end) with both organisations as parties covers the purpose and the
      resource's data category;
  (b) the viewer's role includes the category;
  (c) sensitivity: labelled data from another organisation is withheld unless the role may see
      every label on it, or the viewer broke glass for that patient;
  (d) objections: objection-all / objection-from(source) / objection-to(viewer's org) hide other
      organisations' data (the national opt-out only for non-direct-care purposes);
  (e) for people (not partner systems) and patient-compartment types: the resource's patient has a
      legitimate relationship with the viewer's organisation (registered GP practice, open
      encounter, active episode, active referral, active care team), or a relationship this person
      declared, or a break-glass by this person.
One person, several records: each partner keeps its own Patient, and a FHIR Person whose
link[].target names them says they are one person (a Patient no Person links is a person alone).
Relationships (c, e), break-glass and patient choices (d) recorded against ANY of the person's
Patients count for ALL of them; a Person is in the compartment of every Patient it links.
Roles without direct-care categories see only directory data, and secondary purposes (planning,
research) go through governed extracts: the record itself shows them only directory data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from sharedcare.fhir.codes import ODS_SYSTEM

DIRECT_CARE = "direct-care"
PURPOSES = ("direct-care", "planning", "research")

CLINICAL = ("demographics", "gp-summary", "encounters", "results", "documents", "care-plans",
            "mental-health", "social-care", "care-home-notes", "other")
ROLE_CATEGORIES = {
    "clinician": set(CLINICAL),
    "nurse": set(CLINICAL),
    "allied-health": set(CLINICAL) - {"social-care"},
    "social-worker": {"demographics", "encounters", "documents", "care-plans", "social-care",
                      "care-home-notes"},
    "admin": {"demographics", "encounters"},
    "ig-lead": set(),
    "programme-lead": set(),
    "sysadmin": set(),
    "patient": set(),
    "system": set(CLINICAL),
}
USER_ROLES = tuple(r for r in ROLE_CATEGORIES if r != "system")
ROLE_SENSITIVITY = {
    "clinician": {"mental-health", "safeguarding"},
    "nurse": {"mental-health", "safeguarding"},
    "social-worker": {"safeguarding"},
}
SENSITIVE = ("sexual-health", "mental-health", "safeguarding", "gender-identity",
             "assisted-conception")
GLASS_ROLES = ("clinician", "nurse", "allied-health", "social-worker")

# Reference data, not about a person.
DIRECTORY = {"Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService",
             "Endpoint", "Medication", "Questionnaire", "ValueSet", "CodeSystem",
             "StructureDefinition", "SearchParameter", "Substance"}
# R4 Patient compartment: the types used by the generated worlds and the element naming the
# patient (types outside this table are not in the compartment, e.g. Device, Task).
COMPARTMENT = {
    "Patient": None, "Observation": "subject", "Condition": "subject", "Encounter": "subject",
    "EpisodeOfCare": "patient", "ServiceRequest": "subject", "CareTeam": "subject",
    "DocumentReference": "subject", "CarePlan": "subject", "AllergyIntolerance": "patient",
    "Flag": "subject", "Consent": "patient",
}
# In the compartment of several patients: a Person, of every Patient its link[].target names.
MULTI_COMPARTMENT = {"Person"}
COMPARTMENT_TYPES = set(COMPARTMENT) | MULTI_COMPARTMENT
# What counts as "open"/"active" for the relationship-bearing resources.
OPEN_ENCOUNTER = {"planned", "arrived", "triaged", "in-progress", "onleave"}
ACTIVE_EPISODE = {"active"}
ACTIVE_REFERRAL = {"active"}
ACTIVE_CARE_TEAM = {"active"}


@dataclass
class Viewer:
    username: str | None
    ods: str
    role: str
    purpose: str = DIRECT_CARE
    kind: str = "user"  # user | system

    @property
    def key(self):
        return (self.username, self.ods, self.role, self.purpose, self.kind)


@dataclass
class Res:
    """One resource as the world generator made it."""

    type: str
    id: str
    body: dict
    source_org: str
    category: str
    labels: tuple[str, ...] = ()
    patient: str | None = None  # the compartment's patient (None for directory / no patient)
    # A Person is in the compartment of every Patient it links (then `patient` is None).
    patients: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.type}/{self.id}"

    @property
    def compartment(self) -> tuple[str, ...]:
        """Every patient whose compartment holds this resource."""
        return self.patients or ((self.patient,) if self.patient else ())


@dataclass
class Agreement:
    id: str
    parties: list[str]
    purposes: list[str]
    categories: list[str]
    status: str
    effective: str | None
    end: str | None


@dataclass
class World:
    today: date
    orgs: dict[str, str]  # ods -> kind
    agreements: list[Agreement] = field(default_factory=list)
    resources: list[Res] = field(default_factory=list)
    choices: list[tuple[str, str, str | None]] = field(default_factory=list)  # patient, kind, ods
    glass: list[tuple[str, str, bool]] = field(default_factory=list)  # username, patient, active
    declared: list[tuple[str, str, str, bool]] = field(default_factory=list)  # user, ods, pat, active
    # After loading, identity unlinks: (Person id, the Patient it drops, or None: the Person is
    # deleted). The Person resources in `resources` are what the store holds once it is done.
    unlink: tuple[str, str | None] | None = None

    def by_ref(self) -> dict[str, Res]:
        return {r.ref: r for r in self.resources}


def link_targets(person: dict) -> tuple[str, ...]:
    """The Patient ids a Person's link[].target names."""
    out = []
    for link in person.get("link") or []:
        ref = ((link or {}).get("target") or {}).get("reference") or ""
        if ref.startswith("Patient/") and ref[8:] not in out:
            out.append(ref[8:])
    return tuple(out)


def persons(world: World) -> dict[str, frozenset[str]]:
    """patient id -> every Patient that is the same person (itself included), from the world's
    current Person resources. A patient no Person links is alone (absent from the map)."""
    out: dict[str, frozenset[str]] = {}
    for r in world.resources:
        if r.type != "Person":
            continue
        members = frozenset(link_targets(r.body))
        for p in members:
            if p in out and out[p] != members:
                raise AssertionError(f"Patient/{p} is linked by two Persons: the world is "
                                     "not one person per Patient")
            out[p] = members
    return out


# ------------------------------------------------------------------------------------------ rules
def agreement_active(a: Agreement, today: date) -> bool:
    t = today.isoformat()
    return (a.status == "active" and (a.effective is None or a.effective <= t)
            and (a.end is None or t <= a.end))


def shares(world: World, source: str, viewer_ods: str, purpose: str, category: str) -> bool:
    return any(agreement_active(a, world.today) and source in a.parties and viewer_ods in a.parties
               and purpose in a.purposes and category in a.categories
               for a in world.agreements)


def _ods_of(world: World, ref: dict) -> str | None:
    ident = ref.get("identifier") or {}
    if ident.get("system") == ODS_SYSTEM:
        return ident.get("value")
    target = ref.get("reference") or ""
    if not target.startswith("Organization/"):
        return None
    org = world.by_ref().get(target)
    if org is None:
        return None
    for i in org.body.get("identifier") or []:
        if i.get("system") == ODS_SYSTEM:
            return i.get("value")
    return None


def relationships(world: World) -> set[tuple[str, str]]:
    """(patient id, ods) pairs with a legitimate relationship derived from the record."""
    out = set()
    for r in world.resources:
        b = r.body
        status = b.get("status")
        refs: list[dict] = []
        if r.type == "Patient":
            refs = list(b.get("generalPractitioner") or [])
        elif r.type == "Encounter" and status in OPEN_ENCOUNTER:
            refs = [b["serviceProvider"]] if b.get("serviceProvider") else []
        elif r.type == "EpisodeOfCare" and status in ACTIVE_EPISODE:
            refs = [b["managingOrganization"]] if b.get("managingOrganization") else []
        elif r.type == "ServiceRequest" and status in ACTIVE_REFERRAL:
            refs = list(b.get("performer") or [])
        elif r.type == "CareTeam" and status in ACTIVE_CARE_TEAM:
            refs = list(b.get("managingOrganization") or [])
            refs += [p["member"] for p in b.get("participant") or [] if p.get("member")]
        for ref in refs:
            ods = _ods_of(world, ref)
            if ods and r.patient:
                out.add((r.patient, ods))
    return out


class Oracle:
    """`may_see` with the world's derived facts computed once."""

    def __init__(self, world: World):
        self.world = world
        self.rels = relationships(world)
        self.persons = persons(world)

    def same(self, patient: str | None) -> frozenset[str]:
        """Every Patient record of this patient's person (itself included)."""
        if patient is None:
            return frozenset()
        return self.persons.get(patient, frozenset({patient}))

    def person_of(self, res: Res) -> frozenset[str]:
        """Every Patient record of the person(s) whose compartment holds `res`."""
        return frozenset().union(*(self.same(p) for p in res.compartment))

    def has_glass(self, viewer: Viewer, patient: str | None) -> bool:
        mine = self.same(patient)
        return viewer.kind == "user" and any(
            u == viewer.username and p in mine and active for u, p, active in self.world.glass)

    def has_relationship(self, viewer: Viewer, patient: str) -> bool:
        mine = self.same(patient)
        if any((p, viewer.ods) in self.rels for p in mine):
            return True
        if any(u == viewer.username and o == viewer.ods and p in mine and active
               for u, o, p, active in self.world.declared):
            return True
        return self.has_glass(viewer, patient)

    def objected(self, viewer: Viewer, res: Res) -> bool:
        mine = self.person_of(res)
        for patient, kind, ods in self.world.choices:
            if patient not in mine:
                continue
            if kind == "objection-all":
                return True
            if kind == "objection-from" and ods == res.source_org:
                return True
            if kind == "objection-to" and ods == viewer.ods:
                return True
            if kind == "national-opt-out" and viewer.purpose != DIRECT_CARE:
                return True
        return False

    def may_see(self, viewer: Viewer, res: Res) -> bool:
        return self.verdict(viewer, res) is None

    def verdict(self, viewer: Viewer, res: Res) -> str | None:
        """None when visible, else the first rule that withholds it (for failure messages)."""
        if res.type in DIRECTORY:
            return None
        cats = ROLE_CATEGORIES.get(viewer.role, set())
        if viewer.purpose != DIRECT_CARE or not cats:
            return "secondary purpose or role without care-record access"
        own = res.source_org == viewer.ods
        if not own and not shares(self.world, res.source_org, viewer.ods, viewer.purpose,
                                  res.category):
            return "(a) no active agreement"
        if res.category not in cats:
            return "(b) role category"
        hidden = set(res.labels) - ROLE_SENSITIVITY.get(viewer.role, set())
        glass = any(self.has_glass(viewer, p) for p in res.compartment)
        if hidden and not own and not glass:
            return "(c) sensitive"
        if not own and self.objected(viewer, res):
            return "(d) objection"
        related = any(self.has_relationship(viewer, p) for p in res.compartment)
        if viewer.kind == "user" and res.type in COMPARTMENT_TYPES and not related:
            return "(e) no relationship"
        return None

    def withheld_for_sensitivity(self, viewer: Viewer, res: Res) -> bool:
        """Would be visible but for its sensitivity labels (what $everything may count)."""
        if self.may_see(viewer, res):
            return False
        plain = Res(res.type, res.id, res.body, res.source_org, res.category, (), res.patient,
                    res.patients)
        return self.may_see(viewer, plain)


def may_see(world: World, viewer: Viewer, resource: Res) -> bool:
    return Oracle(world).may_see(viewer, resource)
