"""The case-study library: illustrative seed, search, map points."""

from __future__ import annotations

import json

import pytest

from sharedcare.programme import casestudies
from sharedcare.programme.map import STATUSES


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'cases.sqlite'}"


def test_seed_is_labelled_illustrative_and_complete():
    data = json.loads(casestudies.SEED_FILE.read_text())
    assert "ILLUSTRATIVE" in data["note"]
    assert len(data["case_studies"]) >= 8
    themes = set(casestudies.theme_names())
    for c in data["case_studies"]:
        assert c["status"] in casestudies.STATUSES
        assert set(c["themes"].split()) <= themes
        assert "illustrative" in c["organisation"]


def test_search_by_text_and_theme_and_map_points(sc):
    assert casestudies.ensure_seeded(sc.engine) >= 8
    assert casestudies.ensure_seeded(sc.engine) == 0  # once
    every = casestudies.search(sc.engine)
    assert all(r["lat"] is not None for r in every)  # every seed postcode is placed
    assert [r["title"] for r in casestudies.search(sc.engine, "paramedic")] == [
        "Paramedic access to care plans"]
    ig = casestudies.search(sc.engine, theme="information-governance")
    assert ig and all("information-governance" in r["theme_ids"] for r in ig)
    assert casestudies.search(sc.engine, "palliative leeds")[0]["place"] == "Leeds"
    assert casestudies.search(sc.engine, "no such words here") == []
    points = casestudies.map_points(every)
    assert len(points) == len(every) and all(p.status in STATUSES for p in points)


def test_add_validates(sc):
    with pytest.raises(ValueError):
        casestudies.add(sc.engine, "", "Leeds", None, None, [], "live", None)
    with pytest.raises(ValueError):
        casestudies.add(sc.engine, "T", "Leeds", None, None, ["nope"], "live", None)
    cid = casestudies.add(sc.engine, "Virtual wards", "Leeds", "x", "y", ["partnerships"],
                          "live", "z", "LS1")
    assert any(r["id"] == cid for r in casestudies.search(sc.engine, "virtual"))
