"""FHIR search parameters -> SQL over the index tables.

Each parameter becomes `resource.pk IN (subquery on one index table)`, so any number of them AND
together, and the governance predicate sits in the same WHERE clause: paging, totals and
_include all see exactly what the viewer may see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, false, literal, not_, or_, select, union
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.util import ClauseAdapter

from ..fhir.codes import NHS_NUMBER_SYSTEM
from ..fhir.outcome import FHIRError, Issue
from .indexing import Indexer, SearchParam, date_range, fulltext, normalize_string, number_range
from .persons import same_person
from .schema import INDEX_TABLES, idx_reference, idx_token, idx_uri, person_link, resource

# Parameters of the search itself, not of the resource.
RESULT_PARAMS = {
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_cursor",
    "_format",
    "_pretty",
    "_search",
}
NOT_SUPPORTED = {"_query", "_filter", "_list", "_contained", "_containedType"}
# Full-text parameters (indexing/fulltext.py) and the text each searches.
TEXT_PARAMS = {"_text": "narrative", "_content": "content"}
DATE_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
MODIFIERS = {
    "token": {"not", "text", "missing", "exact"},
    "string": {"exact", "contains", "missing"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "reference": {"missing"},  # plus :Type
    "uri": {"missing", "below", "above"},
}
MAX_COUNT = 1000
DEFAULT_COUNT = 50


def split_values(raw: str) -> list[str]:
    """Comma separates OR'd values; a backslash escapes a literal comma, $ or |."""
    out, cur, i = [], [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            cur.append(raw[i + 1])
            i += 2
            continue
        if ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def split_token(value: str) -> tuple[str | None, str | None]:
    """'system|code' -> (system, code); '|code' -> ('', code); 'code' -> (None, code)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, (code or None)
    return None, value


@dataclass
class Include:
    source_type: str
    param: str
    target_type: str | None
    iterate: bool = False


@dataclass
class SortKey:
    param: str
    descending: bool


@dataclass
class SearchRequest:
    """A parsed search: what to match, and how to present it."""

    rtype: str | None  # None: whole-system search over several types
    clauses: list[ColumnElement] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str = "accurate"
    cursor: str | None = None
    warnings: list[Issue] = field(default_factory=list)
    # Relevance of each _text/_content parameter (higher is better): the order of the results
    # when there is no _sort.
    rank: list[ColumnElement] = field(default_factory=list)
    # The query string without paging state, for self/next links.
    echo: list[tuple[str, str]] = field(default_factory=list)


class SearchBuilder:
    def __init__(self, indexer: Indexer, dialect: str = ""):
        self.indexer = indexer
        self.dialect = dialect  # the database's dialect name, where SQL must differ

    def _params_of(self, rtype: str | None) -> dict:
        """The search parameters of `rtype`; none for a name that is not a resource type (a
        client's typo in _include, _has or a chain is a 400 naming it, never a crash)."""
        try:
            return self.indexer.params_for(rtype) if rtype else {}
        except ValueError:
            return {}

    # --- entry point -------------------------------------------------------------------
    def parse(
        self, rtype: str | None, params: list[tuple[str, str]], lenient: bool = False,
        policy: ColumnElement | None = None,
    ) -> SearchRequest:
        """`policy` is the viewer's predicate on `resource`: it also filters the resources that
        chained and _has parameters look at, so a search can never tell whether a resource the
        viewer may not see exists (e.g. Patient?_has:Condition:patient:code=...)."""
        req = SearchRequest(rtype)
        # With a selective parameter (a reference or token: this patient, this code) the
        # database should drive from it and only probe the others row by row; a broad date
        # range as an IN-list would otherwise be materialised in full for every search.
        driver = self._driver(rtype, [name for name, _ in params])
        # Across several types (`_type=Patient,Practitioner&family=...`): a parameter they all
        # define applies to each type as that type defines it.
        types = [t for n, v in params if n == "_type" for t in split_values(v)] \
            if rtype is None else []
        for name, raw in params:
            base = name.split(":", 1)[0]
            if base not in ("_cursor",):
                req.echo.append((name, raw))
            if base in RESULT_PARAMS:
                self._result_param(req, name, raw)
                continue
            if base in NOT_SUPPORTED:
                raise _bad(f"search parameter {base} is not supported by this server", name)
            if base in TEXT_PARAMS:
                cond, rank = self._text(rtype, name, raw, policy)
                req.clauses.append(cond)
                req.rank.append(rank)
                continue
            try:
                if types and base not in ("_type", "_id", "_lastUpdated") \
                        and not name.startswith("_has:"):
                    req.clauses.append(or_(*[
                        and_(resource.c.type == t, self.clause(t, name, raw, policy))
                        for t in types]))
                    continue
                req.clauses.append(self.clause(rtype, name, raw, policy,
                                               probe=driver is not None and name != driver))
            except UnknownParam as e:
                if not lenient:
                    raise _bad(str(e), name) from None
                req.warnings.append(Issue("not-supported", f"{e} (ignored)", name, "warning"))
        return req

    def _result_param(self, req: SearchRequest, name: str, raw: str) -> None:
        base, _, mod = name.partition(":")
        if base == "_count":
            if not raw.isdigit():
                raise _bad("_count must be a whole number", name)
            req.count = min(int(raw), MAX_COUNT)
        elif base == "_sort":
            for key in split_values(raw):
                desc = key.startswith("-")
                key = key.lstrip("-")
                if key not in ("_id", "_lastUpdated") and (
                    req.rtype is None or key not in self.indexer.params_for(req.rtype)
                ):
                    raise _bad(f"cannot sort by unknown parameter '{key}'", name)
                if key not in ("_id", "_lastUpdated") and (
                    key in NOT_SUPPORTED or key in TEXT_PARAMS
                    or self.indexer.params_for(req.rtype)[key].type not in INDEX_TABLES
                ):
                    # composite and special parameters (and _text, _filter ...) have no
                    # indexed value to order by
                    raise _bad(f"cannot sort by '{key}': this server does not index it", name)
                req.sort.append(SortKey(key, desc))
        elif base in ("_include", "_revinclude"):
            iterate = mod == "iterate"
            if mod not in ("", "iterate", "recurse"):
                raise _bad(f"unknown modifier :{mod}", name)
            inc = self._parse_include(raw, name, iterate)
            if inc is not None:
                (req.includes if base == "_include" else req.revincludes).append(inc)
        elif base == "_summary":
            if raw not in ("count", "text", "data", "false"):
                raise _bad(f"_summary={raw} is not supported (count, text, data, false are)", name)
            req.summary = None if raw == "false" else raw
        elif base == "_elements":
            req.elements = [e.strip() for e in raw.split(",") if e.strip()]
        elif base == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise _bad("_total must be none, estimate or accurate", name)
            req.total = raw
        elif base == "_cursor":
            req.cursor = raw

    def _parse_include(self, raw: str, name: str, iterate: bool) -> Include | None:
        if raw == "*":
            return Include("*", "*", None, iterate)
        parts = raw.split(":")
        if len(parts) not in (2, 3):
            raise _bad("expected Type:parameter[:TargetType]", name)
        stype, param = parts[0], parts[1]
        sp = self._params_of(stype).get(param)
        if sp is None or sp.type != "reference":
            raise _bad(f"{stype} has no reference parameter '{param}'", name)
        return Include(stype, param, parts[2] if len(parts) == 3 else None, iterate)

    # --- one parameter -> SQL ------------------------------------------------------------
    def _driver(self, rtype: str | None, names: list[str]) -> str | None:
        """The parameter the query should be driven from: a reference (this patient), an
        identifier or _id, else the first token; None lets the database choose."""
        ranked = []
        for n, name in enumerate(names):
            code = name.split(":", 1)[0].split(".", 1)[0]
            sp = self._params_of(rtype).get(code)
            if code in ("_id", "identifier") or (sp is not None and sp.type == "reference"):
                ranked.append((0, n, name))
            elif sp is not None and sp.type == "token":
                ranked.append((1, n, name))
        return min(ranked)[2] if ranked else None

    def clause(self, rtype: str | None, name: str, raw: str,
               policy: ColumnElement | None = None, probe: bool = False) -> ColumnElement:
        if name.startswith("_has:"):
            return self._has(rtype, name, raw, policy)
        head, dot, chain = name.partition(".")
        code, _, modifier = head.partition(":")
        if code == "_id":
            ids = split_values(raw)
            cond = resource.c.id.in_(ids)
            return not_(cond) if modifier == "not" else cond
        if code == "_lastUpdated":
            return or_(*[self._last_updated(v, name) for v in split_values(raw)])
        if code == "_type" and rtype is None:
            return resource.c.type.in_(split_values(raw))
        if code in TEXT_PARAMS and not dot:
            return self._text(rtype, name, raw, policy)[0]
        sp = self._param(rtype, code)
        if dot:
            return self._chain(sp, modifier, chain, raw, name, policy)
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise _bad(":missing takes true or false", name)
            present = self._present(sp)
            return not_(present) if raw == "true" else present
        if sp.type == "reference" and modifier == "mdm":
            if "Patient" not in sp.targets:
                raise _bad(f":mdm follows a person; '{code}' does not refer to a Patient", name)
        elif sp.type == "reference" and modifier:
            if modifier not in sp.targets and modifier not in _all_types():
                raise _bad(f"unknown modifier :{modifier}", name)
        elif modifier and modifier not in MODIFIERS.get(sp.type, set()):
            if sp.type in ("composite", "special"):
                raise _bad(f"{sp.type} parameter '{code}' is not supported", name)
            raise _bad(f"modifier :{modifier} is not supported for {sp.type} parameters", name)
        values = split_values(raw)
        if any(v == "" for v in values):
            raise _bad("empty search value", name)
        if (rtype == "Patient" and code == "identifier" and not modifier
                and any(split_token(v)[0] == NHS_NUMBER_SYSTEM for v in values)):
            return self._whole_person(or_(*[self._token(sp, v, None) for v in values]))
        if sp.type == "token" and modifier == "not":
            # :not is a negation of the whole OR-set: resources with no matching token.
            return not_(self._in(sp, or_(*[self._token(sp, v, None) for v in values])))
        return self._in(sp, or_(*[self._value(sp, modifier, v, name) for v in values]),
                        probe=probe)

    def _text(self, rtype: str | None, name: str, raw: str, policy: ColumnElement | None
              ) -> tuple[ColumnElement, ColumnElement]:
        """_text / _content: the condition, and the relevance to order by."""
        code, _, modifier = name.partition(":")
        if modifier:
            raise _bad(f"{code} takes no modifier (:{modifier})", name)
        field = TEXT_PARAMS[code]
        try:
            trees = [fulltext.check(fulltext.parse_query(v)) for v in split_values(raw)]
        except fulltext.TextError as e:
            raise _bad(f"{code}: {e}", name) from None
        tree = trees[0] if len(trees) == 1 else fulltext.Or(tuple(trees))
        cond = resource.c.pk.in_(fulltext.text_subquery(field, tree))
        if field == "content" and rtype in (None, "DocumentReference"):
            cond = or_(cond, self._binary_text(tree, policy))
        return cond, fulltext.text_rank(field, tree, resource.c.pk)

    def _binary_text(self, tree, policy: ColumnElement | None) -> ColumnElement:
        """A DocumentReference whose attachment.url is `Binary/{id}` (the `location` parameter)
        matches _content when that Binary's text does -- looked up at search time, so it is
        never stale, and only through a Binary the viewer may see itself."""
        b = resource.alias("text_binary")
        ids = select(literal("Binary/") + b.c.id).where(
            b.c.type == "Binary", b.c.deleted == false(),
            b.c.pk.in_(fulltext.text_subquery("content", tree)), *_on(b, [policy]))
        refs = select(idx_uri.c.resource_pk).where(
            idx_uri.c.type == "DocumentReference", idx_uri.c.param == "location",
            idx_uri.c.uri.in_(ids))
        return and_(resource.c.type == "DocumentReference", resource.c.pk.in_(refs))

    def _whole_person(self, cond: ColumnElement) -> ColumnElement:
        """Patients matching an NHS number, and every other Patient record of the same
        person: a partner's record without the number (joined by identity) is found too, so a
        search by NHS number finds the person once, whichever partner registered it."""
        sub = select(idx_token.c.resource_pk).where(
            idx_token.c.type == "Patient", idx_token.c.param == "identifier", cond)
        found, linked = resource.alias("nhs_found"), resource.alias("nhs_linked")
        mine, theirs = person_link.alias("pl_nhs_mine"), person_link.alias("pl_nhs_theirs")
        same = (select(theirs.c.patient_id)
                .join(mine, mine.c.person_key == theirs.c.person_key)
                .where(mine.c.patient_id.in_(select(found.c.id).where(
                    found.c.type == "Patient", found.c.pk.in_(sub)))))
        # One IN over a UNION, not `pk IN (...) OR id IN (...)`: PostgreSQL cannot use an index
        # for that OR and filtered every Patient row (2 s at 100,000 persons; bench/growth.py).
        return resource.c.pk.in_(union(sub, select(linked.c.pk).where(
            linked.c.type == "Patient", linked.c.id.in_(same))))

    def _param(self, rtype: str | None, code: str) -> SearchParam:
        if rtype is None:
            raise UnknownParam(f"'{code}' cannot be searched across all resource types")
        sp = self._params_of(rtype).get(code)
        if sp is None:
            raise UnknownParam(f"'{code}' is not a search parameter of {rtype}")
        if sp.type in ("composite", "special"):
            raise _bad(f"{sp.type} parameter '{code}' is not supported", code)
        return sp

    def _in(self, sp: SearchParam, cond: ColumnElement, probe: bool = False) -> ColumnElement:
        t = INDEX_TABLES[sp.type]
        if probe:
            # Checked per candidate row through the index on resource_pk. `type || ''` keeps
            # SQLite's planner off the (type, param, value) lookup indexes, which it would
            # otherwise range-scan for every candidate row (seconds at 10,000 patients).
            return exists().where(t.c.resource_pk == resource.c.pk,
                                  (t.c.type + "") == sp.base, t.c.param == sp.code, cond)
        sub = select(t.c.resource_pk).where(t.c.type == sp.base, t.c.param == sp.code, cond)
        return resource.c.pk.in_(sub)

    def _present(self, sp: SearchParam) -> ColumnElement:
        t = INDEX_TABLES.get(sp.type)
        if t is None:
            raise _bad(f"{sp.type} parameter '{sp.code}' is not supported", sp.code)
        return exists().where(
            t.c.resource_pk == resource.c.pk, t.c.type == sp.base, t.c.param == sp.code
        )

    def _value(self, sp: SearchParam, modifier: str, value: str, name: str) -> ColumnElement:
        kind = sp.type
        if kind == "token":
            return self._token(sp, value, modifier)
        if kind == "string":
            t = INDEX_TABLES["string"]
            if modifier == "exact":
                return t.c.exact == value
            norm = normalize_string(value)
            like = _escape_like(norm)
            if modifier == "contains":
                return t.c.value.like(f"%{like}%", escape="\\")
            prefix = t.c.value.like(f"{like}%", escape="\\")
            if self.dialect == "sqlite" and norm and ord(norm[-1]) < 0x10FFFF:
                # SQLite's LIKE ignores ASCII case, so it cannot use the (binary) index on
                # value and read every row of the parameter; the stored and searched values
                # are both normalised, so the same prefix as a range can, and says the same.
                upper = norm[:-1] + chr(ord(norm[-1]) + 1)
                return and_(t.c.value >= norm, t.c.value < upper, prefix)
            return prefix
        if kind == "date":
            prefix, v = _prefix(value)
            try:
                low, high = date_range(v)
            except ValueError as e:
                raise _bad(f"'{v}' is not a valid date: {e}", name) from None
            t = INDEX_TABLES["date"]
            return _date_cond(prefix, t.c.low, t.c.high, low, high)
        if kind in ("number", "quantity"):
            prefix, v = _prefix(value)
            system = code = None
            if kind == "quantity" and "|" in v:
                v, system, code = (v.split("|") + ["", ""])[:3]
            try:
                low, high, exact = number_range(v)
            except ValueError as e:
                raise _bad(f"'{v}' is not a valid number: {e}", name) from None
            t = INDEX_TABLES["number"]
            cond = _number_cond(prefix, t.c.value, low, high, exact)
            if system:
                cond = and_(cond, t.c.system == system)
            if code:
                cond = and_(cond, or_(t.c.code == code, t.c.unit == code))
            return cond
        if kind == "reference":
            return self._reference(sp, modifier, value)
        if kind == "uri":
            t = INDEX_TABLES["uri"]
            if modifier == "below":
                return t.c.uri.like(f"{_escape_like(value)}%", escape="\\")
            if modifier == "above":
                # A stored uri is "above" the value when the value starts with it.
                return and_(t.c.uri != "", literal(value).like(t.c.uri + "%"))
            return t.c.uri == value
        raise _bad(f"{kind} parameter '{sp.code}' is not supported", name)

    def _token(self, sp: SearchParam, value: str, modifier: str | None) -> ColumnElement:
        t = idx_token
        if modifier == "text":
            return t.c.text.like(f"{_escape_like(normalize_string(value))}%", escape="\\")
        system, code = split_token(value)
        if system is None:
            return t.c.code == code
        if system == "":
            return and_(t.c.code == code, t.c.system.is_(None))
        if code is None:
            return t.c.system == system
        return and_(t.c.code == code, t.c.system == system)

    def _reference(self, sp: SearchParam, modifier: str, value: str) -> ColumnElement:
        t = idx_reference
        if modifier == "mdm":
            # HAPI FHIR's MDM expansion: any Patient record of the same person.
            rid = value.rsplit("/", 1)[-1]
            if "/" in value and value.split("/")[-2] != "Patient":
                raise _bad(":mdm takes a Patient reference", sp.code)
            return and_(t.c.target_type == "Patient",
                        or_(t.c.target_id == rid, t.c.target_id.in_(same_person(rid))))
        if "/" in value and not value.startswith(("http://", "https://", "urn:")):
            parts = value.split("/")
            if len(parts) >= 2:
                rtype, rid = parts[-2], parts[-1]
                if len(parts) >= 4 and parts[-2] == "_history":
                    rtype, rid = parts[-4], parts[-3]
                return and_(t.c.target_type == rtype, t.c.target_id == rid)
        if value.startswith(("http://", "https://", "urn:")):
            return t.c.url == value
        cond = t.c.target_id == value
        if modifier:
            cond = and_(cond, t.c.target_type == modifier)
        return cond

    def _last_updated(self, value: str, name: str) -> ColumnElement:
        prefix, v = _prefix(value)
        try:
            low, high = instant_range(v)
        except ValueError as e:
            raise _bad(f"'{v}' is not a valid date: {e}", name) from None
        col = resource.c.last_updated
        return _date_cond(prefix, col, col, low, high)

    def _chain(self, sp: SearchParam, modifier: str, chain: str, raw: str, name: str,
               policy: ColumnElement | None):
        """subject:Patient.identifier=x -> reference whose target matches identifier=x."""
        if sp.type != "reference":
            raise _bad(f"'{sp.code}' is not a reference parameter and cannot be chained", name)
        first = chain.split(".")[0].split(":")[0]
        targets = [modifier] if modifier else list(sp.targets)
        candidates = [t for t in targets
                      if first in ("_id", "_lastUpdated") or first in self._params_of(t)]
        if not candidates:
            raise _bad(f"no target type of '{sp.code}' has a parameter '{chain}'", name)
        # With several possible targets the reference may point at any one that matches.
        ors = []
        for target in candidates:
            r = resource.alias()
            ids = select(r.c.id).where(*_on(r, [resource.c.type == target,
                                                resource.c.deleted == false(),
                                                self.clause(target, chain, raw, policy), policy]))
            ors.append(and_(idx_reference.c.target_type == target, idx_reference.c.target_id.in_(ids)))
        return self._in(sp, or_(*ors))

    def _has(self, rtype: str | None, name: str, raw: str, policy: ColumnElement | None
             ) -> ColumnElement:
        """_has:Observation:patient:code=1234 -> this resource is referenced by such an Observation."""
        parts = name.split(":", 3)
        if len(parts) != 4 or rtype is None:
            raise _bad("expected _has:Type:reference-parameter:search-parameter", name)
        _, src_type, ref_param, rest = parts
        if src_type not in self.indexer.supported_types():
            raise _bad(f"'{src_type[:60]}' is not a resource type that can be searched", name)
        ref_sp = self._params_of(src_type).get(ref_param)
        if ref_sp is None or ref_sp.type != "reference":
            raise _bad(f"{src_type} has no reference parameter '{ref_param}'", name)
        r = resource.alias()
        src = select(r.c.pk).where(*_on(r, [resource.c.type == src_type,
                                            resource.c.deleted == false(),
                                            self.clause(src_type, rest, raw, policy), policy]))
        refs = select(idx_reference.c.target_id).where(
            idx_reference.c.type == src_type,
            idx_reference.c.param == ref_param,
            idx_reference.c.target_type == rtype,
            idx_reference.c.resource_pk.in_(src),
        )
        return resource.c.id.in_(refs)


def _on(alias, conditions: list) -> list:
    """Conditions written against `resource`, rewritten to apply to `alias` instead -- the rows
    of a nested (chained / _has) query, which must not correlate with the outer query's rows."""
    adapter = ClauseAdapter(alias, include_fn=lambda col: getattr(col, "table", None) is resource)
    return [adapter.traverse(c) for c in conditions if c is not None]


class UnknownParam(Exception):
    pass


def _bad(diagnostics: str, expression: str | None = None) -> FHIRError:
    return FHIRError(400, [Issue("invalid", diagnostics, expression)])


def _prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in DATE_PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def instant_range(value: str) -> tuple[str, str]:
    """A search value as an inclusive range at the microsecond precision `last_updated` is
    stored with: '2026-11-25' covers the whole day, an instant with a fraction only itself."""
    low, high = date_range(value)
    if "." in value.split("T", 1)[-1]:
        exact = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if exact.tzinfo is not None:
            exact = exact.astimezone(UTC).replace(tzinfo=None)
        point = exact.strftime("%Y-%m-%dT%H:%M:%S.%f")
        return point, point
    return low + ".000000", high + ".999999"


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _date_cond(prefix, lo_col, hi_col, low: str, high: str, point: bool = False) -> ColumnElement:
    """FHIR date prefixes as range comparisons: the stored value is [lo_col, hi_col]."""
    if prefix == "eq":
        # `lo_col <= high` follows from the other two (lo <= hi); it bounds the index range
        # scan on (..., low, high) at both ends instead of reading every later date.
        return and_(lo_col >= low, lo_col <= high, hi_col <= high)
    if prefix == "ne":
        return or_(lo_col < low, hi_col > high)
    if prefix == "lt":
        return lo_col < low
    if prefix == "gt":
        return hi_col > high
    if prefix == "le":
        return lo_col <= high
    if prefix == "ge":
        return hi_col >= low
    if prefix == "sa":
        return lo_col > high
    if prefix == "eb":
        return hi_col < low
    if prefix == "ap":
        # Approximately: within 10% of the distance from now, at least a day either side.
        lo = datetime.fromisoformat(low).replace(tzinfo=UTC)
        now = datetime.now(UTC)
        slack = max(abs(now - lo) * 0.1, timedelta(days=1))
        wlow = (lo - slack).strftime("%Y-%m-%dT%H:%M:%S")
        whigh = (datetime.fromisoformat(high).replace(tzinfo=UTC) + slack).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
        return and_(hi_col >= wlow, lo_col <= whigh)
    raise _bad(f"unknown prefix {prefix}")


def _number_cond(prefix, col, low: float, high: float, exact: float) -> ColumnElement:
    if prefix == "eq":
        return and_(col >= low, col < high)
    if prefix == "ne":
        return or_(col < low, col >= high)
    if prefix in ("lt", "eb"):
        return col < exact
    if prefix in ("gt", "sa"):
        return col > exact
    if prefix == "le":
        return col <= exact
    if prefix == "ge":
        return col >= exact
    if prefix == "ap":
        slack = abs(exact) * 0.1
        return and_(col >= exact - slack, col <= exact + slack)
    raise _bad(f"unknown prefix {prefix}")


def _all_types() -> frozenset[str]:
    from ..fhir.validation import resource_types

    return resource_types()


__all__ = ["TEXT_PARAMS", "Include", "SearchBuilder", "SearchRequest", "SortKey", "split_values"]
