"""Fuzz: search parameters on every search endpoint.

Names from the real SearchParameter definitions (the store's indexer) with random modifiers,
prefixes and values; chains, _has, _include/_revinclude (:iterate), _sort, _count, _summary,
_elements, _total, _cursor, _lastUpdated, _since, _before_seq, _type -- by GET, POST _search,
compartment search, history and $everything, strict and lenient. Every answer is below 500,
every 4xx an OperationOutcome saying what is wrong, a next link can be followed, and the server
stays usable.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fuzz_support import check_answer, check_usable, describe, fuzz_settings, seed_store
from hypothesis import given
from hypothesis import strategies as st

from sharedcare.store.indexing import Indexer

TYPES = ("Patient", "Observation", "Encounter", "Condition", "MedicationRequest", "Procedure",
         "DiagnosticReport", "CarePlan", "AllergyIntolerance", "Organization", "Practitioner",
         "EpisodeOfCare", "ServiceRequest", "DocumentReference")
PARAMS = {t: Indexer().params_for(t) for t in TYPES}
MODIFIERS = ("exact", "contains", "missing", "not", "text", "below", "above", "in", "not-in",
             "of-type", "identifier", "iterate", "Patient", "Organization", "Bogus", "", "type",
             "code-text", "::", "Patient.name")
PREFIXES = ("", "eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap", "xx", "E", "eq-")
SPECIAL = (
    "", ",", ",,", "\\", "\\,", "a\\", "|", "||", "a|b|c", "http://loinc.org|8867-4", "|8867-4",
    "http://loinc.org|", "2024", "2024-01", "2024-13-45", "2024-02-30", "0000-01-01",
    "9999-12-31T23:59:59Z", "2024-01-01T25:00", "2024-01-01T10:00:00+25:00",
    "2024-01-01T10:00:00.1234567890Z", "2024-01-01T10:00:00.5", "T10:00", "12:00", "1e400",
    "-1e400", "1e-400", "-0", "NaN", "nan", "inf", "-Infinity", "9" * 40, str(2**63),
    str(-(2**63) - 1), "0.0000000000000000000001", "5.4|http://unitsofmeasure.org|mg",
    "5.4||mg", "5.4|", "|||", "Patient/pat-1", "Patient/", "/", "//", "Patient/pat-1/_history/1",
    "_history/1", "Observation/obs-1/_history/x", "urn:uuid:1", "http://", "https://x/Patient/1",
    "%", "_", "%_%", "'", '"', "\\'", "; DROP TABLE resource; --", "ø", "Ørsted", "𝄞", "\u202e",
    "\ufeff", "true", "false", "TRUE", "x" * 2048, "é" * 1000, "ap", "ge", "sa",
    "2024-01-01T10:00:00Z,2024", "pat-1,pat-2", "$", "a$b", "*", "-", "--")
TYPE_NAMES = st.sampled_from(TYPES + ("Bogus", "Group", "Device", "Location", ""))


def values():
    return st.one_of(
        st.sampled_from(SPECIAL),
        st.text(max_size=30),
        st.tuples(st.sampled_from(PREFIXES), st.one_of(
            st.dates().map(str), st.datetimes().map(lambda d: d.isoformat()),
            st.integers(-(2**70), 2**70).map(str),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.decimals(allow_nan=False).map(str))).map("".join),
        st.lists(st.sampled_from(SPECIAL), min_size=2, max_size=4).map(",".join))


@st.composite
def param_name(draw, rtype: str, depth: int = 0):
    defs = PARAMS.get(rtype) or PARAMS["Patient"]
    code = draw(st.sampled_from(sorted(defs) + ["_id", "_lastUpdated", "_bogus", "name"]))
    sp = defs.get(code)
    kind = draw(st.sampled_from(["plain", "plain", "modifier", "chain", "has"]))
    if kind == "modifier":
        return f"{code}:{draw(st.sampled_from(MODIFIERS))}"
    if kind == "chain" and depth < 2:
        targets = list(sp.targets) if sp is not None and sp.targets else list(TYPES)
        target = draw(st.sampled_from(targets + ["Bogus"]))
        rest = draw(param_name(target if target in PARAMS else "Patient", depth + 1))
        typed = draw(st.booleans())
        return f"{code}:{target}.{rest}" if typed else f"{code}.{rest}"
    if kind == "has" and depth < 2:
        src = draw(TYPE_NAMES)
        ref = draw(st.sampled_from(sorted(p for p, d in (PARAMS.get(src) or {}).items()
                                          if d.type == "reference") + ["patient", "bogus", ""]))
        rest = draw(param_name(src if src in PARAMS else "Observation", depth + 1))
        return f"_has:{src}:{ref}:{rest}"
    return code


@st.composite
def result_param(draw, rtype: str):
    name = draw(st.sampled_from(["_count", "_sort", "_include", "_revinclude",
                                 "_include:iterate", "_revinclude:iterate", "_include:bogus",
                                 "_summary", "_elements", "_total", "_cursor", "_lastUpdated",
                                 "_type", "_format", "_text", "_filter", "_since",
                                 "_before_seq"]))
    if name.startswith(("_include", "_revinclude")):
        src = draw(TYPE_NAMES)
        refs = sorted(p for p, d in (PARAMS.get(src) or {}).items() if d.type == "reference")
        parts = [src, draw(st.sampled_from(refs + ["*", "bogus", ""]))]
        if draw(st.booleans()):
            parts.append(draw(TYPE_NAMES))
        value = draw(st.one_of(st.just(":".join(parts)), st.just("*"), values()))
    elif name == "_sort":
        codes = sorted(PARAMS.get(rtype) or {}) + ["_id", "_lastUpdated", "bogus", ""]
        value = ",".join(draw(st.sampled_from(["", "-"])) + draw(st.sampled_from(codes))
                         for _ in range(draw(st.integers(1, 3))))
    elif name in ("_count", "_before_seq", "_cursor"):
        value = draw(st.one_of(st.integers(-5, 2**66).map(str), values(),
                               st.sampled_from(["0", "1", "00", "1.5", "x:2", ":", "abc:0",
                                                f"{'1' * 19}", "0:99999999999999999999"])))
    elif name == "_summary":
        value = draw(st.sampled_from(["count", "text", "data", "false", "true", "", "x"]))
    elif name == "_total":
        value = draw(st.sampled_from(["none", "estimate", "accurate", "", "yes"]))
    else:
        value = draw(values())
    return name, value


@st.composite
def search_request(draw):
    rtype = draw(st.sampled_from(TYPES))
    params = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 2)):
            params.append((draw(param_name(rtype)), draw(values())))
        else:
            params.append(draw(result_param(rtype)))
    where = draw(st.sampled_from(["type", "type", "post", "compartment", "history",
                                  "type-history", "system-history", "everything"]))
    lenient = draw(st.booleans())
    return rtype, params, where, lenient


def test_fuzzed_searches_never_crash_the_api(client, sc):
    seed_store(sc)

    @fuzz_settings(sc=sc)
    @given(search_request())
    def prop(req):
        rtype, params, where, lenient = req
        headers = {"Prefer": "handling=lenient"} if lenient else {}
        qs = urlencode(params)
        if where == "post":
            url = f"/fhir/{rtype}/_search"
            resp = client.post(url, content=qs, headers={
                **headers, "Content-Type": "application/x-www-form-urlencoded"})
            request = describe("POST", url, qs.encode())
        else:
            url = {"type": f"/fhir/{rtype}", "compartment": f"/fhir/Patient/pat-1/{rtype}",
                   "history": f"/fhir/{rtype}/obs-1/_history",
                   "type-history": f"/fhir/{rtype}/_history", "system-history": "/fhir/_history",
                   "everything": "/fhir/Patient/pat-1/$everything"}[where] + "?" + qs
            resp = client.get(url, headers=headers)
            request = describe("GET", url)
        check_answer(resp, request + (" (lenient)" if lenient else ""))
        if resp.status_code == 200:
            body = resp.json()
            nxt = next((lk["url"] for lk in body.get("link") or []
                        if lk.get("relation") == "next"), None)
            if nxt:
                follow = client.get(nxt.replace("http://testserver", ""), headers=headers)
                check_answer(follow, f"next page of {request}")
        check_usable(client)

    prop()


def test_sort_by_a_parameter_without_an_index_is_a_400(client, sc):
    """Found by the fuzzer: _sort by a special or composite parameter (no index table) was a
    KeyError in Store._sort_expr and a 500."""
    seed_store(sc)
    for sort in ("_filter", "-_filter", "_text", "_content", "_query",
                 "combo-code-value-quantity"):
        resp = client.get(f"/fhir/Observation?_sort={sort}&_count=1")
        check_answer(resp, f"GET /fhir/Observation?_sort={sort}")
        assert resp.status_code == 400 and "sort" in resp.text, sort
    check_usable(client)


def test_a_name_that_is_not_a_resource_type_is_a_400(client, sc):
    """Found by the fuzzer: _include/_revinclude of an unknown type was a ValueError from
    Indexer.params_for and a 500."""
    seed_store(sc)
    for param in (("_include", "Bogus:subject"), ("_include:iterate", "Bogus:"),
                  ("_revinclude", ":subject"), ("subject:Bogus.name", "x"),
                  ("_has:Bogus:patient:code", "x"),
                  ("subject:Patient.general-practitioner:Bogus.name", "x")):
        resp = client.get("/fhir/Observation", params=[param])
        check_answer(resp, f"GET /fhir/Observation?{param[0]}={param[1]}")
        assert resp.status_code == 400, param
