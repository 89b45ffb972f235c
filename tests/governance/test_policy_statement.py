"""The access policy's SQL is rendered once per policy shape: its constant lists (types,
categories, sharing partners) are compiled into the statement instead of being expanded into
the SQL text on every execution, so the statement text is identical across requests and the
PostgreSQL driver's statement cache and prepared statements can reuse it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from sharedcare.governance.policy import Access, ResourcePolicy
from sharedcare.store.schema import resource

CATEGORIES = frozenset({"results", "encounters", "gp-summary"})


def clinician(shared_with: dict[str, frozenset[str]]) -> Access:
    return Access("dr.who", "A81001", "clinician", shared_with=shared_with)


def compiled(access: Access):
    stmt = select(resource.c.pk).where(ResourcePolicy(access).resource_filter())
    return stmt.compile(dialect=postgresql.psycopg.dialect())


def test_policy_lists_are_compiled_into_the_statement_not_expanded_per_execution():
    sql = compiled(clinician({"RXA": CATEGORIES, "RXB": CATEGORIES})).string
    assert "POSTCOMPILE" not in sql


def test_partners_sharing_the_same_categories_make_one_clause():
    few = compiled(clinician({"RXA": CATEGORIES}))
    many = compiled(clinician({f"RX{i:02d}": CATEGORIES for i in range(15)}))
    # fifteen partners add fourteen source parameters, not fourteen copies of the clause
    assert len(many.params) - len(few.params) == 14
    assert many.string.count("resource.category IN") == few.string.count("resource.category IN")
    assert set(many.params.values()) >= {f"RX{i:02d}" for i in range(15)} | CATEGORIES


def test_partners_sharing_different_categories_keep_their_own_categories():
    sql = compiled(clinician({"RXA": frozenset({"results"}),
                              "RXB": frozenset({"results", "mental-health"})}))
    params = sql.params
    # RXA's clause names only results; RXB's names both: two clauses
    assert sql.string.count("resource.source_org IN") == 2
    assert "mental-health" in params.values() and "RXA" in params.values()


def test_the_policy_key_is_worked_out_once_and_follows_a_rewritten_copy():
    from sqlalchemy.sql.util import ClauseAdapter

    policy = ResourcePolicy(clinician({"RXA": CATEGORIES})).resource_filter()
    stmt = select(resource.c.pk).where(policy)
    again = select(resource.c.pk).where(ResourcePolicy(clinician({"RXA": CATEGORIES}))
                                        .resource_filter())
    first, second = stmt._generate_cache_key(), again._generate_cache_key()
    assert first.key == second.key
    assert [b.value for b in first.bindparams] == [b.value for b in second.bindparams]
    # a chained search rewrites the policy onto an alias of `resource`: another statement
    other = resource.alias("chained")
    adapted = ClauseAdapter(other, include_fn=lambda c: getattr(c, "table", None) is resource
                            ).traverse(policy)
    moved = select(other.c.pk).where(adapted)
    assert moved._generate_cache_key().key != first.key
    sql = moved.compile(dialect=postgresql.psycopg.dialect()).string
    assert "chained.source_org" in sql and "resource.source_org" not in sql
    # and the original is unchanged by the copy
    assert "resource.source_org" in stmt.compile(dialect=postgresql.psycopg.dialect()).string


def test_a_different_policy_is_a_different_statement():
    a = select(resource.c.pk).where(ResourcePolicy(clinician({"RXA": CATEGORIES}))
                                    .resource_filter())
    b = select(resource.c.pk).where(ResourcePolicy(clinician({"RXB": CATEGORIES}))
                                    .resource_filter())
    c = select(resource.c.pk).where(ResourcePolicy(clinician({"RXA": frozenset({"results"})}))
                                    .resource_filter())
    ka, kb, kc = (s._generate_cache_key() for s in (a, b, c))
    # same shape of SQL, other values: one compiled statement, other parameters
    assert ka.key == kb.key
    assert "RXB" in [p.value for p in kb.bindparams] and "RXB" not in [p.value for p in ka.bindparams]
    # fewer categories: another statement
    assert ka.key != kc.key
