"""`python -m sharedcare.demo [--seed N] [--patients N] [--ndjson | --bundles SIZE]`

Prints statistics of a generated care system (to stderr when FHIR is written to stdout).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import date

import orjson

from . import generate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sharedcare.demo", description=__doc__)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        help="the demo's 'today' (YYYY-MM-DD); default today",
    )
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--ndjson", action="store_true", help="write resources to stdout as NDJSON")
    out.add_argument(
        "--bundles",
        type=int,
        metavar="SIZE",
        help="write transaction bundles of SIZE entries to stdout, one per line",
    )
    args = ap.parse_args(argv)
    log = sys.stderr if (args.ndjson or args.bundles) else sys.stdout
    write = sys.stdout.buffer.write

    t0 = time.perf_counter()
    cs = generate(args.seed, args.patients, as_of=args.as_of)
    t1 = time.perf_counter()
    types: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    count = 0
    if args.bundles:
        for b in cs.bundles(args.bundles):
            for e in b["entry"]:
                types[e["resource"]["resourceType"]] += 1
            count += len(b["entry"])
            write(orjson.dumps(b) + b"\n")
    else:
        for res in cs.resources():
            count += 1
            types[res["resourceType"]] += 1
            categories[res["meta"]["tag"][1]["code"]] += 1
            if args.ndjson:
                write(orjson.dumps(res) + b"\n")
    t2 = time.perf_counter()

    p = lambda *a: print(*a, file=log)
    p(
        f"sharedcare demo care system  seed={cs.seed}  as_of={cs.as_of}  ICB {cs.icb_code} "
        f"({cs.icb_name})"
    )
    kinds = Counter(o.kind for o in cs.organisations)
    p(
        f"organisations  {len(cs.organisations)}: "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    )
    p(
        f"staff          {len(cs.staff)}; personas: "
        + ", ".join(f"{x.role} ({x.username})" for x in cs.personas)
    )
    p("agreements     " + ", ".join(f"{a.id} {a.status}" for a in cs.agreements))
    p(
        f"patients       {cs.patients_count}; objections {len(cs.objections)}; national opt-outs "
        f"{len(cs.national_opt_outs)}"
    )
    p(f"audit history  {len(cs.audit_history)} events ({len(cs.break_glass_history)} break-glass)")
    p(f"resources      {count}: " + ", ".join(f"{k} {n}" for k, n in types.most_common()))
    if categories:
        p("categories     " + ", ".join(f"{k} {n}" for k, n in categories.most_common()))
    rate = count / (t2 - t1) if t2 > t1 else float("inf")
    p(
        f"time           setup {t1 - t0:.2f}s, resources {t2 - t1:.2f}s -> {rate:,.0f} resources/s"
        + (" (including JSON output)" if (args.ndjson or args.bundles) else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
