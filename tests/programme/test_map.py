import json
import re
import xml.etree.ElementTree as ET

import pytest

from sharedcare.programme import map as pmap
from sharedcare.programme.map import (
    ATTRIBUTION,
    MapPoint,
    approximate_location,
    icb_bounds,
    icb_for_point,
    icbs,
    render_partner_map,
)

SVG = "{http://www.w3.org/2000/svg}"
GM = "E54000057"  # NHS Greater Manchester ICB
WY = "E54000054"  # NHS West Yorkshire ICB

POINTS = [
    MapPoint("Leeds Teaching Hospitals", 53.80, -1.55, "live", "acute trust", "/partners/rr8"),
    MapPoint("Salford Royal <A&E>", 53.49, -2.32, "signed", "acute trust"),
    MapPoint(
        "St Helena Hospice", 51.89, 0.90, "onboarding", "hospice", "/partners/hospice?x=1&y=2"
    ),
    MapPoint("Truro Health Park", 50.26, -5.05, "Not signed", "GP practice"),
    MapPoint("Newcastle City Council", 54.97, -1.61, "paused", "local authority"),
]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # also proves the output is well-formed XML


def test_shipped_boundaries_are_small_complete_and_licensed():
    size = pmap.BOUNDARIES_FILE.stat().st_size
    assert size < 600_000
    data = json.loads(pmap.BOUNDARIES_FILE.read_text())
    codes = [f["properties"]["code"] for f in data["features"]]
    assert len(codes) == len(set(codes)) == 42
    assert all(re.fullmatch(r"E54\d{6}", c) for c in codes)
    note = (pmap.DATA_DIR / "LICENSE-icb-boundaries.md").read_text()
    assert "Open Government Licence v3.0" in note and "Contains OS data" in note


def test_map_has_a_path_per_icb_markers_and_attribution():
    svg = render_partner_map(POINTS, highlight_icb=GM)
    root = parse(svg)
    icb_paths = [p for p in root.iter(f"{SVG}path") if p.get("data-icb")]
    assert len(icb_paths) == 42
    assert {p.get("data-icb") for p in icb_paths} == {c for c, _ in icbs()}
    highlighted = next(p for p in icb_paths if p.get("data-icb") == GM)
    assert highlighted.get("fill") == "#d2e3f4"
    assert all(p.get("fill") == "#e8edee" for p in icb_paths if p.get("data-icb") != GM)
    # one focusable marker per point, each with an accessible name
    markers = [el for el in root.iter() if "sc-point" in (el.get("class") or "").split()]
    assert len(markers) == len(POINTS)
    names = [m.get("aria-label") for m in markers]
    assert names == [pmap.marker_name(p) for p in POINTS]
    assert "Salford Royal <A&E>, acute trust: Signed" in names
    assert "Truro Health Park, GP practice: Not signed" in names
    links = [m for m in markers if m.tag == f"{SVG}a"]
    assert [a.get("href") for a in links] == ["/partners/rr8", "/partners/hospice?x=1&y=2"]
    for m in markers:
        if m.tag != f"{SVG}a":
            assert m.get("tabindex") == "0" and m.get("role") == "img"
    # escaped in the raw text, attribution present in full
    assert "Salford Royal &lt;A&amp;E&gt;" in svg and "<A&E>" not in svg
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}tspan"))
    assert text == ATTRIBUTION
    title = root.find(f"{SVG}title").text
    desc = root.find(f"{SVG}desc").text
    assert title and "5 partners" in desc and "Greater Manchester" in desc and ATTRIBUTION in desc
    assert root.get("aria-labelledby").split() == [
        root.find(f"{SVG}title").get("id"),
        root.find(f"{SVG}desc").get("id"),
    ]


def test_legend_lists_every_status_with_colour_and_count():
    root = parse(render_partner_map(POINTS))
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "sc-legend")
    labels = [t.text for t in legend.iter(f"{SVG}text")]
    assert labels == ["Live (1)", "Signed (1)", "Onboarding (1)", "Not signed (1)", "Paused (1)"]
    fills = {el.get("fill") for el in legend if el.get("class") == "sc-marker"}
    assert fills == {"#007f3b", "#005eb8", "#ffb81c", "#768692", "#d5281b"}


def test_markers_sit_where_the_projection_puts_them():
    root = parse(render_partner_map(POINTS))
    width = float(root.get("viewBox").split()[2])
    live = next(el for el in root.iter() if el.get("aria-label", "").startswith("Leeds"))
    marker = next(el for el in live if el.get("class") == "sc-marker")
    x, y = float(marker.get("cx")), float(marker.get("cy"))
    truro = next(el for el in root.iter() if el.get("aria-label", "").startswith("Truro"))
    tx = min(
        float(v.split(",")[0])
        for v in next(el for el in truro if el.get("class") == "sc-marker").get("points").split()
    )
    assert 0 < tx < x < width  # Cornwall is west of Leeds
    newcastle = next(el for el in root.iter() if el.get("aria-label", "").startswith("Newcastle"))
    ny = float(
        next(el for el in newcastle if el.get("class") == "sc-marker")
        .get("points")
        .split()[0]
        .split(",")[1]
    )
    assert ny < y  # Newcastle is north of Leeds


def test_unknown_status_and_icb_are_rejected():
    with pytest.raises(ValueError, match="unknown partner status"):
        render_partner_map([MapPoint("X", 52.0, -1.0, "maybe", "GP practice")])
    with pytest.raises(KeyError):
        render_partner_map([], highlight_icb="E54999999")
    assert "No partners to show" in render_partner_map([])


def test_zoom_to_one_icb_keeps_only_what_is_inside():
    bounds = icb_bounds(WY)
    min_lon, min_lat, max_lon, max_lat = bounds
    assert min_lon < -1.55 < max_lon and min_lat < 53.80 < max_lat
    root = parse(render_partner_map(POINTS, highlight_icb=WY, bounds=bounds))
    markers = [el for el in root.iter() if "sc-point" in (el.get("class") or "").split()]
    # West Yorkshire's box (it includes Craven) reaches Salford, which is drawn though not in the ICB
    assert [m.get("aria-label") for m in markers] == [
        "Leeds Teaching Hospitals, acute trust: Live",
        "Salford Royal <A&E>, acute trust: Signed",
    ]
    drawn = {p.get("data-icb") for p in root.iter(f"{SVG}path") if p.get("data-icb")}
    assert WY in drawn and GM in drawn  # neighbour shown for context
    assert "E54000036" not in drawn  # Cornwall is far away
    assert "2 of 5 partners" in root.find(f"{SVG}desc").text


@pytest.mark.parametrize(
    "lat,lon,code",
    [
        (53.48, -2.24, GM),  # Manchester
        (53.80, -1.55, WY),  # Leeds
        (51.508, -0.128, "E54000027"),  # Trafalgar Square, Westminster: North West London
        (52.48, -1.90, "E54000055"),  # Birmingham
        (50.26, -5.05, "E54000036"),  # Truro
        (54.97, -1.61, "E54000050"),  # Newcastle
    ],
)
def test_icb_for_point(lat, lon, code):
    found = icb_for_point(lat, lon)
    assert found is not None and found[0] == code
    assert found[1].startswith("NHS ") and found[1].endswith("Integrated Care Board")


@pytest.mark.parametrize("lat,lon", [(55.95, -3.19), (51.48, -3.18), (52.0, 2.5), (48.86, 2.35)])
def test_icb_for_point_outside_england(lat, lon):  # Edinburgh, Cardiff, North Sea, Paris
    assert icb_for_point(lat, lon) is None


def test_icb_for_point_agrees_with_the_ons_centroids():
    # The ONS LAT/LONG of each ICB is its population-weighted or geometric centre; for all
    # but oddly shaped ICBs it lies inside the ICB.
    data = json.loads(pmap.BOUNDARIES_FILE.read_text())
    hits = sum(
        icb_for_point(f["properties"]["lat"], f["properties"]["lon"]) is not None
        and icb_for_point(f["properties"]["lat"], f["properties"]["lon"])[0]
        == f["properties"]["code"]
        for f in data["features"]
    )
    assert hits >= 40


def test_approximate_location_covers_every_english_postcode_area():
    table = json.loads(pmap.POSTCODE_AREAS_FILE.read_text())
    english = {
        "AL",
        "B",
        "BA",
        "BB",
        "BD",
        "BH",
        "BL",
        "BN",
        "BR",
        "BS",
        "CA",
        "CB",
        "CH",
        "CM",
        "CO",
        "CR",
        "CT",
        "CV",
        "CW",
        "DA",
        "DE",
        "DH",
        "DL",
        "DN",
        "DT",
        "DY",
        "E",
        "EC",
        "EN",
        "EX",
        "FY",
        "GL",
        "GU",
        "HA",
        "HD",
        "HG",
        "HP",
        "HR",
        "HU",
        "HX",
        "IG",
        "IP",
        "KT",
        "L",
        "LA",
        "LE",
        "LN",
        "LS",
        "LU",
        "M",
        "ME",
        "MK",
        "N",
        "NE",
        "NG",
        "NN",
        "NR",
        "NW",
        "OL",
        "OX",
        "PE",
        "PL",
        "PO",
        "PR",
        "RG",
        "RH",
        "RM",
        "S",
        "SE",
        "SG",
        "SK",
        "SL",
        "SM",
        "SN",
        "SO",
        "SP",
        "SR",
        "SS",
        "ST",
        "SW",
        "SY",
        "TA",
        "TF",
        "TN",
        "TQ",
        "TR",
        "TS",
        "TW",
        "UB",
        "W",
        "WA",
        "WC",
        "WD",
        "WF",
        "WN",
        "WR",
        "WS",
        "WV",
        "YO",
    }
    assert english <= set(table["areas"])
    for area in table["areas"]:
        loc = approximate_location(area)
        assert loc is not None and icb_for_point(*loc) is not None, area


@pytest.mark.parametrize(
    "postcode,code",
    [
        ("M1 1AE", GM),
        ("m11ae", GM),
        ("LS1 4AP", WY),
        ("BD1", WY),
        ("B1 1AA", "E54000055"),
        ("NE1 4LP", "E54000050"),
        ("TR1 3LJ", "E54000036"),
        ("TD15 1AA", "E54000050"),
        ("SW1A 1AA", "E54000031"),
    ],
)
def test_approximate_location_lands_in_the_right_icb(postcode, code):
    loc = approximate_location(postcode)
    assert loc is not None and icb_for_point(*loc)[0] == code


@pytest.mark.parametrize(
    "postcode", ["CF10 1EP", "EH1 1YZ", "BT1 1AA", "", "12345", "not a postcode"]
)
def test_approximate_location_unknown(postcode):
    assert approximate_location(postcode) is None


def test_douglas_peucker_keeps_corners_and_drops_collinear_points():
    line = [(0, 0), (1, 0.01), (2, 0), (3, 0), (3, 1), (3, 2)]
    assert pmap.douglas_peucker(line, 0.1) == [(0, 0), (3, 0), (3, 2)]
    assert pmap.douglas_peucker(line, 0) == line


def test_partner_table_is_a_text_alternative():
    html = pmap.partner_table(POINTS)
    assert html.count("<tr") == len(POINTS) + 1
    assert "Salford Royal &lt;A&amp;E&gt;" in html
    assert "NHS Greater Manchester Integrated Care Board" in html
    assert '<a href="/partners/hospice?x=1&amp;y=2">' in html
