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
