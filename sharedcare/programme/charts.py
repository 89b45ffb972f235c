"""Accessible inline-SVG charts, drawn in Python: no JavaScript, no CDN, works offline.

Every chart is an ``<svg role="img">`` labelled by its own ``<title>`` and ``<desc>`` (the desc
is a plain-language summary); put ``as_table(...)`` beside it as the full text alternative
(visually hidden by default, using the NHS.UK ``nhsuk-u-visually-hidden`` class). Series are
told apart by colour AND by line dash / marker shape, so colour is never the only cue.
All text is XML-escaped.

API::

    line_chart(series, *, title, y_label, x_label=None, width=640, height=320, ...) -> str
    bar_chart(series, *, title, y_label, horizontal=False, width=640, height=None, ...) -> str
    radar_chart(axes, series, max_value=5, *, title, width=440, ...) -> str
    trend_sparkline(values, *, label, width=120, height=28, ...) -> str
    as_table(series, *, caption, categories=None, x_label="", visually_hidden=True) -> str

``series`` is ``{name: [(label, value), ...]}`` (value may be None for a gap) for the line and
bar charts and ``as_table``; ``radar_chart`` takes ``{name: [value per axis]}``.
"""

from __future__ import annotations

import hashlib
import math
from xml.sax.saxutils import escape

# NHS.UK design system colours, in the order series take them.
NHS_BLUE = "#005eb8"
DARK_BLUE = "#003087"
GREEN = "#007f3b"
WARM_YELLOW = "#ffb81c"
RED = "#d5281b"
GREY = "#768692"
PURPLE = "#330072"
TEXT = "#212b32"
GRID = "#d8dde0"
PALETTE = (NHS_BLUE, GREEN, WARM_YELLOW, RED, PURPLE, GREY, DARK_BLUE)
DASHES = ("", "6 3", "2 3", "8 3 2 3", "10 4", "3 6", "12 3 3 3")
SHAPES = ("circle", "square", "triangle", "diamond")
FONT = 'font-family="Frutiger W01, Arial, sans-serif"'

Series = dict[str, list[tuple[str, float | None]]]


def _e(text) -> str:
    return escape(str(text), {'"': "&quot;"})


def _f(v: float) -> str:
    """Compact coordinate."""
    s = f"{v:.1f}"
    return "0" if s == "-0.0" else (s.removesuffix(".0"))


def fmt_number(v: float | None) -> str:
    """12,345 or 3.5 (up to two decimals); '' for None."""
    if v is None:
        return ""
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.2f}".rstrip("0").rstrip(".")


def _id(prefix: str, *parts) -> str:
    return prefix + "-" + hashlib.sha1(repr(parts).encode()).hexdigest()[:10]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 × 10^n steps)."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        hi = lo + 1 if lo == 0 else lo + abs(lo) * 0.5
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t < hi - step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    ticks.append(round(t, 10))
    return ticks


def _open(width: float, height: float, title: str, desc: str, pid: str, cls: str) -> list[str]:
    return [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="sc-chart {cls}" role="img" '
            f'viewBox="0 0 {_f(width)} {_f(height)}" width="{_f(width)}" height="{_f(height)}" '
            f'aria-labelledby="{pid}-title {pid}-desc" {FONT}>'
        ),
        f'<title id="{pid}-title">{_e(title)}</title>',
        f'<desc id="{pid}-desc">{_e(desc)}</desc>',
    ]


def _marker(shape: str, x: float, y: float, r: float, colour: str, tip: str | None = None) -> str:
    tip_el = f"<title>{_e(tip)}</title>" if tip else ""
    a = f'fill="{colour}" stroke="#ffffff" stroke-width="1"'
    if shape == "circle":
        el = f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{_f(r)}" {a}'
    elif shape == "square":
        el = f'<rect x="{_f(x - r)}" y="{_f(y - r)}" width="{_f(2 * r)}" height="{_f(2 * r)}" {a}'
    elif shape == "triangle":
        el = (
            f'<polygon points="{_f(x)},{_f(y - r * 1.2)} {_f(x + r * 1.1)},{_f(y + r * 0.8)} '
            f'{_f(x - r * 1.1)},{_f(y + r * 0.8)}" {a}'
        )
    else:
        s = r * 1.25
        el = (
            f'<polygon points="{_f(x)},{_f(y - s)} {_f(x + s)},{_f(y)} {_f(x)},{_f(y + s)} '
            f'{_f(x - s)},{_f(y)}" {a}'
        )
    return el + (f">{tip_el}</{el[1 : el.index(' ')]}>" if tip_el else "/>")


def _categories(series: Series) -> list[str]:
    seen: dict[str, None] = {}
    for points in series.values():
        for label, _ in points:
            seen.setdefault(str(label), None)
    return list(seen)


def _lookup(series: Series) -> dict[str, dict[str, float | None]]:
    return {name: {str(label): value for label, value in points} for name, points in series.items()}


def _check_series(series: Series) -> None:
    if not series:
        raise ValueError("a chart needs at least one series")
    for name, points in series.items():
        for point in points:
            if len(point) != 2:
                raise ValueError(f"series {name!r}: points must be (label, value) pairs")
            v = point[1]
            if v is not None and (
                not isinstance(v, (int, float))
                or isinstance(v, bool)
                or math.isnan(v)
                or math.isinf(v)
            ):
                raise ValueError(f"series {name!r}: value {v!r} is not a finite number")


def _legend(
    names: list[str], x: float, y: float, width: float, *, lines: bool
) -> tuple[list[str], float]:
    """Legend items laid out in rows; returns (elements, height used)."""
    out, cx, cy = [f'<g class="sc-legend" font-size="13" fill="{TEXT}">'], x, y
    for i, name in enumerate(names):
        item_w = 34 + 7.2 * len(name) + 16
        if cx + item_w > x + width and cx > x:
            cx, cy = x, cy + 20
        colour = PALETTE[i % len(PALETTE)]
        if lines:
            dash = DASHES[i % len(DASHES)]
            out.append(
                f'<line x1="{_f(cx)}" y1="{_f(cy - 4)}" x2="{_f(cx + 26)}" y2="{_f(cy - 4)}" '
                f'stroke="{colour}" stroke-width="3"'
                + (f' stroke-dasharray="{dash}"' if dash else "")
                + "/>"
            )
            out.append(_marker(SHAPES[i % len(SHAPES)], cx + 13, cy - 4, 4, colour))
        else:
            out.append(
                f'<rect x="{_f(cx + 6)}" y="{_f(cy - 12)}" width="14" height="14" fill="{colour}"/>'
            )
        out.append(f'<text x="{_f(cx + 32)}" y="{_f(cy)}">{_e(name)}</text>')
        cx += item_w
    out.append("</g>")
    return out, (cy - y) + 20


def _legend_height(names: list[str], width: float) -> float:
    return _legend(names, 0, 0, width, lines=True)[1]


def _summary(series: Series, kind: str) -> str:
    cats = _categories(series)
    parts = []
    for name, points in series.items():
        vals = [(lbl, v) for lbl, v in points if v is not None]
        if not vals:
            parts.append(f"{name}: no data")
        elif kind == "line" and len(vals) > 1:
            parts.append(
                f"{name}: {fmt_number(vals[0][1])} in {vals[0][0]} to "
                f"{fmt_number(vals[-1][1])} in {vals[-1][0]}"
            )
        else:
            hi = max(vals, key=lambda p: p[1])
            lo = min(vals, key=lambda p: p[1])
            parts.append(
                f"{name}: highest {fmt_number(hi[1])} ({hi[0]}), "
                f"lowest {fmt_number(lo[1])} ({lo[0]})"
            )
    span = f" from {cats[0]} to {cats[-1]}" if kind == "line" and len(cats) > 1 else ""
    return (
        f"{kind.capitalize()} chart, {len(series)} series over {len(cats)} "
        f"{'points' if kind == 'line' else 'categories'}{span}. " + "; ".join(parts) + "."
    )


def _y_axis(ticks, y_of, left, right, y_label, top, bottom) -> list[str]:
    out = [f'<g class="sc-axis" font-size="12" fill="{TEXT}">']
    for t in ticks:
        y = y_of(t)
        out.append(
            f'<line x1="{_f(left)}" x2="{_f(right)}" y1="{_f(y)}" y2="{_f(y)}" '
            f'stroke="{GRID}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_f(left - 6)}" y="{_f(y + 4)}" text-anchor="end">{_e(fmt_number(t))}</text>'
        )
    mid = (top + bottom) / 2
    out.append(
        f'<text transform="translate(14 {_f(mid)}) rotate(-90)" text-anchor="middle" '
        f'font-size="13">{_e(y_label)}</text>'
    )
    out.append("</g>")
    return out


def line_chart(
    series: Series,
    *,
    title: str,
    y_label: str,
    x_label: str | None = None,
    width: int = 640,
    height: int = 320,
    desc: str | None = None,
    y_min: float | None = None,
    y_max: float | None = None,
    id_prefix: str | None = None,
) -> str:
    """Line chart; x is the ordered union of the series' labels (first appearance order)."""
    _check_series(series)
    cats = _categories(series)
    data = _lookup(series)
    values = [v for pts in series.values() for _, v in pts if v is not None]
    lo = min([0.0] + values) if y_min is None else y_min
    hi = max(values + [lo + 1]) if y_max is None else y_max
    ticks = nice_ticks(lo, hi)
    names = list(series)
    legend_h = _legend_height(names, width - 60) if len(names) > 1 else 0
    longest = max((len(c) for c in cats), default=1)
    left, right, top = 60, width - max(16, longest * 3.4 + 4), 16
    bottom = height - 36 - (18 if x_label else 0) - legend_h
    span = (ticks[-1] - ticks[0]) or 1

    def y_of(v):
        return bottom - (v - ticks[0]) / span * (bottom - top)

    def x_of(i):
        return left + (right - left) * (0.5 if len(cats) == 1 else i / (len(cats) - 1))

    pid = id_prefix or _id("sc-line", series, title, y_label, width, height)
    out = _open(width, height, title, desc or _summary(series, "line"), pid, "sc-line-chart")
    out += _y_axis(ticks, y_of, left, right, y_label, top, bottom)
    # x labels, thinned so they do not overlap
    every = max(1, math.ceil(len(cats) * (longest * 6.8 + 10) / (right - left + 1)))
    out.append(f'<g class="sc-axis" font-size="12" fill="{TEXT}">')
    out.append(
        f'<line x1="{left}" x2="{right}" y1="{_f(bottom)}" y2="{_f(bottom)}" stroke="{TEXT}"/>'
    )
    for i, c in enumerate(cats):
        if i % every == 0:
            out.append(
                f'<text x="{_f(x_of(i))}" y="{_f(bottom + 18)}" text-anchor="middle">{_e(c)}</text>'
            )
    if x_label:
        out.append(
            f'<text x="{_f((left + right) / 2)}" y="{_f(bottom + 36)}" text-anchor="middle" '
            f'font-size="13">{_e(x_label)}</text>'
        )
    out.append("</g>")
    for s, name in enumerate(names):
        colour, dash, shape = (
            PALETTE[s % len(PALETTE)],
            DASHES[s % len(DASHES)],
            SHAPES[s % len(SHAPES)],
        )
        d, pen_down, marks = [], False, []
        for i, c in enumerate(cats):
            v = data[name].get(c)
            if v is None:
                pen_down = False
                continue
            x, y = x_of(i), y_of(v)
            d.append(f"{'L' if pen_down else 'M'}{_f(x)} {_f(y)}")
            pen_down = True
            marks.append(_marker(shape, x, y, 3.5, colour, f"{name}, {c}: {fmt_number(v)}"))
        out.append(f'<g class="sc-series" data-series="{_e(name)}">')
        if d:
            out.append(
                f'<path d="{"".join(d)}" fill="none" stroke="{colour}" stroke-width="2.5" '
                f'stroke-linejoin="round"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>"
            )
        out.extend(marks)
        out.append("</g>")
    if len(names) > 1:
        legend, _ = _legend(names, left, height - legend_h + 6, right - left, lines=True)
        out += legend
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    series: Series,
    *,
    title: str,
    y_label: str,
    horizontal: bool = False,
    width: int = 640,
    height: int | None = None,
    desc: str | None = None,
    id_prefix: str | None = None,
) -> str:
    """Grouped bar chart (one bar per series in each category). ``horizontal=True`` suits long
    category names (e.g. ICBs). Values must be >= 0; None leaves a gap."""
    _check_series(series)
    cats = _categories(series)
    data = _lookup(series)
    names = list(series)
    values = [v for pts in series.values() for _, v in pts if v is not None]
    if any(v < 0 for v in values):
        raise ValueError("bar_chart takes values >= 0")
    ticks = nice_ticks(0, max(values + [1]))
    top_v = ticks[-1]
    legend_h = _legend(names, 0, 0, width - 60, lines=False)[1] if len(names) > 1 else 0
    pid = id_prefix or _id("sc-bar", series, title, y_label, width, height, horizontal)
    k = len(names)
    if not horizontal:
        height = height or 320
        left, right, top = 60, width - 16, 16
        bottom = height - 36 - legend_h

        def y_of(v):
            return bottom - v / top_v * (bottom - top)

        out = _open(width, height, title, desc or _summary(series, "bar"), pid, "sc-bar-chart")
        out += _y_axis(ticks, y_of, left, right, y_label, top, bottom)
        group = (right - left) / max(1, len(cats))
        bar = group * 0.8 / k
        out.append(f'<g class="sc-axis" font-size="12" fill="{TEXT}">')
        max_chars = max(3, int(group / 6.5))
        for i, c in enumerate(cats):
            shown = c if len(c) <= max_chars else c[: max_chars - 1] + "…"
            out.append(
                f'<text x="{_f(left + group * (i + 0.5))}" y="{_f(bottom + 18)}" '
                f'text-anchor="middle">{_e(shown)}<title>{_e(c)}</title></text>'
            )
        out.append("</g>")
        for s, name in enumerate(names):
            colour = PALETTE[s % len(PALETTE)]
            out.append(f'<g class="sc-series" data-series="{_e(name)}" fill="{colour}">')
            for i, c in enumerate(cats):
                v = data[name].get(c)
                if v is None:
                    continue
                x = left + group * i + group * 0.1 + bar * s
                out.append(
                    f'<rect x="{_f(x)}" y="{_f(y_of(v))}" width="{_f(bar - 1)}" '
                    f'height="{_f(bottom - y_of(v))}"><title>{_e(name)}, {_e(c)}: '
                    f"{_e(fmt_number(v))}</title></rect>"
                )
            out.append("</g>")
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{_f(bottom)}" y2="{_f(bottom)}" stroke="{TEXT}"/>'
        )
    else:
        row = max(22, 14 * k + 8)
        label_w = min(220, max(60, 7 * max(len(c) for c in cats) + 10)) if cats else 60
        left, right, top = label_w + 8, width - 56, 8
        height = height or int(top + row * len(cats) + 44 + legend_h)
        bottom = height - 44 - legend_h

        def x_of(v):
            return left + v / top_v * (right - left)

        out = _open(width, height, title, desc or _summary(series, "bar"), pid, "sc-bar-chart")
        out.append(f'<g class="sc-axis" font-size="12" fill="{TEXT}">')
        for t in ticks:
            out.append(
                f'<line x1="{_f(x_of(t))}" x2="{_f(x_of(t))}" y1="{top}" y2="{_f(bottom)}" '
                f'stroke="{GRID}"/><text x="{_f(x_of(t))}" y="{_f(bottom + 16)}" '
                f'text-anchor="middle">{_e(fmt_number(t))}</text>'
            )
        out.append(
            f'<text x="{_f((left + right) / 2)}" y="{_f(bottom + 34)}" text-anchor="middle" '
            f'font-size="13">{_e(y_label)}</text>'
        )
        max_chars = int(label_w / 7.2)
        rows_h = (bottom - top) / max(1, len(cats))
        for i, c in enumerate(cats):
            shown = c if len(c) <= max_chars else c[: max_chars - 1] + "…"
            out.append(
                f'<text x="{_f(left - 6)}" y="{_f(top + rows_h * (i + 0.5) + 4)}" '
                f'text-anchor="end">{_e(shown)}<title>{_e(c)}</title></text>'
            )
        out.append("</g>")
        bar = rows_h * 0.8 / k
        for s, name in enumerate(names):
            colour = PALETTE[s % len(PALETTE)]
            out.append(f'<g class="sc-series" data-series="{_e(name)}" fill="{colour}">')
            for i, c in enumerate(cats):
                v = data[name].get(c)
                if v is None:
                    continue
                y = top + rows_h * i + rows_h * 0.1 + bar * s
                out.append(
                    f'<rect x="{left}" y="{_f(y)}" width="{_f(x_of(v) - left)}" '
                    f'height="{_f(bar - 1)}"><title>{_e(name)}, {_e(c)}: {_e(fmt_number(v))}'
                    f'</title></rect><text x="{_f(x_of(v) + 4)}" y="{_f(y + bar / 2 + 4)}" '
                    f'font-size="11" fill="{TEXT}">{_e(fmt_number(v))}</text>'
                )
            out.append("</g>")
        out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{_f(bottom)}" stroke="{TEXT}"/>')
    if len(names) > 1:
        legend, _ = _legend(names, 60, height - legend_h + 6, width - 76, lines=False)
        out += legend
    out.append("</svg>")
    return "".join(out)


def _wrap(text: str, max_chars: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > max_chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + [line] if line else lines


def radar_chart(
    axes: list[str],
    series: dict[str, list[float]],
    max_value: float = 5,
    *,
    title: str,
    width: int = 440,
    desc: str | None = None,
    id_prefix: str | None = None,
) -> str:
    """Radar (spider) chart, e.g. readiness level per theme, one polygon per assessment date.

    Needs at least 3 axes; each series has one value per axis in 0..max_value.
    """
    if len(axes) < 3:
        raise ValueError("a radar chart needs at least 3 axes")
    if not series:
        raise ValueError("a chart needs at least one series")
    if max_value <= 0:
        raise ValueError("max_value must be positive")
    for name, vals in series.items():
        if len(vals) != len(axes):
            raise ValueError(f"series {name!r} has {len(vals)} values for {len(axes)} axes")
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= max_value:
                raise ValueError(f"series {name!r}: value {v!r} is outside 0..{max_value}")
    names = list(series)
    legend_h = _legend(names, 0, 0, width - 32, lines=True)[1]
    label_room = 112
    radius = (width - 2 * label_room) / 2
    cx, cy = width / 2, radius + 48
    height = cy + radius + 48 + legend_h
    n = len(axes)

    def point(i, v):
        ang = -math.pi / 2 + 2 * math.pi * i / n
        r = radius * v / max_value
        return cx + r * math.cos(ang), cy + r * math.sin(ang)

    if desc is None:
        desc = (
            f"Radar chart with {n} axes ({', '.join(axes)}), scale 0 to {fmt_number(max_value)}. "
            + "; ".join(
                f"{name}: " + ", ".join(f"{a} {fmt_number(v)}" for a, v in zip(axes, vals))
                for name, vals in series.items()
            )
            + "."
        )
    pid = id_prefix or _id("sc-radar", axes, series, max_value, title, width)
    out = _open(width, height, title, desc, pid, "sc-radar-chart")
    steps = (
        list(range(1, int(max_value) + 1))
        if max_value <= 10 and float(max_value).is_integer()
        else nice_ticks(0, max_value)[1:]
    )
    out.append(f'<g class="sc-grid" fill="none" stroke="{GRID}">')
    for st in steps:
        pts = " ".join(f"{_f(x)},{_f(y)}" for x, y in (point(i, st) for i in range(n)))
        out.append(f'<polygon points="{pts}"/>')
    for i in range(n):
        x, y = point(i, max_value)
        out.append(f'<line x1="{_f(cx)}" y1="{_f(cy)}" x2="{_f(x)}" y2="{_f(y)}"/>')
    out.append("</g>")
    out.append(f'<g class="sc-scale" font-size="11" fill="{GREY}">')
    for st in steps:
        x, y = point(0, st)
        out.append(f'<text x="{_f(x + 4)}" y="{_f(y + 4)}">{_e(fmt_number(st))}</text>')
    out.append("</g>")
    out.append(f'<g class="sc-axis-labels" font-size="12" fill="{TEXT}">')
    for i, a in enumerate(axes):
        ang = -math.pi / 2 + 2 * math.pi * i / n
        x, y = cx + (radius + 10) * math.cos(ang), cy + (radius + 10) * math.sin(ang)
        anchor = "middle" if abs(math.cos(ang)) < 0.3 else ("start" if math.cos(ang) > 0 else "end")
        lines = _wrap(a, 24 if anchor == "middle" else 13)
        if math.sin(ang) < -0.5:  # above the chart: last line just clear of the outer ring
            y0 = y - 4 - (len(lines) - 1) * 14
        elif math.sin(ang) > 0.5:  # below the chart
            y0 = y + 12
        else:
            y0 = y + 4 - (len(lines) - 1) * 7
        tspans = "".join(
            f'<tspan x="{_f(x)}" y="{_f(y0 + 14 * j)}">{_e(line)}</tspan>'
            for j, line in enumerate(lines)
        )
        out.append(f'<text class="sc-axis-label" text-anchor="{anchor}">{tspans}</text>')
    out.append("</g>")
    for s, name in enumerate(names):
        colour, dash, shape = (
            PALETTE[s % len(PALETTE)],
            DASHES[s % len(DASHES)],
            SHAPES[s % len(SHAPES)],
        )
        pts = [point(i, v) for i, v in enumerate(series[name])]
        out.append(f'<g class="sc-series" data-series="{_e(name)}">')
        out.append(
            f'<polygon points="{" ".join(f"{_f(x)},{_f(y)}" for x, y in pts)}" fill="{colour}" '
            f'fill-opacity="0.12" stroke="{colour}" stroke-width="2.5"'
            + (f' stroke-dasharray="{dash}"' if dash else "")
            + "/>"
        )
        for (x, y), a, v in zip(pts, axes, series[name]):
            out.append(_marker(shape, x, y, 3.5, colour, f"{name}, {a}: {fmt_number(v)}"))
        out.append("</g>")
    legend, _ = _legend(names, 16, height - legend_h + 6, width - 32, lines=True)
    out += legend
    out.append("</svg>")
    return "".join(out)


def trend_sparkline(
    values: list[float | None],
    *,
    label: str,
    width: int = 120,
    height: int = 28,
    colour: str = NHS_BLUE,
    id_prefix: str | None = None,
) -> str:
    """Word-sized trend line (for a table cell or a card). Its accessible name states the
    label, the first and latest values and the direction."""
    nums = [v for v in values if v is not None]
    if not nums:
        summary = f"{label}: no data"
    else:
        direction = (
            ("up" if nums[-1] > nums[0] else "down" if nums[-1] < nums[0] else "unchanged")
            if len(nums) > 1
            else "one value"
        )
        summary = (
            f"{label}: {fmt_number(nums[0])} to {fmt_number(nums[-1])} over {len(values)} "
            f"points, {direction}; range {fmt_number(min(nums))} to {fmt_number(max(nums))}"
        )
    pid = id_prefix or _id("sc-spark", values, label, width, height)
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="sc-sparkline" role="img" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-labelledby="{pid}-title">'
        ),
        f'<title id="{pid}-title">{_e(summary)}</title>',
    ]
    if nums:
        lo, hi = min(nums), max(nums)
        span = (hi - lo) or 1
        pad = 3

        def xy(i, v):
            x = pad + (width - 2 * pad) * (i / (len(values) - 1) if len(values) > 1 else 0.5)
            y = height - pad - (v - lo) / span * (height - 2 * pad) if hi != lo else height / 2
            return x, y

        d, pen, last = [], False, None
        for i, v in enumerate(values):
            if v is None:
                pen = False
                continue
            x, y = xy(i, v)
            d.append(f"{'L' if pen else 'M'}{_f(x)} {_f(y)}")
            pen, last = True, (x, y)
        out.append(
            f'<path d="{"".join(d)}" fill="none" stroke="{colour}" stroke-width="1.8" '
            f'stroke-linejoin="round" stroke-linecap="round"/>'
        )
        out.append(f'<circle cx="{_f(last[0])}" cy="{_f(last[1])}" r="2.5" fill="{colour}"/>')
    out.append("</svg>")
    return "".join(out)


def as_table(
    series: dict,
    *,
    caption: str,
    categories: list[str] | None = None,
    x_label: str = "",
    visually_hidden: bool = True,
) -> str:
    """HTML table alternative for a chart: a row per category, a column per series.

    ``series`` is ``{name: [(label, value), ...]}``; or, with ``categories`` (e.g. a radar
    chart's axes), ``{name: [value, ...]}`` aligned to them. Missing values show as an empty cell.
    """
    if categories is not None:
        for name, vals in series.items():
            if len(vals) != len(categories):
                raise ValueError(
                    f"series {name!r} has {len(vals)} values for {len(categories)} categories"
                )
        series = {name: list(zip(categories, vals)) for name, vals in series.items()}
        cats = [str(c) for c in categories]
    else:
        cats = _categories(series)
    data = _lookup(series)
    cls = "nhsuk-table sc-chart-table" + (" nhsuk-u-visually-hidden" if visually_hidden else "")
    head = f'<th scope="col" class="nhsuk-table__header">{_e(x_label)}</th>' + "".join(
        f'<th scope="col" class="nhsuk-table__header nhsuk-table__header--numeric">{_e(n)}</th>'
        for n in series
    )
    body = []
    for c in cats:
        cells = "".join(
            f'<td class="nhsuk-table__cell nhsuk-table__cell--numeric">'
            f"{_e(fmt_number(data[n].get(c)))}</td>"
            for n in series
        )
        body.append(
            f'<tr class="nhsuk-table__row"><th scope="row" class="nhsuk-table__header">'
            f"{_e(c)}</th>{cells}</tr>"
        )
    return (
        f'<table class="{cls}"><caption class="nhsuk-table__caption">{_e(caption)}</caption>'
        f'<thead class="nhsuk-table__head"><tr class="nhsuk-table__row">{head}</tr></thead>'
        f'<tbody class="nhsuk-table__body">{"".join(body)}</tbody></table>'
    )
