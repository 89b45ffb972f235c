"""Names, not codes, wherever a person reads.

The governance module explains its decisions with ODS codes, role codes, data-category codes and
resource references ("RM3 has no legitimate relationship...", "open encounter at R0A
(Encounter/beb5...)"): exact, and right for the API and the audit trail. Pages show the same
sentences with organisation names (the code kept in a tooltip), roles and categories in words,
and without internal ids. Organisation names are directory data.
"""

from __future__ import annotations

import re

from markupsafe import Markup, escape
from sqlalchemy import select

from ..governance.schema import organisation

ROLE_WORDS = {
    "clinician": "clinician", "nurse": "nurse", "allied-health": "allied health professional",
    "social-worker": "social worker", "admin": "admin and clerical", "ig-lead": "IG lead",
    "programme-lead": "programme lead", "sysadmin": "system administrator",
    "patient": "patient", "system": "partner system",
}
CATEGORY_WORDS = {
    "gp-summary": "GP summary", "care-plans": "care plans", "mental-health": "mental health",
    "social-care": "social care", "care-home-notes": "care home notes",
    "demographics": "demographics", "encounters": "encounters", "results": "results",
    "documents": "documents",
}
PURPOSE_WORDS = {"direct-care": "direct care", "planning": "planning", "research": "research"}
# "(Encounter/9a53...)", "(EpisodeOfCare/...)": internal ids, never for a person to read
_REFERENCE = re.compile(r"\s*\((?:[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(?:,\s*)?)+\)")
_ROLE = re.compile(r"\bthe ([a-z][a-z\-]+) role\b")
_CATEGORY = re.compile(r"(?<![\w/-])(" + "|".join(
    re.escape(c) for c in CATEGORY_WORDS if "-" in c) + r")(?![\w-])")

def org_names(engine) -> dict[str, str]:
    """ODS code -> organisation name (directory data: a few hundred rows at most, read per
    page so a new or renamed organisation shows at once)."""
    with engine.connect() as conn:
        return {o: n for o, n in conn.execute(select(organisation.c.ods, organisation.c.name))}


def org_html(code: str | None, names: dict[str, str]) -> Markup:
    """An organisation's name, with its ODS code in a tooltip; the code if no name is known."""
    if not code:
        return Markup("")
    name = names.get(code)
    if not name:
        return escape(code)
    return Markup('<span class="sc-org" title="ODS code {}">{}</span>').format(code, name)


def _codes_pattern(names: dict[str, str]) -> re.Pattern | None:
    codes = sorted((c for c in names if c), key=len, reverse=True)
    if not codes:
        return None
    return re.compile(r"(?<![\w/-])(" + "|".join(re.escape(c) for c in codes) + r")(?![\w-])")


def humanise(text: str | None, names: dict[str, str]) -> Markup:
    """A governance reason as a person reads it: names for ODS codes (code in a tooltip), roles
    and categories in words, resource ids dropped. Escaped; safe to put in a page."""
    if not text:
        return Markup("")
    t = _REFERENCE.sub("", str(text))
    t = _ROLE.sub(lambda m: f"the {ROLE_WORDS.get(m.group(1), m.group(1))} role", t)
    t = _CATEGORY.sub(lambda m: CATEGORY_WORDS[m.group(1)], t)
    pattern = _codes_pattern(names)
    if pattern is None:
        return escape(t)
    out, last = [], 0
    for m in pattern.finditer(t):
        out.append(escape(t[last:m.start()]))
        out.append(org_html(m.group(1), names))
        last = m.end()
    out.append(escape(t[last:]))
    return Markup("").join(out)


def plain(text: str | None, names: dict[str, str]) -> str:
    """humanise() without the markup (for titles, CSV notes, plain text)."""
    return re.sub(r"<[^>]+>", "", str(humanise(text, names))).replace("&#39;", "'") \
        .replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&#34;", '"')


# Column headings in words (tables built for CSV use snake_case names; pages never show them).
COLUMN_WORDS = {
    "ods": "ODS code", "organisation": "Organisation", "kind": "Kind of organisation",
    "go_live": "Go-live date", "left_on": "Left on", "eligible_staff": "Eligible staff",
    "used_this_month": "Used it this month", "percent_used_this_month": "% of eligible staff "
    "who used it this month", "active_users": "Active users", "regular_users": "Regular users",
    "views": "Record views", "week_starting": "Week starting", "month": "Month",
    "registered_population": "Registered population",
    "views_per_1000_population": "Views per 1,000 registered population",
    "resources_contributed": "Records contributed", "contributes": "Contributes",
    "views_records": "Views records", "first_view": "First view",
    "regular_use_from": "Regular use from", "days_from_go_live": "Days from go-live",
    "break_glass": "Break-glass events", "break_glass_per_1000_views": "Break-glass per 1,000 views",
    "declared_relationships": "Declared relationships",
    "declared_per_1000_views": "Declared relationships per 1,000 views",
    "how_it_is_counted": "How it is counted", "measure": "Measure", "value": "Value",
    "active_agreements": "Active agreements", "other_agreements": "Other agreements",
    "signed_active_agreement": "Signed an active agreement", "resources": "Records",
    "feed": "Feed", "views_this_month": "Views this month", "map_status": "Status on the map",
    "contributing_organisations": "Contributing organisations",
    "viewing_organisations": "Viewing organisations", "gp_practice": "GP practice",
    "practice": "GP practice", "age_band": "Age band", "neighbourhood": "Neighbourhood",
    "people": "People", "role": "Role", "status": "Status", "category": "Category",
    "postcode": "Postcode", "taken_on": "Taken on", "taken_by": "Taken by",
}


def column_label(name: str | None) -> str:
    """'active_users' -> 'Active users'; 'ods' -> 'ODS code'; unknown names in plain words."""
    if not name:
        return ""
    if name in COLUMN_WORDS:
        return COLUMN_WORDS[name]
    words = name.replace("_", " ").replace("-", " ").strip()
    words = re.sub(r"\b1000\b", "1,000", words)
    words = re.sub(r"\b(gp|ods|nhs|ig|ltc|cpr|eol)\b", lambda m: m.group(1).upper(), words,
                   flags=re.I)
    return sentence(words)


def sentence(text: str | None) -> str:
    """First letter upper case, the rest as written ('GP summary', not jinja's 'Gp summary')."""
    text = str(text or "")
    return text[:1].upper() + text[1:]


def nice_time(value: str | None) -> str:
    """'2026-03-31T14:05:09.123' -> '31 March 2026 at 14:05' (UTC, as recorded)."""
    from datetime import datetime

    if not value:
        return ""
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if len(str(value)) <= 10:
        return f"{dt.day} {dt:%B %Y}"
    return f"{dt.day} {dt:%B %Y} at {dt:%H:%M}"


_ENTITY_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/\$[a-z\-]+|/_history/\d+)?$")


def entity_words(entity: str | None) -> str:
    """An audit event's entity as a person reads it: 'Patient/<id>/$everything' -> 'Whole
    record', 'Observation/<id>' -> 'Observation', 'Observation?code' -> 'Search of
    Observation (code)'. The exact entity stays in the CSV, the JSON and a tooltip."""
    if not entity:
        return ""
    m = _ENTITY_REF.match(entity)
    if m:
        rtype, _rid, op = m.groups()
        if op == "/$everything":
            return "Whole record"
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", rtype)
        return sentence(words.lower()) + (" (earlier version)" if op and "_history" in op
                                          else f" ({op[2:]})" if op else "")
    if "?" in entity and re.match(r"^[A-Z][A-Za-z]+\?", entity):
        rtype, _, params = entity.partition("?")
        return f"Search of {re.sub(r'(?<=[a-z])(?=[A-Z])', ' ', rtype).lower()} ({params})"
    return entity
