"""Small-number suppression for published aggregate tables (statistical disclosure control).

Follows the common NHS England / NHS Digital practice for published counts:

* primary suppression: counts from 1 to ``threshold - 1`` (default 1-4) are shown as ``*``;
  zero is shown as 0 unless ``suppress_zero=True``. Totals are treated the same way.
* rounding: every other count is rounded to the nearest ``rounding`` (default 5; half rounds up;
  ``rounding=1`` turns it off). Totals are computed from the UNROUNDED values, then rounded.
* secondary (complementary) suppression: a table is a set of additive lines — each row with its
  row total, each column with its column total, the row totals with the grand total and the
  column totals with the grand total. Whenever a line has exactly one suppressed entry, that
  entry could be recovered by subtraction, so the smallest other entry in the line is
  suppressed too (the smallest non-zero cell, else a zero cell, else the line's total);
  repeated until no line has exactly one suppressed entry.

Limits: the guarantee is per line (one equation at a time), which is what "recovered by
subtraction from a row or column total" means. It is not a full audit against attackers who
combine several equations (as tau-Argus does); rounding every published count to 5 is the
second layer of protection against that.

API::

    suppress_table(rows, *, row_key, col_key, value_key, threshold=5, rounding=5,
                   suppress_zero=False, symbol="*") -> SuppressedTable
    suppress_counts(counts, total=True, *, threshold=5, rounding=5, suppress_zero=False,
                    symbol="*", total_label="Total") -> dict
    round_to(value, base) -> int
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

Cell = int | str  # a published count, or the suppression symbol


def round_to(value: int, base: int) -> int:
    """Round a non-negative integer to the nearest multiple of ``base``, halves up (7 -> 5, 8 -> 10)."""
    if base <= 1:
        return value
    return (value + base // 2) // base * base


def _check_count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{where}: counts must be whole numbers, got {value!r}")
    if value < 0:
        raise ValueError(f"{where}: counts must not be negative, got {value!r}")
    return value


def _check_options(threshold: int, rounding: int) -> None:
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    if rounding < 1:
        raise ValueError("rounding must be at least 1 (1 means no rounding)")


def _protect(
    values: dict[Hashable, int],
    lines: list[tuple[list[Hashable], Hashable]],
    threshold: int,
    suppress_zero: bool,
) -> tuple[set, set]:
    """Return (primary, secondary) suppressed positions.

    ``values`` maps position -> unrounded count; each line is (member positions, total position)
    and means sum(members) == total.
    """
    primary = {p for p, v in values.items() if 0 < v < threshold or (v == 0 and suppress_zero)}
    suppressed = set(primary)
    changed = True
    while changed:
        changed = False
        for members, total in lines:
            entries = members + [total]
            if sum(1 for p in entries if p in suppressed) != 1:
                continue
            candidates = [p for p in members if p not in suppressed]
            # Prefer the smallest non-zero member: a zero hides nothing it sits beside.
            nonzero = [p for p in candidates if values[p] > 0]
            pool = nonzero or candidates
            if pool:
                pick = min(pool, key=lambda p: values[p])  # first of equals: stable order
            else:
                pick = total  # the line's only member is the suppressed one: hide the total
            suppressed.add(pick)
            changed = True
    return primary, suppressed - primary


@dataclass(frozen=True)
class SuppressedTable:
    """A published cross-tabulation: every value is a rounded count or the suppression symbol."""

    row_key: str
    col_key: str
    rows: tuple  # row labels, in first-seen order
    cols: tuple  # column labels, in first-seen order
    cells: dict  # (row, col) -> Cell
    row_totals: dict  # row -> Cell
    col_totals: dict  # col -> Cell
    grand_total: Cell
    symbol: str = "*"
    threshold: int = 5
    rounding: int = 5
    primary: frozenset = field(default_factory=frozenset)  # positions suppressed for being small
    secondary: frozenset = field(default_factory=frozenset)  # positions suppressed to protect them

    def is_suppressed(self, value: Cell) -> bool:
        return value == self.symbol

    def to_rows(self, total_label: str = "Total") -> list[dict]:
        """Rows for ``csv.DictWriter(f, fieldnames=table.fieldnames(total_label))``: one per row
        label, then a totals row."""
        out = []
        for r in self.rows:
            row = {self.row_key: r}
            row.update({c: self.cells[(r, c)] for c in self.cols})
            row[total_label] = self.row_totals[r]
            out.append(row)
        last = {self.row_key: total_label}
        last.update({c: self.col_totals[c] for c in self.cols})
        last[total_label] = self.grand_total
        out.append(last)
        return out

    def fieldnames(self, total_label: str = "Total") -> list:
        return [self.row_key, *self.cols, total_label]


def suppress_table(
    rows: Iterable[dict],
    *,
    row_key: str,
    col_key: str,
    value_key: str,
    threshold: int = 5,
    rounding: int = 5,
    suppress_zero: bool = False,
    symbol: str = "*",
) -> SuppressedTable:
    """Suppress and round a two-way table given as long-format rows.

    Rows with the same (row, col) are added together; a (row, col) combination that never
    appears is a count of 0. Positions in ``primary``/``secondary`` are ``("cell", r, c)``,
    ``("row", r)``, ``("col", c)`` and ``("grand",)``.
    """
    _check_options(threshold, rounding)
    row_labels: dict = {}
    col_labels: dict = {}
    counts: dict = {}
    for i, rec in enumerate(rows):
        r, c = rec[row_key], rec[col_key]
        v = _check_count(rec[value_key], f"row {i}")
        row_labels.setdefault(r, None)
        col_labels.setdefault(c, None)
        counts[(r, c)] = counts.get((r, c), 0) + v
    rs, cs = tuple(row_labels), tuple(col_labels)

    values: dict[Hashable, int] = {}
    for r in rs:
        for c in cs:
            values[("cell", r, c)] = counts.get((r, c), 0)
    for r in rs:
        values[("row", r)] = sum(values[("cell", r, c)] for c in cs)
    for c in cs:
        values[("col", c)] = sum(values[("cell", r, c)] for r in rs)
    values[("grand",)] = sum(values[("row", r)] for r in rs)

    lines = [([("cell", r, c) for c in cs], ("row", r)) for r in rs]
    lines += [([("cell", r, c) for r in rs], ("col", c)) for c in cs]
    if rs:
        lines.append(([("row", r) for r in rs], ("grand",)))
        lines.append(([("col", c) for c in cs], ("grand",)))
    primary, secondary = _protect(values, lines, threshold, suppress_zero)
    hidden = primary | secondary

    def show(p) -> Cell:
        return symbol if p in hidden else round_to(values[p], rounding)

    return SuppressedTable(
        row_key=row_key,
        col_key=col_key,
        rows=rs,
        cols=cs,
        cells={(r, c): show(("cell", r, c)) for r in rs for c in cs},
        row_totals={r: show(("row", r)) for r in rs},
        col_totals={c: show(("col", c)) for c in cs},
        grand_total=show(("grand",)),
        symbol=symbol,
        threshold=threshold,
        rounding=rounding,
        primary=frozenset(primary),
        secondary=frozenset(secondary),
    )


def suppress_counts(
    counts: dict,
    total: bool = True,
    *,
    threshold: int = 5,
    rounding: int = 5,
    suppress_zero: bool = False,
    symbol: str = "*",
    total_label: str = "Total",
) -> dict:
    """Suppress and round a one-way table ``{category: count}``.

    With ``total=True`` the result ends with ``total_label: <total>`` and secondary suppression
    stops any single suppressed category being recovered from it. With ``total=False`` no total
    is published, so only primary suppression applies — do not publish the total elsewhere.
    """
    _check_options(threshold, rounding)
    if total and total_label in counts:
        raise ValueError(f"a category is called {total_label!r}; pass another total_label")
    values = {("cell", k): _check_count(v, repr(k)) for k, v in counts.items()}
    lines = []
    if total:
        values[("total",)] = sum(values.values())
        lines.append(([("cell", k) for k in counts], ("total",)))
    primary, secondary = _protect(values, lines, threshold, suppress_zero)
    hidden = primary | secondary
    out: dict = {
        k: symbol if ("cell", k) in hidden else round_to(values[("cell", k)], rounding)
        for k in counts
    }
    if total:
        out[total_label] = (
            symbol if ("total",) in hidden else round_to(values[("total",)], rounding)
        )
    return out
