import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharedcare.population.suppression import round_to, suppress_counts, suppress_table

STAR = "*"

# counts skewed towards the small numbers that need suppressing
count = st.one_of(st.integers(0, 6), st.integers(0, 60), st.integers(0, 5000))


@st.composite
def tables(draw):
    n_rows = draw(st.integers(1, 5))
    n_cols = draw(st.integers(1, 5))
    grid = [[draw(count) for _ in range(n_cols)] for _ in range(n_rows)]
    return grid


def to_long(grid):
    return [
        {"practice": f"P{r}", "age": f"A{c}", "n": v}
        for r, row in enumerate(grid)
        for c, v in enumerate(row)
    ]


def lines_of(t, grid):
    """Every additive line as (members [(published, true)], (published total, true total))."""
    rows = [f"P{r}" for r in range(len(grid))]
    cols = [f"A{c}" for c in range(len(grid[0]))]
    true_row = {f"P{r}": sum(row) for r, row in enumerate(grid)}
    true_col = {f"A{c}": sum(grid[r][c] for r in range(len(grid))) for c in range(len(grid[0]))}
    grand = sum(true_row.values())
    out = []
    for r_i, r in enumerate(rows):
        out.append(
            (
                [(t.cells[(r, c)], grid[r_i][c_i]) for c_i, c in enumerate(cols)],
                (t.row_totals[r], true_row[r]),
            )
        )
    for c_i, c in enumerate(cols):
        out.append(
            (
                [(t.cells[(r, c)], grid[r_i][c_i]) for r_i, r in enumerate(rows)],
                (t.col_totals[c], true_col[c]),
            )
        )
    out.append(([(t.row_totals[r], true_row[r]) for r in rows], (t.grand_total, grand)))
    out.append(([(t.col_totals[c], true_col[c]) for c in cols], (t.grand_total, grand)))
    return out


def published_pairs(t, grid):
    for members, total in lines_of(t, grid):
        yield from members
        yield total


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(), st.sampled_from([5, 10]), st.sampled_from([1, 5, 10]), st.booleans())
def test_table_properties(grid, threshold, rounding, suppress_zero):
    t = suppress_table(
        to_long(grid),
        row_key="practice",
        col_key="age",
        value_key="n",
        threshold=threshold,
        rounding=rounding,
        suppress_zero=suppress_zero,
    )
    for shown, true in published_pairs(t, grid):
        # 1. nothing below the threshold is published (zero only when allowed) ...
        if 0 < true < threshold or (true == 0 and suppress_zero):
            assert shown == STAR
        # 2. ... and everything published is the true value rounded to the base
        if shown != STAR:
            assert true >= threshold or (true == 0 and not suppress_zero)
            assert shown == round_to(true, rounding)
            assert shown % rounding == 0 and abs(shown - true) <= rounding / 2
    # 3. no suppressed entry can be recovered by subtraction: brute force over every line
    for members, (total_shown, _) in lines_of(t, grid):
        hidden = sum(1 for shown, _ in members if shown == STAR)
        if total_shown != STAR:
            assert hidden == 0 or hidden >= 2, (grid, t)
        else:
            # a suppressed total with every member published is recoverable by addition
            assert hidden >= 1, (grid, t)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=3).filter(lambda k: k != "Total"),
        count,
        min_size=1,
        max_size=8,
    ),
    st.booleans(),
)
def test_counts_properties(counts, total):
    out = suppress_counts(counts, total=total)
    for k, v in counts.items():
        if 0 < v < 5:
            assert out[k] == STAR
        if out[k] != STAR:
            assert out[k] == round_to(v, 5)
    if total:
        hidden = sum(1 for k in counts if out[k] == STAR)
        if out["Total"] != STAR:
            assert hidden in (0,) or hidden >= 2
        else:
            assert hidden >= 1
    else:
        assert "Total" not in out


def test_rounding():
    assert [round_to(v, 5) for v in (0, 5, 6, 7, 8, 9, 10, 12, 13, 1002, 1003)] == [
        0,
        5,
        5,
        5,
        10,
        10,
        10,
        10,
        15,
        1000,
        1005,
    ]
    assert round_to(15, 10) == 20 and round_to(14, 10) == 10  # halves go up
    assert round_to(7, 1) == 7


def test_worked_example():
    grid = {
        ("A", "0-17"): 3,
        ("A", "18-64"): 40,
        ("A", "65+"): 22,
        ("B", "0-17"): 12,
        ("B", "18-64"): 9,
        ("B", "65+"): 51,
        ("C", "0-17"): 0,
        ("C", "18-64"): 33,
        ("C", "65+"): 7,
    }
    rows = [{"practice": p, "age": a, "n": n} for (p, a), n in grid.items()]
    t = suppress_table(rows, row_key="practice", col_key="age", value_key="n")
    assert t.primary == {("cell", "A", "0-17")}
    # A's complement is its smallest non-zero cell (22); that pushes 7 in column 65+, then 33
    # in row C (its zero is not used), then 9 in column 18-64; column 0-17 takes 12 (not 0).
    assert t.secondary == {
        ("cell", "A", "65+"),
        ("cell", "C", "65+"),
        ("cell", "C", "18-64"),
        ("cell", "B", "18-64"),
        ("cell", "B", "0-17"),
    }
    assert t.to_rows() == [
        {"practice": "A", "0-17": "*", "18-64": 40, "65+": "*", "Total": 65},
        {"practice": "B", "0-17": "*", "18-64": "*", "65+": 50, "Total": 70},
        {"practice": "C", "0-17": 0, "18-64": "*", "65+": "*", "Total": 40},
        {"practice": "Total", "0-17": 15, "18-64": 80, "65+": 80, "Total": 175},
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=t.fieldnames())
    w.writeheader()
    w.writerows(t.to_rows())
    assert buf.getvalue().splitlines()[:2] == ["practice,0-17,18-64,65+,Total", "A,*,40,*,65"]


def test_small_totals_are_suppressed_and_protected():
    # row B's total is 4: suppressed; the totals column then needs a second suppressed total
    rows = [
        {"r": "A", "c": "x", "n": 50},
        {"r": "A", "c": "y", "n": 60},
        {"r": "B", "c": "x", "n": 0},
        {"r": "B", "c": "y", "n": 4},
        {"r": "C", "c": "x", "n": 70},
        {"r": "C", "c": "y", "n": 80},
    ]
    t = suppress_table(rows, row_key="r", col_key="c", value_key="n")
    assert t.row_totals["B"] == STAR and t.cells[("B", "y")] == STAR
    assert sum(v == STAR for v in t.row_totals.values()) >= 2 or t.grand_total == STAR


def test_duplicates_are_added_and_missing_cells_are_zero():
    rows = [
        {"r": "A", "c": "x", "n": 10},
        {"r": "A", "c": "x", "n": 12},
        {"r": "B", "c": "y", "n": 30},
    ]
    t = suppress_table(rows, row_key="r", col_key="c", value_key="n", rounding=1)
    assert t.cells == {("A", "x"): 22, ("A", "y"): 0, ("B", "x"): 0, ("B", "y"): 30}
    assert t.grand_total == 52


def test_zero_handling_is_configurable():
    assert suppress_counts({"a": 0, "b": 20}) == {"a": 0, "b": 20, "Total": 20}
    out = suppress_counts({"a": 0, "b": 20, "c": 30}, suppress_zero=True)
    assert out["a"] == STAR and out["b"] == STAR and out["c"] == 30  # b protects a


def test_counts_custom_options():
    out = suppress_counts(
        {"a": 7, "b": 12, "c": 23, "d": 100},
        threshold=10,
        rounding=10,
        symbol="[c]",
        total_label="All",
    )
    assert out == {"a": "[c]", "b": "[c]", "c": 20, "d": 100, "All": 140}
    assert suppress_counts({"a": 3, "b": 50}, total=False) == {"a": STAR, "b": 50}


@pytest.mark.parametrize("bad", [-1, 2.5, "3", None, True])
def test_rejects_bad_counts(bad):
    with pytest.raises(ValueError):
        suppress_counts({"a": bad})


def test_rejects_bad_options_and_label_clash():
    with pytest.raises(ValueError):
        suppress_counts({"a": 1}, threshold=0)
    with pytest.raises(ValueError):
        suppress_counts({"a": 1}, rounding=0)
    with pytest.raises(ValueError):
        suppress_counts({"Total": 10})
