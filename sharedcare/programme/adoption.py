"""Adoption, computed from the audit trail: figures a programme lead can check by hand.

Every figure is a count over ``audit_event`` rows with plain definitions (also shown on the page
and in the ``summary`` table):

record view
    an audit event with ``outcome = '0'`` (allowed), ``action`` in ``read | everything | search``,
    a ``patient_id`` (it was about one patient) and a ``username`` (a person, not a partner
    system). Refused attempts (outcome '4') are not views.
week
    Monday to Sunday, labelled by its Monday (``2026-11-16``). Every week of the period is listed,
    a week with no use as 0.
month
    calendar month, ``2026-11``.
active user
    a person with at least one record view in the period. By organisation and role a person
    counts once in every (organisation, role) they viewed in, so the rows of the by-role table
    can add up to more than the total (a nurse who is also an admin counts in both rows).
regular user
    a person with views in at least 3 of the 4 calendar weeks ending with the week that holds
    the period's last day ("3 of the last 4 weeks"). By organisation and role, only views in that
    (organisation, role) count.
eligible staff
    the distinct people holding a clinical role (clinician, nurse, allied-health, social-worker,
    admin: the roles that can open a record) at the organisation in ``staff_role``.
used this month
    eligible staff with at least one view at that organisation in the calendar month holding the
    period's last day. Organisations that left before that month show no share ("left").
views per 1,000 registered population
    views / (sum of ``registered_population`` of all GP practices) x 1,000.
contributing organisation
    one that controls at least one stored (not deleted) resource (``resource.source_org``);
    viewing organisation: one whose staff made at least one view in the period.
regular use after go-live
    the first day on which any person at the organisation made a view that gave them views in
    3 distinct weeks of a 4-week window (that week and the 3 before it); days from ``go_live``.
break-glass and declared-relationship rates
    allowed ``break-glass`` events, and ``declare-relationship`` events (the demo history also
    writes ``declared-relationship``), per 1,000 record views, in the same period and filters.

Public API: ``Filters``, ``filters_from(params, today)``, ``compute(engine, filters) ->
Adoption`` (``.tables``: name -> ``Table``), ``Table.csv()``, ``Table.as_dicts()``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlalchemy import Engine, and_, func, or_, select

from ..governance.schema import audit_event, organisation, staff, staff_role
from ..store.schema import resource
from ..web.csvsafe import csv_text

VIEW_ACTIONS = ("read", "everything", "search")
BREAK_GLASS_ACTIONS = ("break-glass",)
DECLARED_ACTIONS = ("declare-relationship", "declared-relationship")
CLINICAL_ROLES = ("clinician", "nurse", "allied-health", "social-worker", "admin")
REGULAR_WEEKS, REGULAR_WINDOW = 3, 4
DEFAULT_WEEKS = 26


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filters:
    start: date  # first day, inclusive
    end: date  # last day, inclusive
    ods: str | None = None
    role: str | None = None

    def params(self) -> dict[str, str]:
        out = {"from": self.start.isoformat(), "to": self.end.isoformat()}
        if self.ods:
            out["org"] = self.ods
        if self.role:
            out["role"] = self.role
        return out


def _parse_date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def filters_from(params, today: date | None = None) -> Filters:
    """GET parameters ``from``, ``to`` (YYYY-MM-DD), ``weeks`` (shortcut: the last N weeks),
    ``org`` (ODS code) and ``role``. Defaults: the last 26 weeks to today. Bad dates fall back
    to the defaults; a reversed range is swapped."""
    today = today or date.today()
    end = _parse_date(params.get("to")) or today
    weeks = params.get("weeks")
    start = _parse_date(params.get("from"))
    if start is None:
        n = int(weeks) if weeks and str(weeks).isdigit() and 0 < int(weeks) <= 520 else DEFAULT_WEEKS
        start = monday(end) - timedelta(weeks=n - 1)
    if start > end:
        start, end = end, start
    return Filters(start, end, (params.get("org") or "").strip().upper() or None,
                   (params.get("role") or "").strip() or None)


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""

    def as_dicts(self) -> list[dict]:
        return [dict(zip(self.columns, r)) for r in self.rows]

    def csv(self) -> str:
        return csv_text(self.columns, self.rows)  # formula-safe (web/csvsafe.py)

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "note": self.note,
                "columns": self.columns, "rows": self.as_dicts()}


@dataclass
class Adoption:
    filters: Filters
    tables: dict[str, Table]
    figures: dict[str, float | int | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"filters": self.filters.params(), "figures": self.figures,
                "tables": {k: t.to_json() for k, t in self.tables.items()}}


# --------------------------------------------------------------------------- helpers


def monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def weeks_between(start: date, end: date) -> list[date]:
    out, w = [], monday(start)
    while w <= end:
        out.append(w)
        w += timedelta(weeks=1)
    return out


def months_between(start: date, end: date) -> list[str]:
    out, y, m = [], start.year, start.month
    while (y, m) <= (end.year, end.month):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def per_1000(n: int, d: int | None) -> float | None:
    return round(n * 1000 / d, 1) if d else None


def pct(n: int, d: int | None) -> float | None:
    return round(n * 100 / d, 1) if d else None


@dataclass(frozen=True)
class _Day:
    day: date
    username: str
    ods: str
    role: str
    action: str
    n: int


def _events(engine: Engine, f: Filters, start: date | None, actions) -> list[_Day]:
    """Allowed events per day/person/org/role/action, in SQL (both backends)."""
    day = func.substr(audit_event.c.recorded, 1, 10).label("day")
    views = and_(audit_event.c.action.in_(VIEW_ACTIONS), audit_event.c.patient_id.is_not(None))
    others = audit_event.c.action.in_([a for a in actions if a not in VIEW_ACTIONS])
    conds = [audit_event.c.outcome == "0", audit_event.c.username.is_not(None),
             audit_event.c.recorded < (f.end + timedelta(days=1)).isoformat(),
             or_(views, others) if any(a not in VIEW_ACTIONS for a in actions) else views]
    if start is not None:
        conds.append(audit_event.c.recorded >= start.isoformat())
    if f.ods:
        conds.append(audit_event.c.ods == f.ods)
    if f.role:
        conds.append(audit_event.c.role == f.role)
    q = (select(day, audit_event.c.username, audit_event.c.ods, audit_event.c.role,
                audit_event.c.action, func.count().label("n"))
         .where(*conds)
         .group_by(day, audit_event.c.username, audit_event.c.ods, audit_event.c.role,
                   audit_event.c.action))
    with engine.connect() as conn:
        return [_Day(date.fromisoformat(r.day), r.username, r.ods or "", r.role or "", r.action,
                     int(r.n)) for r in conn.execute(q)]


def _organisations(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(organisation).order_by(organisation.c.name))
                .mappings()]


def _eligible(engine: Engine, role: str | None) -> dict[str, set[str]]:
    roles = [role] if role else list(CLINICAL_ROLES)
    roles = [r for r in roles if r in CLINICAL_ROLES]
    out: dict[str, set[str]] = defaultdict(set)
    with engine.connect() as conn:
        for ods, username in conn.execute(
                select(staff_role.c.ods, staff_role.c.username)
                .join(staff, staff.c.username == staff_role.c.username)
                .where(staff_role.c.role.in_(roles), staff.c.active.is_(True))):
            out[ods].add(username)
    return out


def contributed(engine: Engine) -> dict[str, int]:
    """Stored resources per controlling organisation (metadata only, no patient data)."""
    with engine.connect() as conn:
        return {ods: int(n) for ods, n in conn.execute(
            select(resource.c.source_org, func.count()).where(
                resource.c.deleted.is_(False), resource.c.source_org.is_not(None))
            .group_by(resource.c.source_org))}


def regular_users(view_days: list[_Day], end: date, key=lambda e: e.username) -> set:
    """Keys (default: usernames) with views in >= 3 of the 4 weeks ending with end's week."""
    last = monday(end)
    first = last - timedelta(weeks=REGULAR_WINDOW - 1)
    weeks: dict = defaultdict(set)
    for e in view_days:
        w = monday(e.day)
        if first <= w <= last and e.day <= end:
            weeks[key(e)].add(w)
    return {k for k, ws in weeks.items() if len(ws) >= REGULAR_WEEKS}


def regular_from(view_days: list[_Day]) -> date | None:
    """First day a person (any of these rows) reached views in 3 distinct weeks of a 4-week
    window ending with that day's week."""
    by_user: dict[str, list[date]] = defaultdict(list)
    for e in view_days:
        by_user[e.username].append(e.day)
    best = None
    for days in by_user.values():
        seen: set[date] = set()
        for d in sorted(set(days)):
            w = monday(d)
            seen.add(w)
            window = {w - timedelta(weeks=i) for i in range(REGULAR_WINDOW)}
            if len(seen & window) >= REGULAR_WEEKS:
                best = d if best is None or d < best else best
                break
    return best


# --------------------------------------------------------------------------- the dashboard


def compute(engine: Engine, f: Filters) -> Adoption:
    orgs = _organisations(engine)
    names = {o["ods"]: o["name"] for o in orgs}
    events = _events(engine, f, f.start, VIEW_ACTIONS + BREAK_GLASS_ACTIONS + DECLARED_ACTIONS)
    views = [e for e in events if e.action in VIEW_ACTIONS]
    glass = [e for e in events if e.action in BREAK_GLASS_ACTIONS]
    declared = [e for e in events if e.action in DECLARED_ACTIONS]
    total_views = sum(e.n for e in views)
    # every view up to the period's end: regular use looks back 4 weeks whatever the period
    history = _events(engine, f, None, VIEW_ACTIONS)
    tables: dict[str, Table] = {}

    # -- views per week and month (every week/month listed, 0 when unused)
    by_week: dict[date, int] = defaultdict(int)
    users_week: dict[date, set] = defaultdict(set)
    by_month: dict[str, int] = defaultdict(int)
    users_month: dict[str, set] = defaultdict(set)
    for e in views:
        w, m = monday(e.day), e.day.isoformat()[:7]
        by_week[w] += e.n
        users_week[w].add(e.username)
        by_month[m] += e.n
        users_month[m].add(e.username)
    tables["views_by_week"] = Table(
        "views_by_week", "Record views per week", ["week_starting", "views", "active_users"],
        [[w.isoformat(), by_week.get(w, 0), len(users_week.get(w, ()))]
         for w in weeks_between(f.start, f.end)],
        "Weeks run Monday to Sunday; a week with no use shows 0.")
    population = sum(o["registered_population"] or 0 for o in orgs if o["kind"] == "gp-practice")
    tables["views_by_month"] = Table(
        "views_by_month", "Record views per month",
        ["month", "views", "active_users", "registered_population", "views_per_1000_population"],
        [[m, by_month.get(m, 0), len(users_month.get(m, ())), population,
          per_1000(by_month.get(m, 0), population)] for m in months_between(f.start, f.end)],
        "Registered population: the sum of all GP practices' registered lists.")

    # -- active and regular users by organisation and role
    groups: dict[tuple[str, str], dict] = {}
    for e in views:
        g = groups.setdefault((e.ods, e.role), {"users": set(), "views": 0})
        g["users"].add(e.username)
        g["views"] += e.n
    reg_by_group: dict[tuple, set] = defaultdict(set)
    for ods, role, username in regular_users(history, f.end,
                                             key=lambda e: (e.ods, e.role, e.username)):
        reg_by_group[(ods, role)].add(username)
    tables["users_by_org_role"] = Table(
        "users_by_org_role", "Active and regular users by organisation and role",
        ["ods", "organisation", "role", "active_users", "regular_users", "views"],
        [[ods, names.get(ods, ods), role, len(g["users"]), len(reg_by_group.get((ods, role), ())),
          g["views"]] for (ods, role), g in sorted(groups.items(),
                                                   key=lambda kv: (names.get(kv[0][0], kv[0][0]),
                                                                   kv[0][1]))],
        "A person counts once in each organisation and role they viewed records in.")

    # -- by organisation: active, regular, share of eligible staff this month
    month_start = f.end.replace(day=1)
    eligible = _eligible(engine, f.role)
    used_month: dict[str, set] = defaultdict(set)
    for e in history:  # month to date, even where the month starts before the period
        if e.day >= month_start and e.role in CLINICAL_ROLES:
            used_month[e.ods].add(e.username)
    active_by_org: dict[str, set] = defaultdict(set)
    views_by_org: dict[str, int] = defaultdict(int)
    for e in views:
        active_by_org[e.ods].add(e.username)
        views_by_org[e.ods] += e.n
    regular_by_org: dict[str, set] = defaultdict(set)
    for ods, username in regular_users(history, f.end, key=lambda e: (e.ods, e.username)):
        regular_by_org[ods].add(username)
    rows = []
    for o in orgs:
        ods = o["ods"]
        if f.ods and ods != f.ods:
            continue
        left = o["left_on"]
        staff_n = len(eligible.get(ods, ()))
        used = len(used_month.get(ods, set()) & eligible.get(ods, set()))
        gone = bool(left and left < month_start.isoformat())
        rows.append([ods, o["name"], o["kind"], o["go_live"], left, staff_n, used,
                     None if gone else pct(used, staff_n), len(active_by_org.get(ods, ())),
                     len(regular_by_org.get(ods, ())), views_by_org.get(ods, 0),
                     _org_status(o, f.end, staff_n, used)])
    tables["users_by_org"] = Table(
        "users_by_org", "Use by organisation",
        ["ods", "organisation", "kind", "go_live", "left_on", "eligible_staff",
         "used_this_month", "percent_used_this_month", "active_users", "regular_users", "views",
         "status"], rows,
        f"This month: {month_start:%B %Y} up to {f.end:%-d %B}. Eligible staff: people with a "
        "clinical role at the organisation.")

    # -- contributing vs viewing
    contrib = contributed(engine)
    crow = []
    for o in orgs:
        ods = o["ods"]
        if f.ods and ods != f.ods:
            continue
        c, v = contrib.get(ods, 0), views_by_org.get(ods, 0)
        crow.append([ods, o["name"], c, v, "yes" if c else "no", "yes" if v else "no",
                     {(True, True): "contributes and views", (True, False): "contributes only",
                      (False, True): "views only", (False, False): "neither"}[(bool(c), bool(v))]])
    tables["contributing_viewing"] = Table(
        "contributing_viewing", "Contributing and viewing organisations",
        ["ods", "organisation", "resources_contributed", "views", "contributes", "views_records",
         "category"], crow,
        "Resources contributed: stored resources the organisation controls (any date). "
        "Views: in the period.")

    # -- go-live to regular use (all history up to the period's end)
    grow = []
    for o in orgs:
        ods = o["ods"]
        if f.ods and ods != f.ods:
            continue
        mine = [e for e in history if e.ods == ods]
        first = min((e.day for e in mine), default=None)
        reg = regular_from(mine)
        live = _parse_date(o["go_live"])
        grow.append([ods, o["name"], o["go_live"], o["left_on"],
                     first.isoformat() if first else None, reg.isoformat() if reg else None,
                     (reg - live).days if reg and live else None])
    tables["go_live_to_regular_use"] = Table(
        "go_live_to_regular_use", "Time from go-live to regular use",
        ["ods", "organisation", "go_live", "left_on", "first_view", "regular_use_from",
         "days_from_go_live"], grow,
        "Regular use from: the first day someone there had views in 3 weeks of a 4-week window.")

    # -- break-glass and declared relationships per 1,000 views
    bg_org: dict[str, int] = defaultdict(int)
    dr_org: dict[str, int] = defaultdict(int)
    for e in glass:
        bg_org[e.ods] += e.n
    for e in declared:
        dr_org[e.ods] += e.n
    rrows = []
    for ods in sorted(set(views_by_org) | set(bg_org) | set(dr_org), key=lambda o: names.get(o, o)):
        v = views_by_org.get(ods, 0)
        rrows.append([ods, names.get(ods, ods), v, bg_org.get(ods, 0), per_1000(bg_org.get(ods, 0), v),
                      dr_org.get(ods, 0), per_1000(dr_org.get(ods, 0), v)])
    total_bg, total_dr = sum(bg_org.values()), sum(dr_org.values())
    rrows.append(["", "All organisations", total_views, total_bg, per_1000(total_bg, total_views),
                  total_dr, per_1000(total_dr, total_views)])
    tables["break_glass_declared"] = Table(
        "break_glass_declared", "Break-glass and declared relationships per 1,000 views",
        ["ods", "organisation", "views", "break_glass", "break_glass_per_1000_views",
         "declared_relationships", "declared_per_1000_views"], rrows)

    # -- summary, with how each figure is computed
    all_users = {e.username for e in views}
    reg_all = regular_users(history, f.end)
    figures = {
        "views": total_views, "active_users": len(all_users), "regular_users": len(reg_all),
        "registered_population": population,
        "views_per_1000_population": per_1000(total_views, population),
        "break_glass": total_bg, "break_glass_per_1000_views": per_1000(total_bg, total_views),
        "declared_relationships": total_dr,
        "declared_per_1000_views": per_1000(total_dr, total_views),
        "contributing_organisations": sum(1 for r in crow if r[2]),
        "viewing_organisations": sum(1 for r in crow if r[3]),
    }
    explain = {
        "views": "allowed read/everything/search events about a patient by a person",
        "active_users": "people with at least one view in the period (each counted once)",
        "regular_users": "people with views in 3 of the 4 weeks ending with the period's last week",
        "registered_population": "sum of GP practices' registered populations",
        "views_per_1000_population": "views / registered population x 1,000",
        "break_glass": "allowed break-glass events",
        "break_glass_per_1000_views": "break-glass events / views x 1,000",
        "declared_relationships": "declared care relationships",
        "declared_per_1000_views": "declared relationships / views x 1,000",
        "contributing_organisations": "organisations controlling at least one stored resource",
        "viewing_organisations": "organisations whose staff viewed a record in the period",
    }
    tables["summary"] = Table("summary", "Summary", ["measure", "value", "how_it_is_counted"],
                              [[k, v, explain[k]] for k, v in figures.items()])
    ordered = {k: tables[k] for k in ("summary", "views_by_week", "views_by_month",
                                      "users_by_org", "users_by_org_role",
                                      "contributing_viewing", "go_live_to_regular_use",
                                      "break_glass_declared")}
    return Adoption(f, ordered, figures)


def _org_status(o: dict, end: date, eligible: int, used: int) -> str:
    if o["left_on"] and o["left_on"] <= end.isoformat():
        return "left"
    if not o["go_live"] or o["go_live"] > end.isoformat():
        return "not live"
    if eligible == 0:
        return "no eligible staff"
    if used == 0:
        return "not using"
    if used * 2 < eligible:
        return "low use"
    return "using"


def not_using(adoption: Adoption) -> list[dict]:
    """Live organisations (not left) whose eligible staff are not using it, or under half are."""
    return [r for r in adoption.tables["users_by_org"].as_dicts()
            if r["status"] in ("not using", "low use")]


# --------------------------------------------------------------------------- partner status


def partners(engine: Engine, today: date | None = None) -> Table:
    """Every organisation's standing for the partner map: agreements, feeds, use this month.

    Map status: ``paused`` if it left the programme or its only agreement is suspended;
    ``live`` if it signed an active agreement in force and its feed is live (it controls at least
    one stored resource); ``signed`` if signed but no feed yet; ``onboarding`` if an agreement
    it is party to is being signed or its go-live is in the future; else ``not-signed``.
    """
    from .agreements import list_agreements

    today = today or date.today()
    orgs = _organisations(engine)
    contrib = contributed(engine)
    month = Filters(today.replace(day=1), today)
    month_views: dict[str, int] = defaultdict(int)
    for e in _events(engine, month, month.start, VIEW_ACTIONS):
        month_views[e.ods] += e.n
    agreements = list_agreements(engine)
    rows = []
    for o in orgs:
        ods = o["ods"]
        mine = [(a, p) for a in agreements for p in a.parties if p.ods == ods]
        in_force = [a for a, p in mine if a.in_force and p.signed_by]
        signing = [a for a, p in mine if a.status in ("circulated", "signed")
                   or (a.status == "active" and not a.in_force)]
        suspended = [a for a, p in mine if a.status == "suspended"]
        feed = contrib.get(ods, 0)
        future = not o["go_live"] or o["go_live"] > today.isoformat()
        if o["left_on"] and o["left_on"] <= today.isoformat():
            status = "paused"
        elif in_force:
            status = "live" if feed else "signed"
        elif signing or (future and o["go_live"]):
            status = "onboarding"
        elif suspended:
            status = "paused"
        else:
            status = "not-signed"
        rows.append([ods, o["name"], o["kind"], o["postcode"], o["go_live"], o["left_on"],
                     ", ".join(a.id for a in in_force) or None,
                     ", ".join(f"{a.id} ({a.status})" for a in signing + suspended) or None,
                     "yes" if in_force else "no", feed, "live" if feed else "no feed",
                     month_views.get(ods, 0), status])
    return Table("partners", "Partners",
                 ["ods", "organisation", "kind", "postcode", "go_live", "left_on",
                  "active_agreements", "other_agreements", "signed_active_agreement",
                  "resources", "feed", "views_this_month", "map_status"], rows,
                 f"Views this month: {today:%B %Y} to {today:%-d %B}.")
