"""Notifications: commit -> delivered latency, notifications/s, and what the outbox costs ingest.

    python bench/notify_latency.py [--backends sqlite,postgresql] [--latency 300] [--rate 50]
                                   [--burst 3000] [--ingest 400] [--quick]

For each backend, a fresh database with a trust, a GP practice, an active agreement and an
organisation subscription (admissions, results; rest-hook) pointing at a local threaded HTTP
receiver. Every patient is registered with the practice, so every event is a delivery, checked
under the practice's policy at send time and audited.

* latency: admissions written one at a time at ``--rate``/s while the server's worker runs;
  latency is the write's commit (``store.write`` returned) to the receiver's arrival;
* throughput: ``--burst`` events written with the worker stopped, then the worker started:
  deliveries per second until the last arrives (governed read + POST + audit event each);
* ingest: Bundles of a Patient, an Encounter and three Observations (every resource but the
  Patient an event) written with and without the outbox hook, alternating rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import fresh_backend, pct, postgres_reachable

HOSPITAL, GP = "RBENCH", "P89999"


class Receiver:
    def __init__(self):
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.perf_counter()
                with receiver.lock:
                    receiver.arrivals.setdefault(self.headers.get("X-Bench-Id") or
                                                 self.headers.get("Idempotency-Key"), now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


def world(sc, url: str) -> str:
    from sharedcare.notify import subscribe

    g = sc.governance
    g.add_organisation(HOSPITAL, "Bench Trust", "acute-trust")
    g.add_organisation(GP, "Bench Practice", "gp-practice")
    g.add_agreement("DSA-BENCH", "bench", [HOSPITAL, GP], ["direct-care"],
                    ["demographics", "encounters", "results"], status="active")
    return subscribe(sc, ods=GP, topics=["admission", "result"], channel="rest-hook",
                     endpoint=url)


def bundle_ops(n: int, observations: int = 3):
    from sharedcare.fhir.codes import ODS_SYSTEM
    from sharedcare.store.repository import WriteOp

    pid, eid = f"p-{n}-{uuid.uuid4().hex[:8]}", f"e-{n}-{uuid.uuid4().hex[:8]}"
    ops = [WriteOp("PUT", "Patient", pid, {
        "resourceType": "Patient", "name": [{"family": f"Bench{n}"}], "gender": "female",
        "generalPractitioner": [{"identifier": {"system": ODS_SYSTEM, "value": GP}}]}),
        WriteOp("PUT", "Encounter", eid, {
            "resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "IMP"}, "subject": {"reference": f"Patient/{pid}"}})]
    for k in range(observations):
        ops.append(WriteOp("PUT", "Observation", f"o-{n}-{k}-{uuid.uuid4().hex[:8]}", {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "valueQuantity": {"value": 120 + k, "unit": "g/L"}}))
    return ops


def run_backend(name: str, args) -> dict:
    from sqlalchemy import select

    from sharedcare.app import SharedCare
    from sharedcare.notify import NotifyWorker, counts
    from sharedcare.notify.schema import notify_event

    out: dict = {"backend": name}
    with fresh_backend(name) as be:
        sc = SharedCare.open(be.url, be.data_dir)
        rx = Receiver()
        world(sc, rx.url)

        # ---------------------------------------------------------------- latency
        worker = NotifyWorker(sc)
        stop = worker.start(interval=0.05)
        committed: dict[int, float] = {}
        gap = 1.0 / args.rate
        for i in range(args.latency):
            t0 = time.perf_counter()
            sc.store.write(bundle_ops(i, observations=0), source_org=HOSPITAL)
            done = time.perf_counter()
            with sc.engine.connect() as c:
                eid = c.execute(select(notify_event.c.id).order_by(
                    notify_event.c.id.desc()).limit(1)).scalar()
            committed[eid] = done
            time.sleep(max(0.0, gap - (time.perf_counter() - t0)))
        deadline = time.monotonic() + 60
        while rx.count() < len(committed) and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.stop(stop)
        lat = []
        for key, t in rx.arrivals.items():
            eid = int(key.rsplit("/", 1)[1])
            if eid in committed:
                lat.append((t - committed[eid]) * 1000)
        out["latency"] = {"n": len(lat), "rate_per_s": args.rate,
                          "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                          "max_ms": max(lat) if lat else None}

        # ---------------------------------------------------------------- throughput
        before = rx.count()
        per = 50
        for i in range(0, args.burst, per):
            ops = []
            for k in range(i, min(args.burst, i + per)):
                ops += bundle_ops(100_000 + k, observations=0)
            sc.store.write(ops, source_org=HOSPITAL)
        worker = NotifyWorker(sc)
        t0 = time.perf_counter()
        stop = worker.start(interval=0.01)
        deadline = time.monotonic() + 600
        while rx.count() < before + args.burst and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        worker.stop(stop)
        got = rx.count() - before
        out["throughput"] = {"notifications": got, "seconds": elapsed,
                             "per_s": got / elapsed if elapsed else None}
        out["deliveries"] = counts(sc)

        # ---------------------------------------------------------------- ingest cost
        plain = next(h for h in sc.store.after_write if getattr(h, "_notify_hook", False))
        spent = [0.0]

        def hook(conn, results, _h=plain):
            t = time.perf_counter()
            _h(conn, results)
            spent[0] += time.perf_counter() - t

        sc.store.after_write[sc.store.after_write.index(plain)] = hook
        # Alternate with and without the hook Bundle by Bundle, so the machine's load drifts
        # the same way on both sides; rounds are summed per side.
        with_hook, without = [0.0] * args.rounds, [0.0] * args.rounds
        per = args.ingest // args.rounds
        n = 0
        for rnd in range(args.rounds):
            for k in range(per * 2):
                on = (k + rnd) % 2 == 1
                if not on:
                    sc.store.after_write.remove(hook)
                ops = bundle_ops(1_000_000 + n)
                n += 1
                t0 = time.perf_counter()
                sc.store.write(ops, source_org=HOSPITAL)
                dt = time.perf_counter() - t0
                if not on:
                    sc.store.after_write.append(hook)
                if on:
                    with_hook[rnd] += dt
                else:
                    without[rnd] += dt
        res = per * 5 * args.rounds
        out["ingest"] = {"resources_each": res,
                         "without_outbox_s": sum(without), "with_outbox_s": sum(with_hook),
                         "without_res_per_s": res / sum(without),
                         "with_res_per_s": res / sum(with_hook),
                         "slowdown_pct": (sum(with_hook) / sum(without) - 1) * 100,
                         "hook_share_pct": spent[0] / sum(with_hook) * 100,
                         "rounds_slowdown_pct": [round((w / o - 1) * 100, 1) for w, o in
                                                 zip(with_hook, without, strict=True)],
                         "median_round_slowdown_pct": statistics.median(
                             (w / o - 1) * 100 for w, o in zip(with_hook, without,
                                                              strict=True))}
        rx.server.shutdown()
        sc.engine.dispose()
    return out


def main() -> None:
    # The receiver is on this machine: a deployment refuses private addresses unless named.
    os.environ.setdefault("SHAREDCARE_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--latency", type=int, default=300, help="admissions for the latency run")
    ap.add_argument("--rate", type=float, default=50.0, help="admissions per second")
    ap.add_argument("--burst", type=int, default=3000, help="events for the throughput run")
    ap.add_argument("--ingest", type=int, default=400, help="Bundles per side (5 resources)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="small numbers, a few seconds")
    args = ap.parse_args()
    if args.quick:
        args.latency, args.burst, args.ingest, args.rounds = 60, 300, 80, 2
    results = []
    for name in args.backends.split(","):
        if name == "postgresql" and (why := postgres_reachable()):
            print(f"postgresql: skipped ({why})")
            continue
        r = run_backend(name, args)
        results.append(r)
        lat, thr, ing = r["latency"], r["throughput"], r["ingest"]
        print(f"{name}: commit->delivered p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms, "
              f"max {lat['max_ms']:.0f} ms (n={lat['n']} at {lat['rate_per_s']:.0f}/s)")
        print(f"{name}: {thr['per_s']:.0f} notifications/s ({thr['notifications']} in "
              f"{thr['seconds']:.1f} s; deliveries {r['deliveries']})")
        print(f"{name}: ingest {ing['without_res_per_s']:.0f} resources/s without the outbox, "
              f"{ing['with_res_per_s']:.0f} with: {ing['slowdown_pct']:+.1f}% "
              f"(per round {ing['rounds_slowdown_pct']}, median "
              f"{ing['median_round_slowdown_pct']:+.1f}%); the outbox hook itself is "
              f"{ing['hook_share_pct']:.1f}% of the write time")

    if args.json:
        import json

        from bench._common import machine

        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
