"""The sharing agreements workflow: draft -> circulate -> every party signs -> activate ->
review / suspend / reinstate / expire / withdraw, with the rules enforced here and a clear
message when a step is not allowed.

    draft ──circulate──> circulated ──(last party signs)──> signed ──activate──> active
      │                      │                                 │                 │  ▲
      └──────── withdraw ────┴──────────────┬──────────────────┘          suspend│  │reinstate
                                            ▼                                    ▼  │
                                        withdrawn          expired <──expire── suspended

- Only a person in the **ig-lead** role at a party organisation signs, and only for that party.
- An agreement is activated only when every party has signed.
- Every step is written to the audit trail (``agreement-<step>``, entity ``Agreement/<id>``), so
  the agreement's history shows who did what and when; every status change clears the
  governance agreement cache so what viewers see changes at once.

Public API: ``AgreementError``; ``list_agreements``, ``get``; ``create_draft``, ``circulate``,
``sign``, ``activate``, ``review``, ``suspend``, ``reinstate``, ``expire``, ``withdraw``;
``plain_summary``, ``transparency``, ``not_signed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import Engine, func, select, update

from ..fhir.categories import CATEGORIES
from ..governance.policy import PURPOSES, Access, now_text
from ..governance.schema import agreement, agreement_party, audit_event, organisation

STATUSES = ("draft", "circulated", "signed", "active", "suspended", "expired", "withdrawn")
MANAGERS = ("programme-lead", "ig-lead")
CATEGORY_LABELS = {
    "demographics": "name, address and contact details",
    "gp-summary": "GP summary (conditions, medicines, allergies, immunisations)",
    "encounters": "appointments, admissions and referrals",
    "results": "test results",
    "documents": "letters and documents",
    "care-plans": "care plans",
    "mental-health": "mental health records",
    "social-care": "social care records",
    "care-home-notes": "care home notes",
    "other": "other records",
}
CATEGORY_SHORT = {
    "demographics": "demographics", "gp-summary": "GP summary", "encounters": "encounters",
    "results": "results", "documents": "letters and documents", "care-plans": "care plans",
    "mental-health": "mental health records", "social-care": "social care records",
    "care-home-notes": "care home notes", "other": "other records",
}
PURPOSE_LABELS = {
    "direct-care": "direct care",
    "planning": "planning and evaluating services",
    "research": "approved research",
}
PURPOSE_WHY = {
    "direct-care": "so that the people caring for you have the information they need to treat "
                   "you safely",
    "planning": "to plan and improve local services (with identifying details removed where "
                "possible)",
    "research": "for approved research projects",
}


class AgreementError(ValueError):
    """A workflow step that is not allowed, with a message for the person who tried it."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


@dataclass
class Party:
    ods: str
    name: str
    signed_by: str | None
    signed_at: str | None


@dataclass
class Agreement:
    id: str
    title: str
    purposes: list[str]
    categories: list[str]
    status: str
    effective: str | None
    end: str | None
    summary: str | None
    created: str
    updated: str
    parties: list[Party] = field(default_factory=list)

    @property
    def unsigned(self) -> list[Party]:
        return [p for p in self.parties if not p.signed_by]

    @property
    def all_signed(self) -> bool:
        return bool(self.parties) and not self.unsigned

    @property
    def in_force(self) -> bool:
        today = date.today().isoformat()
        return (self.status == "active" and (not self.effective or self.effective <= today)
                and (not self.end or self.end >= today))

    @property
    def plain(self) -> str:
        return plain_summary(self)

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "status": self.status,
                "purposes": self.purposes, "categories": self.categories,
                "effective": self.effective, "end": self.end, "summary": self.summary,
                "plain_summary": self.plain, "created": self.created, "updated": self.updated,
                "parties": [p.__dict__ for p in self.parties]}


# --------------------------------------------------------------------------- reading


def _names(conn) -> dict[str, str]:
    return dict(conn.execute(select(organisation.c.ods, organisation.c.name)).all())


def list_agreements(engine: Engine) -> list[Agreement]:
    with engine.connect() as conn:
        names = _names(conn)
        rows = conn.execute(select(agreement).order_by(agreement.c.id)).mappings().all()
        parties = conn.execute(select(agreement_party).order_by(agreement_party.c.ods)).all()
    by: dict[str, list[Party]] = {}
    for p in parties:
        by.setdefault(p.agreement_id, []).append(
            Party(p.ods, names.get(p.ods, p.ods), p.signed_by, p.signed_at))
    out = []
    for r in rows:
        out.append(Agreement(r["id"], r["title"], r["purposes"].split(), r["categories"].split(),
                             r["status"], r["effective"], r["end"], r["summary"], r["created"],
                             r["updated"], sorted(by.get(r["id"], []), key=lambda p: p.name)))
    return out


def get(engine: Engine, agreement_id: str) -> Agreement:
    for a in list_agreements(engine):
        if a.id == agreement_id:
            return a
    raise AgreementError(f"There is no agreement {agreement_id}.", 404)


def history(engine: Engine, agreement_id: str) -> list[dict]:
    """Who did which step when, from the audit trail."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(audit_event.c.recorded, audit_event.c.username, audit_event.c.ods,
                   audit_event.c.role, audit_event.c.action, audit_event.c.reason)
            .where(audit_event.c.entity == f"Agreement/{agreement_id}",
                   audit_event.c.action.like("agreement-%"))
            .order_by(audit_event.c.seq)).mappings()]


def not_signed(engine: Engine) -> list[dict]:
    """Partners that have not signed: unsigned parties of agreements still being signed, and
    organisations party to no active agreement at all."""
    agreements = list_agreements(engine)
    out = []
    for a in agreements:
        if a.status in ("draft", "circulated", "signed", "active", "suspended"):
            for p in a.unsigned:
                out.append({"ods": p.ods, "organisation": p.name, "agreement": a.id,
                            "title": a.title, "status": a.status})
    with engine.connect() as conn:
        orgs = conn.execute(select(organisation.c.ods, organisation.c.name,
                                   organisation.c.left_on)
                            .order_by(organisation.c.name)).all()
    in_active = {p.ods for a in agreements if a.status == "active" for p in a.parties}
    for ods, name, left in orgs:
        if ods not in in_active and not left:
            out.append({"ods": ods, "organisation": name, "agreement": None,
                        "title": "No active sharing agreement", "status": None})
    return out


# --------------------------------------------------------------------------- plain English


def short_name(name: str) -> str:
    return re.sub(r"NHS Foundation Trust$", "NHS FT", name.strip())


def _join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def long_date(text: str | None) -> str:
    if not text:
        return ""
    d = date.fromisoformat(text[:10])
    return f"{d.day} {d:%B %Y}"


def plain_summary(a: Agreement, max_parties: int = 4) -> str:
    """'Manchester University NHS FT and Brookside Medical Centre share GP summary and results
    for direct care, from 1 June 2026 to 31 May 2027'."""
    names = [short_name(p.name) for p in a.parties]
    if len(names) > max_parties:
        who = ", ".join(names[: max_parties - 1]) + f" and {len(names) - max_parties + 1} other " \
            "organisations"
    else:
        who = _join(names) or "No organisations yet"
    verb = "shares" if len(names) == 1 else "share"
    what = _join([CATEGORY_SHORT.get(c, c) for c in a.categories])
    why = _join([PURPOSE_LABELS.get(p, p) for p in a.purposes])
    text = f"{who} {verb} {what} for {why}"
    if a.effective and a.end:
        text += f", from {long_date(a.effective)} to {long_date(a.end)}"
    elif a.effective:
        text += f", from {long_date(a.effective)} until it is ended"
    elif a.end:
        text += f", until {long_date(a.end)}"
    return text


def transparency(engine: Engine) -> list[Agreement]:
    """Active agreements in force today: what the public transparency notice is made from."""
    return [a for a in list_agreements(engine) if a.in_force]


# --------------------------------------------------------------------------- the workflow


def _require_manager(access: Access) -> None:
    if access.role not in MANAGERS:
        raise AgreementError("Only a programme lead or an IG lead can do this.", 403)


def _log(gov, access: Access, agreement_id: str, step: str, note: str | None = None) -> None:
    gov.audit(access, f"agreement-{step}", "0", entity=f"Agreement/{agreement_id}", reason=note)


def _set(gov, a: Agreement, status: str, access: Access, step: str, note: str | None = None):
    gov.set_agreement_status(a.id, status)  # also forgets the cached agreements
    _log(gov, access, a.id, step, note)


def _clean_date(text, label: str) -> str | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise AgreementError(f"{label} must be a date like 2026-06-01.", 400) from None


def next_id(engine: Engine) -> str:
    year = date.today().year
    prefix = f"DSA-{year}-"
    with engine.connect() as conn:
        ids = [i for (i,) in conn.execute(select(agreement.c.id)
                                          .where(agreement.c.id.like(prefix + "%")))]
    n = max((int(i[len(prefix):]) for i in ids if i[len(prefix):].isdigit()), default=0)
    return f"{prefix}{n + 1:03d}"


def create_draft(gov, access: Access, title: str, parties: list[str], purposes: list[str],
                 categories: list[str], effective: str | None = None, end: str | None = None,
                 summary: str | None = None) -> str:
    _require_manager(access)
    errors = []
    title = (title or "").strip()
    if not title:
        errors.append("Give the agreement a title.")
    with gov.engine.connect() as conn:
        known = set(_names(conn))
    parties = list(dict.fromkeys(p.strip().upper() for p in parties if p and p.strip()))
    unknown = [p for p in parties if p not in known]
    if unknown:
        errors.append(f"Unknown organisations: {', '.join(unknown)}.")
    if len(parties) < 2:
        errors.append("Choose at least two parties: an agreement is between organisations.")
    purposes = [p for p in purposes if p]
    if not purposes or any(p not in PURPOSES for p in purposes):
        errors.append("Choose at least one purpose: direct care, planning or research.")
    categories = [c for c in categories if c]
    if not categories or any(c not in CATEGORIES for c in categories):
        errors.append("Choose at least one category of data to share.")
    try:
        eff = _clean_date(effective, "The start date")
        end_ = _clean_date(end, "The end date")
        if eff and end_ and end_ < eff:
            errors.append("The end date must be after the start date.")
    except AgreementError as e:
        errors.append(str(e))
        eff = end_ = None
    if errors:
        raise AgreementError(" ".join(errors), 400)
    new_id = next_id(gov.engine)
    gov.add_agreement(new_id, title[:200], parties, purposes, categories, "draft", eff, end_,
                      (summary or "").strip() or None)
    _log(gov, access, new_id, "draft")
    return new_id


def circulate(gov, access: Access, agreement_id: str) -> None:
    _require_manager(access)
    a = get(gov.engine, agreement_id)
    if a.status != "draft":
        raise AgreementError(f"Only a draft can be circulated; this agreement is {a.status}.")
    _set(gov, a, "circulated", access, "circulate")


def sign(gov, access: Access, agreement_id: str) -> bool:
    """The signing IG lead's organisation signs. True when that was the last signature (the
    agreement is then 'signed', ready to activate)."""
    a = get(gov.engine, agreement_id)
    if access.role != "ig-lead":
        raise AgreementError("Only an IG lead signs an agreement, for their own organisation.",
                             403)
    party = next((p for p in a.parties if p.ods == access.ods), None)
    if party is None:
        raise AgreementError(f"{access.ods} is not a party to this agreement, so you cannot "
                             "sign it.", 403)
    if a.status != "circulated":
        raise AgreementError("An agreement is signed after it is circulated and before it is "
                             f"activated; this one is {a.status}.")
    if party.signed_by:
        raise AgreementError(f"{party.name} already signed ({party.signed_by}, "
                             f"{party.signed_at[:16].replace('T', ' ')}).")
    with gov.engine.begin() as conn:
        conn.execute(update(agreement_party).where(
            agreement_party.c.agreement_id == a.id, agreement_party.c.ods == access.ods)
            .values(signed_by=access.username, signed_at=now_text()))
        left = conn.execute(select(func.count()).select_from(agreement_party).where(
            agreement_party.c.agreement_id == a.id,
            agreement_party.c.signed_by.is_(None))).scalar_one()
    _log(gov, access, a.id, "sign", f"signed for {access.ods}")
    if left == 0:
        gov.set_agreement_status(a.id, "signed")
        return True
    return False


def activate(gov, access: Access, agreement_id: str) -> None:
    _require_manager(access)
    a = get(gov.engine, agreement_id)
    if a.unsigned:
        raise AgreementError("It cannot be activated until every party has signed. Still to "
                             "sign: " + ", ".join(p.name for p in a.unsigned) + ".")
    if a.status != "signed":
        raise AgreementError(f"Only a signed agreement can be activated; this one is {a.status}.")
    _set(gov, a, "active", access, "activate")


def review(gov, access: Access, agreement_id: str, new_end: str | None = None,
           note: str | None = None) -> None:
    """Record a review of an active or suspended agreement, optionally moving its end date."""
    _require_manager(access)
    a = get(gov.engine, agreement_id)
    if a.status not in ("active", "suspended"):
        raise AgreementError(f"Only an active or suspended agreement is reviewed; this one is "
                             f"{a.status}.")
    end = _clean_date(new_end, "The new end date")
    if end and a.effective and end < a.effective:
        raise AgreementError("The new end date must be after the start date.", 400)
    if end:
        with gov.engine.begin() as conn:
            conn.execute(update(agreement).where(agreement.c.id == a.id)
                         .values(end=end, updated=now_text()))
        gov.forget_agreements()
    _log(gov, access, a.id, "review", "; ".join(x for x in (
        f"end date now {end}" if end else "", (note or "").strip()) if x) or None)


def suspend(gov, access: Access, agreement_id: str, note: str | None = None) -> None:
    _require_manager(access)
    a = get(gov.engine, agreement_id)
    if a.status != "active":
        raise AgreementError(f"Only an active agreement can be suspended; this one is {a.status}.")
    _set(gov, a, "suspended", access, "suspend", note)


def reinstate(gov, access: Access, agreement_id: str, note: str | None = None) -> None:
    _require_manager(access)
    a = get(gov.engine, agreement_id)
    if a.status != "suspended":
        raise AgreementError(f"Only a suspended agreement can be reinstated; this one is "
                             f"{a.status}.")
    _set(gov, a, "active", access, "reinstate", note)


def expire(gov, access: Access, agreement_id: str, note: str | None = None) -> None:
    _require_manager(access)
    a = get(gov.engine, agreement_id)
    if a.status not in ("signed", "active", "suspended"):
        raise AgreementError(f"Only a signed, active or suspended agreement can expire; this one "
                             f"is {a.status}.")
    _set(gov, a, "expired", access, "expire", note)


def withdraw(gov, access: Access, agreement_id: str, note: str | None = None) -> None:
    _require_manager(access)
    a = get(gov.engine, agreement_id)
    if a.status in ("expired", "withdrawn"):
        raise AgreementError(f"This agreement is already {a.status}.")
    _set(gov, a, "withdrawn", access, "withdraw", note)


STEPS = {"circulate": circulate, "sign": sign, "activate": activate, "review": review,
         "suspend": suspend, "reinstate": reinstate, "expire": expire, "withdraw": withdraw}


def next_steps(a: Agreement, access: Access) -> list[str]:
    """The steps this person can take now (for the buttons)."""
    out = []
    manager = access.role in MANAGERS
    if manager and a.status == "draft":
        out.append("circulate")
    if (a.status == "circulated" and access.role == "ig-lead"
            and any(p.ods == access.ods and not p.signed_by for p in a.parties)):
        out.append("sign")
    if manager and a.status == "signed":
        out.append("activate")
    if manager and a.status == "active":
        out += ["review", "suspend"]
    if manager and a.status == "suspended":
        out += ["reinstate", "review"]
    if manager and a.status in ("signed", "active", "suspended"):
        out.append("expire")
    if manager and a.status not in ("expired", "withdrawn"):
        out.append("withdraw")
    return out
