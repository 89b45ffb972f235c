"""Database connection: one URL, SQLite (embedded default) or PostgreSQL; optionally a
PostgreSQL streaming replica for reads ($SHAREDCARE_DATABASE_READ_URL), with read-your-writes."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text

log = logging.getLogger(__name__)

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
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str | None = None, folder: Path | None = None) -> Engine:
    url = database_url(url, folder)
    if url.startswith("sqlite"):
        # Twenty kept connections, as on PostgreSQL: with SQLAlchemy's five, sixteen requests
        # at once opened and closed overflow connections, each a fresh SQLite page cache and
        # its pragmas (wrk c=16: 336/360 -> 363/424 searches/s, alternated).
        engine = create_engine(url, pool_size=20, max_overflow=10,
                               connect_args={"check_same_thread": False, "timeout": 30})

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
    # Twenty kept connections: with ten, sixteen requests at once (plus the audit writer and
    # the workers) opened and closed overflow connections -- a new backend each time -- and
    # lost their prepared statements: 342 -> 457 searches/s at 16 connections (wrk).
    _cache_long_statements()
    return create_engine(url, pool_size=20, max_overflow=10, pool_pre_ping=False,
                         pool_recycle=1800, connect_args={"options": "-c jit=off"})


def _cache_long_statements() -> None:
    """psycopg converts each statement's `%(name)s` placeholders with a regex and caches the
    result only for statements up to 4,096 characters and 50 parameters. A governed query
    carries the access policy (agreements, categories, relationship, objections: 3-9 KB and
    60-170 parameters), so every execution was parsed again: a quarter of a governed search's
    CPU on PostgreSQL (py-spy, docs/performance.md). The statements are few (one per policy
    shape and search shape), so caching them costs little memory. psycopg reads these
    module-level limits on every call; there is no public setting for them."""
    from psycopg import _queries

    _queries.MAX_CACHED_STATEMENT_LENGTH = max(_queries.MAX_CACHED_STATEMENT_LENGTH, 65536)
    _queries.MAX_CACHED_STATEMENT_PARAMS = max(_queries.MAX_CACHED_STATEMENT_PARAMS, 1024)


def read_only(engine: Engine) -> Engine:
    """The engine for reads that write nothing: on PostgreSQL its connections run each
    statement on its own (autocommit), sharing the engine's pool.

    Why: a read in a transaction ends with ROLLBACK when its connection goes back to the pool,
    and psycopg forgets every prepared statement of a connection on ROLLBACK. So no statement
    was ever prepared, and PostgreSQL planned each governed query afresh: 1.6-1.8 ms of
    planning against 0.2 ms of execution (EXPLAIN ANALYZE), twice a search. Without the
    transaction there is no BEGIN or ROLLBACK round trip either, and psycopg prepares a
    statement the fifth time a connection runs it. Under READ COMMITTED a transaction gave
    each statement its own snapshot anyway, so the reads see what they saw before. Writes
    never use this engine: `conn.begin()` on an autocommit connection is no transaction.

    SQLite keeps its transactions (a read's BEGIN is what pins its WAL snapshot)."""
    if engine.dialect.name != "postgresql":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


# ------------------------------------------------------------------ read replicas
ENV_DATABASE_READ_URL = "SHAREDCARE_DATABASE_READ_URL"
ENV_REPLICA_WAIT = "SHAREDCARE_REPLICA_WAIT"  # seconds a read waits for the replica (0.5)
WRITE_LSN = "write-lsn"  # shared-state kind: a client's last write position
WRITE_LSN_LIFETIME = 600  # a write older than this is on every healthy replica

# Set for the duration of one request (or one export job): may the store's reads -- search,
# $everything, history, their pages, exports -- go to the replica? Off by default: reads go to
# the primary unless a replica was chosen for this request.
_replica_reads: ContextVar[bool] = ContextVar("sharedcare_replica_reads", default=False)


def read_database_url(explicit: str | None = None) -> str | None:
    """--read-database beats $SHAREDCARE_DATABASE_READ_URL; None: no replica."""
    url = explicit or os.environ.get(ENV_DATABASE_READ_URL)
    if not url:
        return None
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def replica_reads() -> bool:
    return _replica_reads.get()


@contextmanager
def reads_from_replica(allowed: bool = True):
    """Within the block, the store's reads may use the replica (when there is one)."""
    token = _replica_reads.set(allowed)
    try:
        yield
    finally:
        _replica_reads.reset(token)


class ReadReplica:
    """A PostgreSQL streaming replica for reads, with read-your-writes.

    After a client's write its position in the primary's WAL (``pg_current_wal_lsn()``, taken
    once the write has committed) is kept in the shared state under a hash of the client's
    token, so whichever server gets the client's next read knows it. That read uses the replica
    once ``pg_last_wal_replay_lsn()`` there has passed the position -- waiting up to
    ``wait`` seconds -- and otherwise the primary. A replica that cannot be reached is not used.
    """

    def __init__(self, primary: Engine, replica: Engine, state, wait: float | None = None):
        if primary.dialect.name != "postgresql" or replica.dialect.name != "postgresql":
            raise ValueError("read replicas are for PostgreSQL (SHAREDCARE_DATABASE_READ_URL "
                             "must be a postgresql:// URL of a standby of the primary)")
        self.primary = primary
        self.engine = replica
        self.reads = read_only(replica)
        self.state = state
        self.wait = float(os.environ.get(ENV_REPLICA_WAIT) or 0.5) if wait is None else wait

    def write_position(self) -> str:
        with self.primary.connect() as conn:
            return conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one()

    def note_write(self, client: str) -> None:
        """Remember where the primary's WAL stood after this client's write."""
        self.state.put(WRITE_LSN, client, self.write_position(), WRITE_LSN_LIFETIME)

    def caught_up(self, position: str, wait: float | None = None) -> bool:
        """Has the replica replayed the WAL up to `position` (waiting up to `wait` s)?"""
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        try:
            with self.engine.connect() as conn:
                while True:
                    done = conn.execute(text(
                        "SELECT pg_last_wal_replay_lsn() >= CAST(:p AS pg_lsn)"),
                        {"p": position}).scalar()
                    conn.rollback()
                    if done:
                        return True
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(0.005)
        except Exception:  # noqa: BLE001 - an unreachable replica is simply not used
            log.warning("the read replica cannot be reached; reading from the primary")
            return False

    def usable_for(self, client: str | None) -> bool:
        """May this client's read go to the replica? (Yes unless it wrote lately and the
        replica has not caught up within the wait.)"""
        position = self.state.get(WRITE_LSN, client) if client else None
        if position is None:
            return True
        return self.caught_up(position)


def make_read_replica(primary: Engine, state, url: str | None = None) -> ReadReplica | None:
    """The replica named by `url` or $SHAREDCARE_DATABASE_READ_URL, if any."""
    url = read_database_url(url)
    if not url:
        return None
    if primary.dialect.name != "postgresql":
        raise ValueError("SHAREDCARE_DATABASE_READ_URL needs a PostgreSQL primary "
                         "(SHAREDCARE_DATABASE_URL); the embedded SQLite has no replicas")
    replica = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=False,
                            pool_recycle=1800, connect_args={"options": "-c jit=off"})
    return ReadReplica(primary, replica, state)


def client_key(scope) -> str | None:
    """Who is asking, for read-your-writes: a hash of the bearer token or session cookie."""
    token = None
    for k, v in scope.get("headers", ()):
        if k == b"authorization" and v[:7].lower() == b"bearer ":
            token = v[7:].strip()
            break
        if k == b"cookie" and token is None:
            for part in v.split(b";"):
                name, _, value = part.strip().partition(b"=")
                if name == b"sc_session" and value:
                    token = value
    return hashlib.sha256(token).hexdigest() if token else None


class ReadReplicaMiddleware:
    """Routes each request's store reads: GET/HEAD requests (and POST ``_search``) read from
    the replica when `ReadReplica.usable_for` the client says so; any other request that
    succeeds is a write, and its WAL position is noted before the response starts -- so the
    client cannot send its next read before the position is known."""

    def __init__(self, app, replica: ReadReplica):
        self.app = app
        self.replica = replica

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").startswith("/static/"):
            await self.app(scope, receive, send)  # no store reads: nothing to route
            return
        from starlette.concurrency import run_in_threadpool

        client = client_key(scope)
        method = scope.get("method", "GET")
        if method in ("GET", "HEAD") or (method == "POST"
                                         and scope.get("path", "").endswith("/_search")):
            use = await run_in_threadpool(self.replica.usable_for, client)
            token = _replica_reads.set(use)
            try:
                await self.app(scope, receive, send)
            finally:
                _replica_reads.reset(token)
            return

        async def send_noting(message):
            if message["type"] == "http.response.start" and client \
                    and message.get("status", 500) < 400:
                try:
                    await run_in_threadpool(self.replica.note_write, client)
                except Exception:  # the write stands; the next read may miss it
                    log.exception("could not note a write's WAL position")
            await send(message)

        await self.app(scope, receive, send_noting)
