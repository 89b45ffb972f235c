"""`$everything` pages a record through windows of the compartment's row keys (issue 16, P2d):
whatever the policy withholds between the pages, every visible row comes exactly once, in row
order, and the last page says it is the last."""

from __future__ import annotations

from sqlalchemy import event

from sharedcare.store.repository import WriteOp
from sharedcare.store.schema import resource


class OnlyObservationsCoded:
    """A policy that withholds runs of rows: every Observation not coded `keep`, and the rest
    of the record but the Patient."""

    def resource_filter(self):
        return (resource.c.type == "Patient") | resource.c.content.like('%"keep"%')


def _record(sc, pattern: str) -> list[str]:
    """A Patient then one Observation per letter of `pattern`: k = kept, w = withheld."""
    ops = [WriteOp("PUT", "Patient", "deep", {"resourceType": "Patient"})]
    for i, kind in enumerate(pattern):
        ops.append(WriteOp("PUT", "Observation", f"o{i:03d}", {
            "resourceType": "Observation", "status": "final",
            "code": {"text": "keep" if kind == "k" else "other"},
            "subject": {"reference": "Patient/deep"}}))
    sc.store.write(ops)
    return ["Patient/deep"] + [f"Observation/o{i:03d}" for i, k in enumerate(pattern) if k == "k"]


def _all_pages(sc, policy, count: int) -> tuple[list[str], int | None, int]:
    seen, total, cursor, pages = [], None, None, 0
    while True:
        page, first_total, cursor, _ = sc.store.everything("deep", policy, count, cursor)
        pages += 1
        total = first_total if total is None else total
        seen += [f"{s.type}/{s.id}" for s in page]
        assert len(page) <= count
        if cursor is None:
            return seen, total, pages


def test_every_visible_row_once_in_order_across_long_withheld_runs(sc):
    # Runs of withheld rows longer than any window, between and after the kept ones.
    pattern = "kk" + "w" * 40 + "k" + "w" * 7 + "kkkk" + "w" * 90 + "k" + "w" * 30
    want = _record(sc, pattern)
    for count in (1, 2, 3, 5, 100):
        seen, total, pages = _all_pages(sc, OnlyObservationsCoded(), count)
        assert seen == want, count
        assert total == len(want)
        assert pages == -(-len(want) // count)  # no empty last page


def test_a_later_page_reads_a_window_not_the_rest_of_the_record(sc):
    """The work of a page is bounded by the page, not by how much of the record is left: the
    statement that applies the policy to the second page of a long record is given at most a
    window of row keys (counted by the rows the policy query returns before its LIMIT)."""
    want = _record(sc, "k" * 300)
    page, _, cursor, _ = sc.store.everything("deep", OnlyObservationsCoded(), 10)
    statements: list[str] = []

    def grab(conn, cursor_, statement, params, context, executemany):
        statements.append(statement)

    event.listen(sc.engine, "before_cursor_execute", grab)
    try:
        second, total, nxt, _ = sc.store.everything("deep", OnlyObservationsCoded(), 10, cursor)
    finally:
        event.remove(sc.engine, "before_cursor_execute", grab)
    assert [f"{s.type}/{s.id}" for s in page + second] == want[:20]
    assert total is None and nxt is not None
    # The compartment's keys are limited inside the statement: the rows after the cursor are
    # not all handed to the policy.
    paged = [s for s in statements if "compartment" in s and "ORDER BY compartment.resource_pk"
             in s and "LIMIT" in s]
    assert paged, statements
