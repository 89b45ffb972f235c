"""Full-text search: `_text` (the narrative) and `_content` (the whole resource).

Two texts per resource, written with the resource in its transaction (`Store._write`):

- narrative: `text.div` with the XHTML tags stripped -- what `_text` searches;
- content: every string value of the resource (the narrative as text, not markup), the decoded
  text of inline `text/*` attachments (DocumentReference.content.attachment.data and any other
  Attachment) and of a `text/*` Binary's `data` (text/html stripped) -- what `_content` searches.
  Left out: ids, `meta`, coding/identifier systems, extension urls, references and base64 that
  is not text.

The engines: PostgreSQL keeps both as `tsvector` columns of `resource_text` with GIN indexes
(`to_tsvector('english', ...)`, ranked with `ts_rank`); SQLite keeps them in an FTS5 virtual
table `resource_text` whose rowid is the resource's pk (porter stemming, accents folded,
ranked with `bm25`). Both stem English, so 'letters' finds 'letter' on either.

Search syntax (http://hl7.org/fhir/R4/search.html#text points at OData's $search): words,
"quoted phrases", AND, OR, NOT (upper case) and parentheses; words side by side are ANDed; NOT
binds tighter than AND, AND tighter than OR. A comma separates OR'd values as in every FHIR
parameter. User text never reaches either engine's query grammar: every word and phrase is
a bound parameter -- quoted as an FTS5 string on SQLite, given to `phraseto_tsquery` on
PostgreSQL -- and the operators are produced from the parsed tree.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from html.parser import HTMLParser

from sqlalchemy import bindparam, column, func, select, table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Float, Integer, NullType

__all__ = [
    "Query",
    "TextError",
    "content_text",
    "delete_rows",
    "insert_rows",
    "narrative_text",
    "parse_query",
    "text_rank",
    "text_rows",
    "text_subquery",
]

TABLE = "resource_text"
# Enough for a long clinic letter; PostgreSQL refuses a tsvector over 1 MB, so a text beyond
# this is indexed up to here (the resource itself is stored whole).
MAX_CHARS = 200_000
# Keys whose string values are machinery, not text a person wrote or reads.
SKIP_KEYS = frozenset({"resourceType", "id", "meta", "system", "reference", "url", "div",
                       "contentType", "language", "fullUrl", "profile"})


# ------------------------------------------------------------------ extraction
class _Stripper(HTMLParser):
    """Text of an XHTML/HTML fragment: tags dropped, entities decoded, blocks separated."""

    SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        self.parts.append(" ")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def strip_html(markup: str) -> str:
    p = _Stripper()
    p.feed(markup)
    p.close()
    return _clean(" ".join("".join(p.parts).split()))


def _clean(s: str) -> str:
    # PostgreSQL text cannot hold NUL; both engines are given at most MAX_CHARS.
    return s.replace("\x00", " ")[:MAX_CHARS]


def narrative_text(res: dict) -> str:
    div = (res.get("text") or {}).get("div") if isinstance(res.get("text"), dict) else None
    return strip_html(div) if isinstance(div, str) and div else ""


def decoded_text(content_type: str | None, data: str | None) -> str:
    """The text of base64 `data` when `content_type` is text/* (html stripped), else ''."""
    if not content_type or not data or not isinstance(data, str):
        return ""
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    if not mime.startswith("text/"):
        return ""
    charset = "utf-8"
    for p in params.split(";"):
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset" and v.strip():
            charset = v.strip().strip('"')
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return ""
    try:
        text = raw.decode(charset, errors="replace")
    except LookupError:  # an unknown charset: read it as UTF-8
        text = raw.decode("utf-8", errors="replace")
    if mime in ("text/html", "text/xml"):
        text = strip_html(text)
    return _clean(text)


def content_text(res: dict) -> str:
    parts: list[str] = []
    add = parts.append

    # The second-hottest loop of ingest (after index extraction): strings are taken inline
    # and the total is capped once at the end.
    def walk(node: dict) -> None:
        if "contentType" in node and node.get("data").__class__ is str:
            add(decoded_text(node["contentType"], node["data"]))  # an Attachment
        for k, v in node.items():
            if k in SKIP_KEYS or k == "data" or k.endswith("Base64Binary"):
                continue
            cls = v.__class__
            if cls is str:
                add(v)
            elif cls is dict:
                if k == "text" and "div" in v:
                    add(narrative_text(node))
                else:
                    walk(v)
            elif cls is list:
                for item in v:
                    if item.__class__ is str:
                        add(item)
                    elif item.__class__ is dict:
                        walk(item)

    if res.get("resourceType") == "Binary":
        return decoded_text(res.get("contentType"), res.get("data"))
    walk(res)
    return _clean(" ".join(parts))


def text_rows(res: dict) -> tuple[str, str] | None:
    """(narrative, content) for one resource, None when it has no text at all."""
    narrative, content = narrative_text(res), content_text(res)
    return (narrative, content) if narrative or content else None


# ------------------------------------------------------------------ writing
def insert_rows(conn, rows: list[tuple[int, str, str]], keys: list[str] | None = None) -> None:
    """(pk, narrative, content) rows, in the caller's transaction. `keys`: each row's
    partition_key (store/partitioning.py), which PostgreSQL's table holds since migration 0006
    (None: the table as migration 0005 made it)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        if keys is not None:
            # One statement over arrays, not one INSERT a row: a Bundle's rows in one round
            # trip (to_tsvector runs in the server either way).
            pks, narratives, contents = zip(*rows, strict=True)
            conn.exec_driver_sql(
                f"INSERT INTO {TABLE} (resource_pk, narrative, content, partition_key) "
                "SELECT p, to_tsvector('english', n), to_tsvector('english', c), k FROM "
                "unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS u(p, n, c, k)",
                (list(pks), list(narratives), list(contents), list(keys)))
            return
        conn.exec_driver_sql(
            f"INSERT INTO {TABLE} (resource_pk, narrative, content) VALUES "
            "(%s, to_tsvector('english', %s), to_tsvector('english', %s))", rows)
    else:
        conn.exec_driver_sql(
            f"INSERT INTO {TABLE} (rowid, narrative, content) VALUES (?, ?, ?)", rows)


def delete_rows(conn, pks: list[int]) -> None:
    if not pks:
        return
    key = "resource_pk" if conn.dialect.name == "postgresql" else "rowid"
    mark = "%s" if conn.dialect.name == "postgresql" else "?"
    for i in range(0, len(pks), 500):
        chunk = pks[i:i + 500]
        conn.exec_driver_sql(
            f"DELETE FROM {TABLE} WHERE {key} IN ({', '.join([mark] * len(chunk))})",
            tuple(chunk))


# ------------------------------------------------------------------ the query language
class TextError(ValueError):
    """A malformed _text/_content value; the message says what is wrong."""


@dataclass(frozen=True)
class Term:
    text: str  # a word or a phrase: matched as a phrase of its tokens


@dataclass(frozen=True)
class And:
    items: tuple  # of nodes; a Not item narrows the others


@dataclass(frozen=True)
class Or:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: object


Query = Term | And | Or | Not

_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)("?)|([^\s()"]+))')
_WORD = re.compile(r"[^\W_]")


def parse_query(raw: str) -> Query:
    """FHIR/OData search text -> a tree. Raises TextError for malformed text."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    raw = raw.replace("\x00", " ").strip()
    while pos < len(raw):
        m = _TOKEN.match(raw, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        lp, rp, phrase, closed, word = m.groups()
        if lp:
            tokens.append(("(", lp))
        elif rp:
            tokens.append((")", rp))
        elif phrase is not None:
            if not closed:
                raise TextError("a quoted phrase is not closed")
            tokens.append(("term", re.sub(r"\\(.)", r"\1", phrase)))
        elif word in ("AND", "OR", "NOT"):
            tokens.append((word, word))
        else:
            tokens.append(("term", word))
    if not tokens:
        raise TextError("no words to search for")
    at = [0]

    def peek():
        return tokens[at[0]][0] if at[0] < len(tokens) else None

    def take():
        at[0] += 1
        return tokens[at[0] - 1]

    def or_expr():
        items = [and_expr()]
        while peek() == "OR":
            take()
            items.append(and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr():
        items = [unary()]
        while peek() in ("AND", "NOT", "term", "("):
            if peek() == "AND":
                take()
            items.append(unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary():
        kind = peek()
        if kind == "NOT":
            take()
            return Not(unary())
        if kind == "(":
            take()
            inner = or_expr()
            if peek() != ")":
                raise TextError("a parenthesis is not closed")
            take()
            return inner
        if kind == "term":
            return Term(take()[1])
        if kind is None:
            raise TextError("the search text ends with an operator")
        raise TextError(f"unexpected {kind!r}")

    tree = or_expr()
    if at[0] != len(tokens):
        raise TextError(f"unexpected {tokens[at[0]][1]!r}")
    return _simplify(tree)


def _simplify(node) -> Query:
    """Drops terms without a letter or digit (they match nothing on either engine) and checks
    every NOT narrows something: a search for what a text lacks would return the store."""
    if isinstance(node, Term):
        return node if _WORD.search(node.text) else None
    if isinstance(node, Not):
        inner = _simplify(node.item)
        return Not(inner) if inner is not None else None
    items = tuple(x for x in (_simplify(i) for i in node.items) if x is not None)
    if isinstance(node, And):
        if items and all(isinstance(i, Not) for i in items):
            raise TextError("NOT must narrow a search for some words (e.g. 'asthma NOT child')")
        if not items:
            return None
        return items[0] if len(items) == 1 else And(items)
    if not items:
        return None
    if any(isinstance(i, Not) for i in items):
        raise TextError("NOT must narrow a search for some words (e.g. 'asthma NOT child')")
    return items[0] if len(items) == 1 else Or(items)


def check(tree) -> Query:
    if tree is None or isinstance(tree, Not):
        raise TextError("NOT must narrow a search for some words (e.g. 'asthma NOT child')"
                        if isinstance(tree, Not) else "no words to search for")
    return tree


# ------------------------------------------------------------------ SQL: one construct per engine
class _TextMatch(ColumnElement):
    """`resource_text` rows whose `field` matches `tree` -- compiled per engine. (Untyped: a
    Boolean would be rendered `... = 1` on SQLite, which FTS5's MATCH refuses.)"""

    type = NullType()
    inherit_cache = False

    def __init__(self, field: str, tree: Query):
        self.field = field
        self.tree = tree


class _TextKey(ColumnElement):
    type = Integer()
    inherit_cache = False


@compiles(_TextKey)
def _key_default(element, compiler, **kw):
    return f"{TABLE}.resource_pk"


@compiles(_TextKey, "sqlite")
def _key_sqlite(element, compiler, **kw):
    return f"{TABLE}.rowid"


def _fts5(tree: Query) -> str:
    if isinstance(tree, Term):
        return '"' + tree.text.replace('"', '""') + '"'
    if isinstance(tree, Or):
        return "(" + " OR ".join(_fts5(i) for i in tree.items) + ")"
    if isinstance(tree, And):
        pos = [i for i in tree.items if not isinstance(i, Not)]
        neg = [i.item for i in tree.items if isinstance(i, Not)]
        out = "(" + " AND ".join(_fts5(i) for i in pos) + ")"
        for n in neg:
            out = f"({out} NOT {_fts5(n)})"
        return out
    raise TextError("NOT must narrow a search for some words")


@compiles(_TextMatch, "sqlite")
def _match_sqlite(element, compiler, **kw):
    # A column filter confines the whole expression to one column of the FTS5 table; the
    # expression is one bound parameter built from quoted strings.
    expr = f"{element.field} : {_fts5(element.tree)}"
    return f"{TABLE} MATCH " + compiler.process(bindparam(None, expr, unique=True), **kw)


def _tsquery_sql(tree: Query, compiler, **kw) -> str:
    """The tsquery for `tree`: every word goes to phraseto_tsquery as a bound parameter and
    only the operators between them are written here."""
    if isinstance(tree, Term):
        return ("phraseto_tsquery('english'::regconfig, "
                + compiler.process(bindparam(None, tree.text, unique=True), **kw) + ")")
    if isinstance(tree, Or):
        return "(" + " || ".join(_tsquery_sql(i, compiler, **kw) for i in tree.items) + ")"
    if isinstance(tree, And):
        parts = [("!!" if isinstance(i, Not) else "")
                 + _tsquery_sql(i.item if isinstance(i, Not) else i, compiler, **kw)
                 for i in tree.items]
        return "(" + " && ".join(parts) + ")"
    raise TextError("NOT must narrow a search for some words")


@compiles(_TextMatch, "postgresql")
def _match_pg(element, compiler, **kw):
    return f"{TABLE}.{element.field} @@ {_tsquery_sql(element.tree, compiler, **kw)}"


@compiles(_TextMatch)
def _match_other(element, compiler, **kw):  # pragma: no cover - only two engines are supported
    raise NotImplementedError(f"full-text search is not available on {compiler.dialect.name}")


class _TextScore(ColumnElement):
    """The match's relevance, higher is better (inside a query over `resource_text`)."""

    type = Float()
    inherit_cache = False

    def __init__(self, field: str, tree: Query):
        self.field = field
        self.tree = tree


@compiles(_TextScore, "postgresql")
def _score_pg(element, compiler, **kw):
    return f"ts_rank({TABLE}.{element.field}, {_tsquery_sql(element.tree, compiler, **kw)})"


@compiles(_TextScore, "sqlite")
def _score_sqlite(element, compiler, **kw):
    # bm25 is lower-is-better; the other column weighs nothing.
    weights = "1.0, 0.0" if element.field == "narrative" else "0.0, 1.0"
    return f"-bm25({TABLE}, {weights})"


_text_table = table(TABLE, column("narrative"), column("content"))


def text_subquery(field: str, tree: Query):
    """SELECT the pks of resources whose `field` ('narrative' | 'content') matches `tree`.
    Uncorrelated, so it can sit in any WHERE as `pk IN (...)` (and be re-aimed at an alias)."""
    return select(_TextKey()).select_from(_text_table).where(_TextMatch(field, tree))


def text_rank(field: str, tree: Query, pk: ColumnElement) -> ColumnElement:
    """The relevance of the resource whose pk is `pk` (0 when its own text does not match)."""
    score = (select(_TextScore(field, tree)).select_from(_text_table)
             .where(_TextMatch(field, tree), _TextKey() == pk).scalar_subquery())
    return func.coalesce(score, 0.0)
