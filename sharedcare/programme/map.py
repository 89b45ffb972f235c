"""Partner map: England's Integrated Care Boards as an inline SVG, with no tiles and no JavaScript.

The boundaries are the ONS "ICB (April 2023) generalised" set, simplified once with
Douglas-Peucker (``build_boundaries``) and shipped in ``data/icb-2023-simplified.geojson``
with its licence note beside it. Every map carries the attribution the licence requires
(``ATTRIBUTION``).

The projection is a spherical transverse Mercator on the British National Grid's central
meridian (2°W), so England has the shape people know from Ordnance Survey maps.

Public API::

    MapPoint(label, lat, lon, status, kind, href=None)
    render_partner_map(points, *, highlight_icb=None, bounds=None, width=560, title=..., id_prefix=None) -> str
    partner_table(points, *, caption=...) -> str      # HTML table alternative to the map
    icb_for_point(lat, lon) -> (code, name) | None
    icb_bounds(code, pad=0.05) -> (min_lon, min_lat, max_lon, max_lat)
    icbs() -> list[(code, name)]
    approximate_location(postcode) -> (lat, lon) | None
    STATUSES, ATTRIBUTION
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

DATA_DIR = Path(__file__).parent / "data"
BOUNDARIES_FILE = DATA_DIR / "icb-2023-simplified.geojson"
POSTCODE_AREAS_FILE = DATA_DIR / "postcode-areas.json"

ATTRIBUTION = (
    "Source: Office for National Statistics licensed under the Open Government Licence v.3.0. "
    "Contains OS data © Crown copyright and database right 2023."
)

# status -> (legend label, fill colour, marker shape). Shape as well as colour, so the
# map reads without colour vision (WCAG 1.4.1).
STATUSES: dict[str, tuple[str, str, str]] = {
    "live": ("Live", "#007f3b", "circle"),
    "signed": ("Signed", "#005eb8", "square"),
    "onboarding": ("Onboarding", "#ffb81c", "diamond"),
    "not-signed": ("Not signed", "#768692", "triangle"),
    "paused": ("Paused", "#d5281b", "cross"),
}

_LAND = "#e8edee"  # NHS pale grey
_BORDER = "#aeb7bd"
_HIGHLIGHT = "#d2e3f4"  # pale NHS blue
_HIGHLIGHT_BORDER = "#003087"
_TEXT = "#212b32"


@dataclass(frozen=True)
class MapPoint:
    label: str
    lat: float
    lon: float
    status: str
    kind: str
    href: str | None = None

    @property
    def status_key(self) -> str:
        return normalise_status(self.status)


def normalise_status(status: str) -> str:
    """'Not signed', 'not_signed' and 'NOT-SIGNED' are all 'not-signed'; unknown raises."""
    key = re.sub(r"[\s_]+", "-", status.strip().lower())
    if key not in STATUSES:
        raise ValueError(f"unknown partner status {status!r}; expected one of {sorted(STATUSES)}")
    return key


# --------------------------------------------------------------------------- geometry


def project(lon: float, lat: float) -> tuple[float, float]:
    """Spherical transverse Mercator about 2°W (the British National Grid's central meridian).

    Returns (x, y) in kilometres, x east and y north, origin at 49°N 2°W. Good to well under
    1% across England, which is all a schematic map needs.
    """
    r = 6371.0
    lam = math.radians(lon + 2.0)
    phi = math.radians(lat)
    b = math.cos(phi) * math.sin(lam)
    x = r * math.atanh(b)
    y = r * math.atan2(math.tan(phi), math.cos(lam)) - r * math.radians(49.0)
    return x, y


def _perp_dist_sq(p, a, b) -> float:
    (px, py), (ax, ay), (bx, by) = p, a, b
    dx, dy = bx - ax, by - ay
    if dx == 0 and dy == 0:
        return (px - ax) ** 2 + (py - ay) ** 2
    t = ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)
    t = max(0.0, min(1.0, t))
    qx, qy = ax + t * dx, ay + t * dy
    return (px - qx) ** 2 + (py - qy) ** 2


def douglas_peucker(points: list, tolerance: float) -> list:
    """Douglas-Peucker line simplification (iterative, so deep rings cannot overflow the stack)."""
    n = len(points)
    if n < 3 or tolerance <= 0:
        return list(points)
    keep = [False] * n
    keep[0] = keep[-1] = True
    tol_sq = tolerance * tolerance
    stack = [(0, n - 1)]
    while stack:
        first, last = stack.pop()
        best, index = -1.0, -1
        for i in range(first + 1, last):
            d = _perp_dist_sq(points[i], points[first], points[last])
            if d > best:
                best, index = d, i
        if index != -1 and best > tol_sq:
            keep[index] = True
            stack.append((first, index))
            stack.append((index, last))
    return [p for p, k in zip(points, keep) if k]


def simplify_ring(ring: list, tolerance: float) -> list | None:
    """Simplify a closed ring; None when it collapses below a triangle (a tiny islet)."""
    if len(ring) < 4:
        return None
    # Split the ring at its farthest point from the start so both halves have distinct ends.
    start = ring[0]
    far = max(
        range(len(ring)), key=lambda i: (ring[i][0] - start[0]) ** 2 + (ring[i][1] - start[1]) ** 2
    )
    if far == 0:
        return None
    out = douglas_peucker(ring[: far + 1], tolerance)[:-1] + douglas_peucker(ring[far:], tolerance)
    if len(out) < 4:
        return None
    return out


def _polygons(geometry: dict) -> list:
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    if geometry["type"] == "MultiPolygon":
        return list(geometry["coordinates"])
    raise ValueError(f"unsupported geometry {geometry['type']}")


def build_boundaries(
    source: str | Path,
    dest: str | Path = BOUNDARIES_FILE,
    *,
    tolerance: float = 0.0012,
    decimals: int = 4,
) -> dict:
    """Make the shipped file from the ONS GeoJSON: simplify, round, keep code/name/centroid.

    Run once by a developer (``python -c "from sharedcare.programme.map import build_boundaries;
    build_boundaries('/work/shared/geo/icb-2023.geojson')"``); tolerance is in degrees
    (0.0012° is about 100 m, invisible at page size). Rings that collapse (islets) are dropped,
    but an outer ring is always kept so no ICB vanishes. Returns summary figures.
    """
    src = json.loads(Path(source).read_text(encoding="utf-8"))
    features = []
    before = after = 0
    for f in src["features"]:
        props = f["properties"]
        polys = []
        for poly in _polygons(f["geometry"]):
            rings = []
            for i, ring in enumerate(poly):
                before += len(ring)
                s = simplify_ring(ring, tolerance)
                if s is None:
                    if i == 0:
                        break  # outer ring gone: drop the polygon with its holes
                    continue
                rounded = [[round(x, decimals), round(y, decimals)] for x, y in s]
                rings.append(rounded)
                after += len(rounded)
            if rings:
                polys.append(rings)
        if not polys:  # never lose an ICB: keep its largest polygon unsimplified
            polys = [max(_polygons(f["geometry"]), key=lambda p: len(p[0]))]
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "code": props["ICB23CD"],
                    "name": props["ICB23NM"],
                    "lat": props["LAT"],
                    "lon": props["LONG"],
                },
                "geometry": {"type": "MultiPolygon", "coordinates": polys},
            }
        )
    features.sort(key=lambda f: f["properties"]["code"])
    out = {
        "type": "FeatureCollection",
        "name": "ICB April 2023 EN BGC, simplified for sharedcare",
        "attribution": ATTRIBUTION,
        "features": features,
    }
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False)
    Path(dest).write_text(text, encoding="utf-8")
    return {
        "features": len(features),
        "points_before": before,
        "points_after": after,
        "bytes": len(text.encode("utf-8")),
    }


@dataclass(frozen=True)
class _Icb:
    code: str
    name: str
    polygons: tuple  # tuple of polygons; polygon = tuple of rings; ring = tuple of (lon, lat)
    bbox: tuple  # (min_lon, min_lat, max_lon, max_lat)


@functools.lru_cache(maxsize=1)
def _boundaries() -> tuple[_Icb, ...]:
    data = json.loads(BOUNDARIES_FILE.read_text(encoding="utf-8"))
    out = []
    for f in data["features"]:
        polys = tuple(
            tuple(tuple((x, y) for x, y in ring) for ring in poly)
            for poly in f["geometry"]["coordinates"]
        )
        xs = [x for poly in polys for x, _ in poly[0]]
        ys = [y for poly in polys for _, y in poly[0]]
        out.append(
            _Icb(
                f["properties"]["code"],
                f["properties"]["name"],
                polys,
                (min(xs), min(ys), max(xs), max(ys)),
            )
        )
    return tuple(out)


def icbs() -> list[tuple[str, str]]:
    """All 42 ICBs as (code, name), ordered by code."""
    return [(b.code, b.name) for b in _boundaries()]


def _icb(code: str) -> _Icb:
    for b in _boundaries():
        if b.code == code:
            return b
    raise KeyError(f"unknown ICB code {code!r}")


def _in_ring(x: float, y: float, ring) -> bool:
    inside = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def icb_for_point(lat: float, lon: float) -> tuple[str, str] | None:
    """The ICB (code, name) containing the point, or None (sea, Wales, Scotland).

    Uses the simplified boundaries, so a point within ~100 m of a border may fall either side.
    """
    for b in _boundaries():
        min_x, min_y, max_x, max_y = b.bbox
        if not (min_x <= lon <= max_x and min_y <= lat <= max_y):
            continue
        for poly in b.polygons:
            if _in_ring(lon, lat, poly[0]) and not any(_in_ring(lon, lat, h) for h in poly[1:]):
                return b.code, b.name
    return None


def icb_bounds(code: str, pad: float = 0.05) -> tuple[float, float, float, float]:
    """(min_lon, min_lat, max_lon, max_lat) of an ICB, widened by ``pad`` (a fraction of its size).

    Pass it to ``render_partner_map(bounds=...)`` to zoom the map to one ICB. KeyError if unknown.
    """
    min_x, min_y, max_x, max_y = _icb(code).bbox
    dx, dy = (max_x - min_x) * pad, (max_y - min_y) * pad
    return (min_x - dx, min_y - dy, max_x + dx, max_y + dy)


# --------------------------------------------------------------------------- postcodes


@functools.lru_cache(maxsize=1)
def _postcode_table() -> dict:
    return json.loads(POSTCODE_AREAS_FILE.read_text(encoding="utf-8"))


_POSTCODE = re.compile(r"^([A-Z]{1,2})([0-9][0-9A-Z]?)?(?:([0-9])([A-Z]{2}))?$")


def approximate_location(postcode: str) -> tuple[float, float] | None:
    """Approximate (lat, lon) for a postcode from its postcode AREA (the leading letters).

    Offline and coarse: it places a partner in the right part of England (often the right ICB
    for a city area, not always for large rural areas) and no more. Accepts a full postcode
    ('LS1 4AP'), an outward code ('LS1') or an area ('LS'). Cross-border areas give the centre
    of their English part; a few border districts (e.g. TD15, Berwick) have their own entry.
    None when the text is not a postcode or the area is not English.
    """
    text = re.sub(r"\s+", "", str(postcode).upper())
    m = _POSTCODE.match(text)
    if not m:
        return None
    area, district = m.group(1), m.group(2)
    table = _postcode_table()
    if district and (area + district) in table["districts"]:
        lat, lon = table["districts"][area + district]["centroid"]
        return lat, lon
    entry = table["areas"].get(area)
    if entry is None:
        return None
    lat, lon = entry["centroid"]
    return lat, lon


# --------------------------------------------------------------------------- rendering


def _fmt(v: float) -> str:
    s = f"{v:.1f}"
    return s.removesuffix(".0")


def _attr(value: str) -> str:
    return escape(str(value), {'"': "&quot;"})


class _Viewport:
    def __init__(self, bounds, width: float, height_max: float | None = None):
        min_lon, min_lat, max_lon, max_lat = bounds
        corners = [
            project(lon, lat)
            for lon in (min_lon, max_lon, (min_lon + max_lon) / 2)
            for lat in (min_lat, max_lat)
        ]
        self.x0 = min(c[0] for c in corners)
        self.x1 = max(c[0] for c in corners)
        self.y0 = min(c[1] for c in corners)
        self.y1 = max(c[1] for c in corners)
        self.scale = width / (self.x1 - self.x0)
        self.width = width
        self.height = (self.y1 - self.y0) * self.scale

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        x, y = project(lon, lat)
        return (x - self.x0) * self.scale, (self.y1 - y) * self.scale

    def lonlat_bbox_visible(self, bbox) -> bool:
        min_lon, min_lat, max_lon, max_lat = bbox
        pts = [self.xy(lon, lat) for lon in (min_lon, max_lon) for lat in (min_lat, max_lat)]
        return not (
            max(p[0] for p in pts) < 0
            or min(p[0] for p in pts) > self.width
            or max(p[1] for p in pts) < 0
            or min(p[1] for p in pts) > self.height
        )


def _england_bounds() -> tuple[float, float, float, float]:
    bs = _boundaries()
    return (
        min(b.bbox[0] for b in bs),
        min(b.bbox[1] for b in bs),
        max(b.bbox[2] for b in bs),
        max(b.bbox[3] for b in bs),
    )


def _path_d(icb: _Icb, vp: _Viewport) -> str:
    parts = []
    for poly in icb.polygons:
        for ring in poly:
            pts = douglas_peucker([vp.xy(lon, lat) for lon, lat in ring], 0.4)  # ~½ pixel
            if len(pts) < 4:
                continue
            coords = " ".join(f"{_fmt(x)} {_fmt(y)}" for x, y in pts[:-1])
            parts.append(f"M{coords}Z")
    return "".join(parts)


def _marker(shape: str, x: float, y: float, r: float, fill: str) -> str:
    stroke = f'fill="{fill}" stroke="#ffffff" stroke-width="1.5"'
    if shape == "circle":
        return f'<circle class="sc-marker" cx="{_fmt(x)}" cy="{_fmt(y)}" r="{_fmt(r)}" {stroke}/>'
    if shape == "square":
        s = r * 1.7
        return (
            f'<rect class="sc-marker" x="{_fmt(x - s / 2)}" y="{_fmt(y - s / 2)}" '
            f'width="{_fmt(s)}" height="{_fmt(s)}" {stroke}/>'
        )
    if shape == "diamond":
        s = r * 1.3
        pts = f"{_fmt(x)},{_fmt(y - s)} {_fmt(x + s)},{_fmt(y)} {_fmt(x)},{_fmt(y + s)} {_fmt(x - s)},{_fmt(y)}"
        return f'<polygon class="sc-marker" points="{pts}" {stroke.replace("#ffffff", "#212b32")}/>'
    if shape == "triangle":
        s = r * 1.35
        pts = (
            f"{_fmt(x)},{_fmt(y - s)} {_fmt(x + s * 0.95)},{_fmt(y + s * 0.7)} "
            f"{_fmt(x - s * 0.95)},{_fmt(y + s * 0.7)}"
        )
        return f'<polygon class="sc-marker" points="{pts}" {stroke}/>'
    # cross: a plus sign built as one polygon
    a, b = r * 1.2, r * 0.45
    pts = [
        (x - b, y - a),
        (x + b, y - a),
        (x + b, y - b),
        (x + a, y - b),
        (x + a, y + b),
        (x + b, y + b),
        (x + b, y + a),
        (x - b, y + a),
        (x - b, y + b),
        (x - a, y + b),
        (x - a, y - b),
        (x - b, y - b),
    ]
    return (
        f'<polygon class="sc-marker" points="{" ".join(f"{_fmt(px)},{_fmt(py)}" for px, py in pts)}" '
        f"{stroke}/>"
    )


def marker_name(point: MapPoint) -> str:
    """Accessible name of a marker: '<label>, <kind>: <status>'."""
    return f"{point.label}, {point.kind}: {STATUSES[point.status_key][0]}"


def _wrap(text: str, max_chars: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > max_chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def render_partner_map(
    points: list[MapPoint],
    *,
    highlight_icb: str | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    width: int = 560,
    title: str = "Map of partners by Integrated Care Board",
    id_prefix: str | None = None,
) -> str:
    """Inline SVG map of England's 42 ICBs with a marker per partner, a legend and attribution.

    - ``highlight_icb``: ICB code to shade (KeyError if unknown).
    - ``bounds``: (min_lon, min_lat, max_lon, max_lat) to zoom to, e.g. ``icb_bounds(code)``;
      points and ICBs wholly outside it are left out (the table alternative still lists them).
    - Markers with ``href`` are ``<a>`` links; without one they are focusable
      (``tabindex="0"``) with ``role="img"``; each has ``aria-label`` = ``marker_name(point)``
      and a ``<title>`` tooltip. Because the markers are interactive, the ``<svg>`` is a
      ``role="group"`` labelled by its ``<title>``/``<desc>`` (a ``role="img"`` would hide the
      links from assistive technology). Give ``partner_table(points)`` beside it.
    """
    if highlight_icb is not None:
        highlight = _icb(highlight_icb)
    else:
        highlight = None
    view = bounds or _england_bounds()
    attribution_lines = _wrap(ATTRIBUTION, max(40, int(width / 6.4)))
    vp = _Viewport(view, width)
    map_h = vp.height
    # legend below the map (never over markers): items flow into rows
    legend_items, lx, ly = [], 4.0, map_h + 22
    for key, (label, _colour, _shape) in STATUSES.items():
        item_w = 30 + 7.4 * (len(label) + 4)
        if lx + item_w > width and lx > 4:
            lx, ly = 4.0, ly + 22
        legend_items.append((key, lx, ly))
        lx += item_w
    attribution_top = ly + 20
    height = attribution_top + 14 * len(attribution_lines)
    pid = (
        id_prefix
        or "sc-map-"
        + hashlib.sha1(repr((points, highlight_icb, view, width, title)).encode()).hexdigest()[:8]
    )

    statuses = [p.status_key for p in points]  # validates every status up front
    shown = [(p, vp.xy(p.lon, p.lat)) for p in points]
    shown = [(p, xy) for p, xy in shown if 0 <= xy[0] <= width and 0 <= xy[1] <= map_h]
    counts = {k: statuses.count(k) for k in STATUSES}
    desc = (
        f"{len(points)} partners: "
        + ", ".join(f"{counts[k]} {STATUSES[k][0].lower()}" for k in STATUSES if counts[k])
        + "."
        if points
        else "No partners to show."
    )
    if highlight is not None:
        desc += f" {highlight.name} is highlighted."
    if bounds is not None:
        desc += f" Zoomed in; {len(shown)} of {len(points)} partners are within the area shown."
    desc += " " + ATTRIBUTION

    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="sc-map" role="group" '
            f'viewBox="0 0 {width} {_fmt(height)}" width="{width}" height="{_fmt(height)}" '
            f'aria-labelledby="{pid}-title {pid}-desc" font-family="Frutiger W01, Arial, sans-serif">'
        ),
        f'<title id="{pid}-title">{escape(title)}</title>',
        f'<desc id="{pid}-desc">{escape(desc)}</desc>',
        (
            "<style>"
            f"#{pid} .sc-point:focus{{outline:none}}"
            f"#{pid} .sc-point:focus .sc-marker,#{pid} .sc-point:hover .sc-marker"
            "{stroke:#212b32;stroke-width:3}"
            f"#{pid} .sc-point:focus .sc-focus{{fill:#ffeb3b}}"
            "</style>"
        ),
        f'<g id="{pid}">',
        f'<clipPath id="{pid}-clip"><rect width="{width}" height="{_fmt(map_h)}"/></clipPath>',
        (
            f'<g class="sc-icbs" aria-hidden="true" clip-path="url(#{pid}-clip)" '
            f'stroke-linejoin="round">'
        ),
    ]
    for icb in _boundaries():
        if not vp.lonlat_bbox_visible(icb.bbox):
            continue
        hl = highlight is not None and icb.code == highlight.code
        fill, stroke, sw = (_HIGHLIGHT, _HIGHLIGHT_BORDER, 1.5) if hl else (_LAND, _BORDER, 0.6)
        out.append(
            f'<path data-icb="{_attr(icb.code)}" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{sw}" d="{_path_d(icb, vp)}"><title>{escape(icb.name)}</title></path>'
        )
    if highlight is not None:  # draw the highlighted border again on top of its neighbours
        out.append(
            f'<path fill="none" stroke="{_HIGHLIGHT_BORDER}" stroke-width="1.5" '
            f'd="{_path_d(highlight, vp)}"/>'
        )
    out.append("</g>")

    r = 6 if width >= 400 else 4.5
    out.append('<g class="sc-points">')
    for p, (x, y) in shown:
        label, colour, shape = STATUSES[p.status_key]
        name = marker_name(p)
        inner = (
            f'<circle class="sc-focus" cx="{_fmt(x)}" cy="{_fmt(y)}" r="{_fmt(r * 2)}" '
            f'fill="none"/>' + _marker(shape, x, y, r, colour) + f"<title>{escape(name)}</title>"
        )
        if p.href:
            out.append(
                f'<a class="sc-point" href="{_attr(p.href)}" aria-label="{_attr(name)}">{inner}</a>'
            )
        else:
            out.append(
                f'<g class="sc-point" tabindex="0" role="img" aria-label="{_attr(name)}">'
                f"{inner}</g>"
            )
    out.append("</g>")

    out.append(f'<g class="sc-legend" aria-hidden="true" font-size="13" fill="{_TEXT}">')
    for key, x, y in legend_items:
        label, colour, shape = STATUSES[key]
        out.append(
            _marker(shape, x + 7, y - 4, 6, colour)
            + f'<text x="{_fmt(x + 20)}" y="{_fmt(y)}">{escape(label)} ({counts[key]})</text>'
        )
    out.append("</g>")

    out.append(f'<text class="sc-attribution" font-size="11" fill="{_TEXT}">')
    for i, line in enumerate(attribution_lines):
        out.append(f'<tspan x="4" y="{_fmt(attribution_top + 14 * i)}">{escape(line)}</tspan>')
    out.append("</text></g></svg>")
    return "".join(out)


def partner_table(points: list[MapPoint], *, caption: str = "Partners shown on the map") -> str:
    """HTML table alternative to the map: partner, kind, status and the ICB it falls in."""
    rows = []
    for p in points:
        icb = icb_for_point(p.lat, p.lon)
        name = escape(p.label)
        cell = f'<a href="{_attr(p.href)}">{name}</a>' if p.href else name
        rows.append(
            f'<tr class="nhsuk-table__row"><td class="nhsuk-table__cell">{cell}</td>'
            f'<td class="nhsuk-table__cell">{escape(p.kind)}</td>'
            f'<td class="nhsuk-table__cell">{escape(STATUSES[p.status_key][0])}</td>'
            f'<td class="nhsuk-table__cell">{escape(icb[1] if icb else "Outside England")}</td></tr>'
        )
    head = "".join(
        f'<th scope="col" class="nhsuk-table__header">{h}</th>'
        for h in ("Partner", "Kind", "Status", "Integrated Care Board")
    )
    return (
        f'<table class="nhsuk-table"><caption class="nhsuk-table__caption">{escape(caption)}</caption>'
        f'<thead class="nhsuk-table__head"><tr class="nhsuk-table__row">{head}</tr></thead>'
        f'<tbody class="nhsuk-table__body">{"".join(rows)}</tbody></table>'
    )
