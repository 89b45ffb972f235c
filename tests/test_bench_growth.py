"""bench/growth.py --quick end to end on PostgreSQL at a tiny size: the clone in SQL is real
(row counts x factor, a clone's $everything equals its original's, a clone's NHS number finds
the clone's own record and nobody else's) and every read path is measured at both sizes.

Benchmark harness smoke test only (no figures are asserted: the machine is shared). Skips when
PostgreSQL is unreachable, except under CI=true (as tests/conftest.py's PostgreSQL tests do)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _common import postgres_reachable


def test_bench_growth_quick_clones_and_measures(tmp_path):
    why = postgres_reachable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is unreachable in CI: {why}")
        pytest.skip(f"PostgreSQL unreachable: {why}")
    out = tmp_path / "growth.json"
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "growth.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO, check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "read-path growth" in p.stdout
    result = json.loads(out.read_text())
    meta = result["meta"]
    factor = meta["clone"]["factor"]
    assert factor == 3 and result["sizes"]["large"] == factor * result["sizes"]["small"]
    verify = meta["verify"]
    assert verify["ok"], verify
    for what in ("Patient", "record resources", "persons (person_link keys)", "NHS numbers"):
        assert verify[what]["large"] == factor * verify[what]["small"] > 0, what
    assert all(c["everything_clone"] == c["everything_original"] > 0
               for c in verify["everything_clone_equals_original"])
    nhs = verify["nhs_search"]
    assert nhs and all(c["valid_mod11"] and c["differs"] for c in nhs)
    assert any(c["matches_original"] == c["matches_clone"] == 1 for c in nhs), nhs
    for table, t in meta["clone"]["tables"].items():
        assert t["rows_after"] == t["expected_after"], table
    assert {"everything_system", "everything_gp", "search_patient_nhs", "read_patient",
            "history_patient", "patient_view"} <= set(result["paths"])
    for path in result["paths"].values():
        assert path["small"]["n"] > 0 and path["large"]["n"] > 0 and path["ratio_p50"] > 0
    # the databases are dropped afterwards
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as c:
        left = c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                         (f"growth_quick_%_{result['sizes']['small']}%",)).fetchall()
    assert not [n for (n,) in left if n.startswith(f"growth_quick_{meta['pid']}_")]
