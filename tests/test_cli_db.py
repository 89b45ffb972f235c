"""`sharedcare db upgrade` on a new and on an up-to-date database: it succeeds and names the
revision of every migration branch it reached. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from typer.testing import CliRunner


def test_db_upgrade_names_every_branch_head(database_url):
    from alembic.script import ScriptDirectory

    from sharedcare.cli import app
    from sharedcare.store import migrate
    from sharedcare.store.db import make_engine

    heads = ScriptDirectory.from_config(migrate.config(make_engine(database_url))).get_heads()
    assert len(heads) > 1  # capabilities migrate on their own branches
    for _ in range(2):  # a new database, then one already at the latest revisions
        result = CliRunner().invoke(app, ["db", "upgrade", "--database", database_url])
        assert result.exit_code == 0, result.output
        named = result.output.split("database at revision", 1)[1].strip()
        assert set(named.replace("\n", "").replace(" ", "").split(",")) == set(heads)
