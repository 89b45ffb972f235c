"""What the full-text index (_text/_content) costs on ingest: the demo care system's Bundles
through `api.bundle.process` on a fresh database, with the index on and off, in alternating
rounds (the machine is shared and noisy, so on/off pairs are compared, not two long runs).

    python bench/fulltext_cost.py --patients 150 --rounds 3 --backend sqlite
    python bench/fulltext_cost.py --patients 150 --rounds 3 --backend postgresql

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

from sqlalchemy import create_engine, text  # noqa: E402

from sharedcare.api import bundle as bundles  # noqa: E402
from sharedcare.app import SharedCare  # noqa: E402
from sharedcare.demo import generate  # noqa: E402
from sharedcare.store.indexing import fulltext  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def one_round(cs, backend: str, on: bool) -> tuple[int, float]:
    real = fulltext.text_rows
    if not on:
        fulltext.text_rows = lambda res: None
    name = f"bench_fulltext_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT") if backend != "sqlite" else None
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
            n, start = 0, time.perf_counter()
            for b in cs.bundles(500):
                n += len(bundles.process(sc.store, b, "")["entry"])
            elapsed = time.perf_counter() - start
            sc.engine.dispose()
        return n, elapsed
    finally:
        fulltext.text_rows = real
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
    cs = generate(7, args.patients)
    one_round(cs, args.backend, True)  # warm the validators and the indexer
    ratios = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        got = {on: one_round(cs, args.backend, on) for on in order}
        (n, off_s), (_, on_s) = got[False], got[True]
        ratios.append(on_s / off_s)
        print(f"round {r + 1}: {n} resources  off {n / off_s:7.0f}/s  on {n / on_s:7.0f}/s  "
              f"on/off time {on_s / off_s:.3f}  (+{(on_s - off_s) / n * 1e6:.0f} µs/resource)")
    print(f"{args.backend}: median on/off ingest time ratio {statistics.median(ratios):.3f} "
          f"over {args.rounds} alternating rounds")


if __name__ == "__main__":
    main()
