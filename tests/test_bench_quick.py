"""bench/run.py --quick end to end at a tiny size: the table prints and the JSON is valid.

Benchmark harness smoke test only (no figures are asserted: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "quick.json"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "run.py"),
        "--quick",
        "--backends",
        "sqlite",
        "--patients",
        "30",
        "--everything-samples",
        "10",
        "--search-patients",
        "5",
        "--search-samples",
        "5",
        "--http-requests",
        "40",
        "--http-duration",
        "1",
        "--concurrency",
        "1,4",
        "--no-mllp",
        "--no-wrk",  # wrk is optional (Debian's wrk); bench/http_wrk.py's own runs cover it
        "--json",
        str(out),
    ]
    p = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env={**__import__("os").environ, "COLUMNS": "200"},
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sharedcare benchmarks" in p.stdout
    for label in (
        "P1 ingest",
        "P2 $everything",
        "P3 HTTP searches req/s c=4",
        "P5 $export",
        "P7 server RSS",
    ):
        assert label in p.stdout, label
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["backend"] == "sqlite" and run["patients"] == 30
    assert run["P1_ingest"]["resources"] > 30 and run["P1_ingest"]["resources_per_s"] > 0
    for who in ("system", "clinician"):
        assert run["P2_everything"][who]["n"] > 0
        assert run["P2_everything"][who]["p95_ms"] > 0
    assert run["P3_search"]["clinician"]["patient_nhs"]["n"] > 0
    levels = run["P3_http"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    assert all(lv["ok"] > 0 and lv["non_2xx"] == 0 for lv in levels), levels
    assert run["P5_export"]["resources"] > 0
    assert run["P7_rss"]["max_mb"] > 0
    assert result["meta"]["machine"]["cpus"] >= 1
