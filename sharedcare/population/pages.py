"""The population health page: the programme's dashboards, run as secondary use.

    /population               every panel: purpose and agreements, chart, suppressed table
    /population/{n}.csv       panel n (1, 2, 3 ...) as published (suppressed) CSV
    /api/population           the panels as JSON

The dashboards run under the *planning* purpose, through the governed extract
(``dashboards.population_dashboard``): an active planning agreement must cover the viewer's
organisation, or the page explains why not. Figures take seconds to make, so they are kept in
process memory for ``CACHE_SECONDS`` per (organisation, role); ``?refresh=1`` makes them again.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from dataclasses import dataclass

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..fhir.outcome import FHIRError
from ..governance.policy import Access
from ..programme.pages import api, csv_response
from ..web.core import page, render
from .dashboards import Panel, population_dashboard

ROLES = ("programme-lead", "ig-lead")
PURPOSE = "planning"
CACHE_SECONDS = 300.0


@dataclass
class Dashboard:
    made: float  # time.monotonic()
    made_at: str  # wall clock, for the page
    panels: list[Panel]


class DashboardCache:
    """Panels per (organisation, role), kept for CACHE_SECONDS; one computation at a time per
    key, so a burst of viewers does not run the extract several times over."""

    def __init__(self, seconds: float = CACHE_SECONDS):
        self.seconds = seconds
        self._items: dict[tuple, Dashboard] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, sc, access: Access, refresh: bool = False) -> Dashboard:
        key = (access.ods, access.role)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._items.get(key)
            if hit is not None and not refresh and time.monotonic() - hit.made < self.seconds:
                return hit
            planning = sc.governance.prepare(Access(
                access.username, access.ods, access.role, purpose=PURPOSE,
                display_name=access.display_name))
            panels = population_dashboard(sc, planning)  # FHIRError 403: not cached
            hit = Dashboard(time.monotonic(), time.strftime("%Y-%m-%d %H:%M"), panels)
            self._items[key] = hit
            return hit

    def clear(self) -> None:
        with self._guard:
            self._items.clear()


def csv_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The published table inside a panel's CSV (its '#' lines are the title and labels)."""
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    return (rows[0], rows[1:]) if rows else ([], [])


def _panel_view(i: int, p: Panel) -> dict:
    header, rows = csv_table(p.csv)
    return {"index": i, "title": p.title, "purpose": p.purpose, "agreements": p.agreements,
            "svg": Markup(p.svg), "header": header, "rows": rows, "notes": p.notes,
            "threshold": p.table.threshold, "rounding": p.table.rounding,
            "symbol": p.table.symbol, "csv_href": f"/population/{i}.csv"}


def routes(sc) -> list[Route]:
    cache = DashboardCache()

    def refused(request: Request, e: FHIRError) -> Response:
        message = e.issues[0].diagnostics if e.issues else str(e)
        return render(request, "population.html", e.status, title="Population health",
                      refused=message, reasons=[i.diagnostics for i in e.issues[1:]],
                      panels=[], purpose=PURPOSE)

    @page(*ROLES)
    def population_page(request: Request, access: Access) -> Response:
        refresh = request.query_params.get("refresh") == "1"
        try:
            d = cache.get(request.app.state.sc, access, refresh)
        except FHIRError as e:
            if e.status != 403:
                raise
            return refused(request, e)
        return render(request, "population.html", title="Population health", refused=None,
                      panels=[_panel_view(i, p) for i, p in enumerate(d.panels, 1)],
                      made_at=d.made_at, cache_minutes=int(cache.seconds // 60), purpose=PURPOSE)

    @page(*ROLES)
    def panel_csv(request: Request, access: Access) -> Response:
        n = request.path_params["n"]
        try:
            d = cache.get(request.app.state.sc, access)
        except FHIRError as e:
            if e.status != 403:
                raise
            return refused(request, e)
        if not 1 <= n <= len(d.panels):
            return render(request, "error.html", 404, title="No such panel",
                          message=f"Panels are numbered 1 to {len(d.panels)}.")
        return csv_response(d.panels[n - 1].csv, f"population-{n}")

    @api(*ROLES)
    def population_api(request: Request, access: Access) -> dict:
        try:
            d = cache.get(request.app.state.sc, access)
        except FHIRError as e:
            return {"error": e.issues[0].diagnostics if e.issues else str(e),
                    "reasons": [i.diagnostics for i in e.issues[1:]]}
        out = []
        for i, p in enumerate(d.panels, 1):
            header, rows = csv_table(p.csv)
            out.append({"index": i, "title": p.title, "purpose": p.purpose,
                        "agreements": p.agreements, "notes": p.notes, "columns": header,
                        "rows": rows, "csv": f"/population/{i}.csv"})
        return {"made_at": d.made_at, "purpose": PURPOSE, "panels": out}

    population_page.cache = cache  # for tests and operators
    return [
        Route("/population", population_page, methods=["GET"]),
        Route("/population/{n:int}.csv", panel_csv, methods=["GET"]),
        Route("/api/population", population_api, methods=["GET"]),
    ]
