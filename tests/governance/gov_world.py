"""Random care-system worlds for the governance property tests: generate (hypothesis), load
through the real product (Governance admin methods + Store.write), and check every governed read
path against the independent oracle."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

from hypothesis import strategies as st
from oracle import (
    CLINICAL,
    COMPARTMENT,
    DIRECT_CARE,
    GLASS_ROLES,
    PURPOSES,
    SENSITIVE,
    USER_ROLES,
    Agreement,
    Oracle,
    Res,
    Viewer,
    World,
)

from sharedcare.app import SharedCare
from sharedcare.fhir.categories import category_of
from sharedcare.fhir.codes import (
    DATA_CATEGORY_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    SENSITIVITY_SYSTEM,
)
from sharedcare.fhir.outcome import FHIRError
from sharedcare.governance import Access
from sharedcare.identity.links import person_id_for_nhs
from sharedcare.identity.nhs_number import synthetic
from sharedcare.store.persons import patients_of_person
from sharedcare.store.repository import PermitAll, WriteOp

ORG_KINDS = ("gp-practice", "acute-trust", "community", "mental-health", "ambulance", "hospice",
             "social-care", "care-home")
STATUSES = ("draft", "circulated", "signed", "active", "suspended", "expired", "withdrawn")
ODS_CODES = ("A81001", "RX1", "RY2", "CH9", "SC4")
CLINICAL_TYPES = ("Observation", "Condition", "DocumentReference", "CarePlan",
                  "AllergyIntolerance", "Flag", "Device")
FAMILY = ("Quartermaine", "Oyelaran", "Pemberton", "Zielinska", "Abernethy")


def org_ref(ods: str, logical: bool) -> dict:
    if logical:
        return {"identifier": {"system": ODS_SYSTEM, "value": ods}}
    return {"reference": f"Organization/org-{ods}"}


def meta(category: str | None, labels) -> dict:
    m: dict = {}
    if category:
        m["tag"] = [{"system": DATA_CATEGORY_SYSTEM, "code": category}]
    if labels:
        m["security"] = [{"system": SENSITIVITY_SYSTEM, "code": s} for s in labels]
    return m


def clinical_body(rtype: str, pid: str, extra: dict) -> dict:
    subj = {"reference": f"Patient/{pid}"}
    body = {
        "Observation": {"status": "final", "code": {"text": "pulse"}, "subject": subj},
        "Condition": {"code": {"text": "asthma"}, "subject": subj},
        "DocumentReference": {"status": "current", "subject": subj, "content": [
            {"attachment": {"contentType": "text/plain", "data": "aGk="}}]},
        "CarePlan": {"status": "active", "intent": "plan", "subject": subj},
        "AllergyIntolerance": {"patient": subj},
        "Flag": {"status": "active", "code": {"text": "falls risk"}, "subject": subj},
        "Device": {"patient": subj},
        "Encounter": {"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                "code": "AMB"}, "subject": subj},
        "EpisodeOfCare": {"patient": subj},
        "ServiceRequest": {"intent": "order", "subject": subj},
        "CareTeam": {"subject": subj},
    }[rtype]
    return {"resourceType": rtype, **body, **extra}


@st.composite
def worlds(draw, n_viewers=(6, 10), n_patients=(2, 3), persons=None):
    """A random care system. With `persons` (a range of how many people), each person has 1-3
    Patient records, one per partner, joined by a FHIR Person (see `person_records`)."""
    today = date.today()
    n_orgs = draw(st.integers(2, 5))
    codes = list(ODS_CODES[:n_orgs])
    orgs = {c: draw(st.sampled_from(ORG_KINDS)) for c in codes}
    world = World(today=today, orgs=orgs)
    res = world.resources
    for c in codes:
        res.append(Res("Organization", f"org-{c}", {
            "resourceType": "Organization", "identifier": [{"system": ODS_SYSTEM, "value": c}],
            "name": f"Organisation {c}"}, c, "other"))
    res.append(Res("Practitioner", "prac-1", {"resourceType": "Practitioner",
                                              "name": [{"family": "Khan"}]}, codes[0], "other"))
    res.append(Res("Location", "loc-1", {"resourceType": "Location", "name": "Ward 3"},
                   codes[-1], "other"))

    # Agreements in every state and window.
    days = {"none": None, "past": -40, "yesterday": -1, "today": 0, "tomorrow": 1, "future": 30}

    def when(k):
        return None if days[k] is None else (today + timedelta(days=days[k])).isoformat()

    for i in range(draw(st.integers(1, 5))):
        if i == 0 and draw(st.integers(0, 2)):  # often one broad agreement between everyone
            parties = list(codes)
        else:
            parties = draw(st.lists(st.sampled_from(codes), min_size=2, max_size=3, unique=True))
        status = draw(st.sampled_from(STATUSES + ("active",) * 10))
        eff = draw(st.sampled_from(["none", "past", "past", "yesterday", "today", "tomorrow",
                                    "future"]))
        end = draw(st.sampled_from(["none", "none", "today", "tomorrow", "future", "future",
                                    "past", "yesterday"]))
        purposes = draw(st.lists(st.sampled_from(PURPOSES), min_size=1, unique=True))
        if draw(st.integers(0, 3)) and DIRECT_CARE not in purposes:
            purposes.append(DIRECT_CARE)
        cats = draw(st.lists(st.sampled_from(CLINICAL), min_size=3, max_size=10, unique=True))
        world.agreements.append(Agreement(f"isa-{i}", parties, purposes, cats, status,
                                          when(eff), when(end)))

    # Patients, the resources that make relationships, and clinical data.
    n_pat = draw(st.integers(*n_patients)) if persons is None else 0
    counter = Counter()

    def new_id(t):
        counter[t] += 1
        return f"{t.lower()}-{counter[t]}"

    def add(rtype, pid, source, extra=None):
        rid = new_id(rtype)
        tagged = draw(st.sampled_from([None, None, None] + list(CLINICAL)))
        labels = tuple(sorted(draw(st.lists(st.sampled_from(SENSITIVE), max_size=2, unique=True))
                              if draw(st.integers(0, 2)) == 0 else []))
        body = clinical_body(rtype, pid, extra or {})
        body["id"] = rid
        m = meta(tagged, labels)
        if m:
            body["meta"] = m
        category = category_of(rtype, tagged)  # a tag cannot move medicines out of gp-summary
        res.append(Res(rtype, rid, body, source, category, labels,
                       pid if rtype in COMPARTMENT else None))

    org = st.sampled_from(codes)

    def labelled_patient(body: dict, source: str | None) -> None:
        """The Patient's category tag and labels, then the Patient itself (controlled by the
        registered practice when `source` is None)."""
        tagged = draw(st.sampled_from([None, None, "demographics", "social-care"]))
        labels = tuple(sorted(draw(st.lists(st.sampled_from(SENSITIVE), max_size=1))
                              if draw(st.integers(0, 4)) == 0 else []))
        m = meta(tagged, labels)
        if m:
            body["meta"] = m
        res.append(Res("Patient", body["id"], body, source or draw(org),
                       tagged or "demographics", labels, body["id"]))

    def record_of(pid: str) -> None:
        """What partners recorded about one Patient: relationships, clinical data, choices."""
        for _ in range(draw(st.integers(0, 2))):
            add("Encounter", pid, draw(org), {
                "status": draw(st.sampled_from(["in-progress", "arrived", "finished",
                                                "cancelled", "entered-in-error"])),
                "serviceProvider": org_ref(draw(org), draw(st.booleans()))})
        for _ in range(draw(st.integers(0, 1))):
            add("EpisodeOfCare", pid, draw(org), {
                "status": draw(st.sampled_from(["active", "finished", "cancelled"])),
                "managingOrganization": org_ref(draw(org), draw(st.booleans()))})
        for _ in range(draw(st.integers(0, 1))):
            add("ServiceRequest", pid, draw(org), {
                "status": draw(st.sampled_from(["active", "completed", "revoked"])),
                "performer": [org_ref(draw(org), draw(st.booleans()))]})
        for _ in range(draw(st.integers(0, 1))):
            ct = {"status": draw(st.sampled_from(["active", "inactive", "entered-in-error"]))}
            if draw(st.booleans()):
                ct["participant"] = [{"member": org_ref(draw(org), draw(st.booleans()))}]
            else:
                ct["managingOrganization"] = [org_ref(draw(org), False)]
            add("CareTeam", pid, draw(org), ct)
        for _ in range(draw(st.integers(2, 5))):
            add(draw(st.sampled_from(CLINICAL_TYPES)), pid, draw(org))
        for kind in draw(st.lists(st.sampled_from(["objection-all", "objection-from",
                                                   "objection-to", "national-opt-out"]),
                                  max_size=2)) if draw(st.integers(0, 1)) == 0 else []:
            world.choices.append((pid, kind, draw(org) if kind.startswith("objection-") and
                                  kind != "objection-all" else None))

    if persons is None:
        for n in range(1, n_pat + 1):
            pid = f"pat-{n}"
            gp = draw(st.one_of(st.none(), org))
            body = {"resourceType": "Patient", "id": pid,
                    "name": [{"family": FAMILY[n % len(FAMILY)], "given": [f"Given{n}"]}]}
            if gp:
                body["generalPractitioner"] = [org_ref(gp, draw(st.booleans()))]
            if draw(st.booleans()):  # NOT a relationship: the managing organisation
                body["managingOrganization"] = org_ref(draw(org), False)
            labelled_patient(body, gp)
            record_of(pid)
        pats = [f"pat-{n}" for n in range(1, n_pat + 1)]
    else:
        pats = person_records(draw, world, codes, persons, labelled_patient, record_of)

    # Viewers: people in every role and purpose, and partner systems.
    viewers: dict = {}
    for _ in range(draw(st.integers(*n_viewers))):
        ods = draw(org)
        role = draw(st.sampled_from(USER_ROLES + ("clinician", "nurse", "social-worker",
                                                  "allied-health", "admin", "system") * 2))
        purpose = draw(st.sampled_from((DIRECT_CARE,) * 8 + PURPOSES))
        if role == "system":
            v = Viewer(None, ods, "system", purpose, "system")
        else:
            v = Viewer(f"{role}.{purpose}@{ods}", ods, role, purpose, "user")
        viewers[v.key] = v
    viewers = list(viewers.values())
    people = [v for v in viewers if v.kind == "user" and v.role in GLASS_ROLES]
    if people:
        for _ in range(draw(st.integers(1, 5))):
            v = draw(st.sampled_from(people))
            world.glass.append((v.username, draw(st.sampled_from(pats)), draw(st.booleans())))
        for _ in range(draw(st.integers(0, 4))):
            v = draw(st.sampled_from(people))
            world.declared.append((v.username, v.ods, draw(st.sampled_from(pats)),
                                   draw(st.booleans())))
    return world, viewers


GIVEN = ("Ada", "Bilal", "Cerys", "Dmitri", "Esi", "Farid", "Gwen", "Hamish")


def person_records(draw, world: World, codes: list[str], persons, labelled_patient,
                   record_of) -> list[str]:
    """People with 1-3 Patient records each, one per partner (each partner's record controlled
    by that partner, with its own MRN), as a shared care record holds them. A person's records
    carry the same valid test-range NHS number or none (identity links those on the write path,
    under the Person whose id it derives from the number); the world then writes each person's
    Person explicitly -- with that id when identity made one -- so the world's own notion of
    "same person" is the one the oracle uses. Some worlds unlink one record after loading."""
    org = st.sampled_from(codes)
    pats: list[str] = []
    numbers: set[str] = set()
    linked: list[Res] = []
    for k in range(1, draw(st.integers(*persons)) + 1):
        size = draw(st.integers(1, min(3, len(codes))))
        partners = draw(st.lists(org, min_size=size, max_size=size, unique=True))
        nhs = None
        if draw(st.integers(0, 2)):
            rng = random.Random(draw(st.integers(0, 2**32)))
            while nhs is None or nhs in numbers:
                nhs = synthetic(rng)
            numbers.add(nhs)
        family, given = FAMILY[k % len(FAMILY)] + f"-{k}", GIVEN[k % len(GIVEN)]
        born = f"19{draw(st.integers(20, 99))}-0{draw(st.integers(1, 9))}-1{k % 10}"
        members, numbered = [], False
        for src in partners:
            pid = f"pat-{len(pats) + 1}"
            pats.append(pid)
            members.append(pid)
            idents = [{"system": f"https://{src.lower()}.example/mrn", "value": f"M{pid}"}]
            if nhs and draw(st.integers(0, 3)):
                idents.insert(0, {"system": NHS_NUMBER_SYSTEM, "value": nhs})
                numbered = True
            body = {"resourceType": "Patient", "id": pid, "identifier": idents,
                    "name": [{"family": family, "given": [given]}], "birthDate": born}
            gp = draw(st.sampled_from([None, src, src] + list(codes)))
            if gp:
                body["generalPractitioner"] = [org_ref(gp, draw(st.booleans()))]
            if draw(st.booleans()):  # NOT a relationship: the managing organisation
                body["managingOrganization"] = org_ref(src, False)
            labelled_patient(body, src)
            record_of(pid)
        if numbered:
            person_id = person_id_for_nhs(nhs)  # identity made it; the world rewrites it
        elif len(members) > 1 or draw(st.booleans()):
            person_id = f"person-{k}"
        else:
            continue
        # Identity writes Persons as the system (no controller); an operator at a partner
        # may have written this one.
        source = draw(st.sampled_from([None, None] + list(codes)))
        tagged = draw(st.sampled_from([None, None, "demographics"]))
        labels = ("safeguarding",) if draw(st.integers(0, 5)) == 0 else ()
        body = {"resourceType": "Person", "id": person_id, "active": True,
                "name": [{"family": family, "given": [given]}],
                "link": [{"target": {"reference": f"Patient/{p}"}, "assurance": "level3"}
                         for p in members]}
        m = meta(tagged, labels)
        if m:
            body["meta"] = m
        r = Res("Person", person_id, body, source, category_of("Person", tagged), labels,
                None, tuple(members))
        world.resources.append(r)
        linked.append(r)
    several = [r for r in linked if len(r.patients) > 1]
    if (several or linked) and draw(st.booleans()):
        r = draw(st.sampled_from(several or linked))
        # Retired (identity's way when the last link goes), or one link dropped -- a Person's
        # last too: written through the API, a Person may link nobody.
        drop = None if draw(st.integers(0, 3)) == 0 else draw(st.sampled_from(r.patients))
        world.unlink = (r.id, drop)
    return pats


# -------------------------------------------------------------------------------------- loading
def access_for(gov, v: Viewer) -> Access:
    scope = "system/*.cruds" if v.kind == "system" else "user/*.cruds"
    return gov.prepare(Access(v.username, v.ods, v.role, v.purpose, frozenset({scope}),
                              client_id=f"sys-{v.ods}" if v.kind == "system" else None,
                              kind=v.kind))


def load(sc, world: World, viewers: list[Viewer], staff: bool = False) -> None:
    gov = sc.governance
    for ods, kind in world.orgs.items():
        gov.add_organisation(ods, f"Organisation {ods}", kind)
    for a in world.agreements:
        gov.add_agreement(a.id, f"Agreement {a.id}", a.parties, a.purposes, a.categories,
                          status=a.status, effective=a.effective, end=a.end)
    # Directory first (Organization ids resolve ODS codes), then the record, each resource
    # written by its controller (the writer's organisation becomes the source tag).
    # Persons last: identity has linked the Patients with NHS numbers by then, and the world's
    # Persons say who is one person (rewriting identity's, whose ids they take).
    directory = [r for r in world.resources if r.type in ("Organization", "Practitioner",
                                                          "Location")]
    people = [r for r in world.resources if r.type == "Person"]
    rest = [r for r in world.resources if r not in directory and r.type != "Person"]
    for group in (directory, rest, people):
        by_src = defaultdict(list)
        for r in group:
            by_src[r.source_org].append(WriteOp("PUT", r.type, r.id, dict(r.body)))
        for src, ops in by_src.items():
            sc.store.write(ops, source_org=src)
    # A patient's choice is a Consent in the record, kept with (controlled as) their record.
    world.resources[:] = [r for r in world.resources if r.type != "Consent"]
    owners = {r.id: r.source_org for r in world.resources if r.type == "Patient"}
    for pid, kind, ods in world.choices:
        rid = gov.record_choice(pid, kind, ods)
        world.resources.append(Res("Consent", rid, sc.store.read("Consent", rid, PermitAll()).json(),
                                   owners.get(pid, ""), "demographics", (), pid))
    users = {v.username: v for v in viewers if v.kind == "user"}
    for username, pid, active in world.glass:
        v = users[username]
        gov.break_glass(Access(username, v.ods, v.role, v.purpose), pid,
                        "emergency department, unconscious patient",
                        minutes=240 if active else -1)
    for username, ods, pid, active in world.declared:
        v = users[username]
        gov.declare_relationship(Access(username, ods, v.role, v.purpose), pid,
                                 "seeing the patient in clinic today", days=30 if active else -1)
    if staff:
        for v in viewers:
            if v.kind == "user":
                gov.add_staff(v.username, f"Staff {v.username}", [(v.ods, v.role)])
    if world.unlink:
        unlink(sc, world)
    stored = {s.id for s in sc.store.search("Person", [("_count", "1000")], PermitAll()).matches}
    assert stored == {r.id for r in world.resources if r.type == "Person"}, \
        f"the store holds Persons {sorted(stored)} the world does not know"


def unlink(sc, world: World) -> None:
    """Identity takes one Patient out of a Person (or retires the Person): written as the
    Person's controller would, it takes effect on the next query."""
    person_id, drop = world.unlink
    r = next(r for r in world.resources if r.type == "Person" and r.id == person_id)
    if drop is None:
        sc.store.write([WriteOp("DELETE", "Person", person_id, None)])
        world.resources.remove(r)
        return
    body = dict(r.body)
    body["link"] = [lk for lk in body["link"] if lk["target"]["reference"] != f"Patient/{drop}"]
    if not body["link"]:
        del body["link"]  # FHIR has no empty arrays: a Person linking nobody
    sc.store.write([WriteOp("PUT", "Person", person_id, dict(body))], source_org=r.source_org)
    r.body = body
    r.patients = tuple(p for p in r.patients if p != drop)


# ------------------------------------------------------------------------------------- checking
@dataclass
class Tally:
    checks: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def compare(self, what: str, viewer: Viewer, expected: set, got: set, oracle, world, n: int):
        self.checks[what] += n
        by_ref = world.by_ref()
        for ref in sorted(got - expected):
            r = by_ref.get(ref)
            self.problems.append(f"DISCLOSED {what} {ref} to {viewer} "
                                 f"(oracle: {oracle.verdict(viewer, r) if r else 'unknown'})")
        for ref in sorted(expected - got):
            self.problems.append(f"WRONGLY DENIED {what} {ref} to {viewer}")

    @property
    def total(self) -> int:
        return sum(self.checks.values())


def refs(stored) -> set[str]:
    return {f"{s.type}/{s.id}" for s in stored}


def check_world(sc, world: World, viewers: list[Viewer], tally: Tally, reads: bool = True,
                everything: bool = True, decide: bool = True, persons: bool = False) -> None:
    """Every governed read path against the oracle. With `persons`, also: the store's idea of
    who is one person, every patient's compartment search of every type it holds (which
    follows the person) and `subject:mdm` searches."""
    gov = sc.governance
    oracle = Oracle(world)
    types = sorted({r.type for r in world.resources})
    by_type = defaultdict(list)
    for r in world.resources:
        by_type[r.type].append(r)
    patients = [r for r in world.resources if r.type == "Patient"]
    if persons:
        with sc.engine.connect() as conn:
            for p in patients:
                got = set(patients_of_person(conn, p.id))
                tally.checks["person links"] += 1
                if got != oracle.same(p.id):
                    tally.problems.append(f"store: Patient/{p.id} is one person with "
                                          f"{sorted(got)}, the world's Persons say "
                                          f"{sorted(oracle.same(p.id))}")
    for v in viewers:
        a = access_for(gov, v)
        visible = {r.ref for r in world.resources if oracle.may_see(v, r)}
        # Every read.
        if reads:
            for r in world.resources:
                try:
                    gov.read(a, r.type, r.id)
                    got = True
                except FHIRError as e:
                    if e.status != 403:
                        tally.problems.append(f"read {r.ref} by {v}: status {e.status}")
                    got = False
                tally.compare("read", v, {r.ref} & visible, {r.ref} if got else set(), oracle,
                              world, 1)
        if decide:
            for r in world.resources:
                d = gov.decide(a, r.type, r.id)
                tally.compare("decide", v, {r.ref} & visible, {r.ref} if d.permitted else set(),
                              oracle, world, 1)
        # Every type's search, with its total; one type paged in twos.
        for t in types:
            exp = {r.ref for r in by_type[t]} & visible
            page = gov.search(a, t, [("_count", "1000")])
            tally.compare(f"search {t}", v, exp, refs(page.matches), oracle, world, len(by_type[t]))
            if page.total != len(exp):
                tally.problems.append(f"search {t} total {page.total} != {len(exp)} for {v}")
        paged, cursor, first = set(), None, None
        while True:
            params = [("_count", "2")] + ([("_cursor", cursor)] if cursor else [])
            page = gov.search(a, "Observation" if "Observation" in types else "Patient", params)
            first = page.total if first is None else first
            paged |= refs(page.matches)
            cursor = page.next_cursor
            if not cursor:
                break
        t = "Observation" if "Observation" in types else "Patient"
        exp = {r.ref for r in by_type[t]} & visible
        tally.compare(f"paged search {t}", v, exp, paged, oracle, world, len(by_type[t]))
        if first != len(exp):
            tally.problems.append(f"paged {t} total {first} != {len(exp)} for {v}")
        # _include and _revinclude see only what the viewer may see.
        by_ref = world.by_ref()
        for rtype, param, target_of in (
                ("Encounter", "_include=Encounter:subject", "subject"),
                ("Encounter", "_include=Encounter:service-provider", "serviceProvider"),
                ("Observation", "_include=Observation:subject", "subject")):
            key, value = param.split("=")
            page = gov.search(a, rtype, [(key, value), ("_count", "1000")])
            matched = refs(page.matches)
            want = set()
            for m in matched:
                ref = (by_ref[m].body.get(target_of) or {}).get("reference")
                if ref and ref in visible and ref not in matched:
                    want.add(ref)
            tally.compare(f"{rtype}?{param}", v, want, refs(page.includes), oracle, world,
                          len(matched))
        page = gov.search(a, "Patient", [("_revinclude", "Observation:subject"),
                                         ("_count", "1000")])
        matched = refs(page.matches)
        want = {r.ref for r in by_type["Observation"]
                if r.ref in visible and f"Patient/{r.patient}" in matched}
        tally.compare("Patient?_revinclude=Observation:subject", v, want, refs(page.includes),
                      oracle, world, len(by_type["Observation"]) if matched else 0)
        if persons:
            for p in patients:
                person = oracle.same(p.id)
                comp = [r for r in world.resources if person & set(r.compartment)]
                # The compartment search of every type the person's record holds.
                for t in sorted({r.type for r in comp}):
                    page = gov.search(a, t, [("_count", "1000")], compartment=p.id)
                    exp = {r.ref for r in comp if r.type == t} & visible
                    tally.compare(f"Patient/{p.id}/{t}", v, exp, refs(page.matches), oracle,
                                  world, len(by_type[t]))
                    if page.total != len(exp):
                        tally.problems.append(f"Patient/{p.id}/{t} total {page.total} != "
                                              f"{len(exp)} for {v}")
                # What a compartment search includes stays in the person's record.
                page = gov.search(a, "Patient", [("_revinclude", "Observation:subject"),
                                                 ("_count", "1000")], compartment=p.id)
                matched = refs(page.matches)
                want = {r.ref for r in by_type["Observation"]
                        if r.ref in visible and f"Patient/{r.patient}" in matched}
                tally.compare(f"Patient/{p.id}/Patient?_revinclude=Observation:subject", v, want,
                              refs(page.includes), oracle, world,
                              len(by_type["Observation"]) if matched else 0)
                # :mdm follows the person; the plain reference keeps its FHIR meaning.
                for param, who in (("subject:mdm", person), ("subject", {p.id})):
                    page = gov.search(a, "Observation", [(param, f"Patient/{p.id}"),
                                                         ("_count", "1000")])
                    exp = {r.ref for r in by_type["Observation"] if r.patient in who} & visible
                    tally.compare(f"Observation?{param}=Patient/{p.id}", v, exp,
                                  refs(page.matches), oracle, world,
                                  len(by_type["Observation"]))
        # Every $everything page.
        if not everything:
            continue
        for p in patients:
            pid = p.id
            person = oracle.same(pid)
            # The person's record: the compartments of each of their Patients.
            comp = [r for r in world.resources if person & set(r.compartment)]
            exp = {r.ref for r in comp} & visible
            n_withheld = sum(oracle.withheld_for_sensitivity(v, r) for r in comp)
            no_records = v.purpose != DIRECT_CARE or v.role in (
                "ig-lead", "programme-lead", "sysadmin", "patient")
            if no_records or (v.kind == "user" and not oracle.has_relationship(v, pid)):
                expect_status = 403
            elif p.ref not in visible:
                expect_status = 404  # the Patient itself is withheld: nothing to hang it on
            else:
                expect_status = 200
            got, cursor, status, withheld, total = set(), None, 200, None, None
            try:
                while True:
                    view = gov.everything(a, pid, count=3, cursor=cursor)
                    if cursor is None:
                        withheld, total = view.withheld_sensitive, view.total
                    got |= refs(view.matches)
                    cursor = view.next_cursor
                    if not cursor:
                        break
            except FHIRError as e:
                status = e.status
            tally.checks["everything calls"] += 1
            if status != expect_status:
                tally.problems.append(f"$everything {pid} by {v}: {status}, expected "
                                      f"{expect_status}")
                if status == 200:
                    tally.compare(f"$everything {pid}", v, set(), got, oracle, world, 0)
                continue
            if status == 200:
                tally.compare(f"$everything {pid}", v, exp, got, oracle, world, len(comp))
                if total != len(exp):
                    tally.problems.append(f"$everything {pid} total {total} != {len(exp)}")
                if withheld != n_withheld:
                    tally.problems.append(f"$everything {pid} withheld {withheld} != "
                                          f"{n_withheld} for {v}")


def fresh(database_url: str, tmp_path) -> SharedCare:
    """A new SharedCare on an empty database (a new SQLite file, or a wiped PG schema), for
    property tests that load a generated world per example."""
    import uuid

    from sqlalchemy import create_engine, text

    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / f'world-{uuid.uuid4().hex[:8]}.sqlite'}"
    else:
        url = database_url
        eng = create_engine(url)
        with eng.begin() as c:
            c.execute(text("DROP SCHEMA public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
        eng.dispose()
    return SharedCare.open(url, tmp_path / f"data-{uuid.uuid4().hex[:8]}")
