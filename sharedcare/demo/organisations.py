"""Partner organisations, their staff, and the data sharing agreements between them."""

from __future__ import annotations

import csv
import random
import unicodedata
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources as _resources

from ..fhir.categories import CATEGORIES
from ..synthetic import names
from .model import Agreement, Organisation, StaffMember

ICB_CODE = "QOP"
ICB_NAME = "NHS Greater Manchester Integrated Care Board"
HOST_TRUST = "R0A"  # hosts the shared care record programme

# Which trust serves each borough (acute, mental health). Real service geography, simplified.
LOCALITY_ACUTE = {
    "Manchester": "R0A",
    "Salford": "RM3",
    "Oldham": "RM3",
    "Bolton": "RMC",
    "Stockport": "RWJ",
    "Tameside": "RMP",
    "Wigan": "RRF",
}
LOCALITY_MH = {
    "Manchester": "RXV",
    "Salford": "RXV",
    "Bolton": "RXV",
    "Wigan": "RXV",
    "Stockport": "RT2",
    "Tameside": "RT2",
    "Oldham": "RT2",
}
# Trust names do not always say what a trust does; these are known from the trusts themselves.
_KIND_OVERRIDES = {"RT2": "mental-health"}  # Pennine Care: mental health and learning disability

# Made-up partners (codes in ODS shape, chosen not to be live ODS codes; all fictitious).
COMMUNITY = ("NZC01", "Irwell Community Health Services", "community", "M6 5FW", "Salford")
SOCIAL_CARE = (
    "LAZ01",
    "Irwell Metropolitan Borough Council Adult Social Care",
    "social-care",
    "M27 5AW",
    "Salford",
)
CARE_HOME = ("VZC01", "Cedar Lodge Care Home", "care-home", "M20 2LT", "Manchester")
HOSPICE = ("NZH01", "St Winifred's Hospice", "hospice", "M21 8RE", "Manchester")


def kind_from_name(ods: str, name: str) -> str:
    if ods in _KIND_OVERRIDES:
        return _KIND_OVERRIDES[ods]
    lower = name.lower()
    if "ambulance" in lower:
        return "ambulance"
    if "mental health" in lower:
        return "mental-health"
    if "community" in lower:
        return "community"
    return "acute-trust"


def load_trusts() -> list[dict]:
    """The ICB's open NHS trusts from the packaged ODS slice."""
    text = _resources.files("sharedcare.demo").joinpath("data/trusts-qop.csv").read_text("utf-8")
    rows = [r for r in csv.DictReader(text.splitlines()) if r["stp_code"] == ICB_CODE]
    return [r for r in rows if r["close_date"] in ("", "NA")]


def practice_count(patients: int) -> int:
    return max(3, round(patients / 1200))


def build_organisations(rng: random.Random, patients: int, as_of: date) -> list[Organisation]:
    d = lambda days: as_of - timedelta(days=days)
    trust_go_live = {
        "R0A": d(200),
        "RM3": d(170),
        "RMC": d(140),
        "RWJ": d(120),
        "RXV": d(150),
        "RT2": d(100),
        "RMP": d(80),
        "RRF": d(60),
        "RX7": as_of + timedelta(days=30),  # signed up, goes live next month
        "RBV": None,  # not taking part yet
    }
    orgs: list[Organisation] = []
    for row in load_trusts():
        ods = row["ods_code"]
        orgs.append(
            Organisation(
                ods=ods,
                name=row["ods_name"],
                kind=kind_from_name(ods, row["ods_name"]),
                postcode=row["postcode"],
                go_live=trust_go_live.get(ods, d(90)),
                locality=next((k for k, v in LOCALITY_ACUTE.items() if v == ods), None),
                real=True,
            )
        )
    localities = list(names.LOCALITIES)
    n = practice_count(patients)
    for i in range(n):
        locality = localities[i % len(localities)]
        base = names.PRACTICE_NAMES[i % len(names.PRACTICE_NAMES)]
        name = base if i < len(names.PRACTICE_NAMES) else f"{base} ({locality})"
        # Practices join over six months; with five or more, the newest is not live yet.
        if n >= 5 and i == n - 1:
            go_live = None
        else:
            go_live = d(190 - (170 * i) // max(1, n - 1))
        orgs.append(
            Organisation(
                ods=f"P8{9000 + i:04d}",
                name=name,
                kind="gp-practice",
                postcode=names.postcode(rng, locality),
                go_live=go_live,
                registered_population=0,
                locality=locality,
            )
        )
    for (ods, name, kind, pc, loc), days in (
        (COMMUNITY, 130),
        (SOCIAL_CARE, 95),
        (CARE_HOME, 45),
        (HOSPICE, 30),
    ):
        orgs.append(
            Organisation(ods=ods, name=name, kind=kind, postcode=pc, go_live=d(days), locality=loc)
        )
    return orgs


# --- staff --------------------------------------------------------------------------------------

# kind -> [(title, roles, count)]; roles at the same organisation
_STAFF_PLAN: dict[str, list[tuple[str, tuple[str, ...], int]]] = {
    "gp-practice": [
        ("GP partner", ("clinician",), 2),
        ("Practice nurse", ("nurse",), 1),
        ("Practice manager", ("admin", "ig-lead"), 1),
    ],
    "acute-trust": [
        ("Emergency department consultant", ("clinician",), 2),
        ("Consultant physician", ("clinician",), 1),
        ("Ward sister", ("nurse",), 1),
        ("Staff nurse", ("nurse",), 1),
        ("Physiotherapist", ("allied-health",), 1),
        ("Medical secretary", ("admin",), 1),
        ("Information governance manager", ("ig-lead",), 1),
    ],
    "mental-health": [
        ("Crisis team psychiatrist", ("clinician",), 1),
        ("Crisis team nurse", ("nurse",), 1),
        ("Community mental health nurse", ("nurse",), 1),
        ("Data protection officer", ("ig-lead",), 1),
    ],
    "community": [
        ("District nurse", ("nurse",), 2),
        ("Occupational therapist", ("allied-health",), 1),
        ("Service manager", ("admin", "ig-lead"), 1),
    ],
    "social-care": [
        ("Social worker", ("social-worker",), 2),
        ("Business support officer", ("admin",), 1),
        ("Information governance officer", ("ig-lead",), 1),
    ],
    "care-home": [
        ("Registered nurse", ("nurse",), 1),
        ("Care home manager", ("admin", "ig-lead"), 1),
    ],
    "hospice": [
        ("Palliative care consultant", ("clinician",), 1),
        ("Hospice nurse specialist", ("nurse",), 1),
        ("Hospice manager", ("admin", "ig-lead"), 1),
    ],
    "ambulance": [
        ("Paramedic", ("allied-health",), 2),
        ("Information governance manager", ("ig-lead",), 1),
    ],
}


def _ascii(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if c.isalnum()).lower()


def build_staff(rng: random.Random, orgs: list[Organisation]) -> list[StaffMember]:
    staff: list[StaffMember] = []
    used: set[str] = set()
    sds_used: set[str] = set()

    def person(title: str, roles: list[tuple[str, str]]) -> StaffMember:
        female = rng.random() < 0.6
        given = rng.choice(names.FEMALE_GIVEN if female else names.MALE_GIVEN)
        family = rng.choice(names.SURNAMES)
        base = f"{_ascii(given)}.{_ascii(family)}"
        username, k = base, 2
        while username in used:
            username, k = f"{base}{k}", k + 1
        used.add(username)
        sds = f"5{rng.randrange(10**10, 10**11)}"
        while sds in sds_used:
            sds = f"5{rng.randrange(10**10, 10**11)}"
        sds_used.add(sds)
        is_doctor = any(r == "clinician" for _, r in roles) and "aramedic" not in title
        display = f"{'Dr ' if is_doctor else ''}{given} {family}"
        member = StaffMember(
            username=username,
            display_name=display,
            roles=roles,
            password=names.password(rng),
            sds_id=sds,
            title=title,
        )
        staff.append(member)
        return member

    for org in orgs:
        for title, roles, count in _STAFF_PLAN.get(org.kind, []):
            for _ in range(count):
                person(title, [(org.ods, r) for r in roles])
    # Programme-wide roles at the host trust.
    person("Shared care record programme lead", [(HOST_TRUST, "programme-lead")])
    person("Shared care record system administrator", [(HOST_TRUST, "sysadmin")])
    # Two organisations: a GP who also works sessions at the hospice; a community nurse who
    # also covers the care home.
    hospice = next(o.ods for o in orgs if o.kind == "hospice")
    care_home = next(o.ods for o in orgs if o.kind == "care-home")
    gp = next(m for m in staff if m.title == "GP partner")
    gp.roles.append((hospice, "clinician"))
    dn = next(m for m in staff if m.title == "District nurse")
    dn.roles.append((care_home, "nurse"))
    return staff


def first_with(staff: list[StaffMember], ods: str, role: str, skip: int = 0) -> StaffMember:
    found = [m for m in staff if (ods, role) in m.roles]
    return found[min(skip, len(found) - 1)]


# --- agreements ---------------------------------------------------------------------------------

ALL_CATEGORIES = list(CATEGORIES)


def build_agreements(
    rng: random.Random, orgs: list[Organisation], staff: list[StaffMember], as_of: date
) -> list[Agreement]:
    by_kind: dict[str, list[str]] = {}
    for o in orgs:
        by_kind.setdefault(o.kind, []).append(o.ods)
    practices = by_kind["gp-practice"]
    live = [o.ods for o in orgs if o.go_live is not None and o.go_live <= as_of]
    nhs_trusts = [o.ods for o in orgs if o.real]

    def sign(parties: list[str], before: date, spread: int = 40) -> list[tuple[str, str, datetime]]:
        out = []
        for ods in parties:
            who = first_with(staff, ods, "ig-lead")
            day = before - timedelta(days=rng.randint(1, spread))
            at = datetime.combine(day, time(rng.randint(9, 16), rng.randint(0, 59)), tzinfo=UTC)
            out.append((ods, who.username, at))
        return out

    d = lambda days: as_of - timedelta(days=days)
    agreements: list[Agreement] = []

    # 1. The main direct care agreement: most partners, everything but care home notes.
    main_parties = [o for o in live]
    eff = d(210)
    agreements.append(
        Agreement(
            id="DSA-GM-001",
            title="Greater Manchester Shared Care Record: direct care",
            parties=main_parties,
            purposes=["direct-care"],
            categories=[c for c in ALL_CATEGORIES if c != "care-home-notes"],
            status="active",
            effective=eff,
            end=None,
            signatures=sign(main_parties, eff),
        )
    )
    # 2. Planning: population health management on NHS data (pseudonymised downstream).
    plan_parties = [p for p in live if p in nhs_trusts or p in practices]
    eff = d(120)
    agreements.append(
        Agreement(
            id="DSA-GM-002",
            title="Population health management: planning and evaluation",
            parties=plan_parties,
            purposes=["planning"],
            categories=["demographics", "gp-summary", "encounters", "results"],
            status="active",
            effective=eff,
            end=None,
            signatures=sign(plan_parties, eff),
        )
    )
    # 3. Care home notes pilot: suspended after an incident review.
    ch_parties = by_kind["care-home"] + practices[:2] + by_kind["community"]
    eff = d(60)
    agreements.append(
        Agreement(
            id="DSA-GM-003",
            title="Care home digital notes pilot",
            parties=ch_parties,
            purposes=["direct-care"],
            categories=["care-home-notes"],
            status="suspended",
            effective=eff,
            end=None,
            signatures=sign(ch_parties, eff, 20),
        )
    )
    # 4. Ambulance access: signed by everyone, effective next month.
    amb_parties = by_kind["ambulance"] + [HOST_TRUST] + practices
    eff = as_of + timedelta(days=30)
    agreements.append(
        Agreement(
            id="DSA-GM-004",
            title="North West Ambulance Service: paramedic access to care plans",
            parties=amb_parties,
            purposes=["direct-care"],
            categories=["demographics", "gp-summary", "care-plans"],
            status="signed",
            effective=eff,
            end=None,
            signatures=sign(amb_parties, as_of, 25),
        )
    )
    # 5. Draft: palliative care records with the hospice (and the specialist cancer trust).
    pall_parties = by_kind["hospice"] + ["RBV"] + practices + by_kind["community"]
    agreements.append(
        Agreement(
            id="DSA-GM-005",
            title="Palliative and end of life care records",
            parties=pall_parties,
            purposes=["direct-care"],
            categories=["care-plans", "documents", "encounters"],
            status="draft",
            effective=None,
            end=None,
            signatures=[],
        )
    )
    # 6. Expired: pandemic-era COPI sharing.
    eff, end = d(5 * 365 + 250), d(3 * 365 + 120)
    copi_parties = nhs_trusts[:6] + practices
    agreements.append(
        Agreement(
            id="DSA-GM-000",
            title="COVID-19 Control of Patient Information notice: direct care",
            parties=copi_parties,
            purposes=["direct-care", "planning"],
            categories=["demographics", "gp-summary", "encounters", "results"],
            status="expired",
            effective=eff,
            end=end,
            signatures=sign(copi_parties, eff, 10),
        )
    )
    # 7. Withdrawn research extract.
    res_parties = [HOST_TRUST, "RBV", "RXV"]
    agreements.append(
        Agreement(
            id="DSA-GM-006",
            title="Multimorbidity research extract (pilot)",
            parties=res_parties,
            purposes=["research"],
            categories=["demographics", "gp-summary", "results"],
            status="withdrawn",
            effective=d(300),
            end=d(240),
            signatures=sign(res_parties[:2], d(300)),
        )
    )
    return agreements
