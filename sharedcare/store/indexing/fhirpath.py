"""A small FHIRPath compiler for the subset the R4 SearchParameter expressions use.

An expression is parsed once and compiled into *typed branches*: each branch is a chain of
per-node steps (get an element, filter with a predicate, pick extensions by url) whose output
type is known at compile time from the official schema (see ``model``). The indexer turns each
branch into a chain of plain Python closures in continuation-passing style, so no intermediate
collections are built on the hot path and the row converter is chosen once per branch.

Whole-collection or boolean expressions (``X.exists() and X != false``) compile to a generic
evaluator (also plain closures). Anything outside the subset raises ``Unsupported``; the caller
falls back to fhirpathpy for that expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .model import PRIMITIVES, Model, is_subtype

__all__ = [
    "Branch",
    "Compiler",
    "Unsupported",
    "parse",
    "reference_type",
    "root_name",
    "split_union",
]


class Unsupported(Exception):
    """The expression uses FHIRPath this compiler does not handle."""


# --------------------------------------------------------------------------- tokenizer / parser

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<str>'(?:[^'\\]|\\.)*')"
    r"|(?P<num>\d+(?:\.\d+)?)"
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)"
    r"|(?P<var>[%$][A-Za-z_][A-Za-z0-9_]*|%'[^']*')"
    r"|(?P<op><=|>=|!=|!~|[.()\[\],|=~<>+\-*/&])"
    r")"
)

_KEYWORD_OPS = {"and", "or", "xor", "implies", "is", "as", "in", "contains", "div", "mod"}


def tokenize(expr: str) -> list[tuple[str, Any]]:
    pos, out = 0, []
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise Unsupported(f"cannot tokenize {expr[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "str":
            out.append(("str", re.sub(r"\\(.)", r"\1", text[1:-1])))
        elif kind == "num":
            out.append(("num", float(text) if "." in text else int(text)))
        elif kind == "id":
            out.append(("id", text.strip("`")))
        else:
            out.append((kind, text))
    out.append(("eof", None))
    return out


class _Parser:
    # precedence: loosest first
    LEVELS: ClassVar[list[set[str]]] = [
        {"implies"},
        {"or", "xor"},
        {"and"},
        {"in", "contains"},
        {"=", "~", "!=", "!~"},
        {"<", ">", "<=", ">="},
        {"|"},
        {"is", "as"},
        {"+", "-", "&"},
        {"*", "/", "div", "mod"},
    ]

    def __init__(self, expr: str):
        self.toks = tokenize(expr)
        self.i = 0

    def peek(self):
        return self.toks[self.i]

    def next(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, kind, value=None):
        t = self.next()
        if t[0] != kind or (value is not None and t[1] != value):
            raise Unsupported(f"expected {value or kind}, got {t[1]!r}")
        return t

    def _op_at(self, level):
        k, v = self.peek()
        if k == "op" and v in self.LEVELS[level]:
            return v
        if k == "id" and v in _KEYWORD_OPS and v in self.LEVELS[level]:
            return v
        return None

    def parse(self):
        e = self.expr(0)
        if self.peek()[0] != "eof":
            raise Unsupported(f"unexpected {self.peek()[1]!r}")
        return e

    def expr(self, level):
        if level == len(self.LEVELS):
            return self.unary()
        left = self.expr(level + 1)
        while (op := self._op_at(level)) is not None:
            self.next()
            if op in ("is", "as"):
                left = (op, left, self.type_spec())
            else:
                left = ("bin", op, left, self.expr(level + 1))
        return left

    def type_spec(self):
        name = self.expect("id")[1]
        while self.peek() == ("op", "."):
            self.next()
            name = self.expect("id")[1]  # FHIR.Quantity / System.String -> last part
        return name

    def unary(self):
        if self.peek() in (("op", "-"), ("op", "+")):
            op = self.next()[1]
            e = self.unary()
            if op == "-" and e[0] == "lit" and isinstance(e[1], (int, float)):
                return ("lit", -e[1])
            raise Unsupported("unary operator")
        return self.postfix(self.term())

    def term(self):
        k, v = self.next()
        if k == "str":
            return ("lit", v)
        if k == "num":
            return ("lit", v)
        if k == "var":
            if v == "$this":
                return ("this",)
            raise Unsupported(f"variable {v}")
        if k == "op" and v == "(":
            e = self.expr(0)
            self.expect("op", ")")
            return e
        if k == "id":
            if v in ("true", "false"):
                return ("lit", v == "true")
            if self.peek() == ("op", "("):
                return self.call(None, v)
            return ("id", v)
        raise Unsupported(f"unexpected {v!r}")

    def call(self, target, name):
        self.expect("op", "(")
        args = []
        if self.peek() != ("op", ")"):
            args.append(self.expr(0))
            while self.peek() == ("op", ","):
                self.next()
                args.append(self.expr(0))
        self.expect("op", ")")
        return ("call", target, name, args)

    def postfix(self, e):
        while True:
            t = self.peek()
            if t == ("op", "."):
                self.next()
                name = self.expect("id")[1]
                if self.peek() == ("op", "("):
                    e = self.call(e, name)
                else:
                    e = ("member", e, name)
            elif t == ("op", "["):
                self.next()
                idx = self.expr(0)
                self.expect("op", "]")
                e = ("index", e, idx)
            else:
                return e


def parse(expr: str):
    return _Parser(expr).parse()


def split_union(expr: str) -> list[str]:
    """Split an expression at its top-level '|' operators (text of each part, stripped)."""
    parts, depth, start, i, n = [], 0, 0, 0, len(expr)
    while i < n:
        c = expr[i]
        if c == "'":
            i += 1
            while i < n and expr[i] != "'":
                i += 2 if expr[i] == "\\" else 1
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(expr[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expr[start:].strip())
    return [p for p in parts if p]


def root_name(ast) -> str | None:
    """The leftmost identifier of a path expression ('Observation' in '(Observation.value as X)')."""
    while True:
        k = ast[0]
        if k == "id":
            return ast[1]
        if k in ("member", "index", "is", "as"):
            ast = ast[1]
        elif k == "call":
            if ast[1] is None:
                return None
            ast = ast[1]
        elif k == "bin":
            a, b = root_name(ast[2]), root_name(ast[3])
            return a if a == b or b is None else (b if a is None else None)
        else:
            return None


# --------------------------------------------------------------------------- references


def reference_type(node, root, resource_types) -> str | None:
    """The resource type a Reference (or a reference/canonical string) points at, or None.

    'Patient/1', '.../fhir/Patient/1/_history/2' -> 'Patient'; '#c1' -> type of the contained
    resource with that id; 'urn:uuid:...' and unparseable -> Reference.type if given.
    """
    if node.__class__ is dict:
        ref = node.get("reference")
        declared = node.get("type")
        if ref is None:
            return None
    else:
        ref, declared = node, None
        if ref.__class__ is not str:
            return None
    if ref.startswith("#"):
        for c in root.get("contained", ()) if root.__class__ is dict else ():
            if c.__class__ is dict and c.get("id") == ref[1:]:
                return c.get("resourceType")
        return declared
    if ref.startswith("urn:"):
        return declared
    parts = ref.split("|", 1)[0].split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        del parts[-2:]
    if len(parts) >= 2 and parts[-2] in resource_types and parts[-1]:
        return parts[-2]
    return declared


# --------------------------------------------------------------------------- compiler


@dataclass(frozen=True, slots=True)
class Branch:
    """A chain of per-node steps from the resource root; every output node has type `type`.

    steps: ('get', json_key) | ('where', pred(node, root) -> bool)
    generic: for whole-collection expressions, fn(root) -> list of values (steps unused).
    """

    steps: tuple
    type: str
    generic: Callable | None = None


def _truthy(coll) -> bool:
    return len(coll) == 1 and coll[0] is True


class Compiler:
    def __init__(self, model: Model):
        self.model = model
        self.rtypes = model.resource_types

    # ---- typed branches
    def compile(self, expr: str, base: str) -> list[Branch]:
        ast = parse(expr)
        try:
            return self._branches(ast, base, None)
        except Unsupported:
            fn, types = self._gen(ast, base, [base], top=True)
            t = types[0] if types and len(set(types)) == 1 else None
            if t is None:
                raise
            return [Branch((), t, fn)]

    def _branches(self, ast, base, ctx: list[Branch] | None) -> list[Branch]:
        k = ast[0]
        if k == "id":
            name = ast[1]
            if ctx is None and name in (base, "Resource", "DomainResource"):
                return [Branch((), base)]
            if ctx is None:
                ctx = [Branch((), base)]  # bare element name, relative to the resource
            return self._member(ctx, name)
        if k == "member":
            return self._member(self._branches(ast[1], base, ctx), ast[2])
        if k == "bin" and ast[1] == "|":
            return self._branches(ast[2], base, ctx) + self._branches(ast[3], base, ctx)
        if k == "as":
            return self._filter_type(self._branches(ast[1], base, ctx), ast[2])
        if k == "call":
            _, target, name, args = ast
            if target is None:
                raise Unsupported(f"{name}() at the start of a path")
            src = self._branches(target, base, ctx)
            if name in ("as", "ofType") and len(args) == 1 and args[0][0] == "id":
                return self._filter_type(src, args[0][1])
            if name == "where" and len(args) == 1:
                out = []
                for b in src:
                    pred = self._pred(args[0], b.type)
                    out.append(Branch(b.steps + (("where", pred),), b.type))
                return out
            if name == "extension" and len(args) == 1 and args[0][0] == "lit":
                url = args[0][1]

                def has_url(node, root, _u=url):
                    return node.__class__ is dict and node.get("url") == _u

                return [
                    Branch(b.steps + (("get", "extension"), ("where", has_url)), "Extension")
                    for b in src
                ]
            raise Unsupported(f"function {name}() in a path")
        raise Unsupported(f"{k} in a path")

    def _member(self, src: list[Branch], name: str) -> list[Branch]:
        out = []
        for b in src:
            if b.type in PRIMITIVES:
                continue  # primitives have no children (their extensions are not modelled here)
            el = self.model.element(b.type, name)
            if el is None:
                raise Unsupported(f"no element {b.type}.{name}")
            for key, t in el.items():
                out.append(Branch(b.steps + (("get", key),), t))
        return out

    @staticmethod
    def _filter_type(src: list[Branch], tname: str) -> list[Branch]:
        return [b for b in src if is_subtype(b.type, tname)]

    # ---- predicates (where criteria), evaluated per node
    def _pred(self, ast, ctx_type: str):
        # fast paths for the shapes the R4 definitions use
        if ast[0] == "is" and ast[1] == ("call", None, "resolve", []):
            want, rtypes = ast[2], self.rtypes

            def is_resolved(node, root):
                t = reference_type(node, root, rtypes)
                return t is not None and t == want

            return is_resolved
        if (
            ast[0] == "bin"
            and ast[1] == "="
            and ast[2][0] == "id"
            and ast[3][0] == "lit"
            and isinstance(ast[3][1], str)
        ):
            el = self.model.element(ctx_type, ast[2][1])
            if el is not None and len(el) == 1:
                (key,) = el
                val = ast[3][1]
                return lambda node, root: node.__class__ is dict and node.get(key) == val
        if (
            ast[0] == "call"
            and ast[1] is None
            and ast[2] == "hasExtension"
            and len(ast[3]) == 1
            and ast[3][0][0] == "lit"
        ):
            url = ast[3][0][1]

            def has_ext(node, root):
                if node.__class__ is not dict:
                    return False
                return any(e.get("url") == url for e in node.get("extension", ()))

            return has_ext
        fn, _ = self._gen(ast, None, [ctx_type])
        return lambda node, root: _truthy(fn([node], root))

    # ---- generic evaluator: fn(focus: list, root) -> list
    def _gen(self, ast, base, types: list[str] | None, top=False):
        k = ast[0]
        if k == "lit":
            v = ast[1]
            return (lambda focus, root: [v]), [
                "boolean" if isinstance(v, bool) else "string" if isinstance(v, str) else "decimal"
            ]
        if k == "this":
            return (lambda focus, root: focus), types
        if k == "id" and top and ast[1] in (base, "Resource", "DomainResource"):
            return (lambda focus, root: [root]), [base]
        if k in ("id", "member"):
            if k == "id":
                src_fn, src_types, name = (lambda focus, root: focus), types, ast[1]
            else:
                src_fn, src_types = self._gen(ast[1], base, types, top)
                name = ast[2]
            if not src_types:
                raise Unsupported(f"untyped member {name}")
            keys, out_types = [], []
            for t in src_types:
                if t in PRIMITIVES:
                    continue
                el = self.model.element(t, name)
                if el is None:
                    raise Unsupported(f"no element {t}.{name}")
                for key, et in el.items():
                    if key not in keys:
                        keys.append(key)
                        out_types.append(et)
            keys = tuple(keys)

            def member(focus, root):
                out = []
                for n in src_fn(focus, root):
                    if n.__class__ is dict:
                        for key in keys:
                            v = n.get(key)
                            if v is not None:
                                if v.__class__ is list:
                                    out.extend(v)
                                else:
                                    out.append(v)
                return out

            return member, out_types
        if k == "call":
            _, target, name, args = ast
            if target is None:
                src_fn, src_types = (lambda focus, root: focus), types
            else:
                src_fn, src_types = self._gen(target, base, types, top)
            if name == "exists" and not args:
                return (lambda f, r: [len(src_fn(f, r)) > 0]), ["boolean"]
            if name == "empty" and not args:
                return (lambda f, r: [len(src_fn(f, r)) == 0]), ["boolean"]
            if name == "not" and not args:

                def not_(f, r):
                    c = src_fn(f, r)
                    return [not c[0]] if len(c) == 1 and isinstance(c[0], bool) else []

                return not_, ["boolean"]
            if name == "first" and not args:
                return (lambda f, r: src_fn(f, r)[:1]), src_types
            if name == "count" and not args:
                return (lambda f, r: [len(src_fn(f, r))]), ["integer"]
            if name == "resolve" and not args:
                rtypes = self.rtypes

                def resolve(f, r):
                    out = []
                    for n in src_fn(f, r):
                        t = reference_type(n, r, rtypes)
                        if t is not None:
                            out.append({"resourceType": t})
                    return out

                return resolve, ["Resource"]
            if name == "hasExtension" and len(args) == 1 and args[0][0] == "lit":
                url = args[0][1]

                def has_ext(f, r):
                    c = src_fn(f, r)
                    return [
                        any(
                            isinstance(n, dict)
                            and any(e.get("url") == url for e in n.get("extension", ()))
                            for n in c
                        )
                    ]

                return has_ext, ["boolean"]
            if name == "where" and len(args) == 1 and src_types and len(set(src_types)) == 1:
                pred = self._pred(args[0], src_types[0])
                return (lambda f, r: [n for n in src_fn(f, r) if pred(n, r)]), src_types
            raise Unsupported(f"function {name}()")
        if k == "is":
            src_fn, src_types = self._gen(ast[1], base, types, top)
            tname = ast[2]
            if src_types == ["Resource"]:
                return (
                    lambda f, r: (
                        [c[0].get("resourceType") == tname] if len(c := src_fn(f, r)) == 1 else []
                    )
                ), ["boolean"]
            raise Unsupported("'is' on a typed value")
        if k == "bin":
            op = ast[1]
            a_fn, _ = self._gen(ast[2], base, types, top)
            b_fn, _ = self._gen(ast[3], base, types, top)
            if op in ("=", "!="):
                neg = op == "!="

                def eq(f, r):
                    a, b = a_fn(f, r), b_fn(f, r)
                    if not a or not b:
                        return []
                    if len(a) != len(b):
                        return [neg]
                    same = all(type(x) is type(y) and x == y for x, y in zip(a, b))
                    return [same != neg]

                return eq, ["boolean"]
            if op in ("and", "or"):
                is_and = op == "and"

                def logic(f, r):
                    a, b = a_fn(f, r), b_fn(f, r)
                    av = a[0] if len(a) == 1 and isinstance(a[0], bool) else None
                    bv = b[0] if len(b) == 1 and isinstance(b[0], bool) else None
                    if is_and:
                        if av is False or bv is False:
                            return [False]
                        if av is True and bv is True:
                            return [True]
                        return []
                    if av is True or bv is True:
                        return [True]
                    if av is False and bv is False:
                        return [False]
                    return []

                return logic, ["boolean"]
            raise Unsupported(f"operator {op}")
        raise Unsupported(f"{k} in an expression")
