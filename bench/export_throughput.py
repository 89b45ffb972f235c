"""FHIR Bulk Data $export throughput: resources/s from kick-off to the last NDJSON byte.

    python bench/export_throughput.py --patients 1000                 # embedded SQLite
    python bench/export_throughput.py --patients 1000 --database postgresql://postgres@127.0.0.1/bench

Loads the synthetic care system (``sharedcare.demo.generate(seed, patients)``: organisations,
agreements and every patient's record as transaction bundles through
``sharedcare.api.bundle.process``) into a fresh database unless it already holds that dataset,
then runs ``GET /fhir/$export`` (in process, through the real routes and governance) as a
partner system of the host trust and of a GP practice, polls to completion and prints
resources/s. Target: >= 20,000 resources/s. A PostgreSQL database given with --database is
emptied first (DROP SCHEMA public CASCADE) -- point it at a throwaway database.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(sc, cs) -> int:
    from sharedcare.api import bundle as bundles

    gov = sc.governance
    for o in cs.organisations:
        gov.add_organisation(o.ods, o.name, o.kind, postcode=o.postcode,
                             registered_population=o.registered_population)
    for a in cs.agreements:
        gov.add_agreement(a.id, a.title, a.parties, a.purposes, a.categories, a.status,
                          a.effective.isoformat() if a.effective else None,
                          a.end.isoformat() if a.end else None)
    n = 0
    for b in cs.bundles(size=500):
        bundles.process(sc.store, b, "")
        n += len(b["entry"])
    return n


def run_export(sc, client, token: str, query: str = "") -> tuple[int, float, float]:
    h = {"Authorization": f"Bearer {token}", "Prefer": "respond-async"}
    t0 = time.perf_counter()
    r = client.get(f"/fhir/$export{query}", headers=h)
    assert r.status_code == 202, r.text
    status = r.headers["Content-Location"]
    while True:
        r = client.get(status, headers=h)
        if r.status_code == 200:
            break
        assert r.status_code == 202, r.text
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    manifest = r.json()
    count = sum(o["count"] for o in manifest["output"])
    size = 0
    job = status.rsplit("/", 1)[1]
    for f in (Path(sc.data_dir) / "exports" / job).glob("*.ndjson"):
        size += f.stat().st_size
    return count, elapsed, size / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--database", help="SQLAlchemy/PostgreSQL URL (default: embedded SQLite)")
    ap.add_argument("--data-dir", type=Path, help="keep the database here (reused if present)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from sqlalchemy import create_engine, func, select, text
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from sharedcare.api import FhirApi
    from sharedcare.app import SharedCare
    from sharedcare.demo import generate
    from sharedcare.population import export
    from sharedcare.store.db import database_url
    from sharedcare.store.schema import resource

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="sc-export-bench-")
        data_dir = Path(tmp)
    data_dir.mkdir(parents=True, exist_ok=True)
    url = args.database or f"sqlite:///{data_dir / 'sharedcare.sqlite'}"
    try:
        cs = generate(args.seed, args.patients)
        marker = data_dir / f"loaded-{args.seed}-{args.patients}"
        if args.database and not marker.exists():
            eng = create_engine(database_url(args.database))
            with eng.begin() as c:
                c.execute(text("DROP SCHEMA public CASCADE"))
                c.execute(text("CREATE SCHEMA public"))
            eng.dispose()
        sc = SharedCare.open(url, data_dir)
        if not marker.exists():
            t0 = time.perf_counter()
            n = load(sc, cs)
            print(f"loaded {n:,} resources in {time.perf_counter() - t0:.1f}s")
            marker.write_text("ok")
        with sc.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(resource)).scalar_one()
        backend = sc.engine.dialect.name
        print(f"{backend}: {total:,} resources in the store ({args.patients:,} patients)")

        app = Starlette(routes=export.routes(sc) + FhirApi(sc.store, sc.governance).routes())
        app.state.sc = sc
        host = "R0A"  # the host acute trust: party to the direct-care agreement
        gp = next(o.ods for o in cs.organisations if o.kind == "gp-practice")
        with TestClient(app) as client:
            for label, ods in ((f"system {host}", host), (f"system {gp}", gp)):
                token = sc.governance.issue_system_token("bench", ods)
                best = None
                for _ in range(args.repeat):
                    count, secs, mb = run_export(sc, client, token)
                    rate = count / secs
                    best = max(best or 0, rate)
                    print(f"  $export as {label}: {count:,} resources, {mb:.1f} MB in "
                          f"{secs:.2f}s = {rate:,.0f} resources/s")
                print(f"{backend} $export as {label}: best {best:,.0f} resources/s "
                      f"({'meets' if best >= 20000 else 'BELOW'} the 20,000/s target)")
        sc.engine.dispose()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
