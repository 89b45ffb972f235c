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
