"""Read speed on records as deep as real ones (issue 16, P2d): `$everything` and the patient view
on Synthea-depth persons.

    python bench/deep_records.py                                   # 1,000 persons, SQLite
    python bench/deep_records.py --database postgresql+psycopg://postgres@127.0.0.1:5432/deepbench \\
        --fresh --persons 10000                                    # the full run (target figures)
    python bench/deep_records.py --persons 200 --samples 30        # a quick look
    python bench/deep_records.py --profile view                    # pyinstrument of one path

Builds (once per database; a later run with the same --persons reuses it) N persons cloned from
the 45 Synthea patient bundles in tests/data and re-identified (new ids, names, a test-range NHS
number each, Synthea's own identifiers dropped), each held as two partners' records: the GP
practice's Patient (registered there) with the problems, medicines, immunisations and care plans,
and the hospital's Patient with the encounters, observations, reports, procedures, claims and the
rest. Every write goes through `Store.write` with the partner as source organisation, so identity
joins the two Patients into one person on the write path. One person in `--deep-every` (default
100) also gets the template's Observations cloned until they hold 1,000+ Observations.

Then, as the GP practice's clinician (registered relationship; an active direct-care agreement
shares every category), it times, for random persons (by the GP's Patient id), in process:

* `$everything` first page: `Governance.everything(access, id, 100)` (the API's default page):
  scope and relationship checks, the governed query, the total and withheld counts, one audit
  event -- as `bench/person_everything.py` does;
* the whole record: every page of 100, each governed and audited, as an API client pages;
* the patient view web page: `GET /patients/{id}` (sharedcare/web/patient.py) through the app
  (Starlette TestClient), signed in with the same clinician's session token.

Targets (10,000 persons on PostgreSQL): first page p95 <= 40 ms, whole record p95 <= 250 ms,
patient view p95 <= 150 ms. Benchmark tooling only; the product does not import this.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import orjson
from _common import PG_ADMIN_URL, machine, summary
from sqlalchemy import create_engine, func, select, text

from sharedcare.fhir.categories import DIRECTORY_TYPES
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, ODS_SYSTEM
from sharedcare.governance.policy import CLINICAL, Access
from sharedcare.identity import nhs_number
from sharedcare.store.persons import patients_of_person
from sharedcare.store.repository import WriteOp
from sharedcare.store.schema import resource

GP, HOSPITAL = "GPB01", "RHOS1"
GP_TYPES = {"Condition", "MedicationRequest", "MedicationStatement", "Immunization",
            "AllergyIntolerance", "CarePlan", "CareTeam", "Goal"}
PERSONS_PER_WRITE = 20  # ~3,000 resources a Store.write
TARGETS = {"first_page": 40.0, "whole_record": 250.0, "patient_view": 150.0}
URN = re.compile(r'"urn:uuid:([0-9a-fA-F-]{36})"')


# ------------------------------------------------------------------------------ the data
def synthea_dir() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import data_dir  # the test data, decompressed once into a cache

    return Path(data_dir("fhir", "synthea"))


class Template:
    """One Synthea patient bundle, its references rewritten to placeholders once: `§` is the
    person's id prefix, `¤` the id of the Patient record that holds the resource."""

    def __init__(self, bundle: dict):
        entries = [e for e in bundle.get("entry") or [] if e.get("resource")]
        where: dict[str, str] = {}
        self.directory: list[tuple[str, str, bytes]] = []
        for k, e in enumerate(entries):
            res = e["resource"]
            rtype = res["resourceType"]
            uid = (e.get("fullUrl") or "").removeprefix("urn:uuid:")
            if rtype == "Patient":
                where[uid] = "Patient/¤"
            elif rtype in DIRECTORY_TYPES:
                where[uid] = f"{rtype}/{res['id']}"
            else:
                where[uid] = f"{rtype}/§-{k}"
        self.items: list[tuple[str, str, str]] = []  # (type, id with placeholder, JSON text)
        self.patient: dict = {}
        for k, e in enumerate(entries):
            res = e["resource"]
            rtype = res["resourceType"]
            body = URN.sub(lambda m: f'"{where.get(m.group(1), "urn:uuid:" + m.group(1))}"',
                           orjson.dumps(res).decode())
            if rtype == "Patient":
                self.patient = orjson.loads(body)
            elif rtype in DIRECTORY_TYPES:
                self.directory.append((rtype, res["id"], body.encode()))
            else:
                self.items.append((rtype, f"§-{k}", body))
        self.observations = [x for x in self.items if x[0] == "Observation"]


def nhs_numbers(n: int, rng: random.Random) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        stem = f"999{rng.randrange(10**6):06d}"
        out.update(stem + str(d) for d in range(10) if nhs_number.is_valid(stem + str(d)))
    return sorted(out)[:n]


def person_ops(i: int, t: Template, nhs: str, deep_copies: int) -> dict[str, list[WriteOp]]:
    """The GP's and the hospital's records of person i, cloned from template t."""
    prefix, gp_id, hosp_id = f"d{i}", f"g{i}", f"h{i}"
    ops: dict[str, list[WriteOp]] = {GP: [], HOSPITAL: []}
    base = {k: v for k, v in t.patient.items() if k not in ("id", "identifier", "text", "meta")}
    names = [{**n, "family": f"{n.get('family', 'Deep')}{i}"} for n in base.get("name") or []]
    hosp = {**base, "id": hosp_id, "name": names, "identifier": [
        {"system": NHS_NUMBER_SYSTEM, "value": nhs},
        {"system": "https://rhos1.example/mrn", "value": f"M{i}"}]}
    gp = {**base, "id": gp_id, "name": names,
          "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
          "generalPractitioner": [{"identifier": {"system": ODS_SYSTEM, "value": GP}}]}
    ops[GP].append(WriteOp("PUT", "Patient", gp_id, gp))
    ops[HOSPITAL].append(WriteOp("PUT", "Patient", hosp_id, hosp))
    for rtype, rid, body in t.items:
        org = GP if rtype in GP_TYPES else HOSPITAL
        holder = gp_id if org == GP else hosp_id
        res = orjson.loads(body.replace("§", prefix).replace("¤", holder))
        ops[org].append(WriteOp("PUT", rtype, rid.replace("§", prefix), res))
    for c in range(deep_copies):
        for rtype, rid, body in t.observations:
            res = orjson.loads(body.replace("§", prefix).replace("¤", hosp_id))
            ops[HOSPITAL].append(WriteOp("PUT", rtype, f"{rid.replace('§', prefix)}-x{c}", res))
    return ops


def build(sc, persons: int, deep_every: int, seed: int) -> dict:
    gov = sc.governance
    gov.add_organisation(GP, "Deep Bench Practice", "gp-practice")
    gov.add_organisation(HOSPITAL, "Deep Bench Hospital", "acute-trust")
    gov.add_agreement("DSA-DEEP", "Direct care", [GP, HOSPITAL], ["direct-care"],
                      list(CLINICAL), status="active")
    gov.add_staff("deep.gp", "Dr Deep", [(GP, "clinician")])
    files = sorted(f for f in synthea_dir().glob("*.json")
                   if not f.name.startswith(("hospital", "practitioner")))
    templates = [Template(orjson.loads(f.read_bytes())) for f in files]
    rng = random.Random(seed)
    nhs = nhs_numbers(persons, rng)
    seen_directory: set[tuple[str, str]] = set()
    written, deep = 0, []
    t0 = time.perf_counter()
    for start in range(0, persons, PERSONS_PER_WRITE):
        by_org: dict[str, list[WriteOp]] = {GP: [], HOSPITAL: []}
        for i in range(start, min(persons, start + PERSONS_PER_WRITE)):
            t = templates[i % len(templates)]
            for rtype, rid, body in t.directory:
                if (rtype, rid) not in seen_directory:
                    seen_directory.add((rtype, rid))
                    by_org[HOSPITAL].insert(0, WriteOp("PUT", rtype, rid, orjson.loads(body)))
            copies = 0
            if deep_every and i % deep_every == deep_every // 2 and t.observations:
                copies = math.ceil(1000 / len(t.observations))
                deep.append(f"g{i}")
            for org, ops in person_ops(i, t, nhs[i], copies).items():
                by_org[org] += ops
        for org in (GP, HOSPITAL):
            sc.store.write(by_org[org], source_org=org)
            written += len(by_org[org])
        done = min(persons, start + PERSONS_PER_WRITE)
        if done % 500 == 0 or done == persons:
            el = time.perf_counter() - t0
            print(f"  {done:,} persons, {written:,} resources, {el:.0f} s "
                  f"({written / el:,.0f}/s)", flush=True)
    return {"persons": persons, "resources": written, "seconds": time.perf_counter() - t0,
            "deep_persons": deep}


def add_choices(sc, persons: int) -> int:
    """Patients' choices as a real population has them, so the objection rule has rows to look
    at: one person in 20 has the national data opt-out (England: ~5%), one in 200 objects to
    sharing with an organisation outside this bench. Neither changes what the GP may see for
    direct care; both are Consents written through the product (`Governance.record_choice`)."""
    gov, n = sc.governance, 0
    for i in range(0, persons, 20):
        gov.record_choice(f"g{i}", "national-opt-out")
        n += 1
        if i % 200 == 0:
            gov.record_choice(f"g{i}", "objection-to", "RXXX9")
            n += 1
    return n


# ------------------------------------------------------------------------------ measuring
def first_page(gov, access, pid: str) -> int:
    return len(gov.everything(access, pid, 100).matches)


def whole_record(gov, access, pid: str) -> int:
    view = gov.everything(access, pid, 100)
    n, cursor = len(view.matches), view.next_cursor
    while cursor:
        more = gov.everything(access, pid, 100, cursor)
        n += len(more.matches)
        cursor = more.next_cursor
    return n


def timed(fn, sample: list[str], warm: int = 5) -> tuple[list[float], list[int], list[float]]:
    """Wall time, sizes, and this process's CPU time (all threads) per call: on a shared
    machine the CPU time moves less with other people's load than the wall time does (it
    leaves out PostgreSQL's own time, which runs in its server processes)."""
    for pid in sample[:warm]:
        fn(pid)
    times, sizes, cpu = [], [], []
    for pid in sample:
        c, t = time.process_time(), time.perf_counter()
        sizes.append(fn(pid))
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return times, sizes, cpu


def fresh_database(url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1000)
    ap.add_argument("--database", default=None,
                    help="database URL (default: SQLite under bench/results/deep-N/)")
    ap.add_argument("--fresh", action="store_true",
                    help="PostgreSQL: drop and create the database first")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--deep-every", type=int, default=100,
                    help="one person in N gets 1,000+ Observations (0: none)")
    ap.add_argument("--samples", type=int, default=200, help="persons timed per measure")
    ap.add_argument("--views", type=int, default=None, help="patient views (default --samples)")
    ap.add_argument("--only", choices=["first", "whole", "view"], action="append",
                    help="measure only these (repeatable)")
    ap.add_argument("--profile", choices=["first", "whole", "view"],
                    help="write a pyinstrument profile of this path to bench/results/")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()

    from sharedcare.app import SharedCare, create_app

    folder = (args.data_dir or HERE / "results" / f"deep-{args.persons}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    url = args.database or f"sqlite:///{folder / 'sharedcare.sqlite'}"
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    if args.fresh:
        if backend == "PostgreSQL":
            fresh_database(url)
        else:
            (folder / "sharedcare.sqlite").unlink(missing_ok=True)
    sc = SharedCare.open(url, folder)
    with sc.engine.connect() as conn:
        have = conn.execute(select(func.count()).select_from(resource).where(
            resource.c.type == "Patient")).scalar_one()
    built = None
    if have < 2 * args.persons:
        print(f"building {args.persons:,} Synthea-depth persons on {backend} ...", flush=True)
        built = build(sc, args.persons, args.deep_every, args.seed)
        (folder / "deep.json").write_text(json.dumps(built))
        print(f"built {built['persons']:,} persons, {built['resources']:,} resources "
              f"({built['resources'] / built['persons']:.0f} a person) in "
              f"{built['seconds']:.0f} s ({built['resources'] / built['seconds']:,.0f}/s)")
    with sc.engine.connect() as conn:
        consents = conn.execute(select(func.count()).select_from(resource).where(
            resource.c.type == "Consent")).scalar_one()
    if not consents:
        t = time.perf_counter()
        print(f"recorded {add_choices(sc, args.persons):,} patient choices in "
              f"{time.perf_counter() - t:.0f} s")
    with sc.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(resource)).scalar_one()
        linked = patients_of_person(conn, "g0")
    if sorted(linked) != ["g0", "h0"]:
        print(f"identity did not join person 0's records: {linked}")
        return 1
    deep = [f"g{i}" for i in range(args.persons)
            if args.deep_every and i % args.deep_every == args.deep_every // 2]
    print(f"{backend}, {args.persons:,} persons, {total:,} resources in the store; "
          f"{len(deep)} deep persons; load average {machine().get('loadavg')}")

    gov = sc.governance
    token = gov.issue_token("deep.gp", GP, "clinician")
    access = gov.prepare(Access("deep.gp", GP, "clinician"))
    rng = random.Random(args.seed)
    sample = [f"g{rng.randrange(args.persons)}" for _ in range(args.samples)]
    views = sample[: args.views] if args.views else sample
    results: dict = {"machine": machine(), "backend": backend, "persons": args.persons,
                     "resources": total, "built": built}
    only = set(args.only or ["first", "whole", "view"])

    from starlette.testclient import TestClient

    from sharedcare.web.core import SESSION_COOKIE

    client = TestClient(create_app(sc))
    client.__enter__()
    client.cookies.set(SESSION_COOKIE, token)

    def view(pid: str) -> int:
        r = client.get(f"/patients/{pid}")
        assert r.status_code == 200, (pid, r.status_code, r.text[:300])
        return len(r.content)

    fns = {"first": lambda p: first_page(gov, access, p),
           "whole": lambda p: whole_record(gov, access, p), "view": view}
    if args.profile:
        from pyinstrument import Profiler

        fn = fns[args.profile]
        for pid in sample[:3]:
            fn(pid)
        prof = Profiler(interval=0.0005)
        prof.start()
        for pid in sample[:40] + deep[:3]:
            fn(pid)
        prof.stop()
        out = HERE / "results" / f"deep-profile-{args.profile}-{backend.lower()}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(prof.output_text(unicode=False, show_all=False))
        (out.with_suffix(".html")).write_text(prof.output_html())
        print(f"profile written to {out}")
        return 0

    labels = {"first": ("first_page", "$everything first page (100)"),
              "whole": ("whole_record", "whole record (every page of 100)"),
              "view": ("patient_view", "patient view page /patients/{id}")}
    for key in ("first", "whole", "view"):
        if key not in only:
            continue
        name, label = labels[key]
        times, sizes, cpu = timed(fns[key], views if key == "view" else sample)
        s = summary(times)
        c = summary(cpu)
        deep_times = timed(fns[key], deep[:10], warm=0)[0] if deep else []
        ds = summary(deep_times) if deep_times else None
        target = TARGETS[name]
        unit = "bytes" if key == "view" else "resources"
        results[name] = {**s, "mean_size": sum(sizes) / len(sizes), "deep": ds,
                         "cpu_p50_ms": c["p50_ms"], "cpu_p95_ms": c["p95_ms"]}
        print(f"{label:<38} p50 {s['p50_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f} ms  "
              f"max {s['max_ms']:7.1f} ms  (CPU p50 {c['p50_ms']:.1f} p95 {c['p95_ms']:.1f}; "
              f"{sum(sizes) / len(sizes):,.0f} {unit} on average; "
              f"target p95 <= {target:.0f} ms: {'met' if s['p95_ms'] <= target else 'missed'})"
              + (f"\n{'':<38} deep persons (1,000+ Observations): p50 {ds['p50_ms']:.1f} ms, "
                 f"max {ds['max_ms']:.1f} ms" if ds else ""), flush=True)
    client.__exit__(None, None, None)
    results["loadavg_after"] = machine().get("loadavg")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
