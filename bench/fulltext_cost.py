"""What the full-text index (_text/_content) costs on ingest: the demo care system's Bundles
through `api.bundle.process` into one fresh database, the index on for every other Bundle (the
machine is shared and noisy: adjacent on/off Bundles are compared, not two long runs).

    python bench/fulltext_cost.py --patients 150 --backend sqlite
    python bench/fulltext_cost.py --patients 150 --backend postgresql

"Off" stubs `fulltext.text_rows` to find no text, so no text rows are written; everything else
(validation, index rows, versions, relationships) is the same. Benchmark tooling only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, text

from sharedcare.api import bundle as bundles
from sharedcare.app import SharedCare
from sharedcare.demo import generate
from sharedcare.store.indexing import fulltext

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def run(cs, backend: str, size: int) -> list[tuple[bool, int, float, float]]:
    """Every Bundle into one fresh database, the text index on for every other Bundle (which
    one starts alternates per pair): [(on, resources, wall s, process CPU s)]."""
    real = fulltext.text_rows
    name = f"bench_fulltext_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT") if backend != "sqlite" else None
    out = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if admin is not None:
                with admin.connect() as c:
                    c.execute(text(f'CREATE DATABASE "{name}"'))
                url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
            else:
                url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
            sc = SharedCare.open(url, Path(tmp) / "data")
            for o in cs.organisations:
                sc.governance.add_organisation(o.ods, o.name, o.kind)
            for i, b in enumerate(cs.bundles(size)):
                on = (i % 2 == 0) == (i // 2 % 2 == 0)
                fulltext.text_rows = real if on else (lambda res: None)
                wall, cpu = time.perf_counter(), time.process_time()
                n = len(bundles.process(sc.store, b, "")["entry"])
                out.append((on, n, time.perf_counter() - wall, time.process_time() - cpu))
            sc.engine.dispose()
        return out
    finally:
        fulltext.text_rows = real
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--bundle", type=int, default=100, help="entries per Bundle")
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
    cs = generate(7, args.patients)
    run(generate(8, 20), args.backend, args.bundle)  # warm the validators and the indexer
    rows = run(cs, args.backend, args.bundle)
    # Adjacent Bundles form pairs (one on, one off): per-resource cost ratios, then the median.
    walls, cpus = [], []
    for (on1, n1, w1, c1), (on2, n2, w2, c2) in zip(rows[0::2], rows[1::2], strict=False):
        (_, n_on, w_on, c_on), (_, n_off, w_off, c_off) = sorted(
            [(on1, n1, w1, c1), (on2, n2, w2, c2)], key=lambda r: not r[0])
        walls.append((w_on / n_on) / (w_off / n_off))
        cpus.append((c_on / n_on) / (c_off / n_off))
    total = {on: sum(r[1] for r in rows if r[0] == on) for on in (True, False)}
    wall = {on: sum(r[2] for r in rows if r[0] == on) for on in (True, False)}
    print(f"{args.backend}: {sum(total.values())} resources in {len(rows)} Bundles of "
          f"{args.bundle}; on {total[True] / wall[True]:.0f}/s, off "
          f"{total[False] / wall[False]:.0f}/s (wall)")
    print(f"median on/off cost per resource over {len(walls)} adjacent pairs: wall "
          f"{statistics.median(walls):.3f}, process CPU {statistics.median(cpus):.3f}")


if __name__ == "__main__":
    main()
