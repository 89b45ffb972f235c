"""Bulk ingest (issue 16, P1) on its own: resources/s, wall and process CPU, on a fresh database.

    python bench/ingest.py --backend sqlite --source synthea
    python bench/ingest.py --backend postgresql --source demo --patients 1000
    python bench/ingest.py --backend sqlite --source synthea --profile /tmp/p.html

`--source synthea` loads the Synthea transaction bundles with `sharedcare.loader.Loader` (what
`sharedcare load` runs: validation, indexing, identity, load receipts), from ../shared/fhir/synthea
when present, else the compressed copies in tests/data/fhir/synthea. `--source demo` times only
the `api.bundle.process` calls of `sharedcare.demo.load.load_demo`, as bench/run.py's P1 does
(demo generator, 500-entry Bundles). Validators are compiled before timing (as bench/run.py does).

Prints one JSON line. Run the same script against another checkout with
`PYTHONPATH=/path/to/checkout python bench/ingest.py ...` for A/B comparisons (alternate runs).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def synthea_files() -> list[Path]:
    shared = REPO.parent / "shared" / "fhir" / "synthea"
    if shared.is_dir():
        files = sorted(shared.glob("*.json"))
    else:
        files = sorted((REPO / "tests" / "data" / "fhir" / "synthea").glob("*.json*"))
    return sorted(files, key=lambda f: (not f.name.startswith(("hospital", "practitioner")),
                                        f.name))


def read_json(path: Path) -> bytes:
    raw = path.read_bytes()
    return lzma.decompress(raw) if path.suffix == ".xz" else raw


def warm() -> None:
    from sharedcare.fhir.validation import _validator, resource_types
    from sharedcare.store.indexing import SUPPORTED_TYPES

    for t in SUPPORTED_TYPES:
        if t in resource_types():
            _validator(t)


def run(backend: str, source: str, patients: int, profile: str | None) -> dict:
    import orjson

    from sharedcare.app import SharedCare

    tmp = Path(tempfile.mkdtemp(prefix="ingest-"))
    dbname = None
    try:
        if backend == "sqlite":
            url = f"sqlite:///{tmp / 'sc.sqlite'}"
        else:
            import psycopg

            dbname = f"ingest_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{dbname}"')
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}"
        sc = SharedCare.open(url, tmp)
        warm()
        prof = None
        if profile:
            from pyinstrument import Profiler

            prof = Profiler(interval=0.001)
        wall = cpu = 0.0
        n = 0
        if source == "synthea":
            from sharedcare.loader import Loader

            loader = Loader(sc.store, source_org="RX1")
            docs = [(f, orjson.loads(read_json(f))) for f in synthea_files()]
            for f, doc in docs:
                c0, t0 = time.process_time(), time.perf_counter()
                if prof:
                    prof.start()
                loader.load_bundle(doc, str(f))
                if prof:
                    prof.stop()
                wall += time.perf_counter() - t0
                cpu += time.process_time() - c0
            n = loader.loaded
            if loader.rejected:
                raise SystemExit(f"rejected: {loader.rejected[:3]}")
        else:
            import sharedcare.demo.load as demo_load
            from sharedcare.demo import generate

            cs = generate(42, patients)
            real = demo_load.bundles

            class Timed:
                def process(self, store, bundle, base, source_org=None):
                    nonlocal wall, cpu, n
                    c0, t0 = time.process_time(), time.perf_counter()
                    if prof:
                        prof.start()
                    out = real.process(store, bundle, base, source_org)
                    if prof:
                        prof.stop()
                    wall += time.perf_counter() - t0
                    cpu += time.process_time() - c0
                    n += len(bundle.get("entry") or [])
                    return out

            demo_load.bundles = Timed()
            try:
                demo_load.load_demo(sc, cs)
            finally:
                demo_load.bundles = real
        if prof:
            Path(profile).write_text(prof.output_html())
            Path(profile).with_suffix(".txt").write_text(prof.output_text(show_all=False))
        sc.engine.dispose()
        import sharedcare

        return {"backend": backend, "source": source, "patients": patients if source == "demo"
                else None, "resources": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "res_per_s": round(n / wall), "res_per_cpu_s": round(n / cpu),
                "code": str(Path(sharedcare.__file__).parents[1])}
    finally:
        if dbname:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--source", choices=("synthea", "demo"), default="synthea")
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--profile", help="write a pyinstrument profile (HTML, and .txt beside it)")
    args = ap.parse_args()
    print(json.dumps(run(args.backend, args.source, args.patients, args.profile)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
