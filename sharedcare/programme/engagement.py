"""User engagement: the feedback inbox and its triage, "you said, we did", the register of
clinical champions and the design group, and the readiness self-assessments over time.

Feedback triage: ``new -> planned -> done | wont-do`` (a new item may also go straight to done
or won't do; a planned item may go back to new). Closing an item (done / won't do) needs a
response: it is what users read on "you said, we did".
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date

from sqlalchemy import Engine, insert, select, update

from ..governance.schema import feedback, organisation
from . import readiness
from .schema import champion, readiness_assessment

FEEDBACK_STATUSES = ("new", "planned", "done", "wont-do")
STATUS_LABELS = {"new": "New", "planned": "Planned", "done": "Done", "wont-do": "Won't do"}
KIND_LABELS = {"wrong": "Something is wrong", "missing": "Something is missing", "idea": "An idea",
               "praise": "It helped"}
TRANSITIONS = {
    "new": {"new", "planned", "done", "wont-do"},
    "planned": {"planned", "new", "done", "wont-do"},
    "done": {"done", "planned"},  # reopen if it turns out not to be done
    "wont-do": {"wont-do", "new", "planned"},
}
THEMES = ("finding patients", "medicines", "results", "care plans", "documents and letters",
          "access and sign-in", "speed", "data quality", "training", "other")
GROUPS = {"clinical-champion": "Clinical champion", "design-group": "Design group"}


class EngagementError(ValueError):
    pass


# --------------------------------------------------------------------------- feedback


def inbox(engine: Engine, status: str | None = None, theme: str | None = None,
          ods: str | None = None, kind: str | None = None) -> list[dict]:
    conds = []
    if status:
        conds.append(feedback.c.status == status)
    if theme:
        conds.append(feedback.c.theme == theme)
    if ods:
        conds.append(feedback.c.ods == ods)
    if kind:
        conds.append(feedback.c.kind == kind)
    with engine.connect() as conn:
        names = dict(conn.execute(select(organisation.c.ods, organisation.c.name)).all())
        rows = [dict(r) for r in conn.execute(
            select(feedback).where(*conds).order_by(feedback.c.created.desc(),
                                                    feedback.c.id.desc())).mappings()]
    for r in rows:
        r["organisation"] = names.get(r["ods"], r["ods"])
    return rows


def triage(engine: Engine, feedback_id: int, status: str, theme: str | None = None,
           ods: str | None = None, response: str | None = None) -> None:
    if status not in FEEDBACK_STATUSES:
        raise EngagementError(f"Status must be one of: {', '.join(FEEDBACK_STATUSES)}.")
    with engine.begin() as conn:
        row = conn.execute(select(feedback.c.status, feedback.c.response)
                           .where(feedback.c.id == feedback_id)).first()
        if row is None:
            raise EngagementError(f"There is no feedback item {feedback_id}.")
        if status not in TRANSITIONS[row.status]:
            raise EngagementError(f"A {STATUS_LABELS[row.status].lower()} item cannot be moved "
                                  f"to {STATUS_LABELS[status].lower()}.")
        response = (response or "").strip() or None
        if status in ("done", "wont-do") and not (response or row.response):
            raise EngagementError("Write a response before closing an item: users read it on "
                                  "'You said, we did'.")
        values = {"status": status, "theme": (theme or "").strip()[:64] or None}
        if ods is not None:
            values["ods"] = ods.strip().upper()[:16] or None
        if response is not None:
            values["response"] = response[:4000]
        conn.execute(update(feedback).where(feedback.c.id == feedback_id).values(**values))


def feedback_counts(engine: Engine) -> dict[str, list[tuple[str, int]]]:
    """What users ask for most: open and all items by theme, by kind, by status."""
    rows = inbox(engine)
    by_theme = Counter((r["theme"] or "not yet tagged") for r in rows)
    open_theme = Counter((r["theme"] or "not yet tagged") for r in rows
                         if r["status"] in ("new", "planned"))
    return {"theme": by_theme.most_common(), "open_theme": open_theme.most_common(),
            "kind": [(KIND_LABELS.get(k, k), n) for k, n in
                     Counter(r["kind"] for r in rows).most_common()],
            "status": [(STATUS_LABELS.get(s, s), sum(1 for r in rows if r["status"] == s))
                       for s in FEEDBACK_STATUSES]}


def you_said_we_did(engine: Engine) -> list[dict]:
    return [r for r in inbox(engine, status="done") if r["response"]]


# --------------------------------------------------------------------------- champions


def champions(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        names = dict(conn.execute(select(organisation.c.ods, organisation.c.name)).all())
        rows = [dict(r) for r in conn.execute(
            select(champion).order_by(champion.c.group_name, champion.c.name)).mappings()]
    for r in rows:
        r["organisation"] = names.get(r["ods"], r["ods"])
    return rows


def add_champion(engine: Engine, name: str, group_name: str, ods: str | None = None,
                 profession: str | None = None, username: str | None = None,
                 since: str | None = None, notes: str | None = None) -> int:
    name = (name or "").strip()
    if not name:
        raise EngagementError("Give the person's name.")
    if group_name not in GROUPS:
        raise EngagementError("Choose clinical champion or design group.")
    since = (since or "").strip() or date.today().isoformat()
    try:
        since = date.fromisoformat(since).isoformat()
    except ValueError:
        raise EngagementError("'Since' must be a date like 2026-06-01.") from None
    with engine.begin() as conn:
        return conn.execute(insert(champion).values(
            name=name[:200], group_name=group_name, ods=(ods or "").strip().upper() or None,
            profession=(profession or "").strip()[:64] or None,
            username=(username or "").strip()[:64] or None, since=since,
            notes=(notes or "").strip() or None)).inserted_primary_key[0]


# --------------------------------------------------------------------------- readiness


def save_assessment(engine: Engine, answers: dict[str, bool], taken_by: str | None,
                    taken_on: str | None = None, notes: str | None = None) -> int:
    readiness.score(answers)  # rejects unknown element ids
    taken_on = taken_on or date.today().isoformat()
    try:
        taken_on = date.fromisoformat(taken_on).isoformat()
    except ValueError:
        raise EngagementError("The date must be like 2026-06-01.") from None
    with engine.begin() as conn:
        return conn.execute(insert(readiness_assessment).values(
            taken_on=taken_on, taken_by=taken_by,
            answers=json.dumps({k: True for k, v in sorted(answers.items()) if v}),
            notes=(notes or "").strip() or None)).inserted_primary_key[0]


def assessments(engine: Engine) -> list[dict]:
    """Every assessment, oldest first, with its scores per theme."""
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(
            select(readiness_assessment).order_by(readiness_assessment.c.taken_on,
                                                  readiness_assessment.c.id)).mappings()]
    for r in rows:
        r["answers"] = json.loads(r["answers"])
        r["results"] = readiness.score(r["answers"])
    return rows


# --------------------------------------------------------------------------- examples

EXAMPLE_FEEDBACK = [
    # (kind, role, text, theme, status, response)
    ("missing", "clinician", ("I need to see the latest blood results from the hospital without "
                              "scrolling through every letter."), "results", "done",
     "Results now have their own tab, newest first, with the source organisation on each."),
    ("missing", "nurse", "Please show the medicines list from the GP on the first screen.",
     "medicines", "planned", None),
    ("wrong", "clinician", ("Search by date of birth did not find a patient whose name I "
                            "misspelled."), "finding patients", "done",
     "Search now matches on NHS number or date of birth with a similar-sounding surname."),
    ("idea", "social-worker", "Could care plans from the care home be visible to social workers?",
     "care plans", "new", None),
    ("missing", "allied-health", "Medicines changes made at discharge are hard to find.",
     "medicines", "new", None),
    ("wrong", "nurse", ("It takes too long to open a record from our system at the start of a "
                        "clinic."), "speed", "planned", None),
    ("missing", "clinician", "Show which results are still awaited, not only the finished ones.",
     "results", "new", None),
    ("praise", "clinician", "Seeing the crisis plan in A&E saved us an hour last night.", "care plans",
     "done", "Thank you: we shared this with the mental health trust's crisis team."),
    ("idea", "admin", "A short video on signing in with a smartcard would help new starters.",
     "training", "wont-do", "The trust's induction now covers it, so we are linking to theirs."),
    ("missing", "nurse", "Allergies should be at the top of every page.", "medicines", "new", None),
]


def seed_examples(engine: Engine, as_of: date | None = None) -> dict:
    """Illustrative feedback, two readiness assessments and a few champions, for a demo or a
    screenshot, when those tables are empty. Usernames and organisations come from staff_role."""
    from datetime import timedelta

    from ..governance.schema import staff_role

    as_of = as_of or date.today()
    out = {"feedback": 0, "assessments": 0, "champions": 0}
    with engine.begin() as conn:
        people = conn.execute(select(staff_role.c.username, staff_role.c.ods, staff_role.c.role)
                              .order_by(staff_role.c.username)).all()
        by_role: dict[str, list] = {}
        for u, o, r in people:
            by_role.setdefault(r, []).append((u, o))
        if not conn.execute(select(feedback.c.id).limit(1)).first():
            rows = []
            for i, (kind, role, text, theme, status, response) in enumerate(EXAMPLE_FEEDBACK):
                who = by_role.get(role) or [(None, None)]
                u, o = who[i % len(who)]
                rows.append({"created": f"{as_of - timedelta(days=60 - 5 * i)}T10:00:00.000000",
                             "username": u, "ods": o, "role": role, "page": "/patients",
                             "kind": kind, "text": text, "status": status, "theme": theme,
                             "response": response})
            conn.execute(insert(feedback), rows)
            out["feedback"] = len(rows)
        if not conn.execute(select(champion.c.id).limit(1)).first():
            rows = []
            for i, (role, group) in enumerate((("clinician", "clinical-champion"),
                                               ("nurse", "clinical-champion"),
                                               ("allied-health", "design-group"),
                                               ("social-worker", "design-group"))):
                if by_role.get(role):
                    u, o = by_role[role][0]
                    rows.append({"name": u.replace(".", " ").title(), "username": u, "ods": o,
                                 "profession": role.replace("-", " "), "group_name": group,
                                 "since": (as_of - timedelta(days=150 - 20 * i)).isoformat()})
            if rows:
                conn.execute(insert(champion), rows)
            out["champions"] = len(rows)
    if not assessments(engine):
        fw = readiness.FRAMEWORK
        first = {e.id: True for t in fw.themes for lv in t.levels[:1] for e in lv.elements}
        first.update({e.id: True for e in fw.theme("information-governance").levels[1].elements})
        second = dict(first)
        for tid, n in (("leadership", 3), ("information-governance", 3), ("partnerships", 2),
                       ("user-engagement", 2)):
            for lv in fw.theme(tid).levels[:n]:
                second.update({e.id: True for e in lv.elements})
        second[fw.theme("resourcing-skills").levels[1].elements[0].id] = True
        save_assessment(engine, first, "example", (as_of - timedelta(days=180)).isoformat(),
                        "Illustrative baseline assessment.")
        save_assessment(engine, second, "example", (as_of - timedelta(days=30)).isoformat(),
                        "Illustrative repeat assessment.")
        out["assessments"] = 2
    return out
