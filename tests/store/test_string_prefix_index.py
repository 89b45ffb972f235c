"""A string search is a prefix match; on PostgreSQL (C.UTF-8 databases) it is served by the
index on (type, param, value varchar_pattern_ops) instead of reading every name row of the type
(migration 0007, found by bench/growth.py at 100,000 persons)."""

from __future__ import annotations

from sqlalchemy import text

from sharedcare.store.repository import PermitAll, WriteOp

FAMILIES = ["Wright", "Wrigley", "Wren", "Smith", "Taylor", "Write"]


def put_patients(store):
    store.write([WriteOp("PUT", "Patient", f"p{i}", {
        "resourceType": "Patient", "id": f"p{i}", "name": [{"family": f}]})
        for i, f in enumerate(FAMILIES)])


def test_name_search_is_a_prefix_match(sc):
    put_patients(sc.store)
    page = sc.store.search("Patient", [("name", "wrig")], PermitAll())
    assert sorted(m.id for m in page.matches) == ["p0", "p1"]




def test_postgresql_serves_the_prefix_from_the_index(pg_sc):
    put_patients(pg_sc.store)
    with pg_sc.engine.connect() as c:
        c.exec_driver_sql("SET enable_seqscan = off")  # a handful of rows: ask for the index
        plan = "\n".join(c.execute(text(
            "EXPLAIN (COSTS OFF) SELECT resource_pk FROM idx_string WHERE type = 'Patient' "
            "AND param = 'name' AND value LIKE 'wrig%'")).scalars())
    # the prefix became an index range on value, not a filter over the type's rows
    assert "~>=~ 'wrig'" in plan and "~<~ 'wrih'" in plan, plan


def test_sqlite_serves_the_prefix_from_the_index(tmp_path):
    """SQLite's LIKE ignores ASCII case, so it cannot use the binary index on value: the
    prefix is also a range on the normalised value, which SQLite answers from the index."""
    from sqlalchemy import event

    from sharedcare.app import SharedCare

    sc = SharedCare.open(f"sqlite:///{tmp_path / 'prefix.sqlite'}", tmp_path)
    put_patients(sc.store)
    sc.store.write([WriteOp("PUT", "Patient", "accent", {
        "resourceType": "Patient", "id": "accent", "name": [{"family": "Wrïght-Ñúñez"}]})])
    seen: list[tuple[str, tuple]] = []

    def grab(conn, cursor, statement, params, context, executemany):
        if "idx_string" in statement:
            seen.append((statement, params))

    event.listen(sc.engine, "before_cursor_execute", grab)
    # the stored and searched values are normalised alike: accents and case do not matter
    page = sc.store.search("Patient", [("name", "WRI")], PermitAll())
    assert sorted(m.id for m in page.matches) == ["accent", "p0", "p1", "p5"]
    assert [m.id for m in sc.store.search("Patient", [("name", "wright-ñ")], PermitAll()
                                          ).matches] == ["accent"]
    event.remove(sc.engine, "before_cursor_execute", grab)
    with sc.engine.connect() as c:
        plan = "\n".join(str(row[-1]) for row in c.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + seen[0][0], seen[0][1]))
    assert "ix_idx_string_lookup (type=? AND param=? AND value>? AND value<?)" in plan, plan
    sc.engine.dispose()
