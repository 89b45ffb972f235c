"""Throughput of Indexer.index over the Synthea bundles in /work/shared/fhir/synthea.

    python -m sharedcare.store.indexing.bench [--dir DIR] [--rounds N] [--profile]

urn:uuid references are first rewritten to Type/id, as the store's transaction processing does
before indexing (so the patient compartment is populated as in production).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from . import Indexer

DEFAULT_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "fhir" / "synthea"


def _rewrite(node, mapping):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in mapping:
                node[k] = mapping[v]
            else:
                _rewrite(v, mapping)
    elif isinstance(node, list):
        for x in node:
            _rewrite(x, mapping)


def load_resources(directory: Path, limit_files: int | None = None) -> list[dict]:
    """All resources of the bundles in `directory`, urn:uuid references resolved to Type/id."""
    try:
        import orjson

        loads = orjson.loads
    except ImportError:  # pragma: no cover
        loads = json.loads
    resources: list[dict] = []
    files = sorted(directory.glob("*.json"))[:limit_files]
    for f in files:
        b = loads(f.read_bytes())
        entries = b.get("entry", []) if b.get("resourceType") == "Bundle" else [{"resource": b}]
        mapping = {}
        for e in entries:
            r = e.get("resource")
            if not r:
                continue
            full = e.get("fullUrl", "")
            rid = r.get("id") or full.rsplit(":", 1)[-1]
            r.setdefault("id", rid)
            if full.startswith("urn:"):
                mapping[full] = f"{r['resourceType']}/{rid}"
            resources.append(r)
        for e in entries:
            if e.get("resource"):
                _rewrite(e["resource"], mapping)
    return resources


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    ix = Indexer()
    t_init = time.perf_counter() - t0
    resources = load_resources(a.dir)
    kinds = Counter(r["resourceType"] for r in resources)
    print(
        f"Indexer() built in {t_init * 1000:.0f} ms; fallbacks to fhirpathpy: {len(ix.fallbacks)}; "
        f"skipped params: {len(ix.skipped)}"
    )
    print(
        f"{len(resources)} resources from {a.dir}: "
        + ", ".join(f"{k} {v}" for k, v in kinds.most_common(8))
        + ", ..."
    )
    index = ix.index
    if a.profile:
        import cProfile
        import pstats

        cProfile.runctx("for r in resources: index(r)", globals(), locals(), "/tmp/indexing.prof")
        pstats.Stats("/tmp/indexing.prof").sort_stats("tottime").print_stats(15)
    best = 0.0
    nrows = 0
    for _ in range(a.rounds):
        t = time.perf_counter()
        for r in resources:
            index(r)
        dt = time.perf_counter() - t
        best = max(best, len(resources) / dt)
    for r in resources:
        x = index(r)
        nrows += (
            len(x.tokens)
            + len(x.strings)
            + len(x.dates)
            + len(x.numbers)
            + len(x.references)
            + len(x.uris)
        )
    print(f"{nrows} index rows ({nrows / len(resources):.1f} per resource)")
    print(f"Indexer.index: {best:,.0f} resources/s (best of {a.rounds}, one core)")


if __name__ == "__main__":
    main()
