"""`sharedcare notify ...` on SQLite and PostgreSQL: subscribe, list, off/on, dead letters."""

from __future__ import annotations

from typer.testing import CliRunner

from sharedcare.cli import app

from ._support import GP


def test_subscribe_list_off_on_and_errors(sc, database_url, tmp_path):
    sc.governance.add_organisation(GP, "Brookside", "gp-practice")
    run = CliRunner().invoke
    base = ["--database", database_url, "--data-dir", str(tmp_path / "data")]
    r = run(app, ["notify", "subscribe", GP, "--topic", "admission", "--topic", "death",
                  "--channel", "rest-hook", "--endpoint", "https://gp.example/hook",
                  "--header", "Authorization: Bearer x", *base])
    assert r.exit_code == 0, r.output
    sid = r.output.strip()
    assert sid.startswith("org:")
    r = run(app, ["notify", "list", "--org", GP, *base])
    assert r.exit_code == 0 and sid in r.output and "admission death" in r.output
    assert "Bearer" not in r.output  # headers may hold secrets: never listed
    assert run(app, ["notify", "off", sid, *base]).exit_code == 0
    assert " off " in run(app, ["notify", "list", *base]).output
    assert run(app, ["notify", "on", sid, *base]).exit_code == 0
    r = run(app, ["notify", "subscribe", GP, "--topic", "gossip", *base])
    assert r.exit_code == 2 and "choose topics from" in r.output
    r = run(app, ["notify", "subscribe", GP, "--topic", "admission", "--channel", "email",
                  "--endpoint", "not-an-address", *base])
    assert r.exit_code == 2 and "email channel needs an address" in r.output
    r = run(app, ["notify", "subscribe", "NOPE1", "--topic", "admission", *base])
    assert r.exit_code == 2 and "no organisation NOPE1" in r.output
    r = run(app, ["notify", "status", sid, *base])
    assert r.exit_code == 0, r.output
    import json

    params = {p["name"]: p for p in json.loads(r.output)["parameter"]}
    assert params["type"]["valueCode"] == "query-status"
    assert params["status"]["valueCode"] == "active"
    assert params["events-since-subscription-start"]["valueString"] == "0"
    assert run(app, ["notify", "status", "nope", *base]).exit_code == 2
    r = run(app, ["notify", "dead-letters", *base])
    assert r.exit_code == 0 and "nothing undelivered" in r.output
