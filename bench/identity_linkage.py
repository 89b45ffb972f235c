"""Benchmark: one identity per person across GP, hospital and council records.

    . .venv/bin/activate && python bench/identity_linkage.py [--persons 2000] [--seed 7]
                                                           [--m-method auto|labels|em]

The 45 Synthea Patients in /work/shared/fhir/synthea seed the population (their names, birth
dates and sex); more people are generated deterministically (seeded) to reach ``--persons``, about
12% of them decoys (twins at the same address, namesakes, confusable first names, same first name
and birthday, parent and child of the same name at the same address). Everyone gets a valid
synthetic NHS number (test range 999 000 0000-999 999 9999). Their records are spread across three
pretend partners with damaged demographics (see sharedcare.identity.simulate): GP (95% coverage,
2% without NHS number), hospital (60%, 30% without), council (40%, 70% without, more typos);
nicknames, typos, day/month transposed, one-digit date errors, moved house, several records per
partner for some people.

The linker is trained on the records (no truth used), then pairwise links are compared with the
truth: ``decisions`` are the pairs the linker says 'link'; ``clusters`` are all pairs implied by
its connected components (what an MPI would actually merge).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sharedcare.identity.matching import Linker
from sharedcare.identity.simulate import (
    cluster_pairs,
    make_people,
    make_records,
    pairwise_scores,
    true_pairs,
)

SYNTHEA = "/work/shared/fhir/synthea"


def synthea_seeds() -> list[dict]:
    seeds = []
    for path in sorted(glob.glob(os.path.join(SYNTHEA, "*.json"))):
        with open(path, encoding="utf-8") as f:
            bundle = json.load(f)
        if bundle.get("resourceType") != "Bundle":
            continue
        for entry in bundle.get("entry", []):
            res = entry.get("resource", {})
            if res.get("resourceType") != "Patient":
                continue
            name = (res.get("name") or [{}])[0]
            given = (name.get("given") or [None])[0]
            if not (given and name.get("family") and res.get("birthDate")):
                continue
            # Synthea sometimes appends digits to names; keep letters only.
            seeds.append(
                {
                    "given": "".join(c for c in given if not c.isdigit()),
                    "family": "".join(c for c in name["family"] if not c.isdigit()),
                    "birth_date": res["birthDate"],
                    "sex": res.get("gender", "unknown"),
                }
            )
    return seeds


def row(cells, widths):
    return "  ".join(
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths))
    )


def compare_engines(records, truth_pairs, args) -> None:
    """Train and predict on DuckDB and on Spark; print precision/recall and time for each."""
    results = {}
    for engine in ("duckdb", "spark"):
        linker = Linker(args.link_threshold, args.review_threshold, engine=engine)
        t0 = time.perf_counter()
        linker.train(records, m_method=args.m_method)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        decisions = linker.predict(records)
        t_predict = time.perf_counter() - t0
        links = {(d.a, d.b) for d in decisions if d.outcome == "link"}
        results[engine] = s = pairwise_scores(links, truth_pairs)
        print(f"{engine:7} precision {s['precision']:.4f} recall {s['recall']:.4f} "
              f"train {t_train:.1f}s predict {t_predict:.1f}s", flush=True)
    d_p = abs(results["spark"]["precision"] - results["duckdb"]["precision"])
    d_r = abs(results["spark"]["recall"] - results["duckdb"]["recall"])
    print(f"spark vs duckdb: |precision diff| {d_p:.4f}, |recall diff| {d_r:.4f} "
          f"(target <= 0.005: {'MET' if max(d_p, d_r) <= 0.005 else 'NOT MET'})\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--persons", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--m-method", default="auto", choices=("auto", "labels", "em"))
    ap.add_argument("--link-threshold", type=float, default=0.99)
    ap.add_argument("--review-threshold", type=float, default=0.80)
    ap.add_argument("--engine", default="duckdb", choices=("duckdb", "spark"),
                    help="where splink trains and predicts (spark: local mode unless "
                         "SHAREDCARE_SPARK_MASTER names a cluster)")
    ap.add_argument("--compare-engines", action="store_true",
                    help="also train and predict on the other engine and print both")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    seeds = synthea_seeds()
    people = make_people(args.persons, rng, seeds=seeds)
    records, truth = make_records(people, rng)
    truth_pairs = true_pairs(truth)
    kinds = Counter(p.kind for p in people)
    by_source = Counter(r.source for r in records)
    missing_nhs = Counter(r.source for r in records if not r.nhs_number)

    print(
        f"population: {len(people)} persons ({len(seeds)} from Synthea), "
        f"decoys { {k: v for k, v in kinds.items() if k != 'person'} }"
    )
    print(
        f"records: {len(records)}  "
        + ", ".join(
            f"{s} {n} ({100 * missing_nhs[s] / n:.0f}% no NHS no.)"
            for s, n in sorted(by_source.items())
        )
    )
    print(f"true matching pairs: {len(truth_pairs)}")

    if args.compare_engines:
        compare_engines(records, truth_pairs, args)
    linker = Linker(args.link_threshold, args.review_threshold, engine=args.engine)
    t0 = time.perf_counter()
    linker.train(records, m_method=args.m_method)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    decisions = linker.predict(records)
    t_predict = time.perf_counter() - t0
    t0 = time.perf_counter()
    clusters = linker.clusters(records, decisions)
    t_cluster = time.perf_counter() - t0

    # Round trip of the stored model gives identical decisions.
    restored = Linker.from_json(linker.to_json())
    t0 = time.perf_counter()
    same = [(d.a, d.b, d.outcome) for d in restored.predict(records)] == [
        (d.a, d.b, d.outcome) for d in decisions
    ]
    t_reload_predict = time.perf_counter() - t0

    # $match-style scoring: 200 queries, each against its true records plus 5 random others.
    by_person: dict[str, list] = {}
    for r in records:
        by_person.setdefault(truth[r.record_id], []).append(r)
    qrng = random.Random(args.seed + 1)
    queries = qrng.sample([r for r in records if len(by_person[truth[r.record_id]]) > 1], 200)
    t0 = time.perf_counter()
    top_right = 0
    for q in queries:
        cands = [r for r in by_person[truth[q.record_id]] if r.record_id != q.record_id]
        cands += qrng.sample(records, 5)
        ranked = linker.score(q, [c for c in cands if c.record_id != q.record_id])
        top_right += truth[ranked[0][0].record_id] == truth[q.record_id]
    t_score = (time.perf_counter() - t0) / len(queries)

    links = {(d.a, d.b) for d in decisions if d.outcome == "link"}
    reviews = {(d.a, d.b) for d in decisions if d.outcome == "review"}
    s_dec = pairwise_scores(links, truth_pairs)
    s_clu = pairwise_scores(cluster_pairs(clusters), truth_pairs)
    reasons = Counter(d.reason for d in decisions if d.outcome == "link")

    widths = (34, 10, 10, 7, 7, 7)
    print()
    print(row(("pairwise links vs truth", "precision", "recall", "TP", "FP", "FN"), widths))
    print(row(("-" * 34, "-" * 10, "-" * 10, "-" * 7, "-" * 7, "-" * 7), widths))
    for label, s in (("link decisions", s_dec), ("cluster-implied pairs", s_clu)):
        print(
            row(
                (label, f"{s['precision']:.4f}", f"{s['recall']:.4f}", s["tp"], s["fp"], s["fn"]),
                widths,
            )
        )
    print()
    w2 = (34, 14)
    print(row(("figure", "value"), w2))
    print(row(("-" * 34, "-" * 14), w2))
    for label, value in (
        ("m estimated by", linker.training_info["m_method"]),
        ("NHS-number-labelled pairs", linker.training_info["nhs_labelled_pairs"]),
        (
            "lambda (P two records match)",
            f"{linker.training_info['probability_two_random_records_match']:.2e}",
        ),
        ("links: by NHS number / by model", f"{reasons['nhs-number']} / {reasons['model']}"),
        ("pairs sent to review", f"{len(reviews)} ({len(reviews & truth_pairs)} true)"),
        ("clusters (true persons)", f"{len(clusters)} ({len(set(truth.values()))})"),
        ("train time (s)", f"{t_train:.2f}"),
        ("predict time (s)", f"{t_predict:.2f}"),
        ("cluster time (s)", f"{t_cluster:.3f}"),
        ("predict after to_json/from_json", f"{t_reload_predict:.2f}s, same={same}"),
        ("score() per $match query (ms)", f"{1000 * t_score:.1f}"),
        ("score() top candidate correct", f"{top_right}/{len(queries)}"),
    ):
        print(row((label, value), w2))

    kind = {p.person_id: p.kind for p in people}
    fp_kinds = Counter(
        "/".join(sorted((kind[truth[a]], kind[truth[b]])))
        for a, b in cluster_pairs(clusters) - truth_pairs
    )
    if fp_kinds:
        print("\nfalse cluster pairs by kind of people involved:", dict(fp_kinds))
    ok = s_dec["precision"] >= 0.99 and s_dec["recall"] >= 0.97
    print(
        f"\ntargets (precision >= 0.99, recall >= 0.97) on link decisions: "
        f"{'MET' if ok else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
