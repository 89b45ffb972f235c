"""The case-study library: places and projects implementing new technology, to learn from.

Seeded on first use from ``data/case-studies.json`` (illustrative composites, labelled as such);
searchable by text and readiness theme; shown on a map of England.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine, func, insert, select

from . import map as pmap
from .readiness import FRAMEWORK
from .schema import case_study

SEED_FILE = Path(__file__).parent / "data" / "case-studies.json"
STATUSES = ("planned", "in-progress", "live", "evaluated", "stopped")
STATUS_LABELS = {"planned": "Planned", "in-progress": "In progress", "live": "Live",
                 "evaluated": "Evaluated", "stopped": "Stopped"}
# The partner map's marker set (map.STATUSES) has no case-study statuses of its own: the
# nearest ones are used, and the page says which is which.
MAP_STATUS = {"live": "live", "evaluated": "live", "in-progress": "onboarding",
              "planned": "onboarding", "stopped": "paused"}
ILLUSTRATIVE = "illustrative"


def seed_note() -> str:
    return json.loads(SEED_FILE.read_text(encoding="utf-8"))["note"]


def ensure_seeded(engine: Engine) -> int:
    """Load the illustrative case studies when the library is empty. Returns rows added."""
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(case_study)).scalar_one():
            return 0
        rows = []
        for c in json.loads(SEED_FILE.read_text(encoding="utf-8"))["case_studies"]:
            loc = pmap.approximate_location(c.get("postcode") or "")
            rows.append({k: c.get(k) for k in ("title", "place", "organisation", "technology",
                                               "themes", "status", "summary")}
                        | {"lat": loc[0] if loc else None, "lon": loc[1] if loc else None})
        conn.execute(insert(case_study), rows)
        return len(rows)


def theme_names() -> dict[str, str]:
    return {t.id: t.name for t in FRAMEWORK.themes}


def search(engine: Engine, text: str | None = None, theme: str | None = None,
           status: str | None = None) -> list[dict]:
    ensure_seeded(engine)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(case_study).order_by(case_study.c.title))
                .mappings()]
    words = (text or "").lower().split()
    names = theme_names()
    out = []
    for r in rows:
        r["theme_ids"] = (r["themes"] or "").split()
        r["theme_names"] = [names.get(t, t) for t in r["theme_ids"]]
        hay = " ".join(str(r[k] or "") for k in ("title", "place", "organisation", "technology",
                                                 "summary", "status")).lower()
        hay += " " + " ".join(r["theme_names"]).lower()
        if words and not all(w in hay for w in words):
            continue
        if theme and theme not in r["theme_ids"]:
            continue
        if status and r["status"] != status:
            continue
        out.append(r)
    return out


def add(engine: Engine, title: str, place: str, organisation: str | None, technology: str | None,
        themes: list[str], status: str, summary: str | None, postcode: str | None = None) -> int:
    title, place = (title or "").strip(), (place or "").strip()
    if not title or not place:
        raise ValueError("A case study needs a title and a place.")
    if status not in STATUSES:
        raise ValueError(f"Status must be one of: {', '.join(STATUSES)}.")
    unknown = [t for t in themes if t not in theme_names()]
    if unknown:
        raise ValueError(f"Unknown themes: {', '.join(unknown)}.")
    loc = pmap.approximate_location(postcode or "") if postcode else None
    with engine.begin() as conn:
        return conn.execute(insert(case_study).values(
            title=title[:200], place=place[:200], organisation=organisation, technology=technology,
            themes=" ".join(themes), status=status, summary=summary,
            lat=loc[0] if loc else None, lon=loc[1] if loc else None)).inserted_primary_key[0]


def map_points(rows: list[dict]) -> list[pmap.MapPoint]:
    return [pmap.MapPoint(r["title"], r["lat"], r["lon"], MAP_STATUS.get(r["status"], "onboarding"),
                          f"case study, {r['place']}", f"#case-{r['id']}")
            for r in rows if r["lat"] is not None and r["lon"] is not None]
