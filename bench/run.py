"""sharedcare benchmarks (issue 8): one entry point, P1-P7, every backend, every scale.

    python bench/run.py --quick                                    # < 1 min: 200 patients, SQLite
    python bench/run.py --patients 1000,10000 --backends sqlite,postgresql \
        --json bench/results/latest.json                           # the full measurement
    python bench/run.py --patients 1000 --peer                     # + Medplum peer, ratios
    python bench/run.py --profile --patients 300                   # pyinstrument profiles only

For each backend and each --patients size it builds a fresh database (SQLite: a file in a temp
dir; PostgreSQL: a new database on 127.0.0.1:5432, dropped afterwards), loads the demo care
system (sharedcare.demo.generate: organisations, agreements, staff, choices, audit history and
~22 FHIR resources per patient as 500-entry transaction Bundles) and measures:

  P1 ingest     resources/s of `api.bundle.process` over the Bundles (validated, indexed, with
                provenance and relationship derivation); wall and CPU; validators warmed first
  P2 $everything  in-process `gov.everything`, all pages, >= 200 random visible patients, as a
                partner system (broadest direct-care agreement) and as a GP persona (relationship-
                checked): p50/p95/p99
  P3 searches   in-process `gov.search` as the GP persona: NHS number, name+birthdate,
                Observation patient+code+date range, Encounter patient+date: p50/p95; and
                requests/s over HTTP against `sharedcare serve` (subprocess) with bench/loadgen.py
                (separate process) at concurrency 1, 4, 16, with a partner-system token
  P4 growth     ratio of latencies largest/smallest size
  P5 $export    resources/s (HTTP route if mounted, else population.export.BulkExport's job
                in process, else Store.iter_current -> NDJSON as a lower bound)
  P6 MLLP       bench/mllp_throughput.py's figure when that script exists, else skipped
  P7 RSS        server VmRSS sampled during the HTTP load

Prints a Rich table with the targets (met/missed) and writes JSON. Benchmark tooling only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import (  # noqa: E402
    TARGETS,
    RssSampler,
    Server,
    fresh_backend,
    machine,
    met,
    postgres_reachable,
    rss_mb,
    summary,
)

from sharedcare.store.indexing import SUPPORTED_TYPES  # noqa: E402

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SEARCH_KINDS = [
    ("patient_nhs", "Patient by NHS number"),
    ("patient_name_birthdate", "Patient by name + birthdate"),
    ("observation_code_date", "Observation patient+code+date"),
    ("encounter_date", "Encounter patient+date"),
]
# The types a shared care record holds (issue 2, the indexer's list), warmed before P1 so schema compilation is
# not timed as ingest. Types first seen later are compiled inside the timed region.
WARM_TYPES = list(SUPPORTED_TYPES)
NOTES = [
    (
        "Data: sharedcare.demo.generate(seed, patients) -- ~22 resources per patient (Encounter, "
        "Observation, DiagnosticReport, Condition, medication, documents, care plans). That is far "
        "shallower than Synthea's ~150 per patient; --synthea adds the 45 shared Synthea bundles."
    ),
    (
        "P2/P3 in-process figures are server time through Governance (policy SQL + audit write), "
        "without HTTP or Bundle serialisation; HTTP figures are client-side over loopback."
    ),
    (
        "The machine has 2 cores shared by server, load generator and database: HTTP req/s at "
        "concurrency > 1 is bounded by that."
    ),
]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ loading
class TimedBundles:
    """Stands in for `api.bundle` inside sharedcare.demo.load while it loads, so only
    `bundle.process` calls are timed (wall and process CPU), not generation or staff set-up."""

    def __init__(self, real):
        self.real = real
        self.wall = 0.0
        self.cpu = 0.0
        self.resources = 0
        self.bundles = 0
        self.per_bundle_ms: list[float] = []

    def process(self, store, bundle, base, source_org=None):
        c0, t0 = time.process_time(), time.perf_counter()
        out = self.real.process(store, bundle, base, source_org)
        dt = time.perf_counter() - t0
        self.wall += dt
        self.cpu += time.process_time() - c0
        self.per_bundle_ms.append(dt * 1000)
        self.resources += len(bundle.get("entry") or [])
        self.bundles += 1
        return out


def warm_validators() -> dict:
    from sharedcare.fhir.validation import _validator, resource_types

    t0 = time.perf_counter()
    known = resource_types()
    types = [t for t in WARM_TYPES if t in known]
    for t in types:
        _validator(t)
    return {"types": len(types), "seconds": time.perf_counter() - t0}


def load(sc, cs, synthea: Path | None, synthea_org: str) -> dict:
    import sharedcare.demo.load as demo_load

    timed = TimedBundles(demo_load.bundles)
    demo_load.bundles = timed
    t0 = time.perf_counter()
    try:
        counts = demo_load.load_demo(sc, cs)
    finally:
        demo_load.bundles = timed.real
    total_s = time.perf_counter() - t0
    out = {
        "resources": timed.resources,
        "bundles": timed.bundles,
        "seconds": timed.wall,
        "cpu_seconds": timed.cpu,
        "resources_per_s": timed.resources / timed.wall if timed.wall else None,
        "resources_per_cpu_s": timed.resources / timed.cpu if timed.cpu else None,
        "bundle_latency": summary(timed.per_bundle_ms),
        "load_demo_total_s": total_s,
        "load_demo_counts": counts,
    }
    if synthea:
        from sharedcare.api import bundle as bundles

        files = sorted(synthea.glob("*.json"))
        files.sort(key=lambda f: 0 if f.name.startswith(("hospital", "practitioner")) else 1)
        n = failed = 0
        wall = cpu = 0.0
        for f in files:
            b = json.loads(f.read_bytes())
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                bundles.process(sc.store, b, "", synthea_org)
                n += len(b.get("entry") or [])
            except Exception as e:  # noqa: BLE001 - counted, reported
                failed += 1
                log(f"synthea {f.name}: {type(e).__name__}: {str(e)[:200]}")
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
        out["synthea"] = {
            "files": len(files),
            "failed": failed,
            "resources": n,
            "seconds": wall,
            "cpu_seconds": cpu,
            "resources_per_s": n / wall if wall else None,
            "source_org": synthea_org,
        }
    return out


# ------------------------------------------------------------------------------ who asks
def accesses(sc, cs) -> dict[str, Any]:
    from sharedcare.governance.policy import Access

    gov = sc.governance
    agreement = next(
        a for a in cs.agreements if a.status == "active" and "direct-care" in a.purposes
    )
    sys_ods = agreement.parties[0]
    gp = next(p for p in cs.personas if p.role == "GP")
    system = gov.prepare(
        Access(
            None,
            sys_ods,
            "system",
            scopes=frozenset({"system/*.cruds"}),
            client_id="bench",
            kind="system",
        )
    )
    clinician = gov.prepare(
        Access(gp.username, gp.org, "clinician", scopes=frozenset({"user/*.cruds"}), kind="user")
    )
    return {
        "system": {
            "access": system,
            "describe": f"partner system of {sys_ods} (first party of "
            f"{agreement.id}, {len(agreement.parties)} parties, direct care)",
        },
        "clinician": {
            "access": clinician,
            "describe": f"GP persona {gp.username} at {gp.org} (clinician; relationship-checked)",
        },
    }


def visible_patients(sc, access) -> list[str]:
    return [s.id for s in sc.store.iter_current(access.policy, ["Patient"])]


# ------------------------------------------------------------------------------ P2
def everything_all(gov, access, pid: str, count: int) -> tuple[int, int]:
    cursor, n, pages = None, 0, 0
    while True:
        view = gov.everything(gov.prepare(access), pid, count, cursor)
        n += len(view.matches)
        pages += 1
        if not view.next_cursor:
            return n, pages
        cursor = view.next_cursor


def measure_everything(
    sc, access, patients: list[str], samples: int, count: int, rng: random.Random
) -> dict:
    from sharedcare.fhir.outcome import FHIRError

    if not patients:
        return {"n": 0, "note": "no visible patients"}
    pick = [rng.choice(patients) for _ in range(samples)]
    for pid in pick[:5]:  # untimed warm-up
        everything_all(sc.governance, access, pid, count)
    ms, sizes, pages, errors = [], [], [], 0
    for pid in pick:
        t0 = time.perf_counter()
        try:
            n, p = everything_all(sc.governance, access, pid, count)
        except FHIRError:
            errors += 1
            continue
        ms.append((time.perf_counter() - t0) * 1000)
        sizes.append(n)
        pages.append(p)
    out = summary(ms)
    out.update(
        {
            "distinct_patients": len(set(pick)),
            "visible_patients": len(patients),
            "mean_resources": sum(sizes) / len(sizes) if sizes else None,
            "max_resources": max(sizes) if sizes else None,
            "mean_pages": sum(pages) / len(pages) if pages else None,
            "page_size": count,
            "errors": errors,
        }
    )
    return out


# ------------------------------------------------------------------------------ P3
def _coding(cc: dict | None) -> str | None:
    for c in (cc or {}).get("coding") or []:
        if c.get("system") and c.get("code"):
            return f"{c['system']}|{c['code']}"
    return None


def _quartiles(days: list[str]) -> tuple[str, str] | None:
    if not days:
        return None
    d = sorted(days)
    return d[len(d) // 4], d[(3 * len(d)) // 4]


def plans_for(cs, visible: set[str], want: int, rng: random.Random) -> dict[str, list]:
    """Search parameter lists per kind, drawn from the generator's own records of patients the
    access can see. Walks shuffled patient indices until `want` patients are found."""
    out: dict[str, list] = {k: [] for k, _ in SEARCH_KINDS}
    order = list(range(cs.patients_count))
    rng.shuffle(order)
    found = 0
    for i in order:
        if found >= want:
            break
        try:
            res = cs.patient_resources(i)
        except Exception as e:  # noqa: BLE001 - a generator fault on one patient should not stop us
            log(f"generator: patient {i}: {type(e).__name__}: {e}")
            continue
        pat = next((r for r in res if r["resourceType"] == "Patient"), None)
        if pat is None or pat["id"] not in visible:
            continue
        found += 1
        pid = pat["id"]
        nhs = next((x["value"] for x in pat.get("identifier", []) if x.get("system") == NHS), None)
        if nhs:
            out["patient_nhs"].append([("identifier", f"{NHS}|{nhs}")])
        names = pat.get("name") or []
        name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
        if name.get("family") and pat.get("birthDate"):
            out["patient_name_birthdate"].append(
                [("name", name["family"]), ("birthdate", pat["birthDate"])]
            )
        obs: dict[str, list[str]] = {}
        for r in res:
            if r["resourceType"] == "Observation":
                code = _coding(r.get("code"))
                when = r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start")
                if code and when:
                    obs.setdefault(code, []).append(when[:10])
        if obs:
            code, days = max(obs.items(), key=lambda kv: len(kv[1]))
            q = _quartiles(days)
            out["observation_code_date"].append(
                [
                    ("patient", f"Patient/{pid}"),
                    ("code", code),
                    ("date", f"ge{q[0]}"),
                    ("date", f"le{q[1]}"),
                ]
            )
        enc = [
            (r.get("period") or {}).get("start", "")[:10]
            for r in res
            if r["resourceType"] == "Encounter" and (r.get("period") or {}).get("start")
        ]
        q = _quartiles(enc)
        if q:
            out["encounter_date"].append(
                [("patient", f"Patient/{pid}"), ("date", f"ge{q[0]}"), ("date", f"le{q[1]}")]
            )
    return out


RTYPE = {
    "patient_nhs": "Patient",
    "patient_name_birthdate": "Patient",
    "observation_code_date": "Observation",
    "encounter_date": "Encounter",
}


def measure_searches(sc, access, plans: dict[str, list], samples: int) -> dict:
    from sharedcare.fhir.outcome import FHIRError

    gov = sc.governance
    out = {}
    for kind, _ in SEARCH_KINDS:
        plan = plans.get(kind) or []
        if not plan:
            out[kind] = {"n": 0, "note": "no query values"}
            continue
        rtype = RTYPE[kind]
        for params in plan[:3]:
            gov.search(gov.prepare(access), rtype, list(params))
        ms, hits, errors = [], [], 0
        for j in range(samples):
            params = list(plan[j % len(plan)])
            t0 = time.perf_counter()
            try:
                page = gov.search(gov.prepare(access), rtype, params)
            except FHIRError:
                errors += 1
                continue
            ms.append((time.perf_counter() - t0) * 1000)
            hits.append(len(page.matches))
        s = summary(ms)
        s.update(
            {
                "distinct_queries": len(plan),
                "mean_hits": sum(hits) / len(hits) if hits else None,
                "zero_hit_share": hits.count(0) / len(hits) if hits else None,
                "errors": errors,
            }
        )
        out[kind] = s
    return out


def http_spec(server_base: str, token: str, plans: dict[str, list], limit: int) -> dict:
    host = server_base.rsplit("/fhir", 1)[0]
    reqs = []
    for j in range(limit):
        for kind, _ in SEARCH_KINDS:
            plan = plans.get(kind) or []
            if plan:
                params = plan[j % len(plan)]
                reqs.append({"kind": kind, "path": f"/fhir/{RTYPE[kind]}?{urlencode(params)}"})
    return {"base": host, "headers": {"authorization": f"Bearer {token}"}, "requests": reqs}


def run_loadgen(
    spec: dict, server_pid: int, levels: str, requests: int, duration: float, workdir: Path
) -> dict:
    spec_path = workdir / f"loadgen-spec-{uuid.uuid4().hex[:6]}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec))
    cmd = [
        sys.executable,
        str(HERE / "loadgen.py"),
        "--spec",
        str(spec_path),
        "--concurrency",
        levels,
        "--requests",
        str(requests),
        "--duration",
        str(duration),
        "--json",
        str(out_path),
    ]
    n_levels = len(levels.split(","))
    with RssSampler(server_pid) as rss:
        proc = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=n_levels * (duration + 60) + 60,
        )
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "rss": rss.result()}
    res = json.loads(out_path.read_text())
    res["rss"] = rss.result()
    return res


def measure_wrk(sc, server: Server, token: str, acc: dict, plans: dict, args, workdir: Path,
                patients: int) -> tuple[dict, dict]:
    """P3 again with wrk (C: the load generator costs the server almost nothing), the partner
    system's mix at c=1 and c=16; then R5: 50 clinicians (the GP persona), each waiting 0-1 s
    before each request, finding a patient by NHS number, opening their page, `$everything`
    and the Observation search (bench/http_wrk.py) -- at the run's largest size only."""
    from http_wrk import clinician_paths, measure_level, write_scripts, wrk

    host = server.base.rsplit("/fhir", 1)[0]
    folder = workdir / "wrk-p3"
    folder.mkdir(exist_ok=True)
    spec = http_spec(server.base, token, plans["system"], args.search_patients)
    script, warm = write_scripts(folder, [r["path"] for r in spec["requests"]], token)
    wrk(warm, host, 2, 2)
    time.sleep(1)
    p3 = {"load_generator": "wrk", "viewer": "partner system",
          "levels": [measure_level(sc, server, script, c, args.wrk_duration) for c in (1, 16)]}
    if patients < max(args.patients):
        return p3, {"skipped": "R5 runs at the run's largest size"}
    gp = acc["clinician"]["access"]
    gp_token = sc.governance.issue_token(gp.username, gp.ods, gp.role)
    folder = workdir / "wrk-r5"
    folder.mkdir(exist_ok=True)
    script, warm = write_scripts(folder, clinician_paths(plans["clinician"],
                                                         args.search_patients), gp_token, 1000)
    wrk(warm, host, 2, 2)
    time.sleep(1)
    r5 = measure_level(sc, server, script, 50, args.r5_duration)
    r5.update({"load_generator": "wrk", "viewer": "GP persona", "think_ms": "0-1000"})
    return p3, r5


# ------------------------------------------------------------------------------ P5
def measure_export(sc, server: Server | None, token: str | None, access, workdir: Path) -> dict:
    import httpx

    # 1. the HTTP route, when it is mounted
    if server is not None and token:
        h = {
            "authorization": f"Bearer {token}",
            "prefer": "respond-async",
            "accept": "application/fhir+json",
        }
        with httpx.Client(timeout=600) as client:
            t0 = time.perf_counter()
            r = client.get(f"{server.base}/$export", headers=h)
            if r.status_code == 202 and r.headers.get("content-location"):
                poll = r.headers["content-location"]
                deadline = time.monotonic() + 600
                peak = rss_mb(server.pid) or 0
                while time.monotonic() < deadline:
                    s = client.get(poll, headers={"authorization": h["authorization"]})
                    peak = max(peak, rss_mb(server.pid) or 0)
                    if s.status_code == 200:
                        dt = time.perf_counter() - t0
                        n = sum(o.get("count", 0) for o in s.json().get("output", []))
                        client.delete(poll, headers={"authorization": h["authorization"]})
                        return {
                            "method": "HTTP GET /fhir/$export (kick-off to complete "
                            "manifest; files written by the server)",
                            "resources": n,
                            "seconds": dt,
                            "resources_per_s": n / dt if dt else None,
                            "server_rss_peak_mb": peak,
                        }
                    if s.status_code != 202:
                        break
                    time.sleep(0.05)
    # 2. the export module's job, in process
    try:
        from sharedcare.population import export as ex

        be = ex.BulkExport(sc)
        jid = uuid.uuid4().hex
        folder = workdir / "exports" / jid
        folder.mkdir(parents=True, exist_ok=True)
        from sharedcare.store.repository import now_utc
        from sharedcare.store.schema import resource

        tx = now_utc()
        job = ex.Job(jid, folder, {}, "bench", tx, "", None, None, "system")
        policy = ex._Narrowed(access.policy, resource.c.last_updated <= tx)
        t0 = time.perf_counter()
        be._run(job, policy)
        dt = time.perf_counter() - t0
        if job.status == "complete":
            n = sum(o["count"] for o in job.output)
            return {
                "method": "in process: sharedcare.population.export.BulkExport job (the "
                "$export route is not mounted in create_app)",
                "resources": n,
                "seconds": dt,
                "resources_per_s": n / dt if dt else None,
            }
        log(f"export job ended {job.status}: {job.error}")
    except Exception as e:  # noqa: BLE001 - fall through to the lower bound
        log(f"BulkExport not usable: {type(e).__name__}: {e}")
    # 3. lower bound: the store's stream to NDJSON
    path = workdir / "export-lower-bound.ndjson"
    t0 = time.perf_counter()
    n = 0
    with open(path, "wb", buffering=1 << 20) as f:
        for s in sc.store.iter_current(access.policy, batch=5000):
            f.write(s.content)
            f.write(b"\n")
            n += 1
    dt = time.perf_counter() - t0
    path.unlink(missing_ok=True)
    return {
        "method": "LOWER BOUND: Store.iter_current(policy) streamed to NDJSON (no $export "
        "available)",
        "resources": n,
        "seconds": dt,
        "resources_per_s": n / dt if dt else None,
    }


# ------------------------------------------------------------------------------ P6
def measure_mllp(be, quick: bool) -> dict:
    """bench/mllp_throughput.py (another engineer's) as a subprocess, on a fresh database of
    this backend; its "N msg/s" lines parsed. Skipped with a note when the script is absent."""
    script = HERE / "mllp_throughput.py"
    if not script.exists():
        return {"skipped": "bench/mllp_throughput.py does not exist"}
    cmd = [sys.executable, str(script)]
    if quick:
        cmd += ["--messages", "200", "--connections", "1"]
    with fresh_backend(be.name) as fresh:
        if be.name != "sqlite":
            cmd += ["--database", fresh.url]
        try:
            p = subprocess.run(
                cmd,
                check=False,
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=60 if quick else 900,
            )
        except subprocess.TimeoutExpired:
            return {"skipped": "bench/mllp_throughput.py timed out", "command": cmd[1:]}
    text = p.stdout + "\n" + p.stderr
    # "200 ADT^A01 over 1 connection(s), identity linking on: 575 msg/s (ACK after commit)"
    found = [(c, r) for c, ident, r in re.findall(
        r"over (\d+) connection\S*(?:, identity linking (on|off))?: ([\d,]+(?:\.\d+)?) msg/s",
        text) if ident != "off"]
    if p.returncode != 0 or not found:
        return {
            "skipped": f"bench/mllp_throughput.py gave no msg/s figure (exit {p.returncode})",
            "output_tail": text[-600:],
        }
    by_conn = {int(c): float(r.replace(",", "")) for c, r in found}
    return {
        "messages_per_s": max(by_conn.values()),
        "by_connections": by_conn,
        "command": " ".join(cmd[1:]).replace(str(REPO) + "/", ""),
    }


# ------------------------------------------------------------------------------ one run
def measure(backend: str, patients: int, args) -> dict:
    from sharedcare.app import SharedCare
    from sharedcare.demo import generate

    rng = random.Random(args.seed)
    phases: dict[str, float] = {}
    mark = [time.perf_counter()]

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - mark[0], 2)
        mark[0] = now

    with fresh_backend(backend) as be:
        res: dict[str, Any] = {"backend": backend, "patients": patients, "phases_s": phases}
        log(f"{backend} {patients} patients: opening {be.url.split('@')[-1]}")
        sc = SharedCare.open(be.url, be.data_dir)
        try:
            phase("open")
            res["validator_warmup"] = warm_validators()
            phase("warm validators")
            cs = generate(args.seed, patients)
            acc = accesses(sc, cs)
            synthea_org = acc["system"]["access"].ods
            log(f"{backend} {patients}: loading")
            res["P1_ingest"] = load(sc, cs, args.synthea_dir, synthea_org)
            phase("load")
            res["dataset"] = {
                "resources": res["P1_ingest"]["resources"],
                "per_patient": res["P1_ingest"]["resources"] / max(1, patients),
            }
            if backend == "postgresql":
                with sc.engine.connect() as conn:
                    conn.exec_driver_sql("ANALYZE")
                    conn.commit()
            sc.governance.forget_agreements()
            acc = accesses(sc, cs)
            res["who"] = {k: v["describe"] for k, v in acc.items()}
            log(f"{backend} {patients}: P2 $everything")
            visible = {k: visible_patients(sc, v["access"]) for k, v in acc.items()}
            res["P2_everything"] = {
                k: measure_everything(
                    sc, v["access"], visible[k], args.everything_samples, args.page_size, rng
                )
                for k, v in acc.items()
            }
            phase("P2")
            log(f"{backend} {patients}: P3 searches")
            plans = {k: plans_for(cs, set(visible[k]), args.search_patients, rng) for k in acc}
            res["P3_search"] = {
                k: measure_searches(sc, acc[k]["access"], plans[k], args.search_samples)
                for k in acc
            }
            phase("P3 in-process")
            token = sc.governance.issue_system_token("bench-loadgen", acc["system"]["access"].ods)
            server = None
            if not args.no_http:
                log(f"{backend} {patients}: starting sharedcare serve")
                with Server(be.url, be.data_dir) as server:
                    phase("server start")
                    res["server"] = {
                        "startup_s": server.started_s,
                        "rss_idle_mb": rss_mb(server.pid),
                    }
                    spec = http_spec(server.base, token, plans["system"], args.search_patients)
                    log(f"{backend} {patients}: P3 HTTP load c={args.concurrency}")
                    res["P3_http"] = run_loadgen(
                        spec,
                        server.pid,
                        args.concurrency,
                        args.http_requests,
                        args.http_duration,
                        be.data_dir,
                    )
                    res["P7_rss"] = res["P3_http"].get("rss")
                    phase("P3 HTTP")
                    if args.wrk:
                        log(f"{backend} {patients}: P3 with wrk, then R5 (50 clinicians)")
                        res["P3_wrk"], res["R5_clinicians"] = measure_wrk(
                            sc, server, token, acc, plans, args, be.data_dir, patients)
                        phase("P3 wrk + R5")
                    log(f"{backend} {patients}: P5 export")
                    res["P5_export"] = measure_export(
                        sc, server, token, acc["system"]["access"], be.data_dir
                    )
            else:
                res["P5_export"] = measure_export(
                    sc, None, None, acc["system"]["access"], be.data_dir
                )
            phase("P5")
            res["P6_mllp"] = (
                {"skipped": "--no-mllp"} if args.no_mllp else measure_mllp(be, args.quick)
            )
            phase("P6")
            if args.peer:
                res["peer_compare"] = peer_ours(be, args)
                phase("peer (ours)")
        finally:
            sc.engine.dispose()
    return res


# ------------------------------------------------------------------------------ the peer
def peer_ours(be, args) -> dict:
    """Synthea ingest + searches over HTTP against our server on a fresh empty database (a
    sibling of `be`), with bench/fhir_http.py's Driver and a system token."""
    import fhir_http

    from sharedcare.app import SharedCare

    bundles_n = args.peer_bundles
    data = args.synthea_dir or fhir_http.default_data_dir()
    first, patients = fhir_http.select_bundles(data, None if bundles_n < 0 else bundles_n)
    with fresh_backend(be.name) as fresh:
        sc = SharedCare.open(fresh.url, fresh.data_dir)
        token = sc.governance.issue_system_token("bench-peer", "BENCH")
        sc.engine.dispose()
        with Server(fresh.url, fresh.data_dir) as server:
            d = fhir_http.Driver(server.base, timeout=300, log=log)
            d.client.headers["authorization"] = f"Bearer {token}"
            try:
                return d.run(
                    first, patients, searches=args.peer_searches, warmup=3, server_pid=server.pid
                )
            finally:
                d.close()


def peer_run(args) -> dict | None:
    import fhir_http

    data = args.synthea_dir or fhir_http.default_data_dir()
    first, patients = fhir_http.select_bundles(
        data, None if args.peer_bundles < 0 else args.peer_bundles
    )
    with fhir_http.Peer(log=log) as peer:
        d = fhir_http.Driver(peer.base, timeout=300, log=log)
        try:
            res = d.run(
                first,
                patients,
                searches=args.peer_searches,
                warmup=3,
                server_pid=peer.proc.pid if peer.proc else None,
            )
        finally:
            d.close()
    res["server"] = {"name": "Medplum FhirRouter + MemoryRepository", **fhir_http.peer_versions()}
    return res


# ------------------------------------------------------------------------------ growth
def growth(runs: list[dict]) -> dict:
    """Largest/smallest size, per backend: latency ratios (and ingest rate ratio)."""
    out: dict[str, Any] = {}
    by_backend: dict[str, list[dict]] = {}
    for r in runs:
        by_backend.setdefault(r["backend"], []).append(r)
    for backend, rs in by_backend.items():
        rs = sorted(rs, key=lambda r: r["patients"])
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        g: dict[str, Any] = {"from": lo["patients"], "to": hi["patients"], "latency": {}}

        def ratio(get, lo=lo, hi=hi):
            try:
                a, b = get(lo), get(hi)
            except (KeyError, TypeError):
                return None
            return b / a if a and b else None

        for who in ("system", "clinician"):
            for q in ("p50_ms", "p95_ms"):
                g["latency"][f"P2 {who} {q}"] = ratio(
                    lambda r, who=who, q=q: r["P2_everything"][who][q]
                )
        for kind, _ in SEARCH_KINDS:
            g["latency"][f"P3 {kind} p95_ms"] = ratio(
                lambda r, kind=kind: r["P3_search"]["clinician"][kind]["p95_ms"]
            )
        g["latency"]["HTTP c=1 p50_ms"] = ratio(
            lambda r: r["P3_http"]["levels"][0]["latency"]["p50_ms"]
        )
        g["ingest_rate_smallest_over_largest"] = ratio(
            lambda r: 1 / r["P1_ingest"]["resources_per_s"]
        )
        vals = [v for v in g["latency"].values() if v]
        g["worst_latency_ratio"] = max(vals) if vals else None
        out[backend] = g
    return out


# ------------------------------------------------------------------------------ output
def _fmt(v, nd=1, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}{unit}"
    return f"{v:,}{unit}" if isinstance(v, int) else str(v)


def _cell(value, key=None, nd=1, unit=""):
    m = met(key, value)
    mark = "" if m is None else (" [green]met[/]" if m else " [red]missed[/]")
    return _fmt(value, nd, unit) + mark


def _get(d, *path):
    """d[p0][p1]... through dicts and lists; None where anything is missing."""
    for p in path:
        if isinstance(p, int) and isinstance(d, list):
            if p >= len(d):
                return None
            d = d[p]
        elif isinstance(d, dict) and p in d:
            d = d[p]
        else:
            return None
    return d


def rows_for(runs: list[dict], levels: list[int]) -> list[tuple[str, str | None, list[str]]]:
    rows: list[tuple[str, str | None, list[str]]] = []

    def add(label, key, getter, nd=1, unit=""):
        rows.append((label, key, [_cell(getter(r), key, nd, unit) for r in runs]))

    add(
        "resources loaded (per patient)",
        None,
        lambda r: f"{r['dataset']['resources']:,} ({r['dataset']['per_patient']:.1f})",
    )
    add("P1 ingest resources/s (wall)", "P1", lambda r: _get(r, "P1_ingest", "resources_per_s"), 0)
    add("P1 ingest resources/CPU-s", None, lambda r: _get(r, "P1_ingest", "resources_per_cpu_s"), 0)
    if any(_get(r, "P1_ingest", "synthea") for r in runs):
        add(
            "P1 Synthea ingest resources/s",
            "P1",
            lambda r: _get(r, "P1_ingest", "synthea", "resources_per_s"),
            0,
        )
    for who in ("system", "clinician"):
        add(
            f"P2 $everything {who} p50",
            "P2_p50",
            lambda r, w=who: _get(r, "P2_everything", w, "p50_ms"),
            1,
            " ms",
        )
        add(
            f"P2 $everything {who} p95",
            "P2_p95",
            lambda r, w=who: _get(r, "P2_everything", w, "p95_ms"),
            1,
            " ms",
        )
        add(
            f"P2 $everything {who} p99",
            None,
            lambda r, w=who: _get(r, "P2_everything", w, "p99_ms"),
            1,
            " ms",
        )
    for kind, label in SEARCH_KINDS:
        add(
            f"P3 {label} p50/p95 (GP)",
            "P3_p95",
            lambda r, k=kind: _get(r, "P3_search", "clinician", k, "p95_ms"),
            1,
            " ms",
        )
        rows[-1] = (
            rows[-1][0],
            rows[-1][1],
            [
                f"{_fmt(_get(r, 'P3_search', 'clinician', kind, 'p50_ms'))} / {c}"
                for r, c in zip(runs, rows[-1][2])
            ],
        )
    for i, c in enumerate(levels):
        add(
            f"P3 HTTP searches req/s c={c}",
            "P3_rps",
            lambda r, i=i: _get(r, "P3_http", "levels", i, "requests_per_s"),
            0,
        )
        add(
            f"P3 HTTP p95 c={c}",
            "P3_p95",
            lambda r, i=i: _get(r, "P3_http", "levels", i, "latency", "p95_ms"),
            1,
            " ms",
        )
    for i, c in enumerate((1, 16)):
        add(f"P3 wrk req/s c={c} (partner system)", "P3_rps",
            lambda r, i=i: _get(r, "P3_wrk", "levels", i, "req_s"), 0)
    add("P3 wrk p95 c=1", "P3_p95", lambda r: _get(r, "P3_wrk", "levels", 0, "latency_ms", "p95"),
        1, " ms")
    add("P3 wrk CPU ms a request c=16 (server / PostgreSQL)", None, lambda r: (
        f"{_get(r, 'P3_wrk', 'levels', 1, 'cpu_ms_per_request', 'server')} / "
        f"{_get(r, 'P3_wrk', 'levels', 1, 'cpu_ms_per_request', 'postgres')}"
        if _get(r, "P3_wrk") else None))
    add("R5 50 clinicians p95", "R5_p95", lambda r: _get(r, "R5_clinicians", "latency_ms", "p95"),
        1, " ms")
    add("R5 req/s, errors, one audit event each", None, lambda r: (
        f"{_get(r, 'R5_clinicians', 'req_s')}, {_get(r, 'R5_clinicians', 'non_2xx')}, "
        f"{_get(r, 'R5_clinicians', 'one_audit_event_a_request')}"
        if _get(r, "R5_clinicians", "req_s") is not None else None))
    add("P5 $export resources/s", "P5", lambda r: _get(r, "P5_export", "resources_per_s"), 0)
    add(
        "P6 MLLP messages/s (ACK after commit)",
        "P6",
        lambda r: _get(r, "P6_mllp", "messages_per_s") or "skipped",
        0,
    )
    add("P7 server RSS max under load", "P7", lambda r: _get(r, "P7_rss", "max_mb"), 0, " MB")
    return rows


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    runs = result["runs"]
    levels = [int(x) for x in result["args"]["concurrency"].split(",")]
    t = Table(title="sharedcare benchmarks (issue 8)", show_lines=False)
    t.add_column("measure")
    t.add_column("target")
    for r in runs:
        t.add_column(f"{r['backend']}\n{r['patients']:,} patients", justify="right")
    for label, key, cells in rows_for(runs, levels):
        t.add_row(label, TARGETS[key][0] if key else "", *cells)
    console.print(t)
    g = result.get("growth") or {}
    if g:
        gt = Table(title="P4 growth: largest / smallest size (latency ratios)")
        gt.add_column("measure")
        gt.add_column("target")
        for b, v in g.items():
            gt.add_column(f"{b} {v['from']:,}→{v['to']:,}", justify="right")
        keys = list(next(iter(g.values()))["latency"])
        for k in keys:
            gt.add_row(
                k, TARGETS["P4"][0], *[_cell(v["latency"].get(k), "P4", 2, "×") for v in g.values()]
            )
        gt.add_row(
            "ingest time/resource",
            "",
            *[_fmt(v.get("ingest_rate_smallest_over_largest"), 2, "×") for v in g.values()],
        )
        console.print(gt)
    if result.get("peer"):
        pt = Table(
            title="vs peer (Medplum FhirRouter in memory), Synthea over HTTP; >1 = ours better"
        )
        pt.add_column("measure")
        for b in result["peer"]["ratios"]:
            pt.add_column(b, justify="right")
        rs = result["peer"]["ratios"]
        first = next(iter(rs.values()))
        pt.add_row(
            "ingest resources/s (ours/peer; target ≥ 1.2)",
            *[_fmt(v["ingest_resources_per_s"]["ratio"], 2) for v in rs.values()],
        )
        for k in first:
            if k == "ingest_resources_per_s":
                continue
            pt.add_row(
                f"{k} p50 / p95 (peer/ours)",
                *[
                    (
                        f"{_fmt(v[k].get('p50_ms'), 2)} / {_fmt(v[k].get('p95_ms'), 2)}"
                        if v[k].get("ratio", 0) is not None
                        else v[k].get("note", "-")
                    )
                    for v in rs.values()
                ],
            )
        console.print(pt)
    for n in result["notes"]:
        console.print(f"[dim]- {n}[/]")
    for r in runs:
        for k in ("P5_export",):
            m = _get(r, k, "method")
            if m:
                console.print(f"[dim]- {r['backend']} {r['patients']:,}: P5 method: {m}[/]")
                break
        if _get(r, "P6_mllp", "skipped"):
            console.print(
                f"[dim]- {r['backend']} {r['patients']:,}: P6 skipped: {r['P6_mllp']['skipped']}[/]"
            )
        elif _get(r, "P6_mllp", "command"):
            console.print(
                f"[dim]- {r['backend']} {r['patients']:,}: P6 from "
                f"{r['P6_mllp']['command']}: {r['P6_mllp']['by_connections']} msg/s "
                "by connections[/]"
            )
        console.print(f"[dim]- {r['backend']} {r['patients']:,}: phases (s) {r.get('phases_s')}[/]")
        for who, d in (r.get("who") or {}).items():
            console.print(
                f"[dim]- {r['backend']} {r['patients']:,}: {who} = {d}; visible "
                f"patients {_get(r, 'P2_everything', who, 'visible_patients')}[/]"
            )


# ------------------------------------------------------------------------------ profile
def profile(args) -> int:
    """pyinstrument profiles of ingest, $everything and searches at a small scale (SQLite)."""
    from pyinstrument import Profiler

    from sharedcare.app import SharedCare
    from sharedcare.demo import generate

    out_dir = args.json.parent if args.json else HERE / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for backend in args.backends:
        with fresh_backend(backend) as be:
            sc = SharedCare.open(be.url, be.data_dir)
            warm_validators()
            cs = generate(args.seed, args.patients[0])
            prof = Profiler(interval=0.0005)
            prof.start()
            load(sc, cs, None, "")
            prof.stop()
            paths = {"ingest": prof}
            acc = accesses(sc, cs)
            for who in ("system", "clinician"):
                a = acc[who]["access"]
                pts = visible_patients(sc, a)
                prof = Profiler(interval=0.0002)
                prof.start()
                measure_everything(sc, a, pts, 100, args.page_size, rng)
                prof.stop()
                paths[f"everything-{who}"] = prof
            a = acc["clinician"]["access"]
            plans = plans_for(cs, set(visible_patients(sc, a)), 20, rng)
            prof = Profiler(interval=0.0002)
            prof.start()
            measure_searches(sc, a, plans, 50)
            prof.stop()
            paths["search-clinician"] = prof
            for name, p in paths.items():
                f = out_dir / f"profile-{backend}-{name}.txt"
                f.write_text(p.output_text(unicode=False, color=False, show_all=False))
                (out_dir / f"profile-{backend}-{name}.html").write_text(p.output_html())
                log(f"wrote {f}")
            sc.engine.dispose()
    return 0


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--patients", default=None, help="comma-separated sizes (default 1000,10000)")
    ap.add_argument("--backends", default=None, help="sqlite,postgresql (default both)")
    ap.add_argument("--quick", action="store_true", help="200 patients, SQLite, short loads")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "latest.json")
    ap.add_argument(
        "--peer",
        action="store_true",
        help="also Synthea ingest+searches over HTTP, "
        "ours vs Medplum's router (bench/fhir_http.py), with ratios",
    )
    ap.add_argument(
        "--peer-bundles",
        type=int,
        default=None,
        help="Synthea patient bundles for --peer (default all = -1; 5 with --quick)",
    )
    ap.add_argument("--peer-searches", type=int, default=None, help="per search kind (--peer)")
    ap.add_argument(
        "--synthea",
        action="store_true",
        help="also load the shared Synthea bundles in P1 (reported separately)",
    )
    ap.add_argument("--synthea-dir", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--everything-samples",
        type=int,
        default=None,
        help="$everything calls per access (default 200; 100 with --quick)",
    )
    ap.add_argument("--page-size", type=int, default=100, help="$everything _count (as the API)")
    ap.add_argument(
        "--search-patients", type=int, default=None, help="patients to draw query values from"
    )
    ap.add_argument("--search-samples", type=int, default=None, help="timed searches per kind")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--http-requests", type=int, default=None, help="per concurrency level")
    ap.add_argument("--http-duration", type=float, default=None, help="seconds per level (max)")
    ap.add_argument("--no-http", action="store_true", help="skip the server (P3 HTTP, P7)")
    ap.add_argument("--no-mllp", action="store_true", help="skip P6 (bench/mllp_throughput.py)")
    ap.add_argument("--no-wrk", dest="wrk", action="store_false",
                    help="skip P3 with wrk and R5 (they run when Debian's wrk is installed)")
    ap.add_argument("--wrk-duration", type=int, default=None, help="seconds a wrk level (15)")
    ap.add_argument("--r5-duration", type=int, default=None, help="R5 seconds (180)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="write pyinstrument profiles of ingest/$everything/search next to --json and exit",
    )
    args = ap.parse_args(argv)

    q = args.quick
    args.patients = [int(x) for x in (args.patients or ("200" if q else "1000,10000")).split(",")]
    args.backends = (args.backends or ("sqlite" if q else "sqlite,postgresql")).split(",")
    for b in args.backends:
        if b not in ("sqlite", "postgresql"):
            ap.error(f"unknown backend {b}")
    if any(not 1 <= n <= 1_000_000 for n in args.patients):
        ap.error("--patients sizes must be 1..1,000,000")
    args.everything_samples = args.everything_samples or (100 if q else 200)
    args.search_patients = args.search_patients or (30 if q else 100)
    args.search_samples = args.search_samples or (40 if q else 300)
    args.http_requests = args.http_requests or (400 if q else 5000)
    args.http_duration = args.http_duration or (2.0 if q else 20.0)
    args.wrk = args.wrk and not args.no_http and shutil.which("wrk") is not None
    args.wrk_duration = args.wrk_duration or (3 if q else 15)
    args.r5_duration = args.r5_duration or (5 if q else 180)
    args.peer_bundles = args.peer_bundles if args.peer_bundles is not None else (5 if q else -1)
    args.peer_searches = args.peer_searches or (20 if q else 100)
    if args.synthea:
        import fhir_http

        args.synthea_dir = args.synthea_dir or fhir_http.default_data_dir()
    elif args.synthea_dir and not args.peer:
        args.synthea = True
    if "postgresql" in args.backends:
        why = postgres_reachable()
        if why:
            log(f"PostgreSQL unreachable ({why}): skipping it")
            args.backends = [b for b in args.backends if b != "postgresql"]
    if args.profile:
        return profile(args)

    started = time.perf_counter()
    load_dir = args.synthea_dir if args.synthea else None
    runs = []
    for backend in args.backends:
        for n in args.patients:
            a = argparse.Namespace(**vars(args))
            a.synthea_dir = load_dir
            runs.append(measure(backend, n, a))
    result: dict[str, Any] = {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "elapsed_s": None,
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {k: v[0] for k, v in TARGETS.items()},
        "notes": list(NOTES),
        "runs": runs,
        "growth": growth(runs),
    }
    if args.peer:
        import fhir_http

        try:
            peer = peer_run(args)
            result["peer"] = {
                "run": peer,
                "ratios": {
                    f"{r['backend']} {r['patients']:,}": fhir_http.ratios(r["peer_compare"], peer)
                    for r in runs
                    if r.get("peer_compare")
                },
            }
        except Exception as e:  # noqa: BLE001 - the rest of the run still counts
            log(f"peer failed: {type(e).__name__}: {e}")
            result["peer"] = None
    result["meta"]["elapsed_s"] = time.perf_counter() - started
    print_tables(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
        log(f"wrote {args.json} ({result['meta']['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
