"""The command line as an operator meets it: a database that cannot be used is one line, the
demo refuses a nonsense size before making anything, a missing key set says how to make one,
and `admin keygen` makes a partner system's key pair that signs a client assertion the server
accepts."""

from __future__ import annotations

import json
import stat

from typer.testing import CliRunner

from sharedcare.cli import app

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, list(args), env=env)


def test_unreachable_database_is_one_clear_line(tmp_path):
    r = run("admin", "agreements", "--database", "postgresql://nobody@127.0.0.1:9/none")
    assert r.exit_code == 2
    out = r.output.strip()
    assert out.startswith("error: cannot open the database postgresql+psycopg://nobody@127.0.0.1:9/none")
    assert len(out.splitlines()) == 1 and "Traceback" not in out


def test_unknown_kind_of_database(tmp_path):
    r = run("admin", "agreements", "--database", "mysqlx://somewhere/db")
    assert r.exit_code == 2
    assert "unknown kind of database (use sqlite:///FILE or postgresql://" in r.output
    assert "Traceback" not in r.output


def test_password_is_not_printed():
    r = run("admin", "agreements", "--database", "postgresql://ops:s3cret@127.0.0.1:9/none")
    assert r.exit_code == 2 and "s3cret" not in r.output and "***" in r.output


def test_demo_refuses_no_patients_before_making_anything(tmp_path):
    folder = tmp_path / "demo"
    for n in ("-5", "0"):
        r = run("demo", "--patients", n, "--no-serve", "--data-dir", str(folder))
        assert r.exit_code == 2, r.output
        assert f"--patients must be a whole number above 0, not {n}" in r.output
        assert "Traceback" not in r.output
    assert not folder.exists()


def test_missing_jwks_says_how_to_make_one(tmp_path):
    r = run("admin", "client", "gp-system", "GP system", "--org", "P89999", "--scope",
            "system/*.rs", "--jwks", str(tmp_path / "nope.json"), "--data-dir", str(tmp_path))
    assert r.exit_code == 2
    assert "there is no such file" in r.output
    assert "sharedcare admin keygen gp-system" in r.output
    assert "Errno" not in r.output


def test_keygen_makes_a_key_pair_that_registers_and_signs(tmp_path):
    from joserfc import jwt
    from joserfc.jwk import KeySet

    keys = tmp_path / "keys"
    r = run("admin", "keygen", "gp-system", "--out-dir", str(keys))
    assert r.exit_code == 0, r.output
    private = keys / "gp-system-private-key.json"
    public = keys / "gp-system-jwks.json"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    jwks = json.loads(public.read_text())
    assert len(jwks["keys"]) == 1 and "d" not in jwks["keys"][0]  # no private part
    assert "d" in json.loads(private.read_text())
    # the private key signs; the registered public set verifies
    key = KeySet.import_key_set({"keys": [json.loads(private.read_text())]}).keys[0]
    token = jwt.encode({"alg": "ES384", "kid": key.kid}, {"iss": "gp-system"}, key,
                       algorithms=["ES384"])
    assert jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES384"]).claims == {
        "iss": "gp-system"}
    r = run("admin", "client", "gp-system", "GP system", "--org", "P89999", "--scope",
            "system/*.rs", "--jwks", str(public), "--data-dir", str(tmp_path / "data"))
    assert r.exit_code == 0 and "confidential" in r.output
    again = run("admin", "keygen", "gp-system", "--out-dir", str(keys))
    assert again.exit_code == 2 and "already exists" in again.output
