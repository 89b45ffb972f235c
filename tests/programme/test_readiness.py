import json
import re

import pytest

from sharedcare.programme import readiness
from sharedcare.programme.readiness import FRAMEWORK, element_ids, levels_for_chart, score, weakest

THEMES = [
    "leadership",
    "user-engagement",
    "information-governance",
    "partnerships",
    "resourcing-skills",
]
WGLL = {
    "well-led",
    "smart-foundations",
    "safe-practice",
    "support-people",
    "empower-citizens",
    "improve-care",
    "healthy-populations",
}


def ids_up_to(theme_id, level):
    t = FRAMEWORK.theme(theme_id)
    return [e.id for lv in t.levels[:level] for e in lv.elements]


def test_framework_shape():
    assert [t.id for t in FRAMEWORK.themes] == THEMES
    assert [t.name for t in FRAMEWORK.themes] == [
        "Leadership and management",
        "User engagement",
        "Information governance",
        "Partnerships",
        "Resourcing and skills",
    ]
    assert {m.id for m in FRAMEWORK.success_measures} == WGLL
    covered = set()
    for t in FRAMEWORK.themes:
        assert [lv.level for lv in t.levels] == [1, 2, 3, 4, 5]
        assert t.wgll and t.starting_action
        covered |= {m.id for m in t.wgll}
        for lv in t.levels:
            assert 2 <= len(lv.elements) <= 4
            assert lv.next_action and lv.label
            for e in lv.elements:
                assert re.fullmatch(rf"{t.id}\.{lv.level}[a-d]", e.id)
                assert len(e.statement) > 30
    assert covered == WGLL  # every success measure is served by some theme
    ids = element_ids()
    assert len(ids) == len(set(ids))


def test_framework_contains_the_key_statements():
    text = " ".join(e.statement for t in FRAMEWORK.themes for lv in t.levels for e in lv.elements)
    for phrase in [
        "clinicians and managers meets regularly to identify clinical problems",
        "both change management and technical support",
        "peaks and troughs",
        "Information governance leads from all partners meet and agree sharing agreements",
        "involved in design from the start and throughout",
    ]:
        assert phrase in text


def test_element_ids_are_stable():
    # answers are stored against these ids; renaming one silently loses people's answers
    assert element_ids()[:3] == ["leadership.1a", "leadership.1b", "leadership.2a"]
    assert "partnerships.3a" in element_ids() and "resourcing-skills.5b" in element_ids()


def test_nothing_met_is_level_zero_with_the_starting_action():
    results = score({})
    assert set(results) == set(THEMES)
    for tid, r in results.items():
        t = FRAMEWORK.theme(tid)
        assert r.level == 0 and r.met == ()
        assert r.unmet_next == tuple(e.id for e in t.level(1).elements)
        assert r.next_actions[0] == t.starting_action


def test_everything_met_is_level_five():
    results = score({i: True for i in element_ids()})
    assert all(r.level == 5 and r.unmet_next == () for r in results.values())
    assert results["partnerships"].next_actions == (
        FRAMEWORK.theme("partnerships").level(5).next_action,
    )


def test_a_level_counts_only_when_all_its_elements_are_met():
    answers = {i: True for i in ids_up_to("leadership", 2)}
    assert score(answers)["leadership"].level == 2
    answers["leadership.2b"] = False
    r = score(answers)["leadership"]
    assert r.level == 1
    assert r.unmet_next == ("leadership.2b",)
    assert r.next_actions[0] == FRAMEWORK.theme("leadership").level(1).next_action
    assert FRAMEWORK.theme("leadership").level(2).elements[1].statement in r.next_actions


def test_higher_levels_do_not_count_above_a_gap():
    # all of levels 1, 3, 4 and 5 met, one element of level 2 missing: still level 1
    answers = {i: True for i in ids_up_to("user-engagement", 5) if i != "user-engagement.2a"}
    r = score(answers)["user-engagement"]
    assert r.level == 1
    assert r.unmet_next == ("user-engagement.2a",)
    assert "user-engagement.5b" in r.met and "user-engagement.5b" in r.met_above
    assert "user-engagement.2b" in r.met and "user-engagement.2b" not in r.met_above


def test_explicit_false_is_not_met_and_unknown_ids_are_rejected():
    assert score({"leadership.1a": False, "leadership.1b": True})["leadership"].level == 0
    with pytest.raises(ValueError, match="leadership.9z"):
        score({"leadership.9z": True})


def test_weakest_orders_by_level_then_elements_met():
    answers = {i: True for t in THEMES for i in ids_up_to(t, 3)}
    for i in ids_up_to("partnerships", 3)[2:]:  # partnerships down to level 1
        answers[i] = False
    for i in ids_up_to("information-governance", 3)[5:]:  # IG down to level 2
        answers[i] = False
    results = score(answers)
    assert results["partnerships"].level == 1 and results["information-governance"].level == 2
    assert weakest(results) == ["partnerships", "information-governance"]
    assert weakest(results, n=1) == ["partnerships"]
    # ties on level: fewer elements met comes first
    tie = score({"leadership.1a": True, "user-engagement.1a": True, "user-engagement.4a": True})
    assert weakest(tie, n=3) == ["information-governance", "partnerships", "resourcing-skills"]


def test_levels_for_chart():
    axes, levels = levels_for_chart(score({i: True for i in ids_up_to("leadership", 4)}))
    assert axes[0] == "Leadership and management" and len(axes) == 5
    assert levels == [4.0, 0.0, 0.0, 0.0, 0.0]


def test_framework_file_is_validated(tmp_path):
    data = json.loads(readiness.FRAMEWORK_FILE.read_text())
    data["themes"][1]["levels"][0]["elements"][0]["id"] = "leadership.1a"
    bad = tmp_path / "f.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="duplicate element id"):
        readiness.load_framework(bad)
