"""The population health page: the programme's dashboards, run as secondary use.

    /population               every panel: purpose and agreements, chart, suppressed table
    /population/{n}.csv       panel n (1, 2, 3 ...) as published (suppressed) CSV
    /api/population           the panels as JSON

The dashboards run under the *planning* purpose, through the governed extract
(``dashboards.population_dashboard``): an active planning agreement must cover the viewer's
organisation, or the page explains why not.

Why the first view was slow: the panels come from a governed, pseudonymised extract that
evaluates each ViewDefinition's FHIRPath for every resource in scope (tens of thousands in the
demo; ~70% of the time in fhirpathpy, ~20% pseudonymising) -- seconds, whoever asks. So the
published (suppressed) figures are kept per (organisation, role): made in the background as
soon as a programme or IG lead signs in (``warm``), served from memory for ``CACHE_SECONDS``,
and after that served while newer ones are made in the background (the page says when they
were made). ``?refresh=1`` waits for new ones.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
import weakref
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
log = logging.getLogger(__name__)


@dataclass
class Dashboard:
    made: float  # time.monotonic()
    made_at: str  # wall clock, for the page
    panels: list[Panel]


class DashboardCache:
    """Panels per (organisation, role). Fresh for `seconds`; after that the old figures are
    served while new ones are made in the background. One computation at a time per key, so a
    burst of viewers does not run the extract several times over."""

    def __init__(self, seconds: float = CACHE_SECONDS):
        self.seconds = seconds
        self._items: dict[tuple, Dashboard] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: tuple) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _make(self, sc, access: Access, key: tuple) -> Dashboard:
        planning = sc.governance.prepare(Access(
            access.username, access.ods, access.role, purpose=PURPOSE,
            display_name=access.display_name))
        panels = population_dashboard(sc, planning)  # FHIRError 403: not cached
        hit = Dashboard(time.monotonic(), time.strftime("%Y-%m-%d %H:%M"), panels)
        self._items[key] = hit
        return hit

    def get(self, sc, access: Access, refresh: bool = False) -> Dashboard:
        key = (access.ods, access.role)
        hit = self._items.get(key)
        if hit is not None and not refresh:
            if time.monotonic() - hit.made >= self.seconds:
                self.warm(sc, access)  # stale: served now, remade in the background
            return hit
        lock = self._lock(key)
        asked = time.monotonic()
        with lock:  # waits for a computation already running (e.g. started at sign-in)
            hit = self._items.get(key)
            if hit is not None and (not refresh or hit.made >= asked):
                return hit  # made while we waited
            return self._make(sc, access, key)

    def fresh(self, access: Access) -> bool:
        hit = self._items.get((access.ods, access.role))
        return hit is not None and time.monotonic() - hit.made < self.seconds

    def warm(self, sc, access: Access) -> threading.Thread | None:
        """Make this viewer's figures in the background, unless they are fresh or being made."""
        if access.role not in ROLES or self.fresh(access):
            return None
        key = (access.ods, access.role)
        lock = self._lock(key)
        if lock.locked():
            return None

        def run():
            if not lock.acquire(blocking=False):
                return
            try:
                self._make(sc, access, key)
            except FHIRError:
                pass  # no agreement covers the organisation: the page explains, when asked
            except Exception:  # noqa: BLE001 - a background job must not die silently
                log.exception("population figures for %s could not be made", access.role)
            finally:
                lock.release()

        thread = threading.Thread(target=run, name="population-warm", daemon=True)
        thread.start()
        return thread

    def clear(self) -> None:
        with self._guard:
            self._items.clear()


_caches: dict[int, tuple[weakref.ref, DashboardCache]] = {}
_caches_guard = threading.Lock()


def cache_for(sc) -> DashboardCache:
    """The one cache of an application object (its pages, and the warm-up at sign-in)."""
    with _caches_guard:
        entry = _caches.get(id(sc))
        if entry is None or entry[0]() is not sc:
            for k in [k for k, (ref, _c) in _caches.items() if ref() is None]:
                del _caches[k]  # applications that are gone
            entry = _caches[id(sc)] = (weakref.ref(sc), DashboardCache())
        return entry[1]


def warm(sc, access: Access) -> threading.Thread | None:
    """Start making a programme or IG lead's population figures, so they are ready when the
    lead opens the page (called when the lead arrives on the start page)."""
    return cache_for(sc).warm(sc, access)


def csv_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The published table inside a panel's CSV (its '#' lines are the title and labels)."""
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    return (rows[0], rows[1:]) if rows else ([], [])


def _panel_view(i: int, p: Panel) -> dict:
    common = {"index": i, "title": p.title, "purpose": p.purpose, "agreements": p.agreements,
              "csv_href": f"/population/{i}.csv", "not_covered": p.not_covered}
    if p.not_covered or p.table is None:
        return {**common, "svg": "", "header": [], "rows": [], "notes": ""}
    header, rows = csv_table(p.csv)
    return {**common, "svg": Markup(p.svg), "header": header, "rows": rows, "notes": p.notes,
            "threshold": p.table.threshold, "rounding": p.table.rounding,
            "symbol": p.table.symbol}


def routes(sc) -> list[Route]:
    cache = cache_for(sc)

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
            header, rows = ([], []) if p.not_covered else csv_table(p.csv)
            out.append({"index": i, "title": p.title, "purpose": p.purpose,
                        "agreements": p.agreements, "notes": p.notes, "columns": header,
                        "rows": rows, "csv": f"/population/{i}.csv",
                        "not_covered": p.not_covered or None})
        return {"made_at": d.made_at, "purpose": PURPOSE, "panels": out}

    population_page.cache = cache  # for tests and operators
    return [
        Route("/population", population_page, methods=["GET"]),
        Route("/population/{n:int}.csv", panel_csv, methods=["GET"]),
        Route("/api/population", population_api, methods=["GET"]),
    ]
