"""Helpers for the FHIR store and API tests.

Everything here computes expectations INDEPENDENTLY of the server: from the source files in
tests/data, with plain Python (no sharedcare.store code), so a wrong index cannot make a wrong
answer look right.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from tests.conftest import ROOT, data_dir

FHIR_JSON = "application/fhir+json"
SYNTHEA_ID = "https://github.com/synthetichealth/synthea"


def shared(*parts: str) -> Path:
    """A path in the test data (tests/data, laid out as ../shared was). The official R4
    definitions are the unchanged copies the product ships in sharedcare/fhir/definitions."""
    if parts[:2] == ("fhir", "definitions"):
        return ROOT.joinpath("sharedcare", *parts)
    return data_dir(*parts)


@cache
def _read(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_json(path: Path) -> dict:
    """A fresh deep copy of a JSON file (cached parse)."""
    return copy.deepcopy(_read(str(path)))


def synthea_files() -> list[Path]:
    """Directory bundles (hospital, practitioner) first, then the 45 patients."""
    folder = shared("fhir", "synthea")
    files = sorted(folder.glob("*.json"))
    return sorted(files, key=lambda f: (not f.name.startswith(("hospital", "practitioner")),
                                        f.name))


def directory_files() -> list[Path]:
    return [f for f in synthea_files() if f.name.startswith(("hospital", "practitioner"))]


def patient_files() -> list[Path]:
    return [f for f in synthea_files() if not f.name.startswith(("hospital", "practitioner"))]


def patient_file(prefix: str) -> Path:
    hits = [f for f in patient_files() if f.name.startswith(prefix)]
    assert len(hits) == 1, f"no single Synthea bundle starts with {prefix!r}: {hits}"
    return hits[0]


# --------------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    """What a set of transactions wrote: source resources with their server ids."""

    mapping: dict[str, str] = field(default_factory=dict)  # urn:uuid -> Type/id
    # (rtype, server id, source resource with references rewritten to Type/id), in load order;
    # a conditional create that matched an existing resource is listed with created=False.
    items: list[tuple[str, str, dict, bool]] = field(default_factory=list)
    patients: dict[str, dict] = field(default_factory=dict)  # server id -> source Patient

    def of_type(self, rtype: str, created_only: bool = True) -> list[tuple[str, dict]]:
        return [(i, r) for t, i, r, c in self.items if t == rtype and (c or not created_only)]

    def patient_id(self, family_prefix: str) -> str:
        hits = [pid for pid, p in self.patients.items()
                if any(n.get("family", "").startswith(family_prefix) for n in p.get("name", []))]
        assert len(hits) == 1, f"{family_prefix}: {hits}"
        return hits[0]


def rewrite_refs(node, mapping: dict[str, str]):
    """A copy of node with every Reference.reference found in mapping replaced."""
    if isinstance(node, dict):
        return {k: (mapping.get(v, v) if k == "reference" and isinstance(v, str)
                    else rewrite_refs(v, mapping)) for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite_refs(v, mapping) for v in node]
    return node


def post_transaction(client, bundle: dict, loaded: Loaded | None = None,
                     conditional_directory: bool = True) -> Loaded:
    """POST a transaction Bundle through the API; record where each entry went."""
    from sharedcare.loader import conditional_directory_creates

    loaded = loaded if loaded is not None else Loaded()
    bundle = copy.deepcopy(bundle)
    if conditional_directory:
        conditional_directory_creates(bundle)
    r = client.post("/fhir", json=bundle, headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 200, r.text[:2000]
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response"
    assert len(body["entry"]) == len(bundle["entry"])
    pending = []
    for src, resp in zip(bundle["entry"], body["entry"], strict=True):
        status = resp["response"]["status"]
        location = resp["response"]["location"]
        rtype, rid = location.split("/")[:2]
        assert rtype == src["resource"]["resourceType"]
        if src.get("fullUrl"):
            loaded.mapping[src["fullUrl"]] = f"{rtype}/{rid}"
        pending.append((rtype, rid, src["resource"], status.startswith("201")))
    for rtype, rid, res, created in pending:
        res = rewrite_refs(res, loaded.mapping)
        loaded.items.append((rtype, rid, res, created))
        if rtype == "Patient":
            loaded.patients[rid] = res
    return loaded


def load_files(client, files: list[Path], loaded: Loaded | None = None) -> Loaded:
    loaded = loaded if loaded is not None else Loaded()
    for f in files:
        post_transaction(client, load_json(f), loaded)
    return loaded


def strip_meta_id(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("meta", "id")}


# --------------------------------------------------------------------------------- reading
def outcome(resp) -> str:
    """Assert resp is an OperationOutcome; return its diagnostics and expressions as text."""
    assert resp.headers["content-type"].startswith(FHIR_JSON), resp.headers["content-type"]
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    return " ".join(f"{i.get('diagnostics', '')} {' '.join(i.get('expression', []))}"
                    for i in body["issue"])


def next_link(bundle: dict) -> str | None:
    return next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)


def relative(url: str) -> str:
    """An absolute next link -> path?query for the TestClient (base must be the test server)."""
    parts = urlsplit(url)
    assert parts.netloc in ("", "testserver"), url
    return parts.path + (f"?{parts.query}" if parts.query else "")


def search(client, path: str, params=None, method: str = "GET") -> dict:
    r = client.request(method, path, params=params)
    assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text[:1500]}"
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset", body
    return body


def pages(client, path: str, params=None, between=None, limit: int = 500) -> list[dict]:
    """Every page of a search, following next links; `between(n)` runs before page n+1."""
    out = [search(client, path, params)]
    while (link := next_link(out[-1])) is not None:
        assert len(out) < limit, "paging does not end"
        if between is not None:
            between(len(out))
        out.append(search(client, relative(link)))
    return out


def entries(bundle_or_pages, mode: str | None = "match") -> list[dict]:
    bundles = bundle_or_pages if isinstance(bundle_or_pages, list) else [bundle_or_pages]
    return [e for b in bundles for e in b.get("entry", [])
            if mode is None or e.get("search", {}).get("mode") == mode]


def keys(bundle_or_pages, mode: str | None = "match") -> list[tuple[str, str]]:
    return [(e["resource"]["resourceType"], e["resource"]["id"])
            for e in entries(bundle_or_pages, mode)]


def ids(bundle_or_pages, mode: str | None = "match") -> list[str]:
    return [i for _, i in keys(bundle_or_pages, mode)]


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


# --------------------------------------------------------------------------------- values
def fold(s: str) -> str:
    """FHIR string matching: case- and accent-insensitive."""
    decomposed = unicodedata.normalize("NFKD", s)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def parse_instant(value: str) -> datetime:
    """A FHIR dateTime with seconds -> aware UTC datetime (zone-less taken as UTC)."""
    v = value.replace("Z", "+00:00")
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def value_range(value: str) -> tuple[datetime, datetime]:
    """The (inclusive) UTC interval a FHIR date/dateTime of any precision covers."""
    if len(value) == 4:
        y = int(value)
        return datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC) - _TICK
    if len(value) == 7:
        y, m = int(value[:4]), int(value[5:7])
        nxt = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
        return datetime(y, m, 1, tzinfo=UTC), nxt - _TICK
    if len(value) == 10:
        d = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return d, d + timedelta(days=1) - _TICK
    start = parse_instant(value)
    # seconds precision (the data and our queries never use fractions)
    return start, start + timedelta(seconds=1) - _TICK


_TICK = timedelta(microseconds=1)


def date_matches(prefix: str, target: tuple[datetime, datetime],
                 search: tuple[datetime, datetime]) -> bool:
    """FHIR R4 search date prefixes (http://hl7.org/fhir/R4/search.html#prefix) on ranges."""
    tlo, thi = target
    slo, shi = search
    if prefix == "eq":
        return slo <= tlo and thi <= shi
    if prefix == "ne":
        return not (slo <= tlo and thi <= shi)
    if prefix == "gt":
        return thi > shi
    if prefix == "lt":
        return tlo < slo
    if prefix == "ge":
        return thi > shi or (slo <= tlo and thi <= shi)
    if prefix == "le":
        return tlo < slo or (slo <= tlo and thi <= shi)
    if prefix == "sa":
        return tlo > shi
    if prefix == "eb":
        return thi < slo
    raise ValueError(prefix)


def codes_of(concept: dict | None) -> set[tuple[str | None, str | None]]:
    return {(c.get("system"), c.get("code")) for c in (concept or {}).get("coding", [])}


# --------------------------------------------------------------------------------- compartment
@cache
def _compartment_paths() -> dict[str, list[list[str]]]:
    """rtype -> element paths (e.g. ['subject']) linking it to a Patient, from the official
    CompartmentDefinition and the SearchParameter expressions."""
    cdef = json.loads(shared("fhir", "definitions", "CompartmentDefinition-patient.json")
                      .read_text())
    sps = json.loads(shared("fhir", "definitions", "search-parameters-r4.json").read_text())
    expr: dict[tuple[str, str], str] = {}
    for e in sps["entry"]:
        r = e["resource"]
        for base in r.get("base", []):
            if r.get("expression"):
                expr[(base, r["code"])] = r["expression"]
    out: dict[str, list[list[str]]] = {}
    for res in cdef["resource"]:
        rtype = res["code"]
        for param in res.get("param", []):
            text = expr.get((rtype, param)) or expr.get(("Resource", param), "")
            for part in text.split("|"):
                part = part.strip().replace(".where(resolve() is Patient)", "")
                if part.startswith(rtype + ".") and "(" not in part:
                    out.setdefault(rtype, []).append(part.split(".")[1:])
    return out


def _walk(node, path: list[str]):
    if not path:
        yield node
        return
    if isinstance(node, list):
        for n in node:
            yield from _walk(n, path)
        return
    if isinstance(node, dict) and path[0] in node:
        yield from _walk(node[path[0]], path[1:])


def compartment_patients(res: dict) -> set[str]:
    """Patient ids (from 'Patient/<id>' references) whose compartment `res` belongs to."""
    out: set[str] = set()
    for path in _compartment_paths().get(res["resourceType"], []):
        for ref in _walk(res, path):
            items = ref if isinstance(ref, list) else [ref]
            for r in items:
                if isinstance(r, dict) and str(r.get("reference", "")).startswith("Patient/"):
                    out.add(r["reference"].split("/")[1])
    return out


__all__ = [name for name in dir() if not name.startswith("__")]
