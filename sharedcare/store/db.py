"""Database connection: one URL, SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

ENV_DATABASE_URL = "SHAREDCARE_DATABASE_URL"
ENV_DATA_DIR = "SHAREDCARE_DATA_DIR"


def data_dir() -> Path:
    """Where the embedded database and generated keys live: $SHAREDCARE_DATA_DIR, else ./data."""
    return Path(os.environ.get(ENV_DATA_DIR) or Path.cwd() / "data")


def database_url(explicit: str | None = None, folder: Path | None = None) -> str:
    """--database beats $SHAREDCARE_DATABASE_URL beats the embedded SQLite file."""
    if explicit:
        url = explicit
    elif os.environ.get(ENV_DATABASE_URL):
        url = os.environ[ENV_DATABASE_URL]
    else:
        folder = Path(folder) if folder else data_dir()
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / 'sharedcare.sqlite'}"
    # Plain postgresql:// means psycopg 3 here (not psycopg2).
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str | None = None, folder: Path | None = None) -> Engine:
    url = database_url(url, folder)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - runs per connection
            # Let SQLAlchemy's "begin" event below own transactions instead of pysqlite.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # WAL: readers never block the writer; NORMAL sync is durable at commit in WAL mode
            # except on power loss, where the last transactions may roll back but never corrupt.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA cache_size=-65536")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

        # A writing transaction takes the write lock up front (BEGIN IMMEDIATE) so two writers
        # queue on the busy timeout instead of failing half-way with "database is locked";
        # readers use a plain deferred BEGIN and never wait for writers under WAL.
        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover
            write = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    # JIT compilation costs more than it saves on a record store's short indexed queries.
    # No pre-ping: a `SELECT 1` round trip on every checkout was a quarter of a governed read's
    # time. Connections are recycled every 30 minutes, and one that the server dropped fails
    # its request once (a 500 OperationOutcome) while SQLAlchemy invalidates the pool.
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=False,
                         pool_recycle=1800, connect_args={"options": "-c jit=off"})


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
