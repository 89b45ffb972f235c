"""Under load, every request still leaves exactly one audit event and the chain stays intact.

    python bench/audit_under_load.py                       # 50 clients, 180 s, demo of 300 patients
    python bench/audit_under_load.py --quick               # 20 clients, 20 s
    python bench/audit_under_load.py --database postgresql+psycopg://postgres@127.0.0.1/bench

Builds (once) a demo care system, starts `sharedcare serve` as its own process, and drives it from
bench/loadgen.py (another process) with N concurrent keep-alive clients, each cycling through the
GP persona's mix: find a patient by NHS number, $everything, an Observation search, a refused read
of a patient outside the practice's relationships, and a malformed search. Then it counts the
audit events the run added, compares them with the responses the clients received, and verifies
the hash chain. Prints the figures; exits 1 when they disagree.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import Server
from sqlalchemy import func, select

from sharedcare.app import SharedCare
from sharedcare.demo import generate
from sharedcare.demo.load import already_loaded, load_demo
from sharedcare.governance.schema import audit_event, care_relationship
from sharedcare.store.schema import idx_token, resource

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def audit_count(sc) -> int:
    with sc.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(audit_event)).scalar_one()


def mix(sc, gp_org: str, rng: random.Random, n: int) -> list[dict]:
    with sc.engine.connect() as conn:
        mine = sorted({p for (p,) in conn.execute(select(care_relationship.c.patient_id).where(
            care_relationship.c.ods == gp_org, care_relationship.c.kind == "registered"))})
        numbers = dict(conn.execute(
            select(resource.c.id, idx_token.c.code).join(idx_token, idx_token.c.resource_pk ==
                                                         resource.c.pk)
            .where(resource.c.type == "Patient", idx_token.c.param == "identifier",
                   idx_token.c.system == NHS, resource.c.id.in_(mine[:500]))).all())
        others = [p for (p,) in conn.execute(select(resource.c.id).where(
            resource.c.type == "Patient", resource.c.id.not_in(mine[:2000])).limit(200))]
    out = []
    for _ in range(n):
        pid = rng.choice(list(numbers))
        out += [
            {"kind": "find", "path": f"/fhir/Patient?identifier={NHS}|{numbers[pid]}"},
            {"kind": "everything", "path": f"/fhir/Patient/{pid}/$everything?_count=50"},
            {"kind": "observations", "path": f"/fhir/Observation?subject=Patient/{pid}&_count=20"},
            {"kind": "refused", "path": f"/fhir/Patient/{rng.choice(others)}/$everything"},
            {"kind": "malformed", "path": "/fhir/Observation?date=not-a-date"},
        ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--quick", action="store_true", help="20 clients for 20 s")
    ap.add_argument("--database", default=None, help="default: SQLite in the data folder")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.quick:
        args.clients, args.seconds = 20, 20.0
    folder = (args.data_dir or HERE / "results" / f"audit-load-{args.patients}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    url = args.database or f"sqlite:///{folder / 'sharedcare.sqlite'}"
    sc = SharedCare.open(url, folder)
    cs = generate(args.seed, args.patients)
    if not already_loaded(sc):
        t = time.perf_counter()
        load_demo(sc, cs)
        print(f"built a demo of {args.patients:,} patients in {time.perf_counter() - t:.0f} s")
    gp = next(p for p in cs.personas if p.role == "GP")
    token = sc.governance.issue_token(gp.username, gp.org, "clinician", lifetime=3600)
    requests = mix(sc, gp.org, random.Random(args.seed), 200)
    with Server(url, folder) as server:
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"base": f"http://127.0.0.1:{server.port}",
                                    "headers": {"authorization": f"Bearer {token}"},
                                    "requests": requests}))
        before = audit_count(sc)
        out = subprocess.run(
            [sys.executable, str(HERE / "loadgen.py"), "--spec", str(spec), "--concurrency",
             str(args.clients), "--requests", "1000000", "--duration", str(args.seconds),
             "--warmup", "0"], capture_output=True, text=True, check=True, cwd=HERE.parent)
        level = json.loads(out.stdout)["levels"][0]
    after = audit_count(sc)
    responses = sum(level["statuses"].values())
    added = after - before
    problems = sc.governance.audit_trail.verify()
    print(f"{args.clients} clients for {level['seconds']:.0f} s on "
          f"{'PostgreSQL' if url.startswith('postgresql') else 'SQLite'}: "
          f"{responses:,} responses ({level['requests_per_s'] or 0:.0f} 2xx/s; "
          f"statuses {level['statuses']}), {level['failed']} failed connections")
    print(f"latency p50 {level['latency']['p50_ms']:.0f} ms, p95 {level['latency']['p95_ms']:.0f} ms")
    print(f"audit events added: {added:,}; one per response: {'yes' if added == responses else 'NO'}")
    print("audit chain: " + ("intact" if not problems else "; ".join(problems[:5])))
    return 0 if added == responses and not problems and not level["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
