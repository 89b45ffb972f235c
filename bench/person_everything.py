"""$everything for a person known to three partners, each with its own Patient record.

    python bench/person_everything.py --persons 10000 --database postgresql+psycopg://postgres@127.0.0.1/bench_person
    python bench/person_everything.py --quick            # 1,000 persons, SQLite

Builds (once per database) N persons, each with a GP practice's Patient (registered, NHS number),
a hospital's Patient (its MRN and the same NHS number) and a community service's Patient (NHS
number), each record holding its own encounters, observations and conditions; identity links
them on the write path (one Person per NHS number). Then, as the GP practice's clinician, it
times the first page of `Patient/{the GP's id}/$everything` (the whole person: every partner's
record, governed, audited) for random persons, in process, and prints p50/p95 against the
target (p95 <= 40 ms at 10,000 persons on PostgreSQL).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import summary
from sqlalchemy import func, select

from sharedcare.app import SharedCare
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, ODS_SYSTEM
from sharedcare.governance.policy import Access
from sharedcare.identity import nhs_number
from sharedcare.store.persons import patients_of_person
from sharedcare.store.repository import WriteOp
from sharedcare.store.schema import resource

PARTNERS = {"GPB01": "gp-practice", "RHOS1": "acute-trust", "RCOM1": "community"}
BATCH = 200


def numbers(n: int, rng: random.Random) -> list[str]:
    """n distinct test-range NHS numbers with valid check digits."""
    out: set[str] = set()
    while len(out) < n:
        stem = f"999{rng.randrange(10**6):06d}"
        out.update(stem + str(d) for d in range(10) if nhs_number.is_valid(stem + str(d)))
    return sorted(out)[:n]


def person_records(i: int, nhs: str, rng: random.Random) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for ods in PARTNERS:
        pid = f"{ods.lower()}-{i}"
        ident = [{"system": NHS_NUMBER_SYSTEM, "value": nhs}]
        if ods != "GPB01":
            ident.append({"system": f"https://{ods.lower()}.example/mrn", "value": f"M{i}"})
        patient = {"resourceType": "Patient", "id": pid, "identifier": ident,
                   "name": [{"family": f"Family{i}", "given": ["Alex"]}],
                   "birthDate": f"19{rng.randrange(30, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(9)}"}
        if ods == "GPB01":
            patient["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": ods}}]
        recs = [patient]
        subject = {"reference": f"Patient/{pid}"}
        for k in range(2):
            recs.append({"resourceType": "Encounter", "id": f"{pid}-e{k}", "status": "finished",
                         "class": {"code": "AMB"}, "subject": subject})
        for k in range(3):
            recs.append({"resourceType": "Observation", "id": f"{pid}-o{k}", "status": "final",
                         "code": {"text": "potassium"}, "subject": subject,
                         "valueQuantity": {"value": round(rng.uniform(3, 6), 1), "unit": "mmol/L"}})
        recs.append({"resourceType": "Condition", "id": f"{pid}-c0", "subject": subject,
                     "code": {"text": "hypertension"}})
        out[ods] = recs
    return out


def build(sc, persons: int, seed: int) -> None:
    gov = sc.governance
    for ods, kind in PARTNERS.items():
        gov.add_organisation(ods, f"Partner {ods}", kind)
    gov.add_agreement("DSA-BENCH", "Direct care", list(PARTNERS), ["direct-care"],
                      ["demographics", "encounters", "results", "gp-summary"], status="active")
    gov.add_staff("bench.gp", "Dr Bench", [("GPB01", "clinician")])
    rng = random.Random(seed)
    nhs = numbers(persons, rng)
    t = time.perf_counter()
    for start in range(0, persons, BATCH):
        by_org: dict[str, list[WriteOp]] = {o: [] for o in PARTNERS}
        for i in range(start, min(persons, start + BATCH)):
            for ods, recs in person_records(i, nhs[i], rng).items():
                by_org[ods] += [WriteOp("PUT", r["resourceType"], r["id"], r) for r in recs]
        for ods, ops in by_org.items():
            sc.store.write(ops, source_org=ods)
    n = 21 * persons
    print(f"built {persons:,} persons x 3 partner records ({n:,} resources) in "
          f"{time.perf_counter() - t:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=10_000)
    ap.add_argument("--database", default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="1,000 persons, 100 samples")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    if args.quick:
        args.persons, args.samples = 1000, 100
    folder = (args.data_dir or HERE / "results" / f"person-{args.persons}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    url = args.database or f"sqlite:///{folder / 'sharedcare.sqlite'}"
    sc = SharedCare.open(url, folder)
    with sc.engine.connect() as conn:
        have = conn.execute(select(func.count()).select_from(resource).where(
            resource.c.type == "Patient")).scalar_one()
    if have < 3 * args.persons:
        build(sc, args.persons, args.seed)
    with sc.engine.connect() as conn:
        linked = patients_of_person(conn, "gpb01-0")
    print(f"person 0's records: {linked}")
    if len(linked) != 3:
        print("identity did not join the three records: check the identity hook")
        return 1
    access = sc.governance.prepare(Access("bench.gp", "GPB01", "clinician"))
    rng = random.Random(args.seed)
    sample = [f"gpb01-{rng.randrange(args.persons)}" for _ in range(args.samples)]
    for pid in sample[:10]:  # warm up
        sc.governance.everything(access, pid)
    times, sizes = [], []
    for pid in sample:
        t = time.perf_counter()
        view = sc.governance.everything(access, pid)
        times.append((time.perf_counter() - t) * 1000)
        sizes.append(len(view.matches))
    s = summary(times)
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"$everything of a person with 3 linked Patient records, {args.persons:,} persons, "
          f"{backend}: p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, "
          f"{sum(sizes) / len(sizes):.0f} resources a page "
          f"(target p95 <= 40 ms: {'met' if s['p95_ms'] <= 40 else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
