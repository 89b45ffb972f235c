"""Bytes and index rows per stored resource on PostgreSQL: the inputs of docs/scaling.md.

    python bench/storage_per_resource.py --patients 1000                 # the demo care system
    python bench/storage_per_resource.py --synthea                       # tests/data Synthea bundles
    python bench/storage_per_resource.py --patients 1000 --json out.json

Builds a fresh PostgreSQL database (dropped afterwards), loads the data through the product's
own write path (`sharedcare.demo.load.load_demo`, or `api.bundle.process` for each Synthea
Bundle), runs VACUUM ANALYZE, then reads every table's exact row count and its size on disk
(heap, TOAST and indexes: `pg_total_relation_size`). It reports, per current resource:

* bytes on disk in the record tables (resource, resource_version, the idx_* search index tables,
  compartment, person_link), each table's share, and the stored JSON's average length;
* search index rows, compartment rows and versions per resource, overall and per resource type;
* audit bytes per event and the governance tables (relationships, choices) per patient.

Benchmark tooling only; the product does not import this.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import PG_ADMIN_URL, fresh_backend, machine

RECORD_TABLES = ("resource", "resource_version", "compartment", "person_link", "idx_token",
                 "idx_string", "idx_date", "idx_number", "idx_reference", "idx_uri",
                 "idx_quantity")
INDEX_TABLES = ("idx_token", "idx_string", "idx_date", "idx_number", "idx_reference", "idx_uri",
                "idx_quantity")


def load(sc, patients: int, seed: int, synthea: bool) -> dict:
    t0 = time.perf_counter()
    if synthea:
        from sharedcare.api import bundle as bundles

        sys.path.insert(0, str(REPO / "tests"))
        from conftest import data_dir  # the test data, decompressed once into a cache

        sc.governance.add_organisation("RSYN1", "Synthea partner", "acute-trust")
        files = sorted(Path(data_dir("fhir", "synthea")).glob("*.json"))
        files.sort(key=lambda f: 0 if f.name.startswith(("hospital", "practitioner")) else 1)
        n = 0
        for f in files:
            b = json.loads(f.read_bytes())
            bundles.process(sc.store, b, "", "RSYN1")
            n += len(b.get("entry") or [])
        return {"source": "synthea", "bundles": len(files), "entries": n,
                "seconds": time.perf_counter() - t0}
    from sharedcare.demo import generate
    from sharedcare.demo.load import load_demo

    cs = generate(seed, patients)
    counts = load_demo(sc, cs)
    return {"source": "demo", "patients": patients, "seed": seed,
            "seconds": time.perf_counter() - t0, "counts": counts}


def measure(engine) -> dict:
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
        tables = [r[0] for r in c.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"))]
        sizes = {}
        for t in tables:
            rows = c.execute(text(f'SELECT count(*) FROM "{t}"')).scalar()
            heap, total, idx = c.execute(text(
                "SELECT pg_relation_size(:t), pg_total_relation_size(:t), pg_indexes_size(:t)"),
                {"t": t}).one()
            sizes[t] = {"rows": rows, "heap_bytes": heap, "index_bytes": idx,
                        "total_bytes": total}
        resources = c.execute(text(
            "SELECT count(*) FROM resource WHERE NOT deleted")).scalar()
        patients = c.execute(text(
            "SELECT count(*) FROM resource WHERE type = 'Patient' AND NOT deleted")).scalar()
        avg_json = c.execute(text(
            "SELECT avg(octet_length(content)) FROM resource WHERE NOT deleted")).scalar()
        union = " UNION ALL ".join(f'SELECT resource_pk FROM "{t}"' for t in INDEX_TABLES
                                   if t in sizes)
        per_type = [dict(r._mapping) for r in c.execute(text(f"""
            WITH ix AS (SELECT resource_pk, count(*) AS n FROM ({union}) u GROUP BY resource_pk),
                 cp AS (SELECT resource_pk, count(*) AS n FROM compartment GROUP BY resource_pk)
            SELECT r.type, count(*) AS resources,
                   round(avg(coalesce(ix.n, 0)), 2) AS index_rows_per_resource,
                   round(avg(coalesce(cp.n, 0)), 2) AS compartment_rows_per_resource,
                   round(avg(octet_length(r.content))) AS json_bytes
            FROM resource r LEFT JOIN ix ON ix.resource_pk = r.pk
                            LEFT JOIN cp ON cp.resource_pk = r.pk
            WHERE NOT r.deleted GROUP BY r.type ORDER BY count(*) DESC"""))]
        version = c.execute(text("SHOW server_version")).scalar()
    record = {t: sizes[t] for t in RECORD_TABLES if t in sizes}
    record_bytes = sum(s["total_bytes"] for s in record.values())
    index_rows = sum(sizes[t]["rows"] for t in INDEX_TABLES if t in sizes)
    audit = sizes.get("audit_event", {"rows": 0, "total_bytes": 0})
    out = {
        "postgresql": version,
        "resources": resources,
        "patients": patients,
        "record_bytes": record_bytes,
        "bytes_per_resource": record_bytes / resources if resources else None,
        "json_bytes_per_resource": float(avg_json or 0),
        "index_rows": index_rows,
        "index_rows_per_resource": index_rows / resources if resources else None,
        "compartment_rows_per_resource": sizes["compartment"]["rows"] / resources
        if resources else None,
        "versions_per_resource": sizes["resource_version"]["rows"] / resources
        if resources else None,
        "bytes_per_resource_by_table": {t: s["total_bytes"] / resources
                                        for t, s in record.items()} if resources else {},
        "audit_events": audit["rows"],
        "audit_bytes_per_event": audit["total_bytes"] / audit["rows"] if audit["rows"] else None,
        "per_type": per_type,
        "tables": sizes,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=1000, help="demo care system size")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--synthea", action="store_true",
                    help="load the Synthea bundles in tests/data instead of the demo")
    ap.add_argument("--pg", default=PG_ADMIN_URL, help="PostgreSQL admin URL")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    from sharedcare.app import SharedCare

    with fresh_backend("postgresql", args.pg) as backend:
        sc = SharedCare.open(backend.url, backend.data_dir)
        try:
            loaded = load(sc, args.patients, args.seed, args.synthea)
            figures = measure(sc.engine)
        finally:
            sc.engine.dispose()
    result = {"machine": machine(), "loaded": loaded, **figures}
    r = figures
    print(f"{loaded['source']}: {r['resources']:,} current resources, {r['patients']:,} Patient "
          f"records, loaded in {loaded['seconds']:.0f} s")
    print(f"record tables: {r['record_bytes'] / 2**20:,.1f} MiB = "
          f"{r['bytes_per_resource']:,.0f} bytes per resource (stored JSON "
          f"{r['json_bytes_per_resource']:,.0f} bytes)")
    for t, b in sorted(r["bytes_per_resource_by_table"].items(), key=lambda kv: -kv[1]):
        print(f"  {t:<18} {b:>8,.0f} bytes/resource   rows {r['tables'][t]['rows']:>10,}")
    print(f"search index rows per resource {r['index_rows_per_resource']:.2f}, compartment rows "
          f"{r['compartment_rows_per_resource']:.2f}, versions {r['versions_per_resource']:.2f}")
    if r["audit_bytes_per_event"]:
        print(f"audit: {r['audit_events']:,} events, {r['audit_bytes_per_event']:,.0f} bytes each")
    print("per type (top 12): resources, index rows, compartment rows, JSON bytes")
    for row in r["per_type"][:12]:
        print(f"  {row['type']:<24} {row['resources']:>8,} {row['index_rows_per_resource']:>7} "
              f"{row['compartment_rows_per_resource']:>6} {row['json_bytes']:>7}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
