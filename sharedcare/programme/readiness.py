"""Readiness self-assessment for large-scale digital change in health and care.

Five themes (leadership and management; user engagement; information governance;
partnerships; resourcing and skills), each with maturity levels 1-5 made of 2-4 concrete
statements ("elements"), mapped to the success measures of NHS England's "What Good Looks
Like" framework, with a suggested next action at each level. The content lives in
``data/readiness-framework.json`` so it can be revised without code changes; element ids
(``"<theme>.<level><letter>"``, e.g. ``"partnerships.3a"``) are stable and are what answers
are keyed by.

Scoring rule: a theme's level is the highest L such that every element of levels 1..L is met.
A level counts only when all its elements are met, and nothing above an unmet level counts.

API::

    FRAMEWORK: Framework            # themes -> levels -> elements, plus WGLL measures
    element_ids() -> list[str]
    score(answers: dict[str, bool]) -> dict[theme_id, ThemeResult]
    weakest(results, n=2) -> list[theme_id]
    levels_for_chart(results) -> (axis names, levels)   # for charts.radar_chart
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FRAMEWORK_FILE = Path(__file__).parent / "data" / "readiness-framework.json"
MAX_LEVEL = 5


@dataclass(frozen=True)
class Element:
    id: str
    statement: str


@dataclass(frozen=True)
class Level:
    level: int
    label: str  # Initial, Developing, Established, Embedded, Leading
    elements: tuple[Element, ...]
    next_action: str  # suggested next step for a theme that has reached this level


@dataclass(frozen=True)
class SuccessMeasure:
    id: str
    name: str
    summary: str


@dataclass(frozen=True)
class Theme:
    id: str
    name: str
    wgll: tuple[SuccessMeasure, ...]  # "What Good Looks Like" success measures it supports
    starting_action: str  # suggested next step for a theme at level 0
    levels: tuple[Level, ...]  # levels[0] is level 1

    def level(self, n: int) -> Level:
        return self.levels[n - 1]

    def next_action(self, level: int) -> str:
        return self.starting_action if level == 0 else self.level(level).next_action


@dataclass(frozen=True)
class Framework:
    version: str
    title: str
    themes: tuple[Theme, ...]
    success_measures: tuple[SuccessMeasure, ...]

    def theme(self, theme_id: str) -> Theme:
        for t in self.themes:
            if t.id == theme_id:
                return t
        raise KeyError(theme_id)


@dataclass(frozen=True)
class ThemeResult:
    theme_id: str
    level: int  # 0..5
    met: tuple[str, ...]  # every met element id of the theme, in framework order
    unmet_next: tuple[str, ...]  # unmet element ids of level+1 (empty at level 5)
    next_actions: tuple[str, ...]  # suggested action for this level, then unmet statements
    met_above: tuple[str, ...]  # met elements above level+1: strengths that do not count yet


def load_framework(path: str | Path = FRAMEWORK_FILE) -> Framework:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    measures = {
        m["id"]: SuccessMeasure(m["id"], m["name"], m["summary"])
        for m in data["wgll_success_measures"]
    }
    labels = {int(k): v for k, v in data["levels"].items()}
    themes, seen = [], set()
    for t in data["themes"]:
        levels = []
        for lv in t["levels"]:
            elements = tuple(Element(e["id"], e["statement"]) for e in lv["elements"])
            for e in elements:
                if e.id in seen:
                    raise ValueError(f"duplicate element id {e.id}")
                seen.add(e.id)
            levels.append(Level(lv["level"], labels[lv["level"]], elements, lv["next_action"]))
        if [lv.level for lv in levels] != list(range(1, MAX_LEVEL + 1)):
            raise ValueError(f"theme {t['id']} must have levels 1..{MAX_LEVEL} in order")
        themes.append(
            Theme(
                t["id"],
                t["name"],
                tuple(measures[m] for m in t["wgll"]),
                t["starting_action"],
                tuple(levels),
            )
        )
    return Framework(data["version"], data["title"], tuple(themes), tuple(measures.values()))


FRAMEWORK = load_framework()


def element_ids(framework: Framework = FRAMEWORK) -> list[str]:
    return [e.id for t in framework.themes for lv in t.levels for e in lv.elements]


def score(answers: dict[str, bool], framework: Framework = FRAMEWORK) -> dict[str, ThemeResult]:
    """Score every theme. ``answers`` maps element id -> met?; a missing id counts as not met.

    Raises ValueError for ids the framework does not have (a typo would otherwise pass silently).
    """
    known = set(element_ids(framework))
    unknown = sorted(set(answers) - known)
    if unknown:
        raise ValueError(f"unknown readiness element ids: {unknown}")
    results = {}
    for theme in framework.themes:
        met = tuple(e.id for lv in theme.levels for e in lv.elements if answers.get(e.id))
        level = 0
        for lv in theme.levels:
            if all(answers.get(e.id) for e in lv.elements):
                level = lv.level
            else:
                break
        if level < MAX_LEVEL:
            nxt = theme.level(level + 1)
            unmet = tuple(e for e in nxt.elements if not answers.get(e.id))
            above = tuple(
                e.id for lv in theme.levels[level + 1 :] for e in lv.elements if answers.get(e.id)
            )
        else:
            unmet, above = (), ()
        results[theme.id] = ThemeResult(
            theme_id=theme.id,
            level=level,
            met=met,
            unmet_next=tuple(e.id for e in unmet),
            next_actions=(theme.next_action(level),) + tuple(e.statement for e in unmet),
            met_above=above,
        )
    return results


def weakest(
    results: dict[str, ThemeResult], n: int = 2, framework: Framework = FRAMEWORK
) -> list[str]:
    """The ``n`` themes to work on first: lowest level, then fewest elements met, then framework order."""
    order = {t.id: i for i, t in enumerate(framework.themes)}
    ranked = sorted(
        results.values(), key=lambda r: (r.level, len(r.met), order.get(r.theme_id, 99))
    )
    return [r.theme_id for r in ranked[:n]]


def levels_for_chart(
    results: dict[str, ThemeResult], framework: Framework = FRAMEWORK
) -> tuple[list[str], list[float]]:
    """(theme names, levels) in framework order, ready for ``charts.radar_chart``."""
    themes = [t for t in framework.themes if t.id in results]
    return [t.name for t in themes], [float(results[t.id].level) for t in themes]
