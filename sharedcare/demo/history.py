"""Past use of the record: access audit over the last ~26 weeks, shaped by staggered go-lives
and growing adoption, plus objections and national opt-outs."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from .model import CareSystem, Organisation, StaffMember
from .records import PatientCore

WEEKS = 26
_ACCESS_ROLES = ("clinician", "nurse", "allied-health", "social-worker")
_KIND_WEIGHT = {
    "acute-trust": 3.0,
    "gp-practice": 1.0,
    "mental-health": 1.5,
    "community": 1.2,
    "social-care": 1.0,
    "care-home": 0.5,
    "hospice": 0.5,
    "ambulance": 1.0,
}
_WEEKEND_WEIGHT = {"acute-trust": 0.8, "ambulance": 0.9}
# Break-glass happens in urgent care, at a few per 1,000 record views (NHS shared care records
# report roughly 1-5): the share of an urgent-care organisation's accesses that break glass.
_URGENT_CARE = ("acute-trust", "mental-health", "ambulance")
BREAK_GLASS_SHARE = 0.004
BREAK_GLASS_REASONS = (
    "Unconscious patient in the emergency department; consent not possible",
    "Urgent medicines reconciliation out of hours",
    "Safeguarding concern raised at triage",
    "Patient arrived from outside the area; no existing relationship recorded",
    "Clinical emergency on the ward; GP record needed immediately",
)


def related_patients(orgs: list[Organisation], cores: list[PatientCore]) -> dict[str, list[int]]:
    """Patients each organisation has a legitimate relationship with (holds records about)."""
    rel: dict[str, list[int]] = {o.ods: [] for o in orgs}
    for c in cores:
        rel[c.practice].append(c.index)
        rel[c.acute].append(c.index)
        if c.mh_service:
            rel[c.mh].append(c.index)
        for flag, ods in (
            (c.community, "NZC01"),
            (c.social, "LAZ01"),
            (c.care_home, "VZC01"),
            (c.hospice, "NZH01"),
            (c.christie, "RBV"),
        ):
            if flag:
                rel[ods].append(c.index)
    return rel


def _event(
    when: datetime,
    member: StaffMember,
    role: str,
    ods: str,
    nhs: str,
    action: str,
    outcome: str,
    reason: str | None = None,
) -> dict:
    ev = {
        "when": when,
        "username": member.username,
        "role": role,
        "org": ods,
        "nhs_number": nhs,
        "action": action,
        "outcome": outcome,
        "purpose": "direct-care",
    }
    if reason:
        ev["reason"] = reason
    return ev


def build_audit(
    rng: random.Random, cs: CareSystem, featured_breaker: StaffMember | None
) -> list[dict]:
    cores = cs._cores
    if not cores:
        return []
    rel = related_patients(cs.organisations, cores)
    staff_by_org: dict[str, list[tuple[StaffMember, str]]] = {}
    for m in cs.staff:
        for ods, role in m.roles:
            if role in _ACCESS_ROLES:
                staff_by_org.setdefault(ods, []).append((m, role))
    base = max(2.0, len(cores) / 400)
    first_week = cs.as_of - timedelta(days=7 * WEEKS)
    events: list[dict] = []
    for org in cs.organisations:
        if org.go_live is None or org.go_live >= cs.as_of or not staff_by_org.get(org.ods):
            continue
        people = staff_by_org[org.ods]
        mine = rel[org.ods]
        weekend = _WEEKEND_WEIGHT.get(org.kind, 0.15)
        for w in range(WEEKS):
            week_start = first_week + timedelta(days=7 * w)
            if week_start + timedelta(days=7) <= org.go_live:
                continue
            weeks_live = (week_start - org.go_live).days / 7
            adoption = min(1.0, max(0.1, (weeks_live + 1) / 10))
            count = int(
                base * _KIND_WEIGHT.get(org.kind, 1.0) * adoption * rng.uniform(0.8, 1.2)
                + rng.random()
            )
            for _ in range(count):
                # day of the week (weekends quieter outside urgent care), then time of day
                while True:
                    day = week_start + timedelta(days=rng.randrange(7))
                    if day.weekday() < 5 or rng.random() < weekend:
                        break
                if day < org.go_live or day >= cs.as_of:
                    continue
                hour = (
                    rng.randrange(24)
                    if org.kind == "acute-trust" and rng.random() < 0.3
                    else rng.randint(8, 17)
                )
                when = datetime(
                    day.year,
                    day.month,
                    day.day,
                    hour,
                    rng.randrange(60),
                    rng.randrange(60),
                    tzinfo=UTC,
                )
                member, role = people[rng.randrange(len(people))]
                urgent = org.kind in _URGENT_CARE
                if urgent and rng.random() < BREAK_GLASS_SHARE:
                    # Emergency access to someone the organisation has no relationship with:
                    # real services see a few per 1,000 record views.
                    nhs = cores[rng.randrange(len(cores))].nhs_number
                    events.append(
                        _event(
                            when,
                            member,
                            role,
                            org.ods,
                            nhs,
                            "break-glass",
                            "permitted",
                            rng.choice(BREAK_GLASS_REASONS),
                        )
                    )
                    events.append(
                        _event(
                            when + timedelta(seconds=30), member, role, org.ods, nhs, "read",
                            "permitted",
                        )
                    )
                elif mine and rng.random() < 0.97:
                    nhs = cores[mine[rng.randrange(len(mine))]].nhs_number
                    if rng.random() < 0.25:
                        events.append(
                            _event(when, member, role, org.ods, nhs, "search", "permitted")
                        )
                        when = when + timedelta(seconds=rng.randint(20, 200))
                    events.append(_event(when, member, role, org.ods, nhs, "read", "permitted"))
                else:
                    # No relationship recorded yet: refused, or (less often) the person declares
                    # one with a reason, for the IG lead to review.
                    nhs = cores[rng.randrange(len(cores))].nhs_number
                    if rng.random() < 0.7:
                        events.append(_event(when, member, role, org.ods, nhs, "read", "denied"))
                    else:
                        events.append(
                            _event(
                                when, member, role, org.ods, nhs, "declared-relationship",
                                "permitted",
                            )
                        )
                        events.append(
                            _event(
                                when + timedelta(seconds=45), member, role, org.ods, nhs, "read",
                                "permitted",
                            )
                        )
    if featured_breaker is not None:
        ods, role = featured_breaker.roles[0]
        day = cs.as_of - timedelta(days=40)
        when = datetime(day.year, day.month, day.day, 2, 17, 5, tzinfo=UTC)
        nhs = cores[0].nhs_number
        events.append(
            _event(
                when,
                featured_breaker,
                role,
                ods,
                nhs,
                "break-glass",
                "permitted",
                BREAK_GLASS_REASONS[0],
            )
        )
        events.append(
            _event(
                when + timedelta(seconds=30), featured_breaker, role, ods, nhs, "read", "permitted"
            )
        )
    events.sort(key=lambda e: (e["when"], e["username"], e["action"]))
    return events


def build_objections(
    rng: random.Random, cores: list[PatientCore], orgs: list[Organisation]
) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    n = len(cores)
    if n < 2:
        return [], []
    pool = list(range(1, n))  # never the featured patient
    k_obj = min(len(pool), max(3, n // 200))
    k_opt = min(len(pool) - k_obj, max(1, round(n * 0.05)))
    chosen = rng.sample(pool, k_obj + k_opt)
    acutes = [o.ods for o in orgs if o.kind == "acute-trust"]
    objections: list[tuple[str, str, str | None]] = []
    for j, idx in enumerate(chosen[:k_obj]):
        c = cores[idx]
        scope = ("all", "from-org", "to-org")[j % 3]
        if scope == "all":
            objections.append((c.nhs_number, "all", None))
        elif scope == "from-org":
            # e.g. "do not share what the mental health trust (or my practice) holds"
            src = c.mh if c.mh_service else c.practice
            objections.append((c.nhs_number, "from-org", src))
        else:
            objections.append((c.nhs_number, "to-org", rng.choice(acutes)))
    opt_outs = sorted(cores[i].nhs_number for i in chosen[k_obj:])
    return objections, opt_outs
