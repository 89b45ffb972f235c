"""`sharedcare population ...` on a small demo: extract files and counts, clear errors (exit 2)."""

from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sharedcare.app import SharedCare
from sharedcare.demo import generate
from sharedcare.demo.load import load_demo
from sharedcare.population.cli import population_app
from sharedcare.population.viewdef import ready_views

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clidemo")
    url = f"sqlite:///{folder / 'demo.sqlite'}"
    sc = SharedCare.open(url, folder)
    cs = generate(5, 60)
    load_demo(sc, cs)
    sc.engine.dispose()
    lead = next(p for p in cs.personas if p.role == "Programme lead")
    gp = next(p for p in cs.personas if p.role == "GP")
    return {"db": ["--database", url, "--data-dir", str(folder)], "lead": lead, "gp": gp}


def run(*args):
    return runner.invoke(population_app, [str(a) for a in args])


def test_views_lists_the_ready_views():
    r = run("views")
    assert r.exit_code == 0
    for name in ready_views():
        assert name in r.output


def test_extract_writes_duckdb_and_parquet_and_prints_counts(demo, tmp_path):
    out = tmp_path / "out"
    r = run("extract", "--user", demo["lead"].username, "--role", "programme-lead",
            "--purpose", "planning", "--project", "cli-test", "--view", "patient_demographics",
            "--view", "conditions", "--coarsen", "month", "--out", out, *demo["db"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "extract.json").read_text())
    assert manifest["purpose"] == "planning" and manifest["agreements"] == ["DSA-GM-002"]
    assert manifest["coarsen_dates"] == "month"
    for name in ("patient_demographics", "conditions"):
        rows = manifest["tables"][name]["rows"]
        assert pq.read_table(out / f"{name}.parquet").num_rows == rows
        assert f"{name}" in r.output and f"{rows} rows" in r.output
    assert manifest["tables"]["patient_demographics"]["rows"] > 0
    con = duckdb.connect(str(out / "extract.duckdb"), read_only=True)
    try:
        assert con.execute("select count(*) from conditions").fetchone()[0] == \
            manifest["tables"]["conditions"]["rows"]
    finally:
        con.close()
    assert "purpose: planning" in r.output and "agreements: DSA-GM-002" in r.output
    assert "national data opt-out:" in r.output


def test_default_is_every_ready_view(demo, tmp_path):
    out = tmp_path / "all"
    r = run("extract", "--user", demo["lead"].username, "--role", "programme-lead",
            "--org", demo["lead"].org, "--purpose", "planning", "--project", "all-views",
            "--out", out, *demo["db"])
    assert r.exit_code == 0, r.output
    assert {p.stem for p in out.glob("*.parquet")} == set(ready_views())


@pytest.mark.parametrize("args, message", [
    (["--view", "no_such_view"], "unknown view: no_such_view"),
    (["--purpose", "direct-care"], "--purpose must be one of planning, research"),
    (["--purpose", "research"], "no active sharing agreement covers research"),
    (["--role", "clinician"], "does not hold the clinician role"),
    (["--coarsen", "week"], "--coarsen must be one of"),
    (["--project", "bad name!"], "project must be"),
])
def test_errors_exit_2_with_a_clear_message(demo, tmp_path, args, message):
    base = {"--user": demo["lead"].username, "--role": "programme-lead",
            "--purpose": "planning", "--project": "p1", "--out": str(tmp_path / "x")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    flat = [x for kv in base.items() for x in kv if kv[0] != "--view"]
    if "--view" in base:
        flat += ["--view", base["--view"]]
    r = run("extract", *flat, *demo["db"])
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_a_clinician_cannot_extract(demo, tmp_path):
    gp = demo["gp"]  # a GP who also works at the hospice: holds the role twice
    args = ["extract", "--user", gp.username, "--role", "clinician", "--purpose", "planning",
            "--project", "p2", "--view", "conditions", "--out", tmp_path / "y", *demo["db"]]
    r = run(*args)
    assert r.exit_code == 2 and "name one with --org" in r.output
    r = run(*args, "--org", gp.org)
    assert r.exit_code == 2
    assert "cannot run population extracts" in r.output
    assert not (tmp_path / "y" / "conditions.parquet").exists()
