"""The programme lead's and IG lead's pages, each with a JSON API and CSV export behind it.

    /programme                       the four questions, answered (overview)
    /programme/adoption              adoption dashboard   .csv?table=...   /api/programme/adoption
    /programme/map                   partner map          .csv             /api/programme/partners
    /programme/agreements            sharing agreements   .csv             /api/programme/agreements
    /programme/agreements/new        draft an agreement
    /programme/agreements/{id}       one agreement: parties, signatures, workflow steps, history
    /transparency                    public transparency notice (no sign-in)
    /programme/feedback              feedback inbox and triage   .csv      /api/programme/feedback
    /programme/you-said-we-did       for all staff
    /programme/champions             clinical champions and design group   .csv
    /programme/readiness             readiness over time  .csv             /api/programme/readiness
    /programme/readiness/new         take the self-assessment
    /programme/case-studies          case-study library   .csv             /api/programme/case-studies
"""

from __future__ import annotations

from datetime import date
from functools import wraps
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..fhir.categories import CATEGORIES
from ..fhir.outcome import FHIRError
from ..governance.policy import PURPOSES, Access
from ..web.core import ROLE_LABELS, page, render
from . import adoption as adopt
from . import agreements as agr
from . import casestudies, charts, engagement, readiness
from . import map as pmap

LEAD = ("programme-lead",)
AGREEMENT_ROLES = ("programme-lead", "ig-lead")
STAFF = ("clinician", "nurse", "allied-health", "social-worker", "admin", "ig-lead",
         "programme-lead", "sysadmin")
CARE_SYSTEM_ICB = "E54000057"  # NHS Greater Manchester: the demo's care system


def _sc(request: Request):
    return request.app.state.sc


def _today(request: Request) -> date:
    """'Today' for the figures; tests may pin it with ?today= only outside production use."""
    return date.today()


def csv_response(text: str, name: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


def api(*roles: str):
    """JSON endpoint: Bearer token or session cookie; 401/403 as JSON."""

    def wrap(fn):
        @wraps(fn)
        async def endpoint(request: Request) -> Response:
            sc = _sc(request)
            try:
                access = sc.governance.authenticate(request)
            except FHIRError as e:
                return JSONResponse({"error": e.issues[0].diagnostics if e.issues else str(e)},
                                    e.status)
            if roles and access.role not in roles:
                return JSONResponse({"error": "this API is for " + ", ".join(
                    ROLE_LABELS.get(r, r) for r in roles)}, 403)
            return JSONResponse(await run_in_threadpool(fn, request, access))

        return endpoint

    return wrap


def _ctx(**kw) -> dict:
    return {"fmt": charts.fmt_number, "Markup": Markup, "role_labels": ROLE_LABELS, **kw}


# --------------------------------------------------------------------------- overview


@page(*LEAD)
def overview(request: Request, access: Access) -> Response:
    sc = _sc(request)
    today = _today(request)
    a = adopt.compute(sc.engine, adopt.filters_from({"weeks": "4"}, today))
    assessments = engagement.assessments(sc.engine)
    latest = assessments[-1] if assessments else None
    return render(request, "programme/overview.html", **_ctx(
        title="Programme overview", unsigned=agr.not_signed(sc.engine),
        not_using=adopt.not_using(a), figures=a.figures, today=today,
        counts=engagement.feedback_counts(sc.engine), latest=latest,
        framework=readiness.FRAMEWORK))


# --------------------------------------------------------------------------- adoption


def _adoption(request: Request):
    sc = _sc(request)
    f = adopt.filters_from(request.query_params, _today(request))
    return f, adopt.compute(sc.engine, f)


@page(*LEAD)
def adoption_page(request: Request, access: Access) -> Response:
    sc = _sc(request)
    f, a = _adoption(request)
    t = a.tables
    weekly = t["views_by_week"].rows
    monthly = t["views_by_month"].rows
    line = charts.line_chart(
        {"Record views": [(w[5:], v) for w, v, _u in weekly],
         "Active users": [(w[5:], u) for w, _v, u in weekly]},
        title="Record views and active users per week", y_label="Count",
        x_label="Week starting (month-day)", width=720, id_prefix="adoption-weekly")
    bars = charts.bar_chart({"Record views": [(m, v) for m, v, *_ in monthly]},
                            title="Record views per month", y_label="Views", width=720,
                            id_prefix="adoption-monthly")
    share_rows = [r for r in t["users_by_org"].as_dicts()
                  if r["percent_used_this_month"] is not None and r["eligible_staff"]]
    share = charts.bar_chart(
        {"% of eligible staff": [(r["organisation"], r["percent_used_this_month"])
                                 for r in share_rows]},
        title="Share of eligible staff who used it this month", y_label="Per cent",
        horizontal=True, width=720, id_prefix="adoption-share") if share_rows else ""
    with sc.engine.connect() as conn:
        from sqlalchemy import select

        from ..governance.schema import organisation
        orgs = conn.execute(select(organisation.c.ods, organisation.c.name)
                            .order_by(organisation.c.name)).all()
    query = urlencode(f.params())
    return render(request, "programme/adoption.html", **_ctx(
        title="Adoption", f=f, a=a, tables=t, orgs=orgs, roles=adopt.CLINICAL_ROLES, query=query,
        line=Markup(line), bars=Markup(bars), share=Markup(share),
        table_line=Markup(charts.as_table({"Record views": [(w, v) for w, v, _ in weekly],
                                           "Active users": [(w, u) for w, _, u in weekly]},
                                          caption="Record views and active users per week",
                                          x_label="Week starting"))))


@page(*LEAD)
def adoption_csv(request: Request, access: Access) -> Response:
    _f, a = _adoption(request)
    name = request.query_params.get("table") or "summary"
    if name not in a.tables:
        return render(request, "error.html", 404, title="No such table",
                      message="Tables: " + ", ".join(a.tables))
    return csv_response(a.tables[name].csv(), f"adoption-{name}")


@api(*LEAD)
def adoption_api(request: Request, access: Access) -> dict:
    _f, a = _adoption(request)
    return a.to_json()


# --------------------------------------------------------------------------- partner map


def _partner_points(table: adopt.Table) -> list[pmap.MapPoint]:
    out = []
    for r in table.as_dicts():
        loc = pmap.approximate_location(r["postcode"] or "")
        if loc:
            out.append(pmap.MapPoint(r["organisation"], loc[0], loc[1], r["map_status"],
                                     r["kind"].replace("-", " "), f"#org-{r['ods']}"))
    return _spread(out)


def _spread(points: list[pmap.MapPoint]) -> list[pmap.MapPoint]:
    """Postcode-area locations put many partners on one spot: fan them out in a small ring."""
    import math

    seen: dict[tuple, int] = {}
    for p in points:
        seen[(round(p.lat, 3), round(p.lon, 3))] = seen.get((round(p.lat, 3), round(p.lon, 3)),
                                                           0) + 1
    index: dict[tuple, int] = {}
    out = []
    for p in points:
        key = (round(p.lat, 3), round(p.lon, 3))
        n = seen[key]
        if n == 1:
            out.append(p)
            continue
        i = index[key] = index.get(key, -1) + 1
        angle = 2 * math.pi * i / n
        r = 0.012 + 0.002 * n
        out.append(pmap.MapPoint(p.label, p.lat + r * math.sin(angle),
                                 p.lon + r * 1.6 * math.cos(angle), p.status, p.kind, p.href))
    return out


@page(*LEAD)
def map_page(request: Request, access: Access) -> Response:
    sc = _sc(request)
    table = adopt.partners(sc.engine, _today(request))
    points = _partner_points(table)
    try:
        bounds = pmap.icb_bounds(CARE_SYSTEM_ICB, pad=0.08)
    except KeyError:
        bounds = None
    svg = pmap.render_partner_map(points, highlight_icb=CARE_SYSTEM_ICB, bounds=bounds,
                                  width=560, title="Partners of the shared care record",
                                  id_prefix="partner-map")
    return render(request, "programme/map.html", **_ctx(
        title="Partner map", svg=Markup(svg), partner_table=Markup(pmap.partner_table(
            points, caption="Partners on the map")), table=table,
        attribution=pmap.ATTRIBUTION, statuses=pmap.STATUSES))


@page(*LEAD)
def map_csv(request: Request, access: Access) -> Response:
    return csv_response(adopt.partners(_sc(request).engine, _today(request)).csv(), "partners")


@api(*LEAD)
def partners_api(request: Request, access: Access) -> dict:
    return adopt.partners(_sc(request).engine, _today(request)).to_json()


# --------------------------------------------------------------------------- agreements


@page(*AGREEMENT_ROLES)
def agreements_page(request: Request, access: Access) -> Response:
    sc = _sc(request)
    items = agr.list_agreements(sc.engine)
    status = request.query_params.get("status") or ""
    shown = [a for a in items if not status or a.status == status]
    mine = [a for a in items if a.status == "circulated" and access.role == "ig-lead"
            and any(p.ods == access.ods and not p.signed_by for p in a.parties)]
    return render(request, "programme/agreements.html", **_ctx(
        title="Sharing agreements", items=shown, shown_status=status, statuses=agr.STATUSES,
        to_sign=mine, unsigned=agr.not_signed(sc.engine),
        counts={s: sum(1 for a in items if a.status == s) for s in agr.STATUSES}))


def _agreements_table() -> adopt.Table:
    return adopt.Table("agreements", "Sharing agreements",
                       ["id", "title", "status", "purposes", "categories", "effective", "end",
                        "party_ods", "party", "signed_by", "signed_at", "plain_summary"], [])


@page(*AGREEMENT_ROLES)
def agreements_csv(request: Request, access: Access) -> Response:
    t = _agreements_table()
    for a in agr.list_agreements(_sc(request).engine):
        for p in a.parties:
            t.rows.append([a.id, a.title, a.status, " ".join(a.purposes), " ".join(a.categories),
                           a.effective, a.end, p.ods, p.name, p.signed_by, p.signed_at, a.plain])
    return csv_response(t.csv(), "agreements")


@api(*AGREEMENT_ROLES)
def agreements_api(request: Request, access: Access) -> dict:
    return {"agreements": [a.to_json() for a in agr.list_agreements(_sc(request).engine)],
            "not_signed": agr.not_signed(_sc(request).engine)}


def _org_choices(sc) -> list:
    from sqlalchemy import select

    from ..governance.schema import organisation
    with sc.engine.connect() as conn:
        return conn.execute(select(organisation.c.ods, organisation.c.name, organisation.c.kind)
                            .order_by(organisation.c.name)).all()


def _new_agreement(request: Request, access: Access, form=None) -> Response:
    sc = _sc(request)
    values = {"title": "", "parties": [], "purposes": ["direct-care"], "categories": [],
              "effective": "", "end": "", "summary": ""}
    error = None
    if form is not None:
        values = {"title": form.get("title") or "", "parties": form.getlist("parties"),
                  "purposes": form.getlist("purposes"), "categories": form.getlist("categories"),
                  "effective": form.get("effective") or "", "end": form.get("end") or "",
                  "summary": form.get("summary") or ""}
        try:
            new_id = agr.create_draft(sc.governance, access, **values)
            return RedirectResponse(f"/programme/agreements/{new_id}?done=draft", 303)
        except agr.AgreementError as e:
            error = str(e)
    return render(request, "programme/agreement_new.html", 400 if error else 200, **_ctx(
        title="Draft a sharing agreement", values=values, error=error, orgs=_org_choices(sc),
        purposes=PURPOSES, categories=CATEGORIES, purpose_labels=agr.PURPOSE_LABELS,
        category_labels=agr.CATEGORY_LABELS))


new_agreement = page(*AGREEMENT_ROLES)(_new_agreement)


def _agreement(request: Request, access: Access, form=None) -> Response:
    sc = _sc(request)
    aid = request.path_params["id"]
    error = None
    if form is not None:
        step = form.get("step") or ""
        fn = agr.STEPS.get(step)
        try:
            if fn is None:
                raise agr.AgreementError(f"Unknown step '{step}'.", 400)
            if step == "review":
                fn(sc.governance, access, aid, form.get("end"), form.get("note"))
            elif step in ("suspend", "reinstate", "expire", "withdraw"):
                fn(sc.governance, access, aid, form.get("note"))
            else:
                fn(sc.governance, access, aid)
            return RedirectResponse(f"/programme/agreements/{aid}?done={step}", 303)
        except agr.AgreementError as e:
            if e.status == 404:
                raise FHIRError.of(404, "not-found", str(e)) from None
            error = (str(e), e.status)
    try:
        a = agr.get(sc.engine, aid)
    except agr.AgreementError as e:
        raise FHIRError.of(404, "not-found", str(e)) from None
    return render(request, "programme/agreement.html", error[1] if error else 200, **_ctx(
        title=a.title, a=a, error=error[0] if error else None, steps=agr.next_steps(a, access),
        history=agr.history(sc.engine, aid), done=request.query_params.get("done"),
        category_labels=agr.CATEGORY_LABELS, purpose_labels=agr.PURPOSE_LABELS,
        long_date=agr.long_date))


agreement_page = page(*AGREEMENT_ROLES)(_agreement)


async def transparency(request: Request) -> Response:
    sc = _sc(request)
    items = await run_in_threadpool(agr.transparency, sc.engine)
    return render(request, "programme/transparency.html", access=None, **_ctx(
        title="How your health and care information is shared", items=items,
        category_labels=agr.CATEGORY_LABELS, purpose_why=agr.PURPOSE_WHY,
        purpose_labels=agr.PURPOSE_LABELS, long_date=agr.long_date, today=date.today()))


# --------------------------------------------------------------------------- engagement


def _feedback(request: Request, access: Access, form=None) -> Response:
    sc = _sc(request)
    error = None
    if form is not None:
        try:
            engagement.triage(sc.engine, int(request.path_params["id"]), form.get("status") or "",
                              form.get("theme"), form.get("ods"), form.get("response"))
            back = form.get("back") or "/programme/feedback"
            return RedirectResponse(back if back.startswith("/programme/feedback") else
                                    "/programme/feedback", 303)
        except engagement.EngagementError as e:
            error = str(e)
    q = request.query_params
    rows = engagement.inbox(sc.engine, q.get("status") or None, q.get("theme") or None,
                            q.get("org") or None, q.get("kind") or None)
    return render(request, "programme/feedback.html", 400 if error else 200, **_ctx(
        title="Feedback inbox", rows=rows, error=error, q=q, counts=engagement.feedback_counts(
            sc.engine), statuses=engagement.STATUS_LABELS, kinds=engagement.KIND_LABELS,
        themes=engagement.THEMES, orgs=_org_choices(sc), back=str(request.url.path) + (
            "?" + request.url.query if request.url.query else "")))


feedback_page = page(*LEAD)(_feedback)
triage_page = page(*LEAD)(_feedback)

FEEDBACK_COLUMNS = ["id", "created", "username", "ods", "organisation", "role", "page", "kind",
                    "text", "status", "theme", "response"]


@page(*LEAD)
def feedback_csv(request: Request, access: Access) -> Response:
    t = adopt.Table("feedback", "Feedback", FEEDBACK_COLUMNS,
                    [[r[c] for c in FEEDBACK_COLUMNS] for r in engagement.inbox(_sc(request).engine)])
    return csv_response(t.csv(), "feedback")


@api(*LEAD)
def feedback_api(request: Request, access: Access) -> dict:
    engine = _sc(request).engine
    return {"items": [{c: r[c] for c in FEEDBACK_COLUMNS} for r in engagement.inbox(engine)],
            "counts": {k: [list(x) for x in v]
                       for k, v in engagement.feedback_counts(engine).items()}}


@page(*STAFF)
def you_said_page(request: Request, access: Access) -> Response:
    return render(request, "programme/you_said.html", **_ctx(
        title="You said, we did", rows=engagement.you_said_we_did(_sc(request).engine),
        kinds=engagement.KIND_LABELS))


CHAMPION_COLUMNS = ["id", "name", "group_name", "ods", "organisation", "profession", "username",
                    "since", "notes"]


def _champions(request: Request, access: Access, form=None) -> Response:
    sc = _sc(request)
    error = None
    if form is not None:
        try:
            engagement.add_champion(sc.engine, form.get("name"), form.get("group_name") or "",
                                    form.get("ods"), form.get("profession"), form.get("username"),
                                    form.get("since"), form.get("notes"))
            return RedirectResponse("/programme/champions?done=added", 303)
        except engagement.EngagementError as e:
            error = str(e)
    return render(request, "programme/champions.html", 400 if error else 200, **_ctx(
        title="Champions and design group", rows=engagement.champions(sc.engine), error=error,
        groups=engagement.GROUPS, orgs=_org_choices(sc), done=request.query_params.get("done"),
        form=form or {}))


champions_page = page(*LEAD)(_champions)


@page(*LEAD)
def champions_csv(request: Request, access: Access) -> Response:
    t = adopt.Table("champions", "Champions", CHAMPION_COLUMNS,
                    [[r[c] for c in CHAMPION_COLUMNS] for r in engagement.champions(
                        _sc(request).engine)])
    return csv_response(t.csv(), "champions")


# --------------------------------------------------------------------------- readiness


def readiness_table(rows: list[dict]) -> adopt.Table:
    t = adopt.Table("readiness", "Readiness by theme over time",
                    ["taken_on", "taken_by", "theme", "level", "level_label", "elements_met",
                     "what_good_looks_like", "next_action"], [])
    fw = readiness.FRAMEWORK
    for r in rows:
        for theme in fw.themes:
            res = r["results"][theme.id]
            t.rows.append([r["taken_on"], r["taken_by"], theme.name, res.level,
                           theme.level(res.level).label if res.level else "Not started",
                           len(res.met), "; ".join(m.name for m in theme.wgll),
                           res.next_actions[0]])
    return t


@page(*LEAD)
def readiness_page(request: Request, access: Access) -> Response:
    sc = _sc(request)
    rows = engagement.assessments(sc.engine)
    fw = readiness.FRAMEWORK
    radar = trend = ""
    latest = rows[-1] if rows else None
    weakest = []
    if rows:
        shown = rows[-5:]
        axes = [t.name for t in fw.themes]
        series = {}
        for r in shown:
            label = r["taken_on"]
            while label in series:
                label += "*"
            series[label] = readiness.levels_for_chart(r["results"])[1]
        radar = charts.radar_chart(axes, series, 5, title="Readiness level by theme",
                                   id_prefix="readiness-radar") + charts.as_table(
            series, caption="Readiness level by theme", categories=axes)
        trend = charts.line_chart(
            {t.name: [(r["taken_on"], r["results"][t.id].level) for r in rows]
             for t in fw.themes}, title="Readiness level per theme over time",
            y_label="Level (0-5)", y_min=0, y_max=5, width=720, id_prefix="readiness-trend")
        weakest = readiness.weakest(latest["results"])
    return render(request, "programme/readiness.html", **_ctx(
        title="Readiness", rows=rows, latest=latest, fw=fw, radar=Markup(radar),
        trend=Markup(trend), weakest=weakest, done=request.query_params.get("done")))


def _readiness_new(request: Request, access: Access, form=None) -> Response:
    sc = _sc(request)
    error = None
    answers: dict[str, bool] = {}
    if form is not None:
        answers = {e: True for e in form.getlist("met")}
        try:
            engagement.save_assessment(sc.engine, answers, access.username,
                                       form.get("taken_on") or None, form.get("notes"))
            return RedirectResponse("/programme/readiness?done=saved", 303)
        except (ValueError, engagement.EngagementError) as e:
            error = str(e)
    else:
        rows = engagement.assessments(sc.engine)
        if rows:  # start from the last answers: a repeat assessment changes what moved
            answers = dict(rows[-1]["answers"])
    return render(request, "programme/readiness_new.html", 400 if error else 200, **_ctx(
        title="Readiness self-assessment", fw=readiness.FRAMEWORK, answers=answers, error=error,
        today=date.today().isoformat()))


readiness_new = page(*LEAD)(_readiness_new)


@page(*LEAD)
def readiness_csv(request: Request, access: Access) -> Response:
    return csv_response(readiness_table(engagement.assessments(_sc(request).engine)).csv(),
                        "readiness")


@api(*LEAD)
def readiness_api(request: Request, access: Access) -> dict:
    rows = engagement.assessments(_sc(request).engine)
    out = readiness_table(rows).to_json()
    out["weakest"] = readiness.weakest(rows[-1]["results"]) if rows else []
    return out


# --------------------------------------------------------------------------- case studies

CASE_COLUMNS = ["id", "title", "place", "organisation", "technology", "themes", "status",
                "summary", "lat", "lon"]


def _case_studies(request: Request, access: Access, form=None) -> Response:
    sc = _sc(request)
    error = None
    if form is not None:
        try:
            casestudies.add(sc.engine, form.get("title"), form.get("place"),
                            form.get("organisation"), form.get("technology"),
                            form.getlist("themes"), form.get("status") or "",
                            form.get("summary"), form.get("postcode"))
            return RedirectResponse("/programme/case-studies?done=added", 303)
        except ValueError as e:
            error = str(e)
    q = request.query_params
    rows = casestudies.search(sc.engine, q.get("q"), q.get("theme") or None,
                              q.get("status") or None)
    points = _spread(casestudies.map_points(rows))
    svg = pmap.render_partner_map(points, width=420, title="Case studies on the map",
                                  id_prefix="case-map") if points else ""
    return render(request, "programme/case_studies.html", 400 if error else 200, **_ctx(
        title="Case studies", rows=rows, q=q, themes=casestudies.theme_names(),
        statuses=casestudies.STATUS_LABELS, svg=Markup(svg), note=casestudies.seed_note(),
        error=error, done=q.get("done"), map_status=casestudies.MAP_STATUS,
        map_labels=pmap.STATUSES))


case_studies_page = page(*LEAD)(_case_studies)


@page(*LEAD)
def case_studies_csv(request: Request, access: Access) -> Response:
    rows = casestudies.search(_sc(request).engine, request.query_params.get("q"),
                              request.query_params.get("theme") or None)
    t = adopt.Table("case_studies", "Case studies", CASE_COLUMNS,
                    [[r[c] for c in CASE_COLUMNS] for r in rows])
    return csv_response(t.csv(), "case-studies")


@api(*LEAD)
def case_studies_api(request: Request, access: Access) -> dict:
    rows = casestudies.search(_sc(request).engine, request.query_params.get("q"),
                              request.query_params.get("theme") or None)
    return {"note": casestudies.seed_note(), "case_studies": [{c: r[c] for c in CASE_COLUMNS}
                                                              for r in rows]}


# --------------------------------------------------------------------------- routes


def routes(sc) -> list[Route]:
    get, both = ["GET"], ["GET", "POST"]
    return [
        Route("/programme", overview, methods=get),
        Route("/programme/adoption", adoption_page, methods=get),
        Route("/programme/adoption.csv", adoption_csv, methods=get),
        Route("/api/programme/adoption", adoption_api, methods=get),
        Route("/programme/map", map_page, methods=get),
        Route("/programme/map.csv", map_csv, methods=get),
        Route("/api/programme/partners", partners_api, methods=get),
        Route("/programme/agreements", agreements_page, methods=get),
        Route("/programme/agreements.csv", agreements_csv, methods=get),
        Route("/api/programme/agreements", agreements_api, methods=get),
        Route("/programme/agreements/new", new_agreement, methods=both),
        Route("/programme/agreements/{id}", agreement_page, methods=both),
        Route("/transparency", transparency, methods=get),
        Route("/programme/feedback", feedback_page, methods=get),
        Route("/programme/feedback.csv", feedback_csv, methods=get),
        Route("/programme/feedback/{id:int}", triage_page, methods=["POST"]),
        Route("/api/programme/feedback", feedback_api, methods=get),
        Route("/programme/you-said-we-did", you_said_page, methods=get),
        Route("/programme/champions", champions_page, methods=both),
        Route("/programme/champions.csv", champions_csv, methods=get),
        Route("/programme/readiness", readiness_page, methods=get),
        Route("/programme/readiness/new", readiness_new, methods=both),
        Route("/programme/readiness.csv", readiness_csv, methods=get),
        Route("/api/programme/readiness", readiness_api, methods=get),
        Route("/programme/case-studies", case_studies_page, methods=both),
        Route("/programme/case-studies.csv", case_studies_csv, methods=get),
        Route("/api/programme/case-studies", case_studies_api, methods=get),
    ]
