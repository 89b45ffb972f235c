"""schemathesis, the property-based API tester, against /fhir/openapi.json on a live server.

It generates requests for every operation the document describes (about 830: each type's
interactions and operations) and fails on any 5xx answer. It needs its own virtualenv
(`.venv-schemathesis`, made by scripts/setup): it pins an older jsonschema-rs than the product.
Bounded: one generated case per operation and a fixed seed, so a run is repeatable.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ..governance.small_world import bearer, build

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(__file__).resolve().parents[2] / ".venv-schemathesis" / "bin" / "schemathesis"


def test_no_generated_request_gets_a_server_error(sc, live_server, tmp_path):
    if not SCHEMATHESIS.exists():
        assert os.environ.get("CI") != "true", "scripts/setup makes .venv-schemathesis; CI must run it"
        pytest.skip("no .venv-schemathesis (run scripts/setup)")
    build(sc)
    token = bearer(sc, "gp.doc", "GP1")["Authorization"]
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{live_server}/fhir/openapi.json",
         "-H", f"Authorization: {token}", "--checks", "not_a_server_error",
         "--phases", "fuzzing", "--max-examples", "1", "--seed", "20261130", "-w", "2",
         "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,  # its .schemathesis/ cache
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    summary = run.stdout[-3000:]
    assert "generated" in summary, summary  # it really ran the operations
    assert run.returncode == 0, summary
