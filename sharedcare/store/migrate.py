"""Schema migrations (Alembic), runnable on SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

HERE = Path(__file__).parent


def config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    # "heads": independent branches (each capability's own tables) all apply; a merge
    # revision joins them when they must be ordered.
    command.upgrade(config(engine), revision)


def current(engine: Engine) -> tuple[str, ...]:
    """The revisions the database is at: one per branch (each capability's tables have their
    own), so a fully upgraded database is at several heads."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return tuple(sorted(MigrationContext.configure(conn).get_current_heads()))
