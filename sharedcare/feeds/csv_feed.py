"""CSV / spreadsheet feeds with a declared mapping (a JSON document per feed).

    {
      "delimiter": ",",
      "required": ["client_id", "surname", "dob", "service"],
      "dates": {"dob": "%d/%m/%Y", "start": "%d/%m/%Y"},
      "translations": {"service": {"Home care": {"system": "http://snomed.info/sct",
                                                 "code": "1255191000000101",
                                                 "display": "Home care"}}},
      "resources": [
        {"name": "patient", "resourceType": "Patient",
         "key": {"column": "client_id", "system": "https://.../Id/local/{ods}/client"},
         "elements": {
           "identifier[+]": {"column": "nhs_number", "identifier": "https://fhir.nhs.uk/Id/nhs-number",
                             "nhs_number": true},
           "name[0].family": "surname",
           "name[0].given[0]": "forename",
           "birthDate": {"column": "dob", "date": true},
           "gender": {"column": "sex", "map": {"M": "male", "F": "female"}},
           "address[0].postalCode": "postcode"}},
        {"name": "package", "resourceType": "ServiceRequest",
         "key": {"column": "package_id", "system": "https://.../Id/local/{ods}/care-package"},
         "elements": {
           "status": {"value": "active"}, "intent": {"value": "order"},
           "code": {"column": "service", "translate": "service"},
           "subject": {"reference": "patient"},
           "occurrencePeriod.start": {"column": "start", "date": true}}}
      ]
    }

An element spec is a column name, or an object with ``column`` or ``value`` and at most one of
``date`` (parsed with ``dates[column]``, written as a FHIR date), ``datetime``, ``map`` (value ->
code; an unknown value is a row error), ``translate`` (a translations table -> CodeableConcept;
unknown codes are row errors), ``identifier`` (an Identifier with that system), ``reference`` (the
resource of that ``name`` in the same row), ``type`` ("integer" | "decimal" | "boolean"), plus
``required`` and ``nhs_number`` (modulus-11 check). Empty optional cells leave the element out.
``{ods}`` in a key system is the feed's organisation. Line numbers are the file's own (header = 1).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson

from ..fhir.codes import LOCAL_ID_BASE
from ..fhir.outcome import FHIRError
from ..fhir.validation import problems
from ..identity import nhs_number

_NS = uuid.UUID("a8e7c1d2-0b7b-4a5e-9c61-2d9f3f6c8e45")
_PATH = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\[(\d+|\+)\])?$")
_OPTIONS = ("date", "datetime", "map", "translate", "identifier", "reference", "type")


@dataclass(frozen=True)
class RowError:
    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f", column {self.column}" if self.column else "") + \
            f": {self.reason}"


@dataclass
class LoadReport:
    rows: int = 0
    loaded_rows: int = 0
    resources: int = 0
    rejected: list[RowError] = field(default_factory=list)
    receipt: str | None = None
    duplicate: bool = False


class MappingError(ValueError):
    """The mapping document itself is wrong (not a row problem)."""


def read_mapping(path: str | Path) -> dict:
    mapping = json.loads(Path(path).read_text(encoding="utf-8"))
    check_mapping(mapping)
    return mapping


def check_mapping(mapping: dict) -> None:
    if not isinstance(mapping, dict) or not isinstance(mapping.get("resources"), list) \
            or not mapping["resources"]:
        raise MappingError("mapping needs a non-empty 'resources' list")
    names = {r.get("name") or r.get("resourceType") for r in mapping["resources"]}
    for r in mapping["resources"]:
        if not r.get("resourceType") or not isinstance(r.get("elements"), dict):
            raise MappingError("each resource needs resourceType and elements")
        for path, spec in r["elements"].items():
            for part in path.split("."):
                if not _PATH.match(part):
                    raise MappingError(f"bad element path {path!r}")
            if isinstance(spec, dict):
                if "column" not in spec and "value" not in spec and "reference" not in spec:
                    raise MappingError(f"{path}: needs column, value or reference")
                if sum(1 for o in _OPTIONS if o in spec) > 1:
                    raise MappingError(f"{path}: at most one of {', '.join(_OPTIONS)}")
                if "translate" in spec and spec["translate"] not in (mapping.get("translations")
                                                                     or {}):
                    raise MappingError(f"{path}: no translations table {spec['translate']!r}")
                if "reference" in spec and spec["reference"] not in names:
                    raise MappingError(f"{path}: no resource named {spec['reference']!r}")
            elif not isinstance(spec, str):
                raise MappingError(f"{path}: spec must be a column name or an object")


def _columns(mapping: dict) -> set[str]:
    cols = set(mapping.get("required") or [])
    for r in mapping["resources"]:
        if (r.get("key") or {}).get("column"):
            cols.add(r["key"]["column"])
        for spec in r["elements"].values():
            if isinstance(spec, str):
                cols.add(spec)
            elif spec.get("column"):
                cols.add(spec["column"])
    return cols


MAX_FIELD = 131_072  # characters in one cell; longer is a row error, never a crash


def _rows(csv_path, mapping: dict):
    """(line, row dict) for each data row; line is the physical line the row starts on."""
    data = Path(csv_path).read_bytes()
    try:
        text = data.decode(mapping.get("encoding", "utf-8-sig"))
    except UnicodeDecodeError:
        # A file saved in another encoding (Windows-1252) or cut mid-character: read it, with
        # each undecodable byte marked, and report the rows that hold one (see _parse).
        text = data.decode(mapping.get("encoding", "utf-8-sig"), errors="replace")
    # The csv module's own limit (128 KB) raises mid-file; read any size, and report an
    # oversized cell as its row's error (see _parse). A stray quote that swallows the rest of
    # the file becomes one row with the wrong number of fields, also reported.
    if csv.field_size_limit() < len(text) + 1:
        csv.field_size_limit(max(len(text) + 1, MAX_FIELD))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=mapping.get("delimiter", ","))
    header = None
    start = 1
    for raw in reader:
        line = start
        start = reader.line_num + 1
        if header is None:
            header = [h.strip() for h in raw]
            yield 1, header
            continue
        if not any(c.strip() for c in raw):
            continue
        yield line, raw


@functools.lru_cache(maxsize=1024)
def _steps(path: str) -> tuple[tuple[str, str | None, bool], ...]:
    parts = path.split(".")
    return tuple((*_PATH.match(part).groups(), n == len(parts) - 1)
                 for n, part in enumerate(parts))


def _set(res: dict, path: str, value) -> None:
    node = res
    for key, index, last in _steps(path):
        if index is None:
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
            continue
        lst = node.setdefault(key, [])
        if index == "+":
            if last:
                lst.append(value)
                return
            lst.append({})
            node = lst[-1]
            continue
        i = int(index)
        while len(lst) <= i:
            lst.append({} if not last else None)
        if last:
            lst[i] = value
        else:
            if not isinstance(lst[i], dict):
                lst[i] = {}
            node = lst[i]


def _prune(node):
    """Drop None and empty containers left by sparse paths."""
    if isinstance(node, dict):
        return {k: v for k, v in ((k, _prune(v)) for k, v in node.items())
                if v not in (None, {}, [])}
    if isinstance(node, list):
        return [v for v in (_prune(v) for v in node) if v not in (None, {}, [])]
    return node


def _value(spec, cell: str, column: str | None, mapping: dict, urls: dict):
    """Converted value, or raises ValueError(reason) (never quoting the cell)."""
    if isinstance(spec, str):
        return cell.strip()
    if "reference" in spec:
        return {"reference": urls[spec["reference"]]}
    if spec.get("nhs_number"):
        digits = nhs_number.normalise(cell)
        if not digits or not nhs_number.is_valid(digits):
            raise ValueError("not a valid NHS number (10 digits, modulus-11 check)")
        cell = digits
    if spec.get("date") or spec.get("datetime"):
        fmt = (mapping.get("dates") or {}).get(column) or spec.get("format") or "%Y-%m-%d"
        try:
            d = datetime.strptime(cell.strip(), fmt)
        except ValueError:
            raise ValueError(f"not a date written {date_words(fmt)} (for example "
                             f"{datetime(2026, 3, 31, 14, 5).strftime(fmt)})") from None
        return d.date().isoformat() if spec.get("date") else d.isoformat()
    if "map" in spec:
        if cell not in spec["map"]:
            raise ValueError("value is not one of " + ", ".join(map(str, spec["map"])))
        return spec["map"][cell]
    if "translate" in spec:
        table = mapping["translations"][spec["translate"]]
        code = table.get(cell) or table.get(cell.strip()) or next(
            (v for k, v in table.items() if k.lower() == cell.strip().lower()), None)
        if code is None:
            raise ValueError(f"unknown code (not in translations table {spec['translate']!r})")
        return {"coding": [code], "text": cell.strip()}
    if "identifier" in spec:
        return {"system": spec["identifier"], "value": cell.strip()}
    kind = spec.get("type")
    try:
        if kind == "integer":
            return int(cell)
        if kind == "decimal":
            return float(cell)
        if kind == "boolean":
            if cell.strip().lower() not in ("true", "false", "yes", "no", "y", "n", "1", "0"):
                raise ValueError
            return cell.strip().lower() in ("true", "yes", "y", "1")
    except ValueError:
        raise ValueError(f"not a valid {kind}") from None
    return cell.strip()


def _key_system(r: dict, ods: str) -> str:
    system = r["key"].get("system") or f"{LOCAL_ID_BASE}/{{ods}}/{r['resourceType'].lower()}"
    return system.replace("{ods}", ods)


def _build_row(line: int, row: dict, mapping: dict, ods: str, feed_id: str
               ) -> tuple[list[tuple[str, dict, str, str | None]], list[RowError]]:
    """Resources of one row as (fullUrl, resource, type, key (system, value) or None) + errors."""
    errors: list[RowError] = []
    for col in mapping.get("required") or []:
        if not (row.get(col) or "").strip():
            errors.append(RowError(line, col, "required value is missing"))
    urls: dict[str, str] = {}
    keys: dict[str, tuple[str, str] | None] = {}
    for r in mapping["resources"]:
        name = r.get("name") or r["resourceType"]
        key = r.get("key")
        if key:
            value = (row.get(key["column"]) or "").strip()
            if not value:
                errors.append(RowError(line, key["column"], "key value is missing"))
                keys[name] = None
                urls[name] = f"urn:uuid:{uuid.uuid4()}"
                continue
            system = _key_system(r, ods)
            keys[name] = (system, value)
            urls[name] = "urn:uuid:" + str(uuid.uuid5(_NS, f"{feed_id}|{r['resourceType']}|"
                                                            f"{system}|{value}"))
        else:
            keys[name] = None
            digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
            urls[name] = "urn:uuid:" + str(uuid.uuid5(_NS, f"{feed_id}|{name}|{digest}"))
    out = []
    for r in mapping["resources"]:
        name = r.get("name") or r["resourceType"]
        res: dict = {"resourceType": r["resourceType"]}
        for path, spec in r["elements"].items():
            column = spec if isinstance(spec, str) else spec.get("column")
            if column is not None:
                cell = row.get(column)
                if cell is None or not cell.strip():
                    if isinstance(spec, dict) and spec.get("required"):
                        errors.append(RowError(line, column, "required value is missing"))
                    continue
            else:
                cell = None
            try:
                value = spec["value"] if isinstance(spec, dict) and "value" in spec and \
                    column is None else _value(spec, cell, column, mapping, urls)
            except ValueError as e:
                errors.append(RowError(line, column, str(e)))
                continue
            _set(res, path, value)
        key = keys.get(name)
        if key:
            system, value = key
            ident = {"system": system, "value": value}
            if ident not in (res.get("identifier") or []):
                res.setdefault("identifier", []).insert(0, ident)
        res = _prune(res)
        for issue in problems(res):
            errors.append(RowError(line, None, f"{issue.expression or r['resourceType']}: "
                                               f"{_safe(issue.diagnostics)}"))
        out.append((urls[name], res, r["resourceType"], key))
    return out, errors


def date_words(fmt: str) -> str:
    """'%d/%m/%Y' -> 'DD/MM/YYYY': how a person reads a date format."""
    for code, words in (("%d", "DD"), ("%m", "MM"), ("%Y", "YYYY"), ("%y", "YY"), ("%H", "hh"),
                        ("%M", "mm"), ("%S", "ss"), ("%b", "Mon"), ("%B", "Month")):
        fmt = fmt.replace(code, words)
    return fmt


def _safe(text: str) -> str:
    """Schema messages may quote a value or a regular expression; keep the reason, in words,
    not the (possibly personal) data or the pattern."""
    text = re.sub(r"does not match .*", "is not in the form FHIR expects for this field (a "
                  "date is YYYY-MM-DD)", text or "")
    return re.sub(r"'[^']{0,200}'|\"[^\"]{0,200}\"", "(value)", text)[:300]


def _parse(csv_path, mapping: dict, ods: str, feed_id: str):
    check_mapping(mapping)
    rows = list(_rows(csv_path, mapping))
    if not rows:
        return [], [RowError(1, None, "the file is empty (no header row)")], 0
    _, header = rows[0]
    missing = sorted(c for c in _columns(mapping) if c not in header)
    required_missing = [c for c in missing if c in (mapping.get("required") or [])
                        or any((r.get("key") or {}).get("column") == c
                               for r in mapping["resources"])]
    if required_missing:
        return [], [RowError(1, c, "required column is missing from the header")
                    for c in required_missing], len(rows) - 1
    built, errors = [], []
    for line, raw in rows[1:]:
        if len(raw) != len(header):
            errors.append(RowError(line, None, f"has {len(raw)} fields, the header has "
                                               f"{len(header)}"))
            continue
        garbled = [c for c, v in zip(header, raw, strict=True) if "\ufffd" in v]
        if garbled:
            errors.extend(RowError(line, c, "holds bytes that are not valid "
                                   f"{mapping.get('encoding', 'UTF-8')} text: save the file as "
                                   "UTF-8 and send it again") for c in garbled)
            continue
        long = [c for c, v in zip(header, raw, strict=True) if len(v) > MAX_FIELD]
        if long:
            errors.extend(RowError(line, c, f"value is longer than {MAX_FIELD:,} characters")
                          for c in long)
            continue
        row = dict(zip(header, raw, strict=True))
        resources, row_errors = _build_row(line, row, mapping, ods, feed_id)
        if row_errors:
            errors.extend(row_errors)
        else:
            built.append((line, resources))
    return built, errors, len(rows) - 1


def validate(csv_path, mapping: dict, ods: str = "VALIDATE", feed_id: str = "validate"
             ) -> list[RowError]:
    """Every problem in the file, each with its line (header = 1), column and reason."""
    return _parse(csv_path, mapping, ods, feed_id)[1]


def load(csv_path, mapping: dict, feed_id: str, *, service=None, sc=None,
         all_or_nothing: bool = False) -> LoadReport:
    """Load the valid rows of a CSV file as one transaction with one Provenance (or nothing at
    all when ``all_or_nothing`` and any row is rejected). Re-sending an identical file changes
    nothing. Rows that repeat a key update the same resource (the later row wins)."""
    from ..store.repository import WriteOp
    from .service import FeedService, receipt_id, stamp

    if service is None:
        if sc is None:
            raise ValueError("load needs service= (a FeedService) or sc= (a SharedCare)")
        service = FeedService(sc)
    feed = service._accepting(feed_id, "csv")
    built, errors, nrows = _parse(csv_path, mapping, feed.ods, feed.feed_id)
    report = LoadReport(rows=nrows, rejected=sorted(errors, key=lambda e: (e.line,
                                                                          e.column or "")))
    for e in report.rejected:
        service._record_reject(feed, None, f"line {e.line}" + (f" column {e.column}" if e.column
                                                                 else "") + f": {e.reason}",
                               "csv")
    if not built or (all_or_nothing and errors):
        return report
    items: dict[str, tuple[str, dict, tuple[str, str] | None]] = {}
    for _, resources in built:
        for url, res, rtype, key in resources:
            items.pop(url, None)  # the later row wins, in row order
            items[url] = (rtype, stamp(res, feed.ods, feed.feed_id), key)
    digest = hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()[:32]
    rid = receipt_id(feed.ods, feed.feed_id, f"csv|{Path(csv_path).name}|{digest}")
    report.receipt = rid

    def commit():
        with service.store.begin_write() as conn, conn.begin():
            if service.store.exists("Provenance", rid, conn):
                return None
            ops = _plan(conn, items, feed.ods, feed.feed_id)
            prov = service._provenance(feed, ops, f"{Path(csv_path).name} ({nrows} rows)", "csv")
            # Person links: the store's identity hook, in this same transaction (patients
            # without a valid NHS number are queued for the identity worker).
            service.store.write(ops + [WriteOp("PUT", "Provenance", rid, prov)], conn,
                                source_org=feed.ods)
            return ops

    try:
        ops = service._retrying(commit)
    except FHIRError as e:
        report.rejected.append(RowError(0, None, f"the batch was refused: {_safe(str(e))}"))
        return report
    if ops is None:
        report.duplicate = True
        return report
    report.loaded_rows = len(built)
    report.resources = len(ops)
    return report


def _existing(conn, rtype: str, system: str, values: list[str], ods: str
              ) -> dict[str, list[str]]:
    """value -> ids of this organisation's current ``rtype`` with identifier system|value, in
    one query per 500 values (a conditional update per row was most of a large file's time)."""
    from sqlalchemy import false, select

    from ..store.schema import idx_token, resource

    out: dict[str, list[str]] = {}
    for i in range(0, len(values), 500):
        rows = conn.execute(
            select(idx_token.c.code, resource.c.id)
            .join(resource, resource.c.pk == idx_token.c.resource_pk)
            .where(idx_token.c.type == rtype, idx_token.c.param == "identifier",
                   idx_token.c.system == system, idx_token.c.code.in_(values[i:i + 500]),
                   resource.c.deleted == false(), resource.c.source_org == ods))
        for code, rid in rows:
            lst = out.setdefault(code, [])
            if rid not in lst:
                lst.append(rid)
    return out


def _plan(conn, items: dict, ods: str, feed_id: str) -> list:
    """Write operations for the mapped resources: a keyed resource updates this organisation's
    record with that identifier (or creates one at an id derived from the key); references
    between a row's resources point at the ids chosen."""
    from ..store.repository import WriteOp

    wanted: dict[tuple[str, str], set[str]] = {}
    for rtype, _, key in items.values():
        if key:
            wanted.setdefault((rtype, key[0]), set()).add(key[1])
    found = {k: _existing(conn, k[0], k[1], sorted(v), ods) for k, v in wanted.items()}
    target: dict[str, str] = {}
    for url, (rtype, _, key) in items.items():
        if key:
            ids = found[(rtype, key[0])].get(key[1], [])
            if len(ids) > 1:
                raise FHIRError.of(412, "multiple-matches", f"{len(ids)} existing {rtype} "
                                   f"records of {ods} carry one key of this file")
            rid = ids[0] if ids else str(uuid.uuid5(_NS, f"{ods}|{feed_id}|{rtype}|{key[0]}|"
                                                         f"{key[1]}"))
        else:
            rid = url.rsplit(":", 1)[1]
        target[url] = f"{rtype}/{rid}"

    def swap(node):
        if isinstance(node, dict):
            return {k: (target.get(v, v) if k == "reference" and isinstance(v, str) else swap(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    return [WriteOp("PUT", rtype, target[url].split("/", 1)[1],
                    swap(res) if b"urn:uuid:" in orjson.dumps(res) else res)
            for url, (rtype, res, _) in items.items()]


def service_tag(ods: str) -> str:
    from urllib.parse import quote

    from ..fhir.codes import SOURCE_ORG_SYSTEM

    return f"{quote(SOURCE_ORG_SYSTEM, safe=':/')}|{quote(ods, safe='')}"
