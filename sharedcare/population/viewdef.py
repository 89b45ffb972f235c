"""HL7 SQL-on-FHIR v2 ViewDefinition runner.

    view = json.load(open("sharedcare/population/views/patient_demographics.json"))
    rows = evaluate(view, resources)                        # list of dicts
    materialise_duckdb(view, resources, con, "patients")    # typed DuckDB table
    write_parquet(view, resources, Path("patients.parquet"))

Supported: ``select`` (nested), ``column`` (path, name, type, collection), ``forEach``,
``forEachOrNull``, ``repeat``, ``unionAll``, view-level ``where``, ``constant``
(``%name``, all value[x] types), ``%rowIndex``, the FHIRPath of fhirpathpy (R4 model,
so choice types and ``ofType()`` work) plus ``getResourceKey()``,
``getReferenceKey([type])``, ``lowBoundary()`` and ``highBoundary()``.

Semantics worth knowing:

* A ``forEachOrNull`` over an empty collection evaluates its columns once against an
  empty focus (so paths give null and ``%rowIndex`` gives 0); if nested
  ``forEach``\\ es would leave no row, one all-null row is produced.
* A column without ``collection: true`` whose path yields several values, or a
  ``where`` path yielding a non-boolean, raises :class:`ViewEvaluationError` (a
  :class:`ViewDefinitionError`), as the specification requires.
* ``getReferenceKey(Type)`` understands ``Type/id`` (relative or absolute, with or
  without ``_history``) and bundle-local ``urn:uuid:``/``urn:oid:`` references; for the
  latter the type can only be checked against ``Reference.type`` when present.

Column types when materialising (Arrow / DuckDB / Parquet):

==========================================  =========================================
FHIR ``type``                               Arrow (DuckDB)
==========================================  =========================================
boolean                                     bool (BOOLEAN)
integer, positiveInt, unsignedInt, integer64  int64 (BIGINT)
decimal                                     float64 (DOUBLE)
date                                        date32 (DATE) — partial dates use day 1
dateTime, instant                           timestamp[us, UTC] (TIMESTAMPTZ) — partial
                                            values use the start; no zone means UTC
time                                        time64[us] (TIME); *string in Parquet*,
                                            because Spark has no TIME type
anything else / no type                     string (VARCHAR); non-strings JSON-encoded
``collection: true``                        list of the above
==========================================  =========================================
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhirpathpy.engine.nodes import ResourceNode

from sharedcare.population.viewdef_fhirpath import (
    BUILTIN_VARIABLES,
    CompiledPath,
    FhirPathSyntaxError,
    root_node,
    to_python,
)

if TYPE_CHECKING:  # pragma: no cover
    import duckdb
    import pyarrow as pa


class ViewDefinitionError(ValueError):
    """The ViewDefinition is invalid; the message names the problem and where."""


class ViewEvaluationError(ViewDefinitionError):
    """Running a (structurally valid) view over data broke a rule of the specification,
    e.g. a non-collection column yielded several values or ``where`` was not boolean."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str | None
    collection: bool


# --------------------------------------------------------------------------------------
# compilation
# --------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SELECT_KEYS = {"column", "select", "forEach", "forEachOrNull", "repeat", "unionAll"}
_COLUMN_KEYS = {"name", "path", "type", "collection", "description", "tag"}
_CONSTANT_TYPES = {
    "valueBase64Binary": "base64Binary",
    "valueBoolean": "boolean",
    "valueCanonical": "canonical",
    "valueCode": "code",
    "valueDate": "date",
    "valueDateTime": "dateTime",
    "valueDecimal": "decimal",
    "valueId": "id",
    "valueInstant": "instant",
    "valueInteger": "integer",
    "valueInteger64": "integer64",
    "valueOid": "oid",
    "valueString": "string",
    "valuePositiveInt": "positiveInt",
    "valueTime": "time",
    "valueUnsignedInt": "unsignedInt",
    "valueUri": "uri",
    "valueUrl": "url",
    "valueUuid": "uuid",
}


@dataclass
class _Col:
    name: str
    path: CompiledPath
    type: str | None
    collection: bool
    where: str


@dataclass
class _Select:
    where: str
    iterate: str | None  # None | "forEach" | "forEachOrNull" | "repeat"
    iter_paths: list[CompiledPath]
    columns: list[_Col]
    selects: list[_Select]
    union: list[_Select]
    names: list[str]  # all column names this node produces, in order


def _err(where: str, msg: str) -> ViewDefinitionError:
    return ViewDefinitionError(f"{where}: {msg}" if where else msg)


class _Compiler:
    def __init__(self, constants: set[str]):
        self.allowed_vars = constants | BUILTIN_VARIABLES

    def path(self, expr: Any, where: str) -> CompiledPath:
        if not isinstance(expr, str):
            raise _err(where, f"FHIRPath expression must be a string, got {type(expr).__name__}")
        try:
            compiled = CompiledPath(expr)
        except FhirPathSyntaxError as exc:
            raise _err(where, f"invalid FHIRPath {expr!r}: {exc}") from None
        unknown = sorted(
            v
            for v in compiled.variables
            if v not in self.allowed_vars and not v.startswith(("vs-", "ext-"))
        )
        if unknown:
            raise _err(where, f"undefined constant %{unknown[0]} in {expr!r}")
        return compiled

    def select(self, node: Any, where: str) -> _Select:
        if not isinstance(node, Mapping):
            raise _err(where, "must be an object")
        pre = f"{where}." if where else ""
        unknown = set(node) - _SELECT_KEYS
        if unknown:
            raise _err(where, f"unknown element(s) {sorted(unknown)}")
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in node]
        if len(iterators) > 1:
            raise _err(where, f"only one of forEach/forEachOrNull/repeat allowed, got {iterators}")
        iterate = iterators[0] if iterators else None
        iter_paths: list[CompiledPath] = []
        if iterate == "repeat":
            paths = node["repeat"]
            if not isinstance(paths, list) or not paths:
                raise _err(f"{pre}repeat", "must be a non-empty list of FHIRPath expressions")
            iter_paths = [self.path(p, f"{pre}repeat[{i}]") for i, p in enumerate(paths)]
        elif iterate:
            iter_paths = [self.path(node[iterate], f"{pre}{iterate}")]

        columns: list[_Col] = []
        if "column" in node:
            cols = node["column"]
            if not isinstance(cols, list) or not cols:
                raise _err(f"{pre}column", "must be a non-empty list")
            for i, c in enumerate(cols):
                columns.append(self.column(c, f"{pre}column[{i}]"))
        selects = []
        if "select" in node:
            subs = node["select"]
            if not isinstance(subs, list) or not subs:
                raise _err(f"{pre}select", "must be a non-empty list")
            selects = [self.select(s, f"{pre}select[{i}]") for i, s in enumerate(subs)]
        union: list[_Select] = []
        if "unionAll" in node:
            branches = node["unionAll"]
            if not isinstance(branches, list) or not branches:
                raise _err(f"{pre}unionAll", "must be a non-empty list")
            union = [self.select(s, f"{pre}unionAll[{i}]") for i, s in enumerate(branches)]
            first = union[0].names
            for i, b in enumerate(union[1:], start=1):
                if b.names != first:
                    raise _err(
                        f"{pre}unionAll[{i}]",
                        f"columns {b.names} differ from unionAll[0] columns {first} "
                        "(names and order must match)",
                    )
        if not (columns or selects or union):
            raise _err(where, "needs at least one of column, select or unionAll")

        names = [c.name for c in columns]
        for s in selects:
            names.extend(s.names)
        if union:
            names.extend(union[0].names)
        seen: set[str] = set()
        for n in names:
            if n in seen:
                raise _err(where, f"duplicate column name {n!r}")
            seen.add(n)
        return _Select(where, iterate, iter_paths, columns, selects, union, names)

    def column(self, c: Any, where: str) -> _Col:
        if not isinstance(c, Mapping):
            raise _err(where, "must be an object")
        unknown = set(c) - _COLUMN_KEYS
        if unknown:
            raise _err(where, f"unknown element(s) {sorted(unknown)}")
        if "path" not in c:
            raise _err(where, "path is required")
        name = c.get("name")
        if name is None:
            raise _err(where, "name is required")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise _err(where, f"name {name!r} must match {_NAME_RE.pattern}")
        ctype = c.get("type")
        if ctype is not None and (not isinstance(ctype, str) or not ctype):
            raise _err(where, "type must be a FHIR type name")
        collection = c.get("collection", False)
        if not isinstance(collection, bool):
            raise _err(where, "collection must be a boolean")
        return _Col(name, self.path(c["path"], f"{where}.path"), ctype, collection, where)


def _constant_value(const: Mapping, where: str) -> tuple[str, Any]:
    if not isinstance(const, Mapping):
        raise _err(where, "must be an object")
    name = const.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _err(where, f"name {name!r} must match {_NAME_RE.pattern}")
    if name in BUILTIN_VARIABLES:
        raise _err(where, f"constant name {name!r} is reserved")
    values = [k for k in const if k.startswith("value")]
    if len(values) != 1:
        raise _err(where, f"constant {name!r} needs exactly one value[x], got {values or 'none'}")
    key = values[0]
    if key not in _CONSTANT_TYPES:
        raise _err(where, f"unsupported constant type {key}")
    value = const[key]
    ftype = _CONSTANT_TYPES[key]
    if value is None:
        raise _err(where, f"constant {name!r} has a null value")
    if ftype == "decimal":
        value = Decimal(str(value))
    elif ftype in ("date", "dateTime", "instant", "time"):
        value = ResourceNode.create_node(value, "dateTime" if ftype == "instant" else ftype)
    return name, value


class CompiledView:
    """A validated ViewDefinition whose FHIRPath expressions are parsed once."""

    def __init__(self, view: Mapping):
        if not isinstance(view, Mapping):
            raise _err("", "a ViewDefinition must be a JSON object")
        if view.get("resourceType") not in (None, "ViewDefinition"):
            raise _err(
                "resourceType", f"expected 'ViewDefinition', got {view.get('resourceType')!r}"
            )
        resource = view.get("resource")
        if not isinstance(resource, str) or not re.match(r"^[A-Z][A-Za-z]+$", resource or ""):
            raise _err("resource", "is required and must be a FHIR resource type name")
        self.resource: str = resource
        self.name: str | None = view.get("name")

        consts = view.get("constant", [])
        if not isinstance(consts, list):
            raise _err("constant", "must be a list")
        self.constants: dict[str, Any] = {}
        for i, const in enumerate(consts):
            name, value = _constant_value(const, f"constant[{i}]")
            if name in self.constants:
                raise _err(f"constant[{i}]", f"duplicate constant {name!r}")
            self.constants[name] = value

        comp = _Compiler(set(self.constants))
        select = view.get("select")
        if not isinstance(select, list) or not select:
            raise _err("select", "is required and must be a non-empty list")
        self._root = comp.select({"select": select}, "")
        # The synthetic root has location "" so nested locations read "select[0]...".
        wheres = view.get("where", [])
        if not isinstance(wheres, list):
            raise _err("where", "must be a list")
        self._where: list[tuple[str, CompiledPath]] = []
        for i, w in enumerate(wheres):
            loc = f"where[{i}]"
            if not isinstance(w, Mapping) or "path" not in w:
                raise _err(loc, "path is required")
            self._where.append((loc, comp.path(w["path"], f"{loc}.path")))

        cols: dict[str, Column] = {}
        self._collect(self._root, cols)
        self.columns: list[Column] = [cols[n] for n in self._root.names]

    def _collect(self, node: _Select, out: dict[str, Column]) -> None:
        for c in node.columns:
            out.setdefault(c.name, Column(c.name, c.type, c.collection))
        for s in node.selects:
            self._collect(s, out)
        for u in node.union:
            self._collect(u, out)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    # ---- evaluation -----------------------------------------------------------------

    def rows(self, resource: Mapping) -> list[dict]:
        """Rows produced by one resource ([] for resources of other types)."""
        if not isinstance(resource, Mapping) or resource.get("resourceType") != self.resource:
            return []
        node = root_node(resource)
        variables = dict(self.constants)
        variables.update(
            resource=resource,
            rootResource=resource,
            context=resource,
            ucum="http://unitsofmeasure.org",
            sct="http://snomed.info/sct",
            loinc="http://loinc.org",
            rowIndex=0,
        )
        focus = [node]
        for loc, path in self._where:
            result = [to_python(v) for v in self._run(path, focus, variables, loc, resource)]
            if not result:
                return []
            if len(result) != 1 or not isinstance(result[0], bool):
                raise ViewEvaluationError(
                    f"{loc}.path: must evaluate to a boolean, got {result!r} "
                    f"for {self.resource}/{resource.get('id')}"
                )
            if not result[0]:
                return []
        names = self._root.names
        return [
            {n: r.get(n) for n in names} for r in self._eval(self._root, focus, variables, resource)
        ]

    def evaluate(self, resources: Iterable[Mapping]) -> Iterator[dict]:
        for resource in resources:
            yield from self.rows(resource)

    def _run(self, path: CompiledPath, focus: list, variables: dict, loc: str, resource) -> list:
        try:
            return path(focus, variables)
        except ViewDefinitionError:
            raise
        except Exception as exc:
            raise ViewEvaluationError(
                f"{loc}: evaluating {path.expression!r} on {self.resource}/{resource.get('id')} "
                f"failed: {exc}"
            ) from exc

    def _eval(self, node: _Select, focus: list, variables: dict, resource) -> list[dict]:
        null_row = False
        if node.iterate is None:
            contexts: Iterable[tuple[list, dict]] = [(focus, variables)]
        else:
            if node.iterate == "repeat":
                items = self._repeat(node, focus, variables, resource)
            else:
                items = self._run(
                    node.iter_paths[0], focus, variables, f"{node.where}.{node.iterate}", resource
                )
            if not items:
                if node.iterate != "forEachOrNull":
                    return []
                null_row = True
                contexts = [([], {**variables, "rowIndex": 0})]
            else:
                contexts = [([item], {**variables, "rowIndex": i}) for i, item in enumerate(items)]

        out: list[dict] = []
        for ctx_focus, ctx_vars in contexts:
            record = {}
            for c in node.columns:
                values = [
                    to_python(v)
                    for v in self._run(c.path, ctx_focus, ctx_vars, f"{c.where}.path", resource)
                ]
                if c.collection:
                    record[c.name] = values
                elif len(values) > 1:
                    raise ViewEvaluationError(
                        f"{c.where}: path {c.path.expression!r} returned {len(values)} values for "
                        f"{self.resource}/{resource.get('id')} but collection is not true"
                    )
                else:
                    record[c.name] = values[0] if values else None
            parts = [[record]]
            for s in node.selects:
                parts.append(self._eval(s, ctx_focus, ctx_vars, resource))
            if node.union:
                parts.append(
                    [r for u in node.union for r in self._eval(u, ctx_focus, ctx_vars, resource)]
                )
            rows = _product(parts)
            if null_row and not rows:
                rows = [dict.fromkeys(node.names)]
            out.extend(rows)
        return out

    def _repeat(self, node: _Select, focus: list, variables: dict, resource) -> list:
        out: list = []

        def walk(items: list, depth: int) -> None:
            if depth > 64:
                raise ViewEvaluationError(f"{node.where}.repeat: nesting deeper than 64 levels")
            for item in items:
                out.append(item)
                children = []
                for i, p in enumerate(node.iter_paths):
                    children.extend(
                        self._run(p, [item], variables, f"{node.where}.repeat[{i}]", resource)
                    )
                walk(children, depth + 1)

        start = []
        for i, p in enumerate(node.iter_paths):
            start.extend(self._run(p, focus, variables, f"{node.where}.repeat[{i}]", resource))
        walk(start, 0)
        return out


def _product(parts: list[list[dict]]) -> list[dict]:
    rows: list[dict] = [{}]
    for part in parts:
        if not part:
            return []
        rows = [{**a, **b} for a in rows for b in part]
    return rows


def compile_view(view: dict) -> CompiledView:
    """Validate *view* (raising :class:`ViewDefinitionError`) and compile its FHIRPath."""
    return CompiledView(view)


def _compiled(view: dict | CompiledView) -> CompiledView:
    return view if isinstance(view, CompiledView) else compile_view(view)


def evaluate(view: dict | CompiledView, resources: Iterable[dict]) -> list[dict]:
    """All rows of *view* over *resources* (resources of other types are skipped)."""
    return list(_compiled(view).evaluate(resources))


# --------------------------------------------------------------------------------------
# Arrow / DuckDB / Parquet
# --------------------------------------------------------------------------------------

_INT_TYPES = {"integer", "positiveInt", "unsignedInt", "integer64"}
_DT_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_TIME_RE = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?$")


def _kind(ftype: str | None) -> str:
    if ftype == "boolean":
        return "bool"
    if ftype in _INT_TYPES:
        return "int"
    if ftype == "decimal":
        return "float"
    if ftype == "date":
        return "date"
    if ftype in ("dateTime", "instant"):
        return "timestamp"
    if ftype == "time":
        return "time"
    return "string"


def _arrow_type(col: Column, *, time_as_string: bool = False) -> pa.DataType:
    import pyarrow as pa

    kind = _kind(col.type)
    base = {
        "bool": pa.bool_(),
        "int": pa.int64(),
        "float": pa.float64(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "time": pa.string() if time_as_string else pa.time64("us"),
        "string": pa.string(),
    }[kind]
    return pa.list_(base) if col.collection else base


def arrow_schema(view: dict | CompiledView, *, time_as_string: bool = False) -> pa.Schema:
    """The Arrow schema :func:`materialise_duckdb` / :func:`write_parquet` use for *view*."""
    import pyarrow as pa

    cv = _compiled(view)
    return pa.schema(
        [pa.field(c.name, _arrow_type(c, time_as_string=time_as_string)) for c in cv.columns]
    )


def _frac_us(frac: str | None) -> int:
    return int((frac or "0")[:6].ljust(6, "0"))


def _coerce(value: Any, kind: str, col: Column, time_as_string: bool) -> Any:
    if value is None:
        return None
    try:
        if kind == "string":
            return value if isinstance(value, str) else json.dumps(value, default=str)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if kind == "int":
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(value)
            raise TypeError
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "date":
            m = _DT_RE.match(str(value))
            if not m:
                raise TypeError
            y, mo, d = m.group(1), m.group(2) or "01", m.group(3) or "01"
            return _dt.date(int(y), int(mo), int(d))
        if kind == "timestamp":
            m = _DT_RE.match(str(value))
            if not m:
                raise TypeError
            y, mo, d, hh, mi, ss, frac, tz = m.groups()
            tzinfo = _dt.UTC
            if tz and tz != "Z":
                sign = 1 if tz[0] == "+" else -1
                tzinfo = _dt.timezone(
                    sign * _dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
                )
            stamp = _dt.datetime(
                int(y),
                int(mo or 1),
                int(d or 1),
                int(hh or 0),
                int(mi or 0),
                int(ss or 0),
                _frac_us(frac),
                tzinfo=tzinfo,
            )
            return stamp.astimezone(_dt.UTC)
        if kind == "time":
            m = _TIME_RE.match(str(value))
            if not m:
                raise TypeError
            if time_as_string:
                return str(value)
            hh, mi, ss, frac = m.groups()
            return _dt.time(int(hh), int(mi), int(ss or 0), _frac_us(frac))
    except (TypeError, ValueError, OverflowError):
        pass
    raise ViewEvaluationError(
        f"column {col.name!r}: value {value!r} does not fit declared type {col.type!r}"
    )


def iter_record_batches(
    view: dict | CompiledView,
    resources: Iterable[dict],
    *,
    batch_size: int = 8192,
    time_as_string: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Evaluate *view* and yield typed Arrow record batches of up to *batch_size* rows."""
    import pyarrow as pa

    cv = _compiled(view)
    schema = arrow_schema(cv, time_as_string=time_as_string)
    kinds = [_kind(c.type) for c in cv.columns]
    names = cv.column_names
    rows = cv.evaluate(resources)
    while True:
        chunk = list(itertools.islice(rows, batch_size))
        if not chunk:
            return
        arrays = []
        for col, kind, name, field in zip(cv.columns, kinds, names, schema):
            if col.collection:
                data = [
                    None
                    if r[name] is None
                    else [_coerce(v, kind, col, time_as_string) for v in r[name]]
                    for r in chunk
                ]
            else:
                data = [_coerce(r[name], kind, col, time_as_string) for r in chunk]
            arrays.append(pa.array(data, type=field.type))
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _quote_ident(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("table name must be a non-empty string")
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def materialise_duckdb(
    view: dict | CompiledView,
    resources: Iterable[dict],
    con: duckdb.DuckDBPyConnection,
    table: str,
    *,
    batch_size: int = 8192,
) -> int:
    """Create or replace *table* in *con* with the typed rows of *view*; returns the row count.

    Rows are streamed to DuckDB as Arrow record batches (no row-by-row inserts) through
    a cursor of *con*, so the table is created (and committed) in *con*'s database
    outside any transaction open on *con* itself; use a schema-qualified name such as
    ``"analytics.patients"`` to target another schema.
    """
    import pyarrow as pa

    cv = _compiled(view)
    schema = arrow_schema(cv)
    count = 0
    failure: BaseException | None = None

    def batches():
        nonlocal count, failure
        try:
            for batch in iter_record_batches(cv, resources, batch_size=batch_size):
                count += batch.num_rows
                yield batch
        except BaseException as exc:  # surfaced below with its own type, not DuckDB's
            failure = exc
            raise

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    tmp = f"_sof_view_{uuid.uuid4().hex}"
    # A cursor is a separate connection to the same database: registering the stream
    # there neither trips over (nor disturbs) a pending result on the caller's connection.
    cur = con.cursor()
    try:
        cur.register(tmp, reader)
        cur.execute(f"CREATE OR REPLACE TABLE {_quote_ident(table)} AS SELECT * FROM {tmp}")
    except Exception as exc:
        if failure is not None:
            raise failure from exc
        raise
    finally:
        cur.close()
    return count


def write_parquet(
    view: dict | CompiledView,
    resources: Iterable[dict],
    path: Path,
    *,
    batch_size: int = 8192,
) -> int:
    """Write the rows of *view* to a Parquet file; returns the row count.

    The file uses only types DuckDB and Apache Spark read natively: INT64 timestamps in
    microseconds (UTC-adjusted), DATE, DOUBLE, BOOLEAN, UTF8 strings and standard
    3-level LISTs; FHIR ``time`` columns are written as strings (Spark has no TIME).
    """
    import pyarrow.parquet as pq

    cv = _compiled(view)
    schema = arrow_schema(cv, time_as_string=True)
    count = 0
    path = Path(path)
    with pq.ParquetWriter(
        str(path),
        schema,
        version="2.6",
        coerce_timestamps="us",
        use_compliant_nested_type=True,
        compression="snappy",
    ) as writer:
        for batch in iter_record_batches(cv, resources, batch_size=batch_size, time_as_string=True):
            writer.write_batch(batch)
            count += batch.num_rows
    return count


def run_on_spark(view: dict, ndjson: str | Path | list, spark=None):
    """The rows of *view* over a bulk export's NDJSON files, evaluated on Apache Spark.

    The ViewDefinition runs where the data is, in Spark's Python workers (each partition of
    lines is evaluated to the view's typed rows), so a whole region's export is evaluated in
    parallel across a cluster; the result is a Spark DataFrame with the same columns and types
    as :func:`write_parquet`. *ndjson* is a file, a directory, a glob or a list of them (local
    paths, ``hdfs://`` or ``s3a://``). *spark* defaults to ``sharedcare.spark.spark_session()``.
    """
    from pyspark.sql.pandas.types import from_arrow_schema  # types only: no pandas needed

    if spark is None:
        from ..spark import spark_session

        spark = spark_session()
    schema = arrow_schema(view, time_as_string=True)  # checks the view before Spark starts
    names = [f.name for f in schema]
    paths = [str(p) for p in ndjson] if isinstance(ndjson, list) else [str(ndjson)]
    source = dict(view)  # workers get the JSON and compile it there (parsed FHIRPath stays put)

    def evaluate_partition(lines):
        import orjson

        cv = compile_view(source)
        resources = (orjson.loads(row.value) for row in lines if row.value.strip())
        for batch in iter_record_batches(cv, resources, time_as_string=True):
            for row in batch.to_pylist():
                yield tuple(row[n] for n in names)

    # Row by row rather than mapInArrow, which would make pandas a dependency.
    rows = spark.read.text(paths).rdd.mapPartitions(evaluate_partition)
    return spark.createDataFrame(rows, from_arrow_schema(schema), verifySchema=False)


# --------------------------------------------------------------------------------------
# ready views
# --------------------------------------------------------------------------------------

VIEWS_DIR = Path(__file__).with_name("views")


def ready_views() -> dict[str, dict]:
    """The ready ViewDefinitions shipped in ``sharedcare/population/views`` by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(VIEWS_DIR.glob("*.json"))}


def load_view(name: str) -> dict:
    """One ready view by name (e.g. ``"patient_demographics"``)."""
    path = VIEWS_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no ready view {name!r}; have {sorted(ready_views())}")
    return json.loads(path.read_text())


__all__ = [
    "VIEWS_DIR",
    "Column",
    "CompiledView",
    "ViewDefinitionError",
    "ViewEvaluationError",
    "arrow_schema",
    "compile_view",
    "evaluate",
    "iter_record_batches",
    "load_view",
    "materialise_duckdb",
    "ready_views",
    "write_parquet",
]
