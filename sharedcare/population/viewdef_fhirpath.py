"""FHIRPath support for the SQL-on-FHIR v2 ViewDefinition runner.

Wraps fhirpathpy (parse once, evaluate many) and adds what the SQL-on-FHIR
specification requires on top of FHIRPath:

* strict parsing (fhirpathpy's parser silently recovers from syntax errors);
* ``getResourceKey()`` and ``getReferenceKey([type])``;
* ``lowBoundary([precision])`` / ``highBoundary([precision])`` for decimal,
  date, dateTime and time values (used by the experimental suite tests);
* typed constants and environment variables (``%rowIndex``, ``%resource``...).

Evaluation works on ``ResourceNode`` collections so that nested expressions
(inside ``forEach`` etc.) keep the FHIR type information needed for choice
types (``value.ofType(Quantity)``) and the R4 model.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations.constants import constants as _fp_constants
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time, FP_Type, ResourceNode
from fhirpathpy.models import models as _fp_models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

R4_MODEL = _fp_models["r4"]

#: Environment variables every expression may use besides view constants.
BUILTIN_VARIABLES = frozenset(
    {"rowIndex", "resource", "rootResource", "context", "ucum", "sct", "loinc"}
)


class FhirPathSyntaxError(ValueError):
    """The expression is not valid FHIRPath."""


class _RaisingErrorListener(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):
        raise FhirPathSyntaxError(f"syntax error at column {column}: {msg}")


def _raise(exc):
    raise exc


def parse_strict(expression: str) -> dict:
    """Parse *expression* into fhirpathpy's AST, raising on any syntax error."""
    if not isinstance(expression, str) or not expression.strip():
        raise FhirPathSyntaxError("empty expression")
    listener = _RaisingErrorListener()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.recover = _raise
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.buildParseTrees = True
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    try:
        tree = parser.expression()
    except FhirPathSyntaxError:
        raise
    except Exception as exc:  # lexer errors (LexerNoViableAltException...)
        raise FhirPathSyntaxError(f"syntax error: {exc!r}") from exc
    if tokens.LT(1).type != Token.EOF:
        raise FhirPathSyntaxError(f"unexpected trailing input at {tokens.LT(1).text!r}")
    ast = ASTPathListener()
    ParseTreeWalker().walk(ast, tree)
    root = ast.parentStack[0]
    if not root.get("children"):
        raise FhirPathSyntaxError("empty expression")
    return root


def referenced_variables(ast: dict) -> set[str]:
    """Names of all ``%variables`` used in a parsed expression."""
    found: set[str] = set()
    stack = [ast]
    while stack:
        node = stack.pop()
        if node.get("type") == "ExternalConstant":
            for child in node.get("children") or []:
                text = child.get("text")
                if text is None and child.get("terminalNodeText"):
                    text = child["terminalNodeText"][0]
                if text:
                    found.add(text.strip("`'\""))
        stack.extend(node.get("children") or [])
    return found


# --------------------------------------------------------------------------------------
# Custom functions (raw fhirpathpy invocation-table entries: fn(ctx, inputs, *params))
# --------------------------------------------------------------------------------------


def _data(item: Any) -> Any:
    return item.data if isinstance(item, ResourceNode) else item


def _get_resource_key(ctx, inputs):
    out = []
    for item in inputs:
        data = _data(item)
        if isinstance(data, Mapping) and "resourceType" in data and data.get("id") is not None:
            out.append(data["id"])
    return out


_URN_RE = re.compile(r"^urn:(uuid|oid):(.+)$")


def reference_key(reference: Mapping, type_name: str | None = None) -> str | None:
    """The key of the resource a Reference points to (see getReferenceKey)."""
    ref = reference.get("reference")
    if not isinstance(ref, str) or not ref:
        return None
    declared = reference.get("type")
    m = _URN_RE.match(ref)
    if m:
        # Bundle-local (e.g. Synthea) references: the target id is the uuid/oid; the type is
        # only known from Reference.type, so an explicit mismatch rules the reference out.
        if type_name and declared and declared != type_name:
            return None
        return m.group(2)
    if ref.startswith("#"):
        return None  # contained resources have no key of their own
    ref = ref.split("/_history/")[0].rstrip("/")
    parts = ref.split("/")
    if len(parts) < 2:
        return None
    rtype, rid = parts[-2], parts[-1]
    if type_name and rtype != type_name:
        return None
    return rid or None


def _get_reference_key(ctx, inputs, type_info=None):
    type_name = getattr(type_info, "name", None) if type_info not in (None, []) else None
    out = []
    for item in inputs:
        data = _data(item)
        if isinstance(data, Mapping):
            key = reference_key(data, type_name)
            if key is not None:
                out.append(key)
    return out


# ---- boundaries -------------------------------------------------------------------

_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DT_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_TIME_RE = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?$")


def _kind_of(item: Any) -> tuple[str | None, Any]:
    """(kind, raw value) where kind is decimal/integer/date/dateTime/time or None."""
    if isinstance(item, ResourceNode):
        path = item.path or ""
        data = item.data
        if path in ("date", "dateTime", "time", "decimal", "integer"):
            return path, data
        if path == "instant":
            return "dateTime", data
        item = data
    if isinstance(item, bool):
        return None, item
    if isinstance(item, (Decimal, float)):
        return "decimal", Decimal(str(item))
    if isinstance(item, int):
        return "integer", item
    if isinstance(item, FP_Time):
        return "time", str(item)
    if isinstance(item, FP_DateTime):
        s = str(item)
        return ("dateTime" if "T" in s else "date"), s
    if isinstance(item, str):
        if _TIME_RE.match(item):
            return "time", item
        if _DATE_RE.match(item):
            return "date", item
        if _DT_RE.match(item):
            return "dateTime", item
    return None, item


def _decimal_boundary(value: Decimal, high: bool, precision: int | None) -> Decimal:
    value = Decimal(str(value))
    exp = value.as_tuple().exponent
    digits = -exp if isinstance(exp, int) and exp < 0 else 0
    half = Decimal(5).scaleb(-(digits + 1))
    result = value + half if high else value - half
    if precision is not None:
        result = result.quantize(Decimal(1).scaleb(-precision))
    return result


def _date_boundary(s: str, high: bool) -> str | None:
    m = _DATE_RE.match(s)
    if not m:
        return None
    y = int(m.group(1))
    mo = int(m.group(2)) if m.group(2) else (12 if high else 1)
    d = int(m.group(3)) if m.group(3) else (calendar.monthrange(y, mo)[1] if high else 1)
    return f"{y:04d}-{mo:02d}-{d:02d}"


def _datetime_boundary(s: str, high: bool) -> str | None:
    m = _DT_RE.match(s)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    date = _date_boundary("-".join(p for p in (y, mo, d) if p), high)
    hh = hh or ("23" if high else "00")
    mi = mi or ("59" if high else "00")
    ss = ss or ("59" if high else "00")
    frac = (frac or "")[:3].ljust(3, "9" if high else "0")
    if tz is None:
        tz = "-12:00" if high else "+14:00"
    return f"{date}T{hh}:{mi}:{ss}.{frac}{tz}"


def _time_boundary(s: str, high: bool) -> str | None:
    m = _TIME_RE.match(s)
    if not m:
        return None
    hh, mi, ss, frac = m.groups()
    mi = mi or ("59" if high else "00")
    ss = ss or ("59" if high else "00")
    frac = (frac or "")[:3].ljust(3, "9" if high else "0")
    return f"{hh}:{mi}:{ss}.{frac}"


def _boundary(high: bool):
    def fn(ctx, inputs, precision=None):
        if precision == []:
            precision = None
        out = []
        for item in inputs:
            kind, value = _kind_of(item)
            if kind == "decimal":
                out.append(_decimal_boundary(value, high, precision))
            elif kind == "integer":
                out.append(value)
            elif kind == "date":
                r = _date_boundary(str(value), high)
                if r is not None:
                    out.append(r)
            elif kind == "dateTime":
                r = _datetime_boundary(str(value), high)
                if r is not None:
                    out.append(r)
            elif kind == "time":
                r = _time_boundary(str(value), high)
                if r is not None:
                    out.append(r)
        return out

    return fn


def _join(ctx, inputs, separator=None):
    """join([separator]): an empty input gives '' (as the SQL-on-FHIR suite expects)."""
    if separator in (None, []):
        separator = ""
    values = []
    for item in inputs:
        data = _data(item)
        if not isinstance(data, str):
            raise TypeError(f"join() requires strings, got {type(data).__name__}")
        values.append(data)
    return [separator.join(values)]


USER_FUNCTIONS = {
    "join": {"fn": _join, "arity": {0: [], 1: ["String"]}},
    "getResourceKey": {"fn": _get_resource_key},
    "getReferenceKey": {"fn": _get_reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    "lowBoundary": {"fn": _boundary(False), "arity": {0: [], 1: ["Integer"]}},
    "highBoundary": {"fn": _boundary(True), "arity": {0: [], 1: ["Integer"]}},
}


class CompiledPath:
    """A FHIRPath expression parsed once and evaluated many times."""

    __slots__ = ("ast", "expression", "variables")

    def __init__(self, expression: str):
        self.expression = expression
        self.ast = parse_strict(expression)
        self.variables = referenced_variables(self.ast)

    def __call__(self, focus: list, variables: dict) -> list:
        """Evaluate against *focus* (a list of ResourceNodes/values); returns raw items."""
        _fp_constants.reset()
        ctx = {
            "dataRoot": focus,
            "$this": focus,
            "vars": variables,
            "model": R4_MODEL,
            "userInvocationTable": USER_FUNCTIONS,
        }
        result = do_eval(ctx, focus, self.ast["children"][0])
        if not isinstance(result, list):
            result = [result]
        # Drop fhirpathpy's internal nodes for primitive extensions (``_birthDate``) as
        # fhirpathpy.evaluate does: they are not values.
        return [
            r
            for r in result
            if not (
                isinstance(r, ResourceNode)
                and isinstance(r.data, Mapping)
                and list(r.data) == ["extension"]
            )
        ]


def root_node(resource: Mapping) -> ResourceNode:
    return ResourceNode.create_node(resource, resource.get("resourceType"))


def to_python(item: Any) -> Any:
    """Convert an evaluation result item into a plain JSON-like Python value."""
    if isinstance(item, ResourceNode):
        item = item.data
    if isinstance(item, bool) or item is None:
        return item
    if isinstance(item, Decimal):
        if item == item.to_integral_value() and item.as_tuple().exponent >= 0:
            return int(item)
        return float(item)
    if isinstance(item, FP_Quantity):
        value = item.value
        return {
            "value": to_python(value) if isinstance(value, Decimal) else value,
            "unit": item.unit,
        }
    if isinstance(item, FP_Type):
        return str(item)
    return item


__all__ = [
    "BUILTIN_VARIABLES",
    "R4_MODEL",
    "USER_FUNCTIONS",
    "CompiledPath",
    "FhirPathSyntaxError",
    "parse_strict",
    "reference_key",
    "referenced_variables",
    "root_node",
    "to_python",
]
