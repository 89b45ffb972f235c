"""`generate()`: the synthetic integrated care system behind `sharedcare demo` and the benchmarks."""

from __future__ import annotations

import random
from datetime import date

from ..synthetic import names
from .history import build_audit, build_objections
from .model import CareSystem, Persona
from .organisations import (
    HOST_TRUST,
    ICB_CODE,
    ICB_NAME,
    LOCALITY_ACUTE,
    _ascii,
    build_agreements,
    build_organisations,
    build_staff,
    first_with,
)
from .records import build_cores, build_directory


def generate(seed: int = 42, patients: int = 2000, *, as_of: date | None = None) -> CareSystem:
    """Build a synthetic care system. Deterministic for (seed, patients, as_of); `as_of` (the
    demo's "today", default: today's date) anchors go-lives, agreements and history."""
    if patients < 0:
        raise ValueError("patients must be >= 0")
    as_of = as_of or date.today()
    rng = random.Random(seed)
    orgs = build_organisations(random.Random(seed * 17 + 1), patients, as_of)
    practices = [o for o in orgs if o.kind == "gp-practice"]
    cores = build_cores(seed, patients, practices, as_of)
    by_ods = {o.ods: o for o in orgs}
    for c in cores:
        by_ods[c.practice].registered_population += 1
    staff = build_staff(random.Random(seed * 17 + 2), orgs)
    agreements = build_agreements(random.Random(seed * 17 + 3), orgs, staff, as_of)

    cs = CareSystem(
        seed=seed,
        as_of=as_of,
        icb_code=ICB_CODE,
        icb_name=ICB_NAME,
        organisations=orgs,
        staff=staff,
        agreements=agreements,
        patients_count=patients,
        personas=[],
        objections=[],
        national_opt_outs=[],
        break_glass_history=[],
        audit_history=[],
        _cores=cores,
        _directory=build_directory(seed, orgs, staff),
    )
    cs.personas = _personas(rng, cs)
    outsider = next((p for p in cs.personas if p.role == "Clinician with no relationship"), None)
    breaker = None
    if cores:
        # an A&E doctor at another trust once broke glass on the featured patient
        other = next(
            o
            for o in LOCALITY_ACUTE.values()
            if o != cores[0].acute and (outsider is None or o != outsider.org)
        )
        breaker = first_with(staff, other, "clinician")
    cs.objections, cs.national_opt_outs = build_objections(
        random.Random(seed * 17 + 4), cores, orgs
    )
    cs.audit_history = build_audit(random.Random(seed * 17 + 5), cs, breaker)
    cs.break_glass_history = [e for e in cs.audit_history if e["action"] == "break-glass"]
    return cs


def _personas(rng: random.Random, cs: CareSystem) -> list[Persona]:
    staff = cs.staff
    out: list[Persona] = []

    def add(role_label: str, ods: str, role: str, description: str) -> None:
        m = first_with(staff, ods, role)
        out.append(
            Persona(
                m.username,
                m.password,
                role_label,
                ods,
                f"{m.display_name}, {m.title}, {cs.organisation(ods).name}. " + description,
            )
        )

    if cs._cores:
        p = cs._cores[0]
        who = f"{p.given} {p.family} (NHS number {p.nhs_number})"
    else:
        p, who = None, "the featured patient"
    practice = p.practice if p else next(o.ods for o in cs.organisations if o.kind == "gp-practice")
    acute = p.acute if p else HOST_TRUST
    mh = p.mh if p else "RXV"
    add("GP", practice, "clinician", f"Registered GP of {who}; sees the whole shared record.")
    add(
        "A&E doctor",
        acute,
        "clinician",
        f"Emergency department consultant; {who} has attended this department.",
    )
    add("District nurse", "NZC01", "nurse", f"Visits {who} at home.")
    add(
        "Mental health crisis team",
        mh,
        "clinician",
        f"Crisis team psychiatrist; {who} has a crisis plan with this trust.",
    )
    add(
        "Social worker",
        "LAZ01",
        "social-worker",
        f"Adult social care; arranged the home care package for {who}.",
    )
    add(
        "IG lead",
        HOST_TRUST,
        "ig-lead",
        "Information governance lead: agreements, objections, audit and break-glass review.",
    )
    add(
        "Programme lead",
        HOST_TRUST,
        "programme-lead",
        "Runs the shared care record programme: partners, go-lives and adoption.",
    )
    add("System administrator", HOST_TRUST, "sysadmin", "Manages users, feeds and the service.")
    if p:
        pw = names.password(rng)
        out.append(
            Persona(
                f"patient.{_ascii(p.given)}.{_ascii(p.family)}",
                pw,
                "Patient",
                None,
                f"{who}: sees their own record, who has looked at it, and can object to sharing.",
                nhs_number=p.nhs_number,
            )
        )
    other = next(o for o in LOCALITY_ACUTE.values() if o != acute)
    m = first_with(staff, other, "clinician", skip=2)
    out.append(
        Persona(
            m.username,
            m.password,
            "Clinician with no relationship",
            other,
            f"{m.display_name}, {m.title}, {cs.organisation(other).name}. Has no care "
            f"relationship with {who}: access is refused unless they declare a "
            "relationship or break glass.",
        )
    )
    return out
