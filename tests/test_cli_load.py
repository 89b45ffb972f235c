"""`sharedcare load`: a folder loads, the rate is printed, broken input is reported with its reason
(and NDJSON with its line number) while the rest loads. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from .fhir._support import directory_files, load_json, patient_file


def _counts(url: str) -> dict[str, int]:
    from sharedcare.store.schema import resource

    eng = create_engine(url)
    try:
        with eng.connect() as c:
            rows = c.execute(select(resource.c.type, func.count()).where(
                resource.c.deleted.is_(False)).group_by(resource.c.type)).all()
    finally:
        eng.dispose()
    return dict(rows)


def _run(args: list[str]):
    from sharedcare.cli import app

    result = CliRunner().invoke(app, args, catch_exceptions=False)
    # rich wraps long lines (paths) at the terminal width: unwrap before matching
    return result.exit_code, result.output.replace("\n", "")


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for f in directory_files():
        shutil.copy(f, d / f.name)
    for prefix in ("Stephen_McLaughlin", "Chet_Hoeger"):
        shutil.copy(patient_file(prefix), d / patient_file(prefix).name)
    return d


def test_load_folder_prints_rate_and_loads_everything(database_url, tmp_path, folder):
    code, out = _run(["load", str(folder), "--database", database_url,
                      "--data-dir", str(tmp_path / "data")])
    assert code == 0, out
    m = re.search(r"loaded (\d+) resources from (\d+) files .*?([\d,]+) resources/s", out)
    assert m, out
    assert int(m.group(2)) == 4
    counts = _counts(database_url)
    sources = [load_json(f) for f in sorted(folder.iterdir())]
    assert counts["Patient"] == 2
    n_obs = sum(1 for b in sources for e in b["entry"]
                if e["resource"]["resourceType"] == "Observation")
    assert counts["Observation"] == n_obs
    orgs = {(e["resource"]["identifier"][0]["system"], e["resource"]["identifier"][0]["value"])
            for b in sources for e in b["entry"] if e["resource"]["resourceType"] == "Organization"}
    assert counts["Organization"] == len(orgs)
    # "loaded" counts every accepted entry, including directory entries that matched an
    # existing Organization/Practitioner (conditional create)
    assert int(m.group(1)) == sum(len(b["entry"]) for b in sources)
    assert float(m.group(3).replace(",", "")) > 0


def test_broken_file_is_reported_and_the_rest_loads(database_url, tmp_path, folder):
    (folder / "broken.json").write_text('{"resourceType": "Bundle", "type": "transa')
    bad = load_json(patient_file("Stephen_McLaughlin"))
    bad["entry"][5]["resource"]["unexpectedField"] = "not in FHIR R4"
    (folder / "zz-invalid-bundle.json").write_text(json.dumps(bad))
    code, out = _run(["load", str(folder), "--database", database_url,
                      "--data-dir", str(tmp_path / "data")])
    assert code != 0
    assert "broken.json" in out and "JSON" in out
    assert "zz-invalid-bundle.json" in out and "Bundle.entry[5]" in out
    assert "unexpectedField" in out
    assert re.search(r"loaded \d+ resources from 4 files", out), out
    counts = _counts(database_url)
    assert counts["Patient"] == 2  # the invalid copy of a patient wrote nothing


def test_ndjson_bad_line_reports_its_line_number(database_url, tmp_path):
    d = tmp_path / "nd"
    d.mkdir()
    lines = [json.dumps({"resourceType": "Patient", "id": f"nd-{n}",
                         "name": [{"family": f"Line{n}"}]}) for n in range(1, 7)]
    lines[3] = '{"resourceType": "Patient", "id": "nd-4", '  # line 4 is cut short
    (d / "patients.ndjson").write_text("\n".join(lines) + "\n")
    code, out = _run(["load", str(d), "--database", database_url,
                      "--data-dir", str(tmp_path / "data")])
    assert code != 0
    assert re.search(r"patients\.ndjson:4\b", out), out
    assert _counts(database_url).get("Patient") == 5


def test_ndjson_schema_invalid_line_names_it_and_the_rest_loads(database_url, tmp_path):
    d = tmp_path / "nd"
    d.mkdir()
    lines = [json.dumps({"resourceType": "Patient", "id": f"nv-{n}"}) for n in range(1, 6)]
    lines[2] = json.dumps({"resourceType": "Patient", "id": "nv-3", "gender": "robot"})
    (d / "p.ndjson").write_text("\n".join(lines) + "\n")
    code, out = _run(["load", str(d), "--database", database_url,
                      "--data-dir", str(tmp_path / "data")])
    assert code != 0
    assert "gender" in out
    assert re.search(r"p\.ndjson:3\b", out), out
    assert _counts(database_url).get("Patient", 0) == 4
