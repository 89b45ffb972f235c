"""The data classes a generated demo care system is made of."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING

from ..fhir.categories import CATEGORIES

if TYPE_CHECKING:  # pragma: no cover
    from .records import PatientCore

ORG_KINDS = (
    "gp-practice",
    "acute-trust",
    "community",
    "mental-health",
    "ambulance",
    "hospice",
    "social-care",
    "care-home",
)
STAFF_ROLES = (
    "clinician",
    "nurse",
    "allied-health",
    "social-worker",
    "admin",
    "ig-lead",
    "programme-lead",
    "sysadmin",
)
PURPOSES = ("direct-care", "planning", "research")
AGREEMENT_STATUSES = ("draft", "signed", "active", "suspended", "expired", "withdrawn")
DATA_CATEGORIES = CATEGORIES
AUDIT_ACTIONS = ("read", "search", "break-glass", "declared-relationship")
AUDIT_OUTCOMES = ("permitted", "denied")
OBJECTION_SCOPES = ("all", "from-org", "to-org")


@dataclass
class Organisation:
    ods: str
    name: str
    kind: str  # one of ORG_KINDS
    postcode: str
    go_live: date | None  # None: not live yet
    registered_population: int | None = None  # GP practices: generated patients registered
    locality: str | None = None  # borough the organisation serves (demo only)
    real: bool = False  # True for the NHS trusts taken from ODS; everything else is made up


@dataclass
class StaffMember:
    username: str
    display_name: str
    roles: list[tuple[str, str]]  # (org ODS code, role in STAFF_ROLES)
    password: str
    sds_id: str
    title: str = ""  # job title, e.g. "GP partner", "District nurse"


@dataclass
class Agreement:
    id: str
    title: str
    parties: list[str]  # ODS codes
    purposes: list[str]  # PURPOSES
    categories: list[str]  # DATA_CATEGORIES
    status: str  # AGREEMENT_STATUSES
    effective: date | None
    end: date | None
    signatures: list[tuple[str, str, datetime]]  # (ODS code, username, signed at)


@dataclass
class Persona:
    username: str
    password: str
    role: str  # label, e.g. "GP", "A&E doctor"
    org: str | None  # ODS code where the persona works (None for the patient)
    description: str
    nhs_number: str | None = None  # the patient persona's NHS number


@dataclass
class CareSystem:
    seed: int
    as_of: date
    icb_code: str
    icb_name: str
    organisations: list[Organisation]
    staff: list[StaffMember]
    agreements: list[Agreement]
    patients_count: int
    personas: list[Persona]
    objections: list[tuple[str, str, str | None]]  # (NHS number, scope, ODS code or None)
    national_opt_outs: list[str]  # NHS numbers
    break_glass_history: list[dict]
    audit_history: list[dict]
    _cores: list[PatientCore] = field(default_factory=list, repr=False)
    _directory: dict = field(default_factory=dict, repr=False)

    # --- look-ups -------------------------------------------------------------------------------
    def organisation(self, ods: str) -> Organisation:
        for org in self.organisations:
            if org.ods == ods:
                return org
        raise KeyError(ods)

    def staff_member(self, username: str) -> StaffMember:
        for member in self.staff:
            if member.username == username:
                return member
        raise KeyError(username)

    def nhs_numbers(self) -> list[str]:
        """NHS numbers of all generated patients, in generation order."""
        return [core.nhs_number for core in self._cores]

    # --- FHIR output ----------------------------------------------------------------------------
    def resources(self) -> Iterator[dict]:
        """All FHIR R4 resources, lazily: directory (Organization, Practitioner) first, then each
        patient's record with the Patient before anything that refers to it."""
        from .records import iter_resources

        return iter_resources(self)

    def patient_resources(self, index: int) -> list[dict]:
        """The resources of one patient (0-based generation index)."""
        from .records import patient_resources

        return patient_resources(self, self._cores[index])

    def bundles(self, size: int = 500) -> Iterator[dict]:
        """FHIR transaction Bundles of `resources()` (PUT with ids), at most `size` entries each.
        Every reference points at a resource in the same or an earlier bundle."""
        if size < 1:
            raise ValueError("size must be >= 1")
        entries: list[dict] = []
        for res in self.resources():
            rtype = res["resourceType"]
            rid = res["id"]
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{rid}",
                    "resource": res,
                    "request": {"method": "PUT", "url": f"{rtype}/{rid}"},
                }
            )
            if len(entries) >= size:
                yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}
                entries = []
        if entries:
            yield {"resourceType": "Bundle", "type": "transaction", "entry": entries}
