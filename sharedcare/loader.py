"""Bulk loading of FHIR files: Bundles (each one transaction) and NDJSON (batched).

Directory resources (Organization, Practitioner, Location ...) that arrive as plain POSTs with an
identifier are turned into conditional creates, as a real feed would send them: Synthea repeats
the same Organizations and Practitioners in every patient bundle, and loading them all must not
create duplicates.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson

from .fhir import bundle as bundles
from .fhir.categories import DIRECTORY_TYPES
from .fhir.outcome import FHIRError
from .fhir.validation import problems
from .store.repository import Store, WriteOp, stamp_source


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
        conditional_directory_creates(doc)
        if self.source_org:
            for e in doc.get("entry") or []:
                if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                    e["resource"] = stamp_source(e["resource"], self.source_org)
        try:
            result = bundles.process(self.store, doc, "")
        except FHIRError as e:
            self._reject(where, str(e))
            return
        self.loaded += sum(1 for e in result["entry"]
                           if e["response"]["status"].startswith(("200", "201")))

    def _resources(self, resources: list[dict], where: str,
                   lines: list[int] | None = None) -> None:
        """Write in batches; when a batch is refused, find the bad resources (each named by its
        line, or its position in a Bundle) and write the rest, so one bad line loses nothing else."""
        lines = lines or list(range(1, len(resources) + 1))
        for i in range(0, len(resources), self.batch):
            chunk = list(zip(lines[i: i + self.batch], resources[i: i + self.batch], strict=True))
            try:
                self.store.write([self._op(r, where, n) for n, r in chunk],
                                 source_org=self.source_org)
                self.loaded += len(chunk)
            except FHIRError:
                good = []
                for n, r in chunk:
                    issues = problems(r)
                    if issues:
                        self._reject(f"{where}:{n}", "; ".join(
                            (f"{x.expression}: " if x.expression else "") + x.diagnostics
                            for x in issues))
                    else:
                        good.append((n, r))
                for n, r in good:  # one at a time: whatever else is wrong is named precisely
                    try:
                        self.store.write([self._op(r, where, n)], source_org=self.source_org)
                        self.loaded += 1
                    except FHIRError as e:
                        self._reject(f"{where}:{n}", str(e))

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
