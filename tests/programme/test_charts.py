import xml.etree.ElementTree as ET

import pytest

from sharedcare.programme.charts import (
    as_table,
    bar_chart,
    line_chart,
    nice_ticks,
    radar_chart,
    trend_sparkline,
)

SVG = "{http://www.w3.org/2000/svg}"
MONTHS = ["2024-01", "2024-02", "2024-03", "2024-04"]
SERIES = {
    "Record views": list(zip(MONTHS, [120, 180, None, 420])),
    "Users <active> & 'new'": list(zip(MONTHS, [20, 40, 80, 90])),
}
AXES = [
    "Leadership and management",
    "User engagement",
    "Information governance",
    "Partnerships",
    "Resourcing and skills",
]


def accessible(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # well-formed: escaping worked
    assert root.get("role") == "img"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and title.text
    ids = root.get("aria-labelledby").split()
    assert ids[0] == title.get("id")
    if desc is not None:
        assert ids[1] == desc.get("id") and desc.text
    return root


def texts(root):
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def test_line_chart():
    svg = line_chart(SERIES, title="Views & users <2024>", y_label="Count", x_label="Month")
    root = accessible(svg)
    assert root.find(f"{SVG}title").text == "Views & users <2024>"
    assert "&lt;2024&gt;" in svg and "<2024>" not in svg
    series = [g for g in root.iter(f"{SVG}g") if g.get("class") == "sc-series"]
    assert [g.get("data-series") for g in series] == list(SERIES)
    # a None makes a gap: the views line is two sub-paths
    views_path = series[0].find(f"{SVG}path").get("d")
    assert views_path.count("M") == 2 and views_path.count("L") == 1
    assert len(series[1].find(f"{SVG}path").get("d").split("L")) == 4
    labels = texts(root)
    assert "2024-01" in labels and "Month" in labels and "Count" in labels
    assert "Users <active> & 'new'" in labels  # legend
    assert "Record views: 120 in 2024-01 to 420 in 2024-04" in root.find(f"{SVG}desc").text


def test_line_chart_y_axis_covers_the_data():
    root = accessible(line_chart({"a": [("x", 3), ("y", 97)]}, title="t", y_label="n"))
    ticks = [float(t.replace(",", "")) for t in texts(root) if t.replace(",", "").isdigit()]
    assert min(ticks) == 0 and max(ticks) >= 97


def test_bar_chart_vertical_and_horizontal():
    data = {
        "2023": [("NHS Lancashire and South Cumbria ICB", 12), ("Leeds", 30)],
        "2024": [("NHS Lancashire and South Cumbria ICB", 20), ("Leeds", 35)],
    }
    for horizontal in (False, True):
        root = accessible(
            bar_chart(data, title="Partners live", y_label="Partners", horizontal=horizontal)
        )
        bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
        assert len(bars) == 4
        tips = [r.find(f"{SVG}title").text for r in bars]
        assert "2024, Leeds: 35" in tips
        dim = "width" if horizontal else "height"
        size = {t: float(r.get(dim)) for t, r in zip(tips, bars)}
        assert (
            size["2024, Leeds: 35"]
            > size["2023, Leeds: 30"]
            > size["2023, NHS Lancashire and South Cumbria ICB: 12"]
        )
    with pytest.raises(ValueError):
        bar_chart({"a": [("x", -1)]}, title="t", y_label="n")


def test_radar_chart_has_axis_labels_and_a_polygon_per_series():
    svg = radar_chart(
        AXES,
        {"March 2024": [1, 2, 1, 0, 2], "March 2025": [3, 3, 2, 1, 4]},
        max_value=5,
        title="Readiness over time",
    )
    root = accessible(svg)
    labels = [
        " ".join("".join(t.itertext()) for t in g.iter(f"{SVG}tspan"))
        for g in root.iter(f"{SVG}text")
        if g.get("class") == "sc-axis-label"
    ]
    assert [" ".join(lbl.split()) for lbl in labels] == AXES
    series = [g for g in root.iter(f"{SVG}g") if g.get("class") == "sc-series"]
    assert [g.get("data-series") for g in series] == ["March 2024", "March 2025"]
    desc = root.find(f"{SVG}desc").text
    assert "March 2025: Leadership and management 3" in desc
    # grid: one ring per level
    grid = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "sc-grid")
    assert len(grid.findall(f"{SVG}polygon")) == 5
    # the later, larger assessment encloses the earlier one: its first vertex is further out
    first = [g.find(f"{SVG}polygon").get("points").split()[0] for g in series]
    y2024, y2025 = (float(p.split(",")[1]) for p in first)
    assert y2025 < y2024  # first axis points straight up


@pytest.mark.parametrize(
    "axes,series",
    [
        (["a", "b"], {"s": [1, 2]}),
        (["a", "b", "c"], {"s": [1, 2]}),
        (["a", "b", "c"], {"s": [1, 2, 6]}),
        (["a", "b", "c"], {}),
    ],
)
def test_radar_chart_rejects_bad_input(axes, series):
    with pytest.raises(ValueError):
        radar_chart(axes, series, title="t")


def test_trend_sparkline():
    root = accessible(trend_sparkline([3, 5, None, 4, 8], label="Daily views"))
    assert root.find(f"{SVG}title").text == "Daily views: 3 to 8 over 5 points, up; range 3 to 8"
    assert root.find(f"{SVG}path").get("d").count("M") == 2
    empty = accessible(trend_sparkline([], label="Nothing"))
    assert empty.find(f"{SVG}title").text == "Nothing: no data"
    flat = accessible(trend_sparkline([2, 2], label="Flat"))
    assert "unchanged" in flat.find(f"{SVG}title").text


def test_as_table():
    html = as_table(SERIES, caption="Views <by month>", x_label="Month")
    root = ET.fromstring(html)
    assert "nhsuk-u-visually-hidden" in root.get("class")
    assert root.find("caption").text == "Views <by month>"
    assert [th.text for th in root.find("thead").iter("th")] == ["Month", *SERIES]
    rows = root.find("tbody").findall("tr")
    assert [r.find("th").text for r in rows] == MONTHS
    assert [td.text for td in rows[2].findall("td")] == [None, "80"]  # a gap is an empty cell
    radar = ET.fromstring(
        as_table({"2025": [3, 2, 1, 0, 4.5]}, caption="c", categories=AXES, visually_hidden=False)
    )
    assert "nhsuk-u-visually-hidden" not in radar.get("class")
    assert [td.text for td in radar.iter("td")] == ["3", "2", "1", "0", "4.5"]


def test_nice_ticks():
    assert nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0, 5) == [0, 1, 2, 3, 4, 5]
    assert nice_ticks(0, 1010) == [0, 250, 500, 750, 1000, 1250]


def test_charts_are_deterministic_and_ids_differ_between_charts():
    a = line_chart(SERIES, title="A", y_label="n")
    assert a == line_chart(SERIES, title="A", y_label="n")
    b = line_chart(SERIES, title="B", y_label="n")
    assert ET.fromstring(a).find(f"{SVG}title").get("id") != ET.fromstring(b).find(
        f"{SVG}title"
    ).get("id")
    assert 'id="mine-title"' in line_chart(SERIES, title="A", y_label="n", id_prefix="mine")


def test_rejects_non_numbers():
    with pytest.raises(ValueError):
        line_chart({"a": [("x", "12")]}, title="t", y_label="n")
    with pytest.raises(ValueError):
        line_chart({}, title="t", y_label="n")
