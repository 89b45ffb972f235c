"""Synthetic patients and their FHIR R4 records, generated lazily and deterministically.

Each patient has a small eagerly built `PatientCore` (identity, registration, which services
know them); the full record is produced on demand from a random generator seeded by
(seed, patient index), so iterating twice gives identical output and patients are independent.
"""

from __future__ import annotations

import base64
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from ..fhir.codes import (
    DATA_CATEGORY_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    SDS_USER_SYSTEM,
    SENSITIVITY_SYSTEM,
    SOURCE_ORG_SYSTEM,
    feed_source,
    local_identifier_system,
)
from ..identity.nicknames import VARIANTS
from ..synthetic import names
from . import clinical as cx
from .nhs import synthetic_nhs_numbers
from .organisations import LOCALITY_ACUTE, LOCALITY_MH

if TYPE_CHECKING:  # pragma: no cover
    from .model import CareSystem, Organisation, StaffMember

NAMESPACE = uuid.UUID("6f1c1d0e-3a8e-5c1b-9d59-5a6e0d7c2b41")

# Feed identifiers (meta.source) per kind of partner system.
FEEDS = {
    "gp-practice": "gp-system",
    "acute-trust": "pas",
    "pathology": "pathology",
    "mental-health": "mh-epr",
    "community": "community-epr",
    "social-care": "social-care-system",
    "care-home": "care-home-app",
    "hospice": "hospice-epr",
    "ambulance": "epcr",
    "directory": "ods-directory",
    "workforce": "sds-directory",
}

# Each partner's own identifier for a person: (kind in the local system URL, label, format).
PARTNER_IDENTIFIERS = {
    "acute-trust": ("mrn", "Hospital number", "{ods}{n:07d}"),
    "mental-health": ("mrn", "Mental health record number", "{ods}M{n:06d}"),
    "community": ("mrn", "Community record number", "C{n:07d}"),
    "ambulance": ("epcr", "Ambulance patient record", "EPR-{n:08d}"),
    "social-care": ("social-care-id", "Social care person ID", "{n:06d}"),
    "care-home": ("resident-id", "Care home resident number", "R{n:05d}"),
    "hospice": ("mrn", "Hospice record number", "H{n:06d}"),
}
# How often a partner's record arrives without an NHS number (not traced, or not asked): the
# identity worker has to match those on name, birth date, sex and postcode.
NO_NHS_NUMBER = {
    "acute-trust": 0.02,
    "mental-health": 0.02,
    "community": 0.03,
    "ambulance": 0.15,
    "social-care": 0.1,
    "care-home": 0.3,
    "hospice": 0.03,
}
# The featured patient's partner records, fixed so the walkthrough is the same for every seed:
# the council's record has no NHS number (joined by the model), the community team knows her by
# her nickname, the mental health trust still has her old address, the hospital has no phone.
_FEATURED_VARIANTS = {
    "acute-trust": {"nhs": True, "nickname": False, "old_address": False, "phone": False},
    "mental-health": {"nhs": True, "nickname": False, "old_address": True, "phone": True},
    "community": {"nhs": True, "nickname": True, "old_address": False, "phone": True},
    "social-care": {"nhs": False, "nickname": False, "old_address": False, "phone": True},
    "ambulance": {"nhs": True, "nickname": False, "old_address": False, "phone": True},
}

_SENSITIVE_KINDS = (
    "sexual-health",
    "gender-identity",
    "assisted-conception",
    "safeguarding",
    "mental-health",
)


@dataclass(slots=True)
class PatientCore:
    index: int
    nhs_number: str
    gender: str
    given: str
    family: str
    birth: int  # date ordinal
    practice: str
    locality: str
    acute: str
    mh: str
    conditions: tuple[str, ...]
    mh_service: bool = False
    smi: int = -1  # index into clinical.SMI, -1 none
    community: bool = False
    social: bool = False
    care_home: bool = False
    hospice: bool = False
    christie: bool = False
    sensitive: str | None = None

    def age(self, as_of: date) -> int:
        return (as_of.toordinal() - self.birth) // 365

    def services(self) -> list[str]:
        """Kinds of partner (beyond GP and acute trust) that hold records about this patient."""
        out = []
        for flag, kind in (
            (self.mh_service, "mental-health"),
            (self.community, "community"),
            (self.social, "social-care"),
            (self.care_home, "care-home"),
            (self.hospice, "hospice"),
        ):
            if flag:
                out.append(kind)
        return out


_AGE_BANDS = ((0, 17, 0.21), (18, 39, 0.27), (40, 64, 0.32), (65, 79, 0.13), (80, 100, 0.07))


def _band(age: int) -> int:
    return 0 if age < 40 else 1 if age < 65 else 2 if age < 80 else 3


def build_cores(
    seed: int, patients: int, practices: list[Organisation], as_of: date
) -> list[PatientCore]:
    today = as_of.toordinal()
    numbers = synthetic_nhs_numbers(seed)
    cores = []
    cum = []
    acc = 0.0
    for lo, hi, w in _AGE_BANDS:
        acc += w
        cum.append((acc, lo, hi))
    for i in range(patients):
        rng = random.Random(seed * 1_000_003 + i * 7 + 1)
        r = rng.random()
        lo, hi = next((lo, hi) for c, lo, hi in cum if r <= c + 1e-12)
        age = rng.randint(lo, hi)
        birth = today - age * 365 - 31 - rng.randrange(334)
        female = rng.random() < 0.51
        practice = practices[rng.randrange(len(practices))]
        locality = practice.locality or "Manchester"
        band = _band(age)
        conds = tuple(
            k
            for k, (_, _, prev, min_age) in cx.CONDITIONS.items()
            if age >= min_age
            and rng.random() < prev[band]
            and not (k == "cancer_breast" and not female)
        )
        core = PatientCore(
            index=i,
            nhs_number=next(numbers),
            gender="female" if female else "male",
            given=rng.choice(names.FEMALE_GIVEN if female else names.MALE_GIVEN),
            family=rng.choice(names.SURNAMES),
            birth=birth,
            practice=practice.ods,
            locality=locality,
            acute=LOCALITY_ACUTE[locality],
            mh=LOCALITY_MH[locality],
            conditions=conds,
        )
        if age >= 16:
            if rng.random() < 0.008:
                core.smi = rng.randrange(len(cx.SMI))
            if core.smi >= 0 or (
                ("depression" in conds or "anxiety" in conds) and rng.random() < 0.18
            ):
                core.mh_service = True
        frail = age >= 75 and (
            rng.random() < 0.25
            or "dementia" in conds
            or "heart_failure" in conds
            or "copd" in conds
        )
        core.community = frail and rng.random() < 0.8
        core.social = age >= 70 and (frail or "dementia" in conds) and rng.random() < 0.6
        core.care_home = age >= 80 and (
            ("dementia" in conds and rng.random() < 0.35) or rng.random() < 0.04
        )
        core.christie = "cancer_breast" in conds or "cancer_colon" in conds
        core.hospice = (
            age >= 70 and (core.christie or "heart_failure" in conds) and rng.random() < 0.2
        )
        if rng.random() < 0.03:
            kind = rng.choice(_SENSITIVE_KINDS)
            if kind == "assisted-conception" and not (female and 25 <= age <= 45):
                kind = "sexual-health"
            if kind == "sexual-health" and not 16 <= age <= 60:
                kind = "safeguarding"
            if kind == "gender-identity" and age < 16:
                kind = "safeguarding"
            if kind == "mental-health" and age < 16:
                kind = "safeguarding"
            core.sensitive = kind
            if kind == "safeguarding":
                core.social = True
            if kind == "mental-health":
                core.mh_service = True
        cores.append(core)
    if cores:
        _feature(cores[0], practices, today, seed)
    return cores


def _feature(core: PatientCore, practices: list[Organisation], today: int, seed: int) -> None:
    """Patient 0 is the demo's featured patient: an older person known to most services."""
    rng = random.Random(seed * 31 + 5)
    practice = practices[0]
    core.practice = practice.ods
    core.locality = practice.locality or "Manchester"
    core.acute = LOCALITY_ACUTE[core.locality]
    core.mh = LOCALITY_MH[core.locality]
    core.gender = "female"
    core.given = rng.choice(("Margaret", "Dorothy", "Patricia", "Elizabeth", "Frances"))
    core.birth = today - 79 * 365 - rng.randrange(300)
    core.conditions = ("hypertension", "diabetes", "copd", "depression", "ckd", "osteoarthritis")
    core.mh_service = True
    core.smi = -1
    core.community = True
    core.social = True
    core.care_home = False
    core.hospice = False
    core.christie = False
    core.sensitive = "gender-identity"  # recorded by the GP: withheld from other partners


# --- helpers ------------------------------------------------------------------------------------


def _day(ordinal: int) -> str:
    return date.fromordinal(ordinal).isoformat()


def _dt(ordinal: int, hour: int, minute: int) -> str:
    return f"{date.fromordinal(ordinal).isoformat()}T{hour:02d}:{minute:02d}:00Z"


def _meta(ods: str, category: str, feed: str, security: str | None = None) -> dict:
    meta = {
        "source": feed_source(ods, feed),
        "tag": [
            {"system": SOURCE_ORG_SYSTEM, "code": ods},
            {"system": DATA_CATEGORY_SYSTEM, "code": category},
        ],
    }
    if security:
        meta["security"] = [{"system": SENSITIVITY_SYSTEM, "code": security}]
    return meta


def _cc(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _lab_code(loinc: str, display: str) -> dict:
    """A result's code as UK pathology sends it (SNOMED CT first, then LOINC; the report's
    name as text); other observations keep their LOINC code."""
    uk = cx.UK_LAB.get(loinc)
    if uk is None:
        return _cc(cx.LOINC, loinc, display)
    snomed, term, name = uk
    return {
        "coding": [
            {"system": cx.SNOMED, "code": snomed, "display": term},
            {"system": cx.LOINC, "code": loinc, "display": display},
        ],
        "text": name,
    }


def _ref(rtype: str, rid: str, display: str | None = None) -> dict:
    out = {"reference": f"{rtype}/{rid}"}
    if display:
        out["display"] = display
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# --- directory ----------------------------------------------------------------------------------


def build_directory(seed: int, orgs: list[Organisation], staff: list[StaffMember]) -> dict:
    org_id = {o.ods: str(uuid.uuid5(NAMESPACE, f"{seed}/org/{o.ods}")) for o in orgs}
    staff_id = {m.username: str(uuid.uuid5(NAMESPACE, f"{seed}/staff/{m.username}")) for m in staff}
    prac: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for m in staff:
        for ods, role in m.roles:
            prac.setdefault((ods, role), []).append((staff_id[m.username], m.display_name))
    return {"org_id": org_id, "staff_id": staff_id, "prac": prac, "org": {o.ods: o for o in orgs}}


_KIND_DISPLAY = {
    "gp-practice": "GP practice",
    "acute-trust": "Acute hospital trust",
    "community": "Community health services",
    "mental-health": "Mental health trust",
    "ambulance": "Ambulance service",
    "hospice": "Hospice",
    "social-care": "Adult social care",
    "care-home": "Care home",
}


def directory_resources(cs: CareSystem) -> Iterator[dict]:
    d = cs._directory
    for o in cs.organisations:
        yield {
            "resourceType": "Organization",
            "id": d["org_id"][o.ods],
            "meta": _meta(o.ods, "demographics", FEEDS["directory"]),
            "identifier": [{"system": ODS_SYSTEM, "value": o.ods}],
            "active": True,
            "type": [{"text": _KIND_DISPLAY[o.kind]}],
            "name": o.name,
            "address": [{"postalCode": o.postcode, "country": "GB"}],
        }
    for m in cs.staff:
        home = m.roles[0][0]
        parts = m.display_name.split(" ")
        prefix = [parts.pop(0)] if parts[0] == "Dr" else []
        name = {"family": parts[-1], "given": parts[:-1], "text": m.display_name}
        if prefix:
            name["prefix"] = prefix
        pid = d["staff_id"][m.username]
        yield {
            "resourceType": "Practitioner",
            "id": pid,
            "meta": _meta(home, "demographics", FEEDS["workforce"]),
            "identifier": [{"system": SDS_USER_SYSTEM, "value": m.sds_id}],
            "active": True,
            "name": [name],
        }
        for ods, role in m.roles:
            yield {
                "resourceType": "PractitionerRole",
                "id": str(uuid.uuid5(NAMESPACE, f"{cs.seed}/role/{m.username}/{ods}/{role}")),
                "meta": _meta(ods, "demographics", FEEDS["workforce"]),
                "active": True,
                "practitioner": _ref("Practitioner", pid, m.display_name),
                "organization": _ref("Organization", d["org_id"][ods]),
                "code": [
                    {
                        "coding": [
                            {
                                "system": "https://fhir.sharedcare.org.uk/CodeSystem/staff-role",
                                "code": role,
                            }
                        ],
                        "text": m.title or role,
                    }
                ],
            }


def iter_resources(cs: CareSystem) -> Iterator[dict]:
    yield from directory_resources(cs)
    for core in cs._cores:
        yield from patient_resources(cs, core)


# --- one patient's record -----------------------------------------------------------------------


class _Record:
    """Builds one patient's resources in reference order."""

    def __init__(self, cs: CareSystem, core: PatientCore):
        self.cs = cs
        self.core = core
        self.d = cs._directory
        self.rng = random.Random(cs.seed * 1_000_003 + core.index * 7 + 3)
        self.today = cs.as_of.toordinal()
        self.age = core.age(cs.as_of)
        self.prefix = f"{cs.seed}/{core.index}/"
        self.n = 0
        self.out: list[dict] = []
        self.pid = self.new_id()  # the GP practice's Patient: the featured patient's id
        self.subjects: dict[str, dict] = {}  # ODS code -> reference to that partner's Patient
        # earliest date of the record's history
        self.start = max(core.birth + 30, self.today - 6 * 365)

    def new_id(self) -> str:
        self.n += 1
        return str(uuid.uuid5(NAMESPACE, self.prefix + str(self.n)))

    def org_ref(self, ods: str) -> dict:
        o = self.d["org"][ods]
        return {"reference": f"Organization/{self.d['org_id'][ods]}", "display": o.name}

    def prac_ref(self, ods: str, *roles: str) -> dict | None:
        for role in roles:
            people = self.d["prac"].get((ods, role))
            if people:
                pid, name = people[self.rng.randrange(len(people))]
                return {"reference": f"Practitioner/{pid}", "display": name}
        return None

    def when(self, lo: int | None = None, hi: int | None = None) -> int:
        lo = self.start if lo is None else max(lo, self.start)
        hi = self.today - 1 if hi is None else min(hi, self.today - 1)
        return min(lo, self.today - 1) if hi <= lo else self.rng.randint(lo, hi)

    def add(self, res: dict) -> dict:
        self.out.append(res)
        return res

    # -- building blocks ------------------------------------------------------------------------
    def subject_for(self, ods: str) -> dict:
        """A reference to `ods`'s own Patient record for this person, made the first time that
        partner records something (so it comes before anything that refers to it)."""
        ref = self.subjects.get(ods)
        if ref is None:
            ref = self.subjects[ods] = self._partner_patient(ods)
        return ref

    def patient(self) -> None:
        """The GP practice's record: the registration, with the NHS number."""
        c, rng = self.core, self.rng
        care_home = self.d["org"]["VZC01"] if c.care_home else None
        if care_home:
            address = {
                "use": "home",
                "line": [care_home.name],
                "city": "Manchester",
                "postalCode": care_home.postcode,
                "country": "GB",
            }
        else:
            address = {
                "use": "home",
                "line": [names.street_address(rng)],
                "city": names.LOCALITIES[c.locality][1],
                "postalCode": names.postcode(rng, c.locality),
                "country": "GB",
            }
        self.home = address
        self.phone = f"07700 900{rng.randrange(1000):03d}"
        self.title = self._title()
        self.subjects[c.practice] = {"reference": f"Patient/{self.pid}"}
        self.add(
            {
                "resourceType": "Patient",
                "id": self.pid,
                "meta": _meta(c.practice, "demographics", FEEDS["gp-practice"]),
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": c.nhs_number}],
                "active": True,
                "name": [
                    {
                        "use": "official",
                        "family": c.family,
                        "given": [c.given],
                        "prefix": [self.title],
                    }
                ],
                "telecom": [{"system": "phone", "value": self.phone, "use": "mobile"}],
                "gender": c.gender,
                "birthDate": _day(c.birth),
                "address": [address],
                "generalPractitioner": [self.org_ref(c.practice)],
                "managingOrganization": self.org_ref(c.practice),
            }
        )

    def _partner_patient(self, ods: str) -> dict:
        """Another partner's own Patient for this person, as its system holds it: its own id and
        local identifier, the NHS number only if that system traced it, and demographics that
        drift (a nickname, an address not updated since a move, no phone). Its own random
        generator, so one partner's record never shifts another's."""
        c = self.core
        org = self.d["org"][ods]
        kind = org.kind
        rng = random.Random(f"{self.cs.seed}/{c.index}/patient/{ods}")
        id_kind, id_label, id_format = PARTNER_IDENTIFIERS[kind]
        serial = 100000 + (c.index * 13 + sum(map(ord, ods))) % 900000
        identifiers = [
            {
                "type": {"text": id_label},
                "system": local_identifier_system(ods, id_kind),
                "value": id_format.format(ods=ods, n=serial),
            }
        ]
        variant = _FEATURED_VARIANTS.get(kind) if c.index == 0 else None
        if variant is None:
            variant = {
                "nhs": rng.random() >= NO_NHS_NUMBER[kind],
                "nickname": rng.random() < 0.12,
                "old_address": rng.random() < 0.1 and not c.care_home,
                "phone": rng.random() >= 0.35,
            }
        # A record without the NHS number sometimes also carries a mistyped birth date and an
        # address from before a move: the model can only call it a possible match, and it waits
        # in the IG lead's identity review queue, as real ones do.
        slip = not variant["nhs"] and c.index > 0 and rng.random() < 0.3
        if slip:
            variant = {**variant, "old_address": not c.care_home}
        if variant["nhs"]:
            identifiers.insert(0, {"system": NHS_NUMBER_SYSTEM, "value": c.nhs_number})
        given = c.given
        if variant["nickname"]:
            short = VARIANTS.get(c.given.upper())
            if short:
                given = rng.choice(short).title()
        address = dict(self.home)
        if variant["old_address"]:
            address = {
                "use": "home",
                "line": [names.street_address(rng)],
                "city": names.LOCALITIES[c.locality][1],
                "postalCode": names.postcode(rng, c.locality),
                "country": "GB",
            }
        name = {"use": "official", "family": c.family, "given": [given]}
        if rng.random() < 0.7:
            name["prefix"] = [self.title]
        pid = str(uuid.uuid5(NAMESPACE, f"{self.prefix}patient/{ods}"))
        res = {
            "resourceType": "Patient",
            "id": pid,
            "meta": _meta(ods, "demographics", FEEDS[kind]),
            "identifier": identifiers,
            "active": True,
            "name": [name],
            "gender": c.gender,
            "birthDate": _day(c.birth + (10 if _day(c.birth)[-2:] <= "18" else -10)
                              if slip else c.birth),
            "address": [address],
            "managingOrganization": self.org_ref(ods),
        }
        if variant["phone"]:
            res["telecom"] = [{"system": "phone", "value": self.phone, "use": "mobile"}]
        self.add(res)
        return {"reference": f"Patient/{pid}"}

    def _title(self) -> str:
        if self.age < 16:
            return "Master" if self.core.gender == "male" else "Miss"
        return "Mr" if self.core.gender == "male" else self.rng.choice(("Mrs", "Ms", "Miss"))

    def condition(
        self,
        ods: str,
        category: str,
        feed: str,
        code: tuple[str, str],
        onset: int,
        *,
        encounter: dict | None = None,
        security: str | None = None,
        recorder_roles=("clinician",),
        text_only: bool = False,
    ) -> dict:
        res = {
            "resourceType": "Condition",
            "id": self.new_id(),
            "meta": _meta(ods, category, feed, security),
            "clinicalStatus": _cc(cx.COND_CLINICAL, "active", "Active"),
            "verificationStatus": _cc(cx.COND_VERIFICATION, "confirmed", "Confirmed"),
            "category": [
                _cc(cx.COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")
                if encounter
                else _cc(cx.COND_CATEGORY, "problem-list-item", "Problem List Item")
            ],
            "code": {"text": code[1]} if text_only else _cc(cx.SNOMED, code[0], code[1]),
            "subject": self.subject_for(ods),
            "onsetDateTime": _day(onset),
            "recordedDate": _day(min(onset + self.rng.randint(0, 20), self.today - 1)),
        }
        if encounter:
            res["encounter"] = encounter
        recorder = self.prac_ref(ods, *recorder_roles)
        if recorder:
            res["recorder"] = recorder
        return self.add(res)

    def observation(
        self,
        ods: str,
        category: str,
        feed: str,
        obs_cat: str,
        code,
        value: float,
        when: int,
        hour: int,
        *,
        decimals: int = 0,
        performer: dict | None = None,
    ) -> dict:
        loinc, display, unit, unit_display = code
        res = {
            "resourceType": "Observation",
            "id": self.new_id(),
            "meta": _meta(ods, category, feed),
            "status": "final",
            "category": [{"coding": [{"system": cx.OBS_CATEGORY, "code": obs_cat}]}],
            "code": _lab_code(loinc, display),
            "subject": self.subject_for(ods),
            "effectiveDateTime": _dt(when, hour, self.rng.randrange(60)),
            "issued": _dt(when, min(hour + 3, 23), 30),
            "performer": [performer or self.org_ref(ods)],
            "valueQuantity": {
                "value": round(value, decimals) if decimals else round(value),
                "unit": unit_display,
                "system": cx.UCUM,
                "code": unit,
            },
        }
        return self.add(res)

    def encounter(
        self,
        ods: str,
        category: str,
        feed: str,
        cls: tuple[str, str],
        etype: tuple[str, str],
        start: int,
        end: int,
        *,
        hour: int = 10,
        reason: tuple[str, str] | None = None,
        part_of: dict | None = None,
        episode: dict | None = None,
        disposition: tuple[str, str] | None = None,
        roles=("clinician", "nurse"),
        security: str | None = None,
    ) -> dict:
        eid = self.new_id()
        res = {
            "resourceType": "Encounter",
            "id": eid,
            "meta": _meta(ods, category, feed, security),
            "status": "finished",
            "class": {"system": cx.V3_ACT, "code": cls[0], "display": cls[1]},
            "type": [_cc(cx.SNOMED, etype[0], etype[1]) if etype[0] else {"text": etype[1]}],
            "subject": self.subject_for(ods),
            "period": {
                "start": _dt(start, hour, self.rng.randrange(30)),
                "end": (
                    _dt(end, min(hour + self.rng.randint(1, 4), 23), 59)
                    if end == start
                    else _dt(end, self.rng.randint(9, 18), self.rng.randrange(60))
                ),
            },
            "serviceProvider": self.org_ref(ods),
        }
        who = self.prac_ref(ods, *roles)
        if who:
            res["participant"] = [{"individual": who}]
        if reason:
            res["reasonCode"] = [_cc(cx.SNOMED, reason[0], reason[1])]
        if episode:
            res["episodeOfCare"] = [episode]
        if part_of:
            res["partOf"] = part_of
        if disposition:
            res["hospitalization"] = {
                "dischargeDisposition": _cc(
                    cx.DISCHARGE_DISPOSITION, disposition[0], disposition[1]
                )
            }
        self.add(res)
        return {"reference": f"Encounter/{eid}"}

    def document(
        self,
        ods: str,
        category: str,
        feed: str,
        doc_type: tuple[str, str],
        title: str,
        text: str,
        when: int,
        *,
        encounter: dict | None = None,
        roles=("clinician",),
        security: str | None = None,
        code_system=cx.LOINC,
    ) -> dict:
        created = _dt(when, self.rng.randint(9, 17), self.rng.randrange(60))
        res = {
            "resourceType": "DocumentReference",
            "id": self.new_id(),
            "meta": _meta(ods, category, feed, security),
            "status": "current",
            "docStatus": "final",
            "type": _cc(code_system, doc_type[0], doc_type[1]),
            "subject": self.subject_for(ods),
            "date": created,
            "custodian": self.org_ref(ods),
            "description": title,
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain; charset=utf-8",
                        "language": "en-GB",
                        "data": _b64(text),
                        "title": title,
                        "creation": created,
                    }
                }
            ],
        }
        author = self.prac_ref(ods, *roles)
        res["author"] = [author, self.org_ref(ods)] if author else [self.org_ref(ods)]
        if encounter:
            res["context"] = {"encounter": [encounter]}
        return self.add(res)

    def episode(
        self,
        ods: str,
        category: str,
        feed: str,
        title: str,
        start: int,
        *,
        finished: bool = False,
        roles=("nurse", "clinician"),
    ) -> dict:
        eid = self.new_id()
        res = {
            "resourceType": "EpisodeOfCare",
            "id": eid,
            "meta": _meta(ods, category, feed),
            "status": "finished" if finished else "active",
            "type": [{"text": title}],
            "patient": self.subject_for(ods),
            "managingOrganization": self.org_ref(ods),
            "period": {"start": _day(start)},
        }
        if finished:
            res["period"]["end"] = _day(min(start + self.rng.randint(30, 200), self.today - 1))
        manager = self.prac_ref(ods, *roles)
        if manager:
            res["careManager"] = manager
        self.add(res)
        return {"reference": f"EpisodeOfCare/{eid}"}

    def care_plan(
        self,
        ods: str,
        category: str,
        feed: str,
        category_text: str,
        title: str,
        description: str,
        activities: list[str],
        start: int,
        *,
        addresses: list[dict] | None = None,
        security: str | None = None,
        roles=("clinician", "nurse", "social-worker"),
    ) -> dict:
        res = {
            "resourceType": "CarePlan",
            "id": self.new_id(),
            "meta": _meta(ods, category, feed, security),
            "status": "active",
            "intent": "plan",
            "category": [{"text": category_text}],
            "title": title,
            "description": description,
            "subject": self.subject_for(ods),
            "period": {"start": _day(start)},
            "created": _dt(start, 11, 0),
            "activity": [
                {"detail": {"status": "in-progress", "description": a}} for a in activities
            ],
        }
        author = self.prac_ref(ods, *roles)
        if author:
            res["author"] = author
        if addresses:
            res["addresses"] = addresses
        return self.add(res)

    # -- record sections ------------------------------------------------------------------------
    def gp(self) -> dict[str, dict]:
        c, rng, ods = self.core, self.rng, self.core.practice
        feed = FEEDS["gp-practice"]
        cond_refs: dict[str, dict] = {}
        for key in c.conditions:
            code, display, _, min_age = cx.CONDITIONS[key]
            lo = max(c.birth + min_age * 365, self.today - 20 * 365)
            onset = rng.randint(min(lo, self.today - 60), self.today - 60)
            res = self.condition(ods, "gp-summary", feed, (code, display), onset)
            cond_refs[key] = {"reference": f"Condition/{res['id']}", "display": display}
        if c.sensitive in cx.SENSITIVE_CONDITIONS:
            self.condition(
                ods,
                "gp-summary",
                feed,
                cx.SENSITIVE_CONDITIONS[c.sensitive],
                self.when(self.today - 3 * 365),
                security=c.sensitive,
            )
        # repeat medication
        seen: set[str] = set()
        for key in c.conditions:
            for med in cx.CONDITION_MEDICINES.get(key, ()):
                if med in seen:
                    continue
                seen.add(med)
                code, name, dose = cx.MEDICINES[med]
                res = {
                    "resourceType": "MedicationRequest",
                    "id": self.new_id(),
                    "meta": _meta(ods, "gp-summary", feed),
                    "status": "active",
                    "intent": "order",
                    "medicationCodeableConcept": _cc(cx.SNOMED, code, name),
                    "subject": self.subject_for(ods),
                    "authoredOn": _day(self.when(self.today - 84)),
                    "courseOfTherapyType": _cc(
                        cx.COURSE_OF_THERAPY, "continuous", "Continuous long term therapy"
                    ),
                    "dosageInstruction": [{"text": dose}],
                    "reasonReference": [cond_refs[key]],
                }
                who = self.prac_ref(ods, "clinician")
                if who:
                    res["requester"] = who
                self.add(res)
        # allergies
        r = rng.random()
        if r < 0.12:
            code, display, category, reaction = cx.ALLERGIES[rng.randrange(len(cx.ALLERGIES))]
            self.add(
                {
                    "resourceType": "AllergyIntolerance",
                    "id": self.new_id(),
                    "meta": _meta(ods, "gp-summary", feed),
                    "clinicalStatus": _cc(cx.ALLERGY_CLINICAL, "active", "Active"),
                    "verificationStatus": _cc(cx.ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
                    "type": "allergy",
                    "category": [category],
                    "criticality": "high" if reaction[0] == "39579001" else "low",
                    "code": _cc(cx.SNOMED, code, display),
                    "patient": self.subject_for(ods),
                    "recordedDate": _day(self.when()),
                    "reaction": [{"manifestation": [_cc(cx.SNOMED, reaction[0], reaction[1])]}],
                }
            )
        elif r < 0.5 and self.age >= 16:
            self.add(
                {
                    "resourceType": "AllergyIntolerance",
                    "id": self.new_id(),
                    "meta": _meta(ods, "gp-summary", feed),
                    "clinicalStatus": _cc(cx.ALLERGY_CLINICAL, "active", "Active"),
                    "verificationStatus": _cc(cx.ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
                    "code": _cc(cx.SNOMED, "716186003", "No known allergy"),
                    "patient": self.subject_for(ods),
                    "recordedDate": _day(self.when()),
                }
            )
        # consultations at the practice
        rate = 1.5 if self.age < 40 else 2.5 if self.age < 65 else 4.0
        for day in sorted(
            self.when(self.today - 3 * 365)
            for _ in range(min(15, _poisson(rng, rate * 3 * (0.5 + 0.5 * (len(c.conditions) > 0)))))
        ):
            self.encounter(
                ods,
                "encounters",
                feed,
                ("AMB", "ambulatory"),
                cx.ENC_PROBLEM,
                day,
                day,
                hour=rng.randint(8, 17),
                roles=("clinician", "nurse"),
            )
        # blood pressure and weight at the practice, with trends
        conds = set(c.conditions)
        if self.age >= 40 or conds & {"hypertension", "diabetes", "ckd", "chd"}:
            n = 2 + (4 if conds & {"hypertension", "diabetes", "ckd", "chd"} else 0)
            sys_bp = rng.uniform(150, 170) if "hypertension" in conds else rng.uniform(115, 138)
            step = rng.uniform(-4, -1) if "hypertension" in conds else rng.uniform(-0.5, 1)
            dia_ratio = rng.uniform(0.55, 0.65)
            for k in range(n):
                when = self.when(self.today - (n - k) * 240, self.today - (n - k - 1) * 240 - 30)
                s = sys_bp + step * k + rng.gauss(0, 5)
                self._bp(ods, when, s, s * dia_ratio + rng.gauss(0, 3))
        if self.age >= 18 and rng.random() < 0.6:
            weight = rng.gauss(92 if "obesity" in conds else 76, 12)
            drift = rng.uniform(-1.5, 1.5)
            n = rng.randint(1, 4)
            for k in range(n):
                when = self.when(self.today - (n - k) * 365, self.today - (n - k - 1) * 365)
                self.observation(
                    ods,
                    "results",
                    feed,
                    "vital-signs",
                    cx.WEIGHT,
                    max(38.0, weight + drift * k + rng.gauss(0, 1)),
                    when,
                    rng.randint(8, 17),
                    decimals=1,
                    performer=self.prac_ref(ods, "nurse", "clinician"),
                )
        return cond_refs

    def _bp(self, ods: str, when: int, systolic: float, diastolic: float) -> None:
        hour = self.rng.randint(8, 17)
        self.add(
            {
                "resourceType": "Observation",
                "id": self.new_id(),
                "meta": _meta(ods, "results", FEEDS["gp-practice"]),
                "status": "final",
                "category": [{"coding": [{"system": cx.OBS_CATEGORY, "code": "vital-signs"}]}],
                "code": _cc(cx.LOINC, *cx.BP_PANEL),
                "subject": self.subject_for(ods),
                "effectiveDateTime": _dt(when, hour, self.rng.randrange(60)),
                "performer": [self.prac_ref(ods, "nurse", "clinician") or self.org_ref(ods)],
                "component": [
                    {
                        "code": _cc(cx.LOINC, *cx.SYSTOLIC),
                        "valueQuantity": {
                            "value": round(systolic),
                            "unit": "mmHg",
                            "system": cx.UCUM,
                            "code": "mm[Hg]",
                        },
                    },
                    {
                        "code": _cc(cx.LOINC, *cx.DIASTOLIC),
                        "valueQuantity": {
                            "value": round(diastolic),
                            "unit": "mmHg",
                            "system": cx.UCUM,
                            "code": "mm[Hg]",
                        },
                    },
                ],
            }
        )

    def _report(self, ods: str, code: tuple[str, str], when: int, results: list[dict]) -> None:
        self.add(
            {
                "resourceType": "DiagnosticReport",
                "id": self.new_id(),
                "meta": _meta(ods, "results", FEEDS["pathology"]),
                "status": "final",
                "category": [_cc(cx.V2_0074, "LAB", "Laboratory")],
                "code": {
                    "coding": [{"system": cx.LOINC, "code": code[0], "display": code[1]}],
                    "text": cx.UK_REPORT_NAMES.get(code[0], code[1]),
                },
                "subject": self.subject_for(ods),
                "effectiveDateTime": results[0]["effectiveDateTime"],
                "issued": results[0]["issued"],
                "performer": [self.org_ref(ods)],
                "result": [{"reference": f"Observation/{r['id']}"} for r in results],
                "conclusion": "Results reviewed; see individual values.",
            }
        )

    def pathology(self) -> None:
        """Blood results from the acute trust's laboratory (requested by the GP)."""
        c, rng, ods = self.core, self.rng, self.core.acute
        feed = FEEDS["pathology"]
        conds = set(c.conditions)
        if self.age < 18:
            return
        if "diabetes" in conds:
            hba1c = rng.uniform(52, 85)
            trend = rng.uniform(-3, 2)
            for k in range(6):
                when = self.when(self.today - (6 - k) * 182, self.today - (5 - k) * 182 - 14)
                h = rng.randint(8, 12)
                obs = self.observation(
                    ods,
                    "results",
                    feed,
                    "laboratory",
                    cx.HBA1C,
                    max(38, hba1c + trend * k + rng.gauss(0, 3)),
                    when,
                    h,
                )
                self._report(ods, cx.HBA1C[:2], when, [obs])
        renal = (
            conds & {"diabetes", "ckd", "hypertension", "heart_failure"}
            or (self.age >= 40 and rng.random() < 0.6)
            or rng.random() < 0.35
        )
        if renal:
            egfr = rng.uniform(30, 55) if "ckd" in conds else rng.uniform(65, 105)
            decline = rng.uniform(0.5, 3.0)
            years = 4 if conds & {"diabetes", "ckd"} else rng.randint(1, 2)
            for k in range(years):
                when = self.when(
                    self.today - (years - k) * 365, self.today - (years - k - 1) * 365 - 7
                )
                h = rng.randint(8, 12)
                e = max(8.0, egfr - decline * k + rng.gauss(0, 2))
                creat = self.observation(
                    ods,
                    "results",
                    feed,
                    "laboratory",
                    cx.CREATININE,
                    max(40, 7000 / e + rng.gauss(0, 5)),
                    when,
                    h,
                )
                gfr = self.observation(
                    ods, "results", feed, "laboratory", cx.EGFR, min(e, 90), when, h
                )
                self._report(ods, cx.RENAL_PANEL, when, [creat, gfr])
        if conds & {"chd", "hyperlipidaemia", "diabetes", "stroke"} or (
            self.age >= 40 and rng.random() < 0.3
        ):
            chol = rng.uniform(4.5, 7.0)
            for k in range(rng.randint(1, 3)):
                when = self.when(self.today - (3 - k) * 365, self.today - (2 - k) * 365)
                obs = self.observation(
                    ods,
                    "results",
                    feed,
                    "laboratory",
                    cx.CHOLESTEROL,
                    max(2.5, chol - 0.5 * k + rng.gauss(0, 0.3)),
                    when,
                    rng.randint(8, 12),
                    decimals=1,
                )
                self._report(ods, cx.LIPID_PANEL, when, [obs])

    def in_emergency_department_now(self) -> None:
        """The featured patient is in A&E today: the open encounter is the A&E doctor's
        legitimate relationship (an encounter that has ended no longer is one)."""
        self.encounter(self.core.acute, "encounters", FEEDS["acute-trust"],
                       ("EMER", "emergency"), cx.ENC_AE, self.today, self.today, hour=8,
                       reason=cx.AE_REASONS[0])
        enc = self.out[-1]
        enc["status"] = "in-progress"
        del enc["period"]["end"]

    def hospital(self, med_keys: list[str]) -> None:
        c, rng, ods = self.core, self.rng, self.core.acute
        feed = FEEDS["acute-trust"]
        trust = self.d["org"][ods].name
        # A&E attendances a year by age (England: ~280 type 1 attendances per 1,000 people a
        # year), and the share admitted (~100 emergency admissions per 1,000 a year).
        rate = 0.25 if self.age < 18 else 0.2 if self.age < 65 else 0.35 if self.age < 80 else 0.7
        years = (self.today - self.start) / 365
        visits = _poisson(rng, rate * years)
        if c.index == 0:
            visits = max(visits, 2)
        days = sorted(self.when() for _ in range(visits))
        for k, day in enumerate(days):
            hour = rng.randrange(24)
            reason = cx.AE_REASONS[rng.randrange(len(cx.AE_REASONS))]
            if self.age >= 65 and rng.random() < 0.5 or rng.random() < 0.12:
                self.encounter(
                    "RX7",
                    "encounters",
                    FEEDS["ambulance"],
                    ("FLD", "field"),
                    (None, "Ambulance attendance"),
                    day,
                    day,
                    hour=max(0, hour - 1),
                    reason=reason,
                    roles=("allied-health",),
                )
            ae = self.encounter(
                ods,
                "encounters",
                feed,
                ("EMER", "emergency"),
                cx.ENC_AE,
                day,
                day,
                hour=hour,
                reason=reason,
            )
            admit_p = (
                0.1 if self.age < 18 else 0.25 if self.age < 65 else 0.45 if self.age < 80
                else 0.6
            )
            if (c.index == 0 and k == len(days) - 1) or rng.random() < admit_p:
                stay = rng.randint(1, 12 if self.age >= 65 else 5)
                end = min(day + stay, self.today - 1)
                disposition = (
                    ("snf", "Skilled nursing facility") if c.care_home else ("home", "Home")
                )
                adm = self.encounter(
                    ods,
                    "encounters",
                    feed,
                    ("IMP", "inpatient encounter"),
                    cx.ENC_ADMISSION,
                    day,
                    end,
                    hour=min(hour + 3, 23),
                    reason=reason,
                    part_of=ae,
                    disposition=disposition,
                )
                self.condition(ods, "encounters", feed, reason, day, encounter=adm)
                discharged = []
                for med in med_keys[:2]:
                    code, name, dose = cx.MEDICINES[med]
                    discharged.append(name)
                    self.add(
                        {
                            "resourceType": "MedicationStatement",
                            "id": self.new_id(),
                            "meta": _meta(ods, "encounters", feed),
                            "status": "active",
                            "medicationCodeableConcept": _cc(cx.SNOMED, code, name),
                            "subject": self.subject_for(ods),
                            "context": adm,
                            "effectiveDateTime": _day(end),
                            "dateAsserted": _day(end),
                            "informationSource": self.org_ref(ods),
                            "dosage": [{"text": dose}],
                        }
                    )
                letter = (
                    f"DISCHARGE SUMMARY\n{trust}\n\n"
                    f"Patient: {c.given} {c.family}  NHS number: {c.nhs_number}\n"
                    f"Admitted: {_day(day)} via emergency department\n"
                    f"Discharged: {_day(end)} to {disposition[1].lower()}\n\n"
                    f"Presenting complaint: {reason[1]}\n"
                    f"Diagnosis: {reason[1]}\n"
                    f"Medicines on discharge: {', '.join(discharged) or 'none'}\n\n"
                    "Actions for GP: please review in two weeks and repeat bloods.\n"
                )
                self.document(
                    ods,
                    "documents",
                    feed,
                    cx.DISCHARGE_SUMMARY,
                    "Discharge summary",
                    letter,
                    end,
                    encounter=adm,
                )
        # outpatient follow-up for long-term conditions
        conds = set(c.conditions)
        if conds & {"heart_failure", "af", "chd", "copd", "ckd"} and rng.random() < 0.6:
            for _ in range(rng.randint(1, 3)):
                day = self.when(self.today - 2 * 365)
                op = self.encounter(
                    ods,
                    "encounters",
                    feed,
                    ("AMB", "ambulatory"),
                    cx.ENC_FOLLOW_UP,
                    day,
                    day,
                    hour=rng.randint(9, 16),
                )
                if rng.random() < 0.5:
                    self.document(
                        ods,
                        "documents",
                        feed,
                        cx.PROGRESS_NOTE,
                        "Clinic letter",
                        f"OUTPATIENT CLINIC LETTER\n{trust}\n\nSeen in clinic on "
                        f"{_day(day)}. Stable. Continue current medicines. "
                        "Review in six months.\n",
                        day,
                        encounter=op,
                    )
        if c.sensitive == "assisted-conception":
            day = self.when(self.today - 3 * 365)
            self.add(
                {
                    "resourceType": "Procedure",
                    "id": self.new_id(),
                    "meta": _meta(ods, "encounters", feed, "assisted-conception"),
                    "status": "completed",
                    "code": _cc(cx.SNOMED, *cx.IVF),
                    "subject": self.subject_for(ods),
                    "performedDateTime": _day(day),
                }
            )

    def christie(self) -> None:
        c, rng, ods = self.core, self.rng, "RBV"
        feed = FEEDS["acute-trust"]
        key = "cancer_breast" if "cancer_breast" in c.conditions else "cancer_colon"
        code, display, _, _ = cx.CONDITIONS[key]
        first = self.when(self.today - 3 * 365)
        for k in range(rng.randint(2, 4)):
            day = self.when(first + k * 90, first + k * 90 + 60)
            op = self.encounter(
                ods,
                "encounters",
                feed,
                ("AMB", "ambulatory"),
                cx.ENC_FOLLOW_UP,
                day,
                day,
                hour=rng.randint(9, 16),
                reason=(code, display),
            )
            if k == 0:
                self.condition(ods, "encounters", feed, (code, display), day, encounter=op)
                self.document(
                    ods,
                    "documents",
                    feed,
                    cx.PROGRESS_NOTE,
                    "Oncology clinic letter",
                    f"ONCOLOGY CLINIC LETTER\nThe Christie\n\nDiagnosis: {display}.\n"
                    "Plan discussed at multidisciplinary team meeting.\n",
                    day,
                    encounter=op,
                )

    def mental_health(self, cond_refs: dict[str, dict]) -> None:
        c, rng, ods = self.core, self.rng, self.core.mh
        feed = FEEDS["mental-health"]
        security = "mental-health" if c.smi >= 0 or c.sensitive == "mental-health" else None
        start = self.when(self.today - 4 * 365, self.today - 90)
        ep = self.episode(
            ods,
            "mental-health",
            feed,
            "Community mental health team",
            start,
            roles=("nurse", "clinician"),
        )
        smi_ref = None
        if c.smi >= 0:
            res = self.condition(
                ods, "mental-health", feed, cx.SMI[c.smi], start, security="mental-health"
            )
            smi_ref = {"reference": f"Condition/{res['id']}"}
        for _ in range(rng.randint(2, 5)):
            day = self.when(start)
            self.encounter(
                ods,
                "mental-health",
                feed,
                ("AMB", "ambulatory"),
                cx.ENC_PROBLEM,
                day,
                day,
                hour=rng.randint(9, 16),
                episode=ep,
                security=security,
            )
        if c.index == 0 or c.smi >= 0 or rng.random() < 0.6:
            addresses = [r for r in (smi_ref, cond_refs.get("depression")) if r]
            self.care_plan(
                ods,
                "mental-health",
                feed,
                "Mental health crisis plan",
                "Crisis plan",
                "What helps when I am in crisis, warning signs, and who to contact.",
                [
                    "Early warning signs: not sleeping, withdrawing from family",
                    "Contact the crisis line (24 hours) or the care coordinator",
                    "Family contact: daughter, happy to be called",
                ],
                self.when(start),
                addresses=addresses or None,
                security=security,
                roles=("clinician", "nurse"),
            )

    def community(self) -> dict:
        rng, ods = self.rng, "NZC01"
        feed = FEEDS["community"]
        start = self.when(self.today - 2 * 365, self.today - 30)
        ep = self.episode(ods, "encounters", feed, "District nursing", start)
        for _ in range(rng.randint(2, 6)):
            day = self.when(start)
            self.encounter(
                ods,
                "encounters",
                feed,
                ("HH", "home health"),
                cx.ENC_HOME_VISIT,
                day,
                day,
                hour=rng.randint(8, 17),
                episode=ep,
                roles=("nurse", "allied-health"),
            )
        plan = rng.choice(
            (
                ("Leg ulcer care", ["Compression bandaging twice weekly", "Skin care advice"]),
                ("Falls prevention", ["Home hazard assessment", "Strength and balance programme"]),
                ("Diabetic foot care", ["Foot inspection at each visit", "Podiatry referral"]),
                (
                    "Medicines support",
                    ["Weekly dosette box check", "Medicines reviewed with the carer each visit"],
                ),
            )
        )
        self.care_plan(
            ods,
            "care-plans",
            feed,
            "Community nursing",
            plan[0],
            f"District nursing plan: {plan[0].lower()}.",
            plan[1],
            start,
            roles=("nurse", "allied-health"),
        )
        return ep

    def social_care(self) -> None:
        c, rng, ods = self.core, self.rng, "LAZ01"
        feed = FEEDS["social-care"]
        when = self.when(self.today - 2 * 365, self.today - 20)
        worker = self.prac_ref(ods, "social-worker")
        if c.sensitive == "safeguarding":
            self.add(
                {
                    "resourceType": "Flag",
                    "id": self.new_id(),
                    "meta": _meta(ods, "social-care", feed, "safeguarding"),
                    "status": "active",
                    "category": [{"text": "Safeguarding"}],
                    "code": {
                        "text": "Safeguarding concern: discuss with the safeguarding team "
                        "before sharing information with family"
                    },
                    "subject": self.subject_for(ods),
                    "period": {"start": _day(when)},
                    "author": self.org_ref(ods),
                }
            )
            if self.age < 65:
                return
        needs = rng.sample(
            (
                "washing and dressing",
                "preparing meals",
                "managing medicines",
                "getting around the home",
                "shopping",
                "managing money",
            ),
            3,
        )
        qr = {
            "resourceType": "QuestionnaireResponse",
            "id": self.new_id(),
            "meta": _meta(ods, "social-care", feed),
            "questionnaire": "https://fhir.sharedcare.org.uk/demo/Questionnaire/care-act-assessment",
            "status": "completed",
            "subject": self.subject_for(ods),
            "authored": _dt(when, rng.randint(9, 16), 0),
            "item": [
                {
                    "linkId": "1",
                    "text": "Type of assessment",
                    "answer": [{"valueString": "Care Act 2014 needs assessment"}],
                },
                {
                    "linkId": "2",
                    "text": "Needs identified",
                    "answer": [{"valueString": n} for n in needs],
                },
                {
                    "linkId": "3",
                    "text": "Lives alone",
                    "answer": [{"valueBoolean": rng.random() < 0.55}],
                },
                {
                    "linkId": "4",
                    "text": "Carer's assessment offered",
                    "answer": [{"valueBoolean": True}],
                },
                {"linkId": "5", "text": "Eligible for support", "answer": [{"valueBoolean": True}]},
            ],
        }
        if worker:
            qr["author"] = worker
        self.add(qr)
        calls = rng.randint(1, 4)
        sr = {
            "resourceType": "ServiceRequest",
            "id": self.new_id(),
            "meta": _meta(ods, "social-care", feed),
            "status": "active",
            "intent": "order",
            "category": [{"text": "Social care"}],
            "code": {
                "text": "Home care package" if not c.care_home else "Residential care placement"
            },
            "subject": self.subject_for(ods),
            "occurrencePeriod": {"start": _day(min(when + 14, self.today - 1))},
            "authoredOn": _dt(when, 15, 0),
            "performer": [self.org_ref(ods)],
            "patientInstruction": (
                f"{calls} call{'s' if calls > 1 else ''} a day: " + ", ".join(needs)
            )
            if not c.care_home
            else "Long-term residential placement at Cedar Lodge Care Home",
        }
        if worker:
            sr["requester"] = worker
        self.add(sr)

    def care_home(self) -> None:
        rng, ods = self.rng, "VZC01"
        feed = FEEDS["care-home"]
        weight = rng.gauss(62, 9)
        for k in range(6):
            when = self.when(self.today - (6 - k) * 30, self.today - (5 - k) * 30)
            self.observation(
                ods,
                "care-home-notes",
                feed,
                "vital-signs",
                cx.WEIGHT,
                max(35.0, weight - 0.3 * k + rng.gauss(0, 0.5)),
                when,
                10,
                decimals=1,
                performer=self.prac_ref(ods, "nurse"),
            )
        notes = (
            "Settled night. Ate well at breakfast. Joined the afternoon music session.",
            "Unsettled in the evening, reassured by staff. Family visited.",
            "Skin intact; repositioned four-hourly. Fluid intake encouraged.",
            "Reviewed by GP on the weekly round; no medication changes.",
            "Small fall in the lounge, no injury found, observations normal.",
        )
        for _ in range(rng.randint(3, 6)):
            when = self.when(self.today - 120)
            self.document(
                ods,
                "care-home-notes",
                feed,
                cx.PROGRESS_NOTE,
                "Daily care notes",
                rng.choice(notes),
                when,
                roles=("nurse", "admin"),
            )

    def hospice(self) -> None:
        ods = "NZH01"
        feed = FEEDS["hospice"]
        start = self.when(self.today - 300, self.today - 20)
        self.episode(
            ods,
            "care-plans",
            feed,
            "Specialist palliative care",
            start,
            roles=("nurse", "clinician"),
        )
        self.care_plan(
            ods,
            "care-plans",
            feed,
            "Palliative care",
            "Advance care plan",
            "Preferred place of care: home. DNACPR discussed and recorded.",
            [
                "Symptom control reviewed weekly",
                "Anticipatory medicines at home",
                "Carer support from the hospice family team",
            ],
            start,
            roles=("clinician", "nurse"),
        )

    def care_team(self) -> None:
        c = self.core
        participants = []
        gp = self.prac_ref(c.practice, "clinician")
        if gp:
            participants.append({"role": [{"text": "GP"}], "member": gp})
        for flag, ods, role, label in (
            (c.community, "NZC01", "nurse", "District nurse"),
            (c.social, "LAZ01", "social-worker", "Social worker"),
            (c.mh_service, c.mh, "nurse", "Care coordinator"),
            (c.care_home, "VZC01", "nurse", "Care home nurse"),
            (c.hospice, "NZH01", "nurse", "Hospice nurse specialist"),
        ):
            if flag:
                who = self.prac_ref(ods, role)
                if who:
                    participants.append(
                        {"role": [{"text": label}], "member": who, "onBehalfOf": self.org_ref(ods)}
                    )
        self.add(
            {
                "resourceType": "CareTeam",
                "id": self.new_id(),
                "meta": _meta(c.practice, "care-plans", FEEDS["gp-practice"]),
                "status": "active",
                "name": "Integrated neighbourhood team",
                "subject": self.subject_for(c.practice),
                "participant": participants,
                "managingOrganization": [self.org_ref(c.practice)],
            }
        )

    def build(self) -> list[dict]:
        c = self.core
        self.patient()
        cond_refs = self.gp()
        med_keys = [m for k in c.conditions for m in cx.CONDITION_MEDICINES.get(k, ())]
        self.pathology()
        self.hospital(list(dict.fromkeys(med_keys)))
        if c.index == 0:
            self.in_emergency_department_now()
        if c.christie:
            self.christie()
        if c.mh_service:
            self.mental_health(cond_refs)
        if c.community:
            self.community()
        if c.social:
            self.social_care()
        if c.care_home:
            self.care_home()
        if c.hospice:
            self.hospice()
        if c.services():
            self.care_team()
        return self.out


def patient_resources(cs: CareSystem, core: PatientCore) -> list[dict]:
    return _Record(cs, core).build()
