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


def _bundles(folder, n: int, observations: int = 15) -> None:
    """n Synthea-like transaction Bundles: POSTs with urn:uuid references, so every load of the
    same file would mint new ids (what duplicated patients after a killed load)."""
    folder.mkdir()
    for i in range(n):
        pid = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
        entries = [{"fullUrl": pid, "resource": {
            "resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": f"M{i}"}],
            "name": [{"family": f"Family{i}"}], "birthDate": "1970-01-01"},
            "request": {"method": "POST", "url": "Patient"}}]
        for k in range(observations):
            entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-9000-{i:06d}{k:06d}",
                            "resource": {"resourceType": "Observation", "status": "final",
                                         "code": {"text": f"obs {k}"}, "subject": {"reference": pid},
                                         "valueQuantity": {"value": k}},
                            "request": {"method": "POST", "url": "Observation"}})
        (folder / f"b{i:04d}.json").write_text(json.dumps(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}))


def test_load_killed_with_sigkill_then_run_again_adds_nothing_twice(database_url, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    n = 200
    _bundles(tmp_path / "in", n)
    args = [sys.executable, "-m", "sharedcare.cli", "load", str(tmp_path / "in"),
            "--database", database_url, "--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            try:
                if _counts(database_url).get("Patient", 0) >= 10:
                    break
            except Exception:  # noqa: BLE001 - the schema is still being created
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the load finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    partial = _counts(database_url)
    assert 10 <= partial["Patient"] < n
    assert partial.get("Observation", 0) == partial["Patient"] * 15  # whole Bundles only

    code, out = _run(["load", str(tmp_path / "in"), "--database", database_url,
                      "--data-dir", str(tmp_path / "data")])
    assert code == 0, out
    assert f"{partial['Patient'] * 16} already loaded" in out
    counts = _counts(database_url)
    assert counts["Patient"] == n and counts["Observation"] == n * 15
    # and a third run adds nothing at all
    code, out = _run(["load", str(tmp_path / "in"), "--database", database_url,
                      "--data-dir", str(tmp_path / "data")])
    assert code == 0 and "loaded 0 resources" in out and f"{n * 16} already loaded" in out
    assert _counts(database_url) == counts


def test_ndjson_without_ids_loads_once(database_url, tmp_path):
    d = tmp_path / "nd"
    d.mkdir()
    lines = [json.dumps({"resourceType": "Patient", "name": [{"family": f"NoId{n}"}]})
             for n in range(1, 8)]
    (d / "p.ndjson").write_text("\n".join(lines) + "\n")
    for _ in range(2):
        code, out = _run(["load", str(d), "--database", database_url,
                          "--data-dir", str(tmp_path / "data")])
        assert code == 0, out
    assert "7 already loaded" in out
    assert _counts(database_url)["Patient"] == 7
