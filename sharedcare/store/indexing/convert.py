"""Value -> index-row converters, chosen once per (search parameter type, FHIR element type).

Each ``make_sink`` result is a closure ``sink(node, root, rows)`` that appends rows for one node.
Conversions follow the FHIR R4 search page (https://hl7.org/fhir/R4/search.html): token from
Coding / CodeableConcept / Identifier / ContactPoint / code-like primitives; string from string,
HumanName and Address parts; date ranges from date/dateTime/instant/Period/Timing; number and
quantity from Quantity (and its profiles), Money, Range, decimal and integer; reference from
Reference and canonical/uri; uri from uri/url/canonical.
"""

from __future__ import annotations

from functools import partial

from .values import MAX_DATE, MIN_DATE, date_range, normalize_string, number_range

__all__ = ["IMPLIED_SYSTEMS", "infer_type", "make_sink", "parse_reference"]

INF = float("inf")

# `code` elements whose code system is fixed by a required binding (token system stored with the
# code; a code-only search still matches).
IMPLIED_SYSTEMS = {
    "gender": "http://hl7.org/fhir/administrative-gender",
}

_STRINGY = {"string", "markdown", "code", "id", "uri", "url", "canonical", "oid", "uuid"}
_DATES = {"date", "dateTime", "instant"}
_NUMS = {"decimal", "integer", "positiveInt", "unsignedInt"}
_URIS = {"uri", "url", "canonical", "oid", "uuid"}


def _norm(s):
    return normalize_string(s) if s.__class__ is str and s else None


# ---------------------------------------------------------------------------------- tokens


def _tok_coding(code, n, root, rows, _n=_norm):
    if n.__class__ is dict:
        rows.tokens.append((code, n.get("system"), n.get("code"), _n(n.get("display"))))


def _tok_cc(code, n, root, rows, _n=_norm):
    if n.__class__ is not dict:
        return
    app = rows.tokens.append
    for c in n.get("coding", ()):
        if c.__class__ is dict:
            app((code, c.get("system"), c.get("code"), _n(c.get("display"))))
    t = n.get("text")
    if t:
        app((code, None, None, _n(t)))


def _tok_identifier(code, n, root, rows, _n=_norm):
    if n.__class__ is not dict:
        return
    t = n.get("type")
    text = _n(t.get("text")) if t.__class__ is dict else None
    if n.get("value") is not None or n.get("system") is not None:
        rows.tokens.append((code, n.get("system"), n.get("value"), text))


def _tok_contactpoint(code, n, root, rows):
    if n.__class__ is dict and n.get("value") is not None:
        rows.tokens.append((code, None, n.get("value"), None))


def _tok_reference(code, n, root, rows):
    # a Reference in a token parameter: its logical identifier
    if n.__class__ is dict and n.get("identifier").__class__ is dict:
        _tok_identifier(code, n["identifier"], root, rows)


def _tok_primitive(code, n, root, rows):
    if n.__class__ is bool:
        rows.tokens.append((code, None, "true" if n else "false", None))
    elif n.__class__ is str or n.__class__ is int or n.__class__ is float:
        rows.tokens.append((code, None, str(n), None))


def _tok_quantity(code, n, root, rows):
    if n.__class__ is dict and n.get("code") is not None:
        rows.tokens.append((code, n.get("system"), n.get("code"), _norm(n.get("unit"))))


# ---------------------------------------------------------------------------------- strings


def _str_add(code, s, rows, _n=normalize_string):
    if s.__class__ is str and s:
        rows.strings.append((code, _n(s), s))


def _str_primitive(code, n, root, rows):
    if n.__class__ is str and n:
        rows.strings.append((code, normalize_string(n), n))


def _str_humanname(code, n, root, rows):
    if n.__class__ is not dict:
        return
    _str_add(code, n.get("family"), rows)
    for k in ("given", "prefix", "suffix"):
        for s in n.get(k, ()):
            _str_add(code, s, rows)
    _str_add(code, n.get("text"), rows)


def _str_address(code, n, root, rows):
    if n.__class__ is not dict:
        return
    for s in n.get("line", ()):
        _str_add(code, s, rows)
    for k in ("city", "district", "state", "postalCode", "country", "text"):
        _str_add(code, n.get(k), rows)


def _str_cc(code, n, root, rows):
    if n.__class__ is dict:
        _str_add(code, n.get("text"), rows)
        for c in n.get("coding", ()):
            if c.__class__ is dict:
                _str_add(code, c.get("display"), rows)


def _str_coding(code, n, root, rows):
    if n.__class__ is dict:
        _str_add(code, n.get("display"), rows)


def _str_annotation(code, n, root, rows):
    if n.__class__ is dict:
        _str_add(code, n.get("text"), rows)


# ---------------------------------------------------------------------------------- dates


def _safe_range(v):
    try:
        return date_range(v)
    except ValueError:
        return None


def _date_primitive(code, n, root, rows):
    r = _safe_range(n) if n.__class__ is str else None
    if r is not None:
        rows.dates.append((code, r[0], r[1]))


def _date_period(code, n, root, rows):
    if n.__class__ is not dict:
        return
    s, e = n.get("start"), n.get("end")
    lo = hi = None
    if s is not None:
        r = _safe_range(s)
        lo = r and r[0]
    if e is not None:
        r = _safe_range(e)
        hi = r and r[1]
    if lo is None and hi is None:
        return
    rows.dates.append((code, lo or MIN_DATE, hi or MAX_DATE))


def _date_timing(code, n, root, rows):
    if n.__class__ is not dict:
        return
    lo = hi = None
    for ev in n.get("event", ()):
        r = _safe_range(ev) if ev.__class__ is str else None
        if r:
            lo = r[0] if lo is None or r[0] < lo else lo
            hi = r[1] if hi is None or r[1] > hi else hi
    if lo is not None:
        rows.dates.append((code, lo, hi))
    rep = n.get("repeat")
    if rep.__class__ is dict and rep.get("boundsPeriod").__class__ is dict:
        _date_period(code, rep["boundsPeriod"], root, rows)


# ---------------------------------------------------------------------------------- numbers


def _num(v):
    if v.__class__ is bool or v is None:
        return None
    try:
        return number_range(v)
    except ValueError:
        return None


def _num_primitive(code, n, root, rows):
    r = _num(n)
    if r is not None:
        rows.numbers.append((code, r[0], r[1], r[2], None, None, None))


def _num_quantity(code, n, root, rows):
    if n.__class__ is not dict:
        return
    r = _num(n.get("value"))
    if r is not None:
        rows.numbers.append((code, r[0], r[1], r[2], n.get("system"), n.get("code"), n.get("unit")))


def _num_money(code, n, root, rows):
    if n.__class__ is not dict:
        return
    r = _num(n.get("value"))
    if r is not None:
        cur = n.get("currency")
        rows.numbers.append(
            (code, r[0], r[1], r[2], "urn:iso:std:iso:4217" if cur else None, cur, cur)
        )


def _num_range(code, n, root, rows):
    if n.__class__ is not dict:
        return
    lo_q, hi_q = n.get("low"), n.get("high")
    lo_r = _num(lo_q.get("value")) if lo_q.__class__ is dict else None
    hi_r = _num(hi_q.get("value")) if hi_q.__class__ is dict else None
    if lo_r is None and hi_r is None:
        return
    q = lo_q if lo_r is not None else hi_q
    value = lo_r[2] if lo_r is not None else hi_r[2]
    rows.numbers.append(
        (
            code,
            lo_r[0] if lo_r else -INF,
            hi_r[1] if hi_r else INF,
            value,
            q.get("system"),
            q.get("code"),
            q.get("unit"),
        )
    )


# ---------------------------------------------------------------------------------- references


def parse_reference(ref: str, resource_types) -> tuple[str | None, str | None, str | None]:
    """'Patient/1' -> ('Patient', '1', None); absolute/urn/contained -> url kept, type/id if parseable."""
    if ref.startswith(("#", "urn:")):
        return None, None, ref
    parts = ref.split("|", 1)[0].split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        del parts[-2:]
    if len(parts) >= 2 and parts[-2] in resource_types and parts[-1]:
        if len(parts) == 2:
            return parts[0], parts[1], None
        return parts[-2], parts[-1], ref
    return None, None, ref


def _make_ref_sinks(resource_types):
    from .fhirpath import reference_type

    def ref_reference(code, n, root, rows):
        if n.__class__ is not dict:
            return
        ref = n.get("reference")
        if ref.__class__ is not str or not ref:
            return
        t, i, u = parse_reference(ref, resource_types)
        if t is None:
            t = reference_type(n, root, resource_types)
        rows.references.append((code, t, i, u))

    def ref_uri(code, n, root, rows):
        if n.__class__ is str and n:
            t, i, u = parse_reference(n, resource_types)
            rows.references.append((code, t, i, u if u is not None else n))

    return ref_reference, ref_uri


def _uri_primitive(code, n, root, rows):
    if n.__class__ is str and n:
        rows.uris.append((code, n))


# ---------------------------------------------------------------------------------- dispatch

_TABLE = {
    "token": {
        "Coding": _tok_coding,
        "CodeableConcept": _tok_cc,
        "Identifier": _tok_identifier,
        "ContactPoint": _tok_contactpoint,
        "Reference": _tok_reference,
        "Quantity": _tok_quantity,
    },
    "string": {
        "HumanName": _str_humanname,
        "Address": _str_address,
        "CodeableConcept": _str_cc,
        "Coding": _str_coding,
        "Annotation": _str_annotation,
    },
    "date": {"Period": _date_period, "Timing": _date_timing},
    "number": {"Quantity": _num_quantity, "Money": _num_money, "Range": _num_range},
    "quantity": {"Quantity": _num_quantity, "Money": _num_money, "Range": _num_range},
    "uri": {},
    "reference": {},
}


def _lookup(ptype: str, ntype: str, ref_sinks):
    table = _TABLE.get(ptype)
    if table is None:
        return None
    t = ntype
    while t:
        if t in table:
            return table[t]
        t = {
            "Age": "Quantity",
            "Count": "Quantity",
            "Distance": "Quantity",
            "Duration": "Quantity",
            "MoneyQuantity": "Quantity",
            "SimpleQuantity": "Quantity",
        }.get(t)
    if ptype == "token" and (ntype in _STRINGY or ntype in ("boolean", "integer")):
        return _tok_primitive
    if ptype == "string" and ntype in _STRINGY:
        return _str_primitive
    if ptype == "date" and ntype in _DATES:
        return _date_primitive
    if ptype in ("number", "quantity") and ntype in _NUMS:
        return _num_primitive
    if ptype == "uri" and (ntype in _URIS or ntype == "string"):
        return _uri_primitive
    if ptype == "reference":
        if ntype == "Reference":
            return ref_sinks[0]
        if ntype in _URIS:
            return ref_sinks[1]
    return None


def infer_type(node) -> str | None:
    """Best-effort FHIR type of an untyped node (only used for fhirpathpy fallback results)."""
    c = node.__class__
    if c is bool:
        return "boolean"
    if c is int:
        return "integer"
    if c is float:
        return "decimal"
    if c is str:
        return "string"
    if c is not dict:
        return None
    if "url" in node and any(k.startswith("value") for k in node):
        return "Extension"
    if "reference" in node or ("identifier" in node and "display" in node):
        return "Reference"
    if "coding" in node or ("text" in node and len(node) == 1):
        return "CodeableConcept"
    if "family" in node or "given" in node:
        return "HumanName"
    if "line" in node or "city" in node or "postalCode" in node:
        return "Address"
    if "start" in node or "end" in node:
        return "Period"
    if "low" in node or "high" in node:
        return "Range"
    if "currency" in node:
        return "Money"
    if (
        "value" in node
        and ("unit" in node or ("code" in node and "system" in node))
        and not isinstance(node.get("value"), str)
    ):
        return "Quantity"
    if "value" in node and ("system" in node or "type" in node):
        return (
            "ContactPoint"
            if node.get("system") in ("phone", "fax", "email", "pager", "url", "sms", "other")
            else "Identifier"
        )
    if "code" in node:
        return "Coding"
    if "event" in node or "repeat" in node:
        return "Timing"
    return None


def make_sink(
    ptype: str,
    ntype: str,
    code: str,
    resource_types,
    ext_value_types: dict,
    element: str | None = None,
):
    """sink(node, root, rows) for nodes of FHIR type `ntype` in a `ptype` parameter; None if n/a.

    ext_value_types: {'valueString': 'string', ...} -- how an Extension's value[x] is typed.
    """
    ref_sinks = _make_ref_sinks(resource_types)
    if ntype == "Extension":
        # index the extension's value[x], typed from its JSON key
        cache: dict[str, object] = {}

        def ext_sink(n, root, rows):
            if n.__class__ is not dict:
                return
            for k, v in n.items():
                vt = ext_value_types.get(k)
                if vt is None:
                    continue
                f = cache.get(k)
                if f is None:
                    f = cache[k] = make_sink(ptype, vt, code, resource_types, ext_value_types) or (
                        lambda n_, root_, rows_: None
                    )
                f(v, root, rows)

        return ext_sink
    fn = _lookup(ptype, ntype, ref_sinks)
    if fn is None:
        return None
    system = IMPLIED_SYSTEMS.get(element) if ptype == "token" and ntype == "code" else None
    if system is not None:

        def implied(n, root, rows):
            if n.__class__ is str:
                rows.tokens.append((code, system, n, None))

        return implied
    return partial(fn, code)
