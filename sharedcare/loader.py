"""Bulk loading of FHIR files: Bundles (each one transaction) and NDJSON (batched).

Directory resources (Organization, Practitioner, Location ...) that arrive as plain POSTs with an
identifier are turned into conditional creates, as a real feed would send them: Synthea repeats
the same Organizations and Practitioners in every patient bundle, and loading them all must not
create duplicates.

Loading is idempotent: every Bundle (and every resource of an NDJSON file or collection) is
recorded by the SHA-256 of its content in ``load_receipt``, in the same transaction as its data.
Running a load again -- after it finished, or after it was killed part-way -- skips what is
already in and loads the rest, so nothing is added twice.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import orjson
from sqlalchemy import insert, select

from .api import bundle as bundles
from .feeds.schema import load_receipt
from .fhir.categories import DIRECTORY_TYPES
from .fhir.outcome import FHIRError
from .fhir.validation import problems
from .store.repository import Store, WriteOp, now_utc, stamp_source


def digest(doc) -> str:
    """Content hash of a JSON document (keys sorted, so formatting does not matter)."""
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _loaded(conn, digests: list[str]) -> set[str]:
    out: set[str] = set()
    for i in range(0, len(digests), 500):
        out.update(conn.execute(select(load_receipt.c.digest).where(
            load_receipt.c.digest.in_(digests[i:i + 500]))).scalars())
    return out


def _record(conn, digests: list[str], kind: str) -> None:
    if digests:
        stamp = now_utc()
        conn.execute(insert(load_receipt), [{"digest": d, "kind": kind, "loaded": stamp}
                                            for d in digests])


def conditional_directory_creates(bundle: dict) -> dict:
    for e in bundle.get("entry") or []:
        req = e.get("request") or {}
        res = e.get("resource") or {}
        if (req.get("method") == "POST" and not req.get("ifNoneExist")
                and res.get("resourceType") in DIRECTORY_TYPES):
            ident = next((i for i in res.get("identifier") or []
                          if i.get("system") and i.get("value")), None)
            if ident:
                req["ifNoneExist"] = f"identifier={ident['system']}|{ident['value']}"
    return bundle


class Loader:
    def __init__(self, store: Store, source_org: str | None = None, batch: int = 500):
        self.store = store
        self.source_org = source_org
        self.batch = batch
        self.loaded = 0
        self.skipped = 0  # entries/resources already loaded by an earlier run
        self.rejected: list[tuple[str, str]] = []
        self.rejected_files: set[str] = set()

    @staticmethod
    def files(paths: list[Path]) -> list[Path]:
        out = []
        for p in paths:
            p = Path(p)
            if p.is_dir():
                out += sorted(f for f in p.rglob("*") if f.suffix in (".json", ".ndjson"))
            elif p.exists():
                out.append(p)
        # Shared reference data first, so patients' conditional references can find it.
        return sorted(out, key=lambda f: (not f.name.startswith(("hospital", "practitioner")),
                                          str(f)))

    def load_file(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
            if path.suffix == ".ndjson":
                self._ndjson(path, raw)
                return
            doc = orjson.loads(raw)
        except (OSError, orjson.JSONDecodeError) as e:
            self._reject(str(path), f"not readable JSON: {e}")
            return
        if not isinstance(doc, dict):
            self._reject(str(path), "expected a JSON object")
            return
        if doc.get("resourceType") == "Bundle" and doc.get("type") in ("transaction", "batch"):
            self.load_bundle(doc, str(path))
        elif doc.get("resourceType") == "Bundle":
            # collection/searchset/document: store the entries, each as an upsert
            res = [e["resource"] for e in doc.get("entry") or [] if isinstance(e, dict)
                   and isinstance(e.get("resource"), dict)]
            self._resources(res, str(path))
        else:
            self._resources([doc], str(path))

    def load_bundle(self, doc: dict, where: str) -> None:
        key = digest(doc)
        conditional_directory_creates(doc)
        if self.source_org:
            for e in doc.get("entry") or []:
                if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                    e["resource"] = stamp_source(e["resource"], self.source_org)
        if doc.get("type") == "batch":
            # Each entry on its own (as a batch is), each with its own receipt.
            for n, e in enumerate(doc.get("entry") or []):
                one = {"resourceType": "Bundle", "type": "transaction", "entry": [e]}
                try:
                    self._transaction(one, digest([key, n]), "entry")
                except FHIRError as err:
                    self._reject(f"{where}:entry[{n}]", str(err).replace("Bundle.entry[0]",
                                                                         f"Bundle.entry[{n}]"))
            return
        try:
            self._transaction(doc, key, "bundle")
        except FHIRError as e:
            self._reject(where, str(e))

    def _transaction(self, doc: dict, key: str, kind: str) -> None:
        """One Bundle as one transaction with its receipt; nothing if the receipt exists."""
        entries = bundles.parse_entries(doc)

        def unit(conn):
            if _loaded(conn, [key]):
                return None
            ops, _, responses = bundles.plan_writes(self.store, entries, conn)
            results = self.store.write(ops, conn)
            _record(conn, [key], kind)
            return results, responses

        done = self.store.run_write_unit(unit)
        if done is None:
            self.skipped += len(entries)
            return
        results, responses = done
        self.loaded += sum(1 for r in results if not r.stored.deleted) + sum(
            1 for r in responses.values() if r["response"]["status"].startswith(("200", "201")))

    def _resources(self, resources: list[dict], where: str,
                   lines: list[int] | None = None) -> None:
        """Write in batches; when a batch is refused, find the bad resources (each named by its
        line, or its position in a Bundle) and write the rest, so one bad line loses nothing else.
        Each resource is recorded by content hash with its batch: a re-run skips it."""
        lines = lines or list(range(1, len(resources) + 1))
        for i in range(0, len(resources), self.batch):
            chunk = list(zip(lines[i: i + self.batch], resources[i: i + self.batch], strict=True))
            keyed, seen = [], set()
            for n, r in chunk:
                key = digest(r)
                if key in seen:  # the same resource twice in one file: once is enough
                    self.skipped += 1
                    continue
                seen.add(key)
                keyed.append((n, r, key))
            try:
                self._write_keyed(keyed, where)
            except FHIRError:
                good = []
                for n, r, key in keyed:
                    issues = problems(r)
                    if issues:
                        self._reject(f"{where}:{n}", "; ".join(
                            (f"{x.expression}: " if x.expression else "") + x.diagnostics
                            for x in issues))
                    else:
                        good.append((n, r, key))
                for item in good:  # one at a time: whatever else is wrong is named precisely
                    try:
                        self._write_keyed([item], where)
                    except FHIRError as e:
                        self._reject(f"{where}:{item[0]}", str(e))

    def _write_keyed(self, keyed: list[tuple[int, dict, str]], where: str) -> None:
        def unit(conn):
            done = _loaded(conn, [k for _, _, k in keyed])
            todo = [(n, r, k) for n, r, k in keyed if k not in done]
            if todo:
                self.store.write([self._op(r, where, n) for n, r, _ in todo], conn,
                                 source_org=self.source_org)
                _record(conn, [k for _, _, k in todo], "resource")
            return todo

        todo = self.store.run_write_unit(unit)
        self.skipped += len(keyed) - len(todo)
        self.loaded += len(todo)

    @staticmethod
    def _op(r: dict, where: str, n: int) -> WriteOp:
        return WriteOp("PUT", r.get("resourceType"), r.get("id") or str(uuid.uuid4()), r,
                       where=f"{where}:{n}")

    def _ndjson(self, path: Path, raw: bytes) -> None:
        resources, lines = [], []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                resources.append(orjson.loads(line))
                lines.append(n)
            except orjson.JSONDecodeError as e:
                self._reject(f"{path}:{n}", f"not valid JSON: {e}")
        self._resources(resources, str(path), lines)

    def _reject(self, where: str, problem: str) -> None:
        self.rejected.append((where, problem))
        self.rejected_files.add(where.split(":")[0])
