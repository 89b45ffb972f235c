"""The access policy as one SQL element whose cache key is worked out once.

SQLAlchemy finds a statement's compiled form by a cache key it builds by walking the whole
expression on every execution. The policy is most of every governed statement (agreements,
categories, labels, objections, relationship and break-glass probes: 100-300 nodes), and it is
the same object for every request of the same policy shape (policy._built), so that walk was
10-20% of a governed search's CPU (py-spy under wrk, docs/performance.md). `PolicyClause`
wraps the built expression, renders exactly as it does, and hands SQLAlchemy the key and the
bound parameters it worked out the first time.

A copy made by a traversal (a chained search's ClauseAdapter rewrites `resource` to an alias)
is a different expression: its key is worked out afresh.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import Boolean
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.cache_key import HasCacheKey
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal


class PolicyClause(ColumnElement[bool]):
    __visit_name__ = "sharedcare_policy_clause"
    inherit_cache = True
    type = Boolean()
    _traverse_internals: ClassVar = [("clause", InternalTraversal.dp_clauseelement)]

    def __init__(self, clause: ColumnElement[bool]):
        self.clause = clause
        self._key: tuple | None = None  # (key, bound parameters), or () when not cacheable

    @property
    def _from_objects(self) -> list:
        return self.clause._from_objects

    def _gen_cache_key(self, anon_map: Any, bindparams: list) -> tuple | None:
        if self._key is None:
            whole = HasCacheKey._generate_cache_key(self.clause)
            self._key = () if whole is None or whole.params else (whole.key,
                                                                  list(whole.bindparams))
        if not self._key:
            return super()._gen_cache_key(anon_map, bindparams)
        key, params = self._key
        id_, found = anon_map.get_anon(self)
        if found:
            return (id_, PolicyClause)
        bindparams.extend(params)
        return (id_, PolicyClause, key)

    def _copy_internals(self, **kw: Any) -> None:
        super()._copy_internals(**kw)
        self._key = None

    def _clone(self, **kw: Any) -> PolicyClause:
        c = super()._clone(**kw)
        c._key = None
        return c


@compiles(PolicyClause)
def _render(element: PolicyClause, compiler, **kw) -> str:
    return "(" + compiler.process(element.clause, **kw) + ")"
