"""Server time of the clinician's patient view (the whole HTML page, one request), p50/p95.

    python bench/patient_view.py --patients 10000            # builds bench/results/demo-10000 once
    python bench/patient_view.py --data-dir ./demo-data       # an existing demo

Signs in as the demo's GP persona and opens the page for patients registered with that
practice (so every page is a permitted, audited, fully rendered view). Target: p95 <= 60 ms at
10,000 patients (issue 5).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from sharedcare.app import SharedCare, create_app  # noqa: E402
from sharedcare.demo import generate  # noqa: E402
from sharedcare.demo.load import already_loaded, load_demo  # noqa: E402
from sharedcare.governance.schema import care_relationship  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--views", type=int, default=200)
    args = ap.parse_args()
    folder = args.data_dir or REPO / "bench" / "results" / f"demo-{args.patients}"
    folder.mkdir(parents=True, exist_ok=True)
    sc = SharedCare.open(f"sqlite:///{(folder / 'sharedcare.sqlite').resolve()}", folder)
    cs = generate(args.seed, args.patients)
    if not already_loaded(sc):
        start = time.perf_counter()
        load_demo(sc, cs)
        print(f"built demo of {args.patients:,} patients in {time.perf_counter() - start:.0f}s")
    gp = next(p for p in cs.personas if p.role == "GP")
    with sc.engine.connect() as conn:
        patients = sorted({p for (p,) in conn.execute(
            select(care_relationship.c.patient_id).where(
                care_relationship.c.ods == gp.org, care_relationship.c.kind == "registered"))})
    random.seed(1)
    sample = [random.choice(patients) for _ in range(args.views)]
    with TestClient(create_app(sc)) as client:
        client.get("/sign-in")
        client.post("/sign-in", data={"username": gp.username, "password": gp.password,
                                      "csrf": client.cookies.get("sc_csrf"), "next": "/"})
        if "sc_pending" in client.cookies:  # the GP holds two roles: choose the practice one
            client.post("/choose-role", data={"role": f"{gp.org}:clinician",
                                              "csrf": client.cookies.get("sc_csrf"), "next": "/"})
        for pid in sample[:10]:  # warm up: templates, validators, caches
            client.get(f"/patients/{pid}")
        times, sizes = [], []
        for pid in sample:
            t = time.perf_counter()
            page = client.get(f"/patients/{pid}")
            times.append((time.perf_counter() - t) * 1000)
            assert page.status_code == 200, page.status_code
            sizes.append(len(page.content))
    times.sort()
    p50 = statistics.median(times)
    p95 = times[int(len(times) * 0.95) - 1]
    print(f"patient view, {args.patients:,} patients, GP persona, {len(times)} pages "
          f"(~{statistics.mean(sizes) / 1024:.0f} KiB HTML): p50 {p50:.1f} ms, p95 {p95:.1f} ms "
          f"(target p95 <= 60 ms: {'met' if p95 <= 60 else 'missed'})")


if __name__ == "__main__":
    main()
