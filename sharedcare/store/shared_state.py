"""State that one request leaves for a later one, shared by every server on the database.

Several application servers (``serve --workers N``, or several hosts behind a load balancer) must
agree on a handful of short-lived facts: a half-finished SMART sign-in, a one-time authorisation
code, the client assertion ``jti``\\ s already used, an OpenID Connect login in flight, a bulk
export job's status. None of it may live in one process's memory: the next request may land
anywhere. This module keeps it in one of two places, behind one small interface:

* the database (default): the ``shared_state`` table, one row per entry, with its expiry; expired
  rows are ignored at once and deleted by the server as it writes (at most once a minute per
  process) or by :meth:`SharedState.purge`. Nothing to set up: the embedded SQLite works too.
* Redis, when ``SHAREDCARE_REDIS_URL`` is set (``redis://host:6379/0``): each entry one key with
  Redis's own expiry (``SET ... PX``), keys prefixed ``$SHAREDCARE_REDIS_PREFIX`` (``sharedcare``).

The operations and their guarantees, on both backends:

``put(kind, key, value, ttl)``  store (replace) a JSON value for ``ttl`` seconds
``get(kind, key)``              the live value, or None
``take(kind, key)``             the live value, removed in the same step (single use): of two
                                servers taking one key at once, exactly one gets it
                                (``DELETE ... RETURNING`` / ``GETDEL``)
``add(kind, key, ttl)``         remember a key once: False when it is already remembered and live
                                (``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`` /
                                ``SET NX``) -- a replay is refused on every server
``delete(kind, key)``           forget it

Keys are never stored as given: the row key (and the Redis key) is the SHA-256 of the kind and
the key, so an authorisation code or a sign-in transaction id in the store cannot be replayed by
whoever reads the store. Values must not hold secrets that a hash would do for.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any, Protocol

from sqlalchemy import Column, Engine, Float, Index, String, Table, Text, delete, select

from .schema import metadata

ENV_REDIS_URL = "SHAREDCARE_REDIS_URL"
ENV_REDIS_PREFIX = "SHAREDCARE_REDIS_PREFIX"
PURGE_EVERY = 60.0  # seconds between a process's sweeps of expired rows

shared_state = Table(
    "shared_state", metadata,
    Column("key", String(64), primary_key=True,
           comment="SHA-256 (hex) of the entry's kind and key: codes and transaction ids are "
                   "never stored as given."),
    Column("kind", String(32), nullable=False,
           comment="What the entry is: smart-pending, smart-code, smart-jti, oidc-login, "
                   "oidc-choose, export, export-cancel."),
    Column("value", Text, nullable=True, comment="The entry (JSON); none for a remembered key."),
    Column("expires", Float, nullable=False,
           comment="When the entry stops counting (Unix seconds); expired rows are deleted by "
                   "the servers as they write."),
    comment="Short-lived state one request leaves for a later one (sign-ins in progress, "
            "one-time codes, used assertion ids, export jobs), shared by every server.",
)
Index("ix_shared_state_expires", shared_state.c.expires)


def hashed(kind: str, key: str) -> str:
    return hashlib.sha256(f"{kind}\0{key}".encode()).hexdigest()


class SharedState(Protocol):
    def put(self, kind: str, key: str, value: Any, ttl: float) -> None: ...
    def get(self, kind: str, key: str) -> Any | None: ...
    def take(self, kind: str, key: str) -> Any | None: ...
    def add(self, kind: str, key: str, ttl: float) -> bool: ...
    def delete(self, kind: str, key: str) -> None: ...
    def purge(self) -> int: ...


class DatabaseState:
    """The ``shared_state`` table (SQLite or PostgreSQL)."""

    backend = "database"

    def __init__(self, engine: Engine):
        self.engine = engine
        self._last_purge = 0.0
        self._purge_lock = threading.Lock()
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        self._insert = upsert

    def _write(self):
        # SQLite: BEGIN IMMEDIATE (see store.db), so two writers queue instead of failing.
        return self.engine.connect().execution_options(write=True)

    def _maybe_purge(self, conn, now: float) -> None:
        with self._purge_lock:
            if now - self._last_purge < PURGE_EVERY:
                return
            self._last_purge = now
        conn.execute(delete(shared_state).where(shared_state.c.expires <= now))

    def put(self, kind: str, key: str, value: Any, ttl: float) -> None:
        now = time.time()
        row = {"key": hashed(kind, key), "kind": kind, "value": json.dumps(value),
               "expires": now + ttl}
        stmt = self._insert(shared_state).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[shared_state.c.key],
            set_={"kind": stmt.excluded.kind, "value": stmt.excluded.value,
                  "expires": stmt.excluded.expires})
        with self._write() as conn, conn.begin():
            self._maybe_purge(conn, now)
            conn.execute(stmt)

    def get(self, kind: str, key: str) -> Any | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(shared_state.c.value).where(
                shared_state.c.key == hashed(kind, key),
                shared_state.c.expires > time.time())).scalar()
        return json.loads(value) if value is not None else None

    def take(self, kind: str, key: str) -> Any | None:
        # One statement: of two servers taking the same key, only one DELETE returns the row.
        with self._write() as conn, conn.begin():
            row = conn.execute(delete(shared_state)
                               .where(shared_state.c.key == hashed(kind, key))
                               .returning(shared_state.c.value, shared_state.c.expires)).first()
        if row is None or row.expires <= time.time() or row.value is None:
            return None
        return json.loads(row.value)

    def add(self, kind: str, key: str, ttl: float) -> bool:
        now = time.time()
        stmt = self._insert(shared_state).values(
            key=hashed(kind, key), kind=kind, value=None, expires=now + ttl)
        # Insert, or take over an expired row; a live row stays as it is and nothing returns.
        stmt = stmt.on_conflict_do_update(
            index_elements=[shared_state.c.key],
            set_={"kind": stmt.excluded.kind, "value": None, "expires": stmt.excluded.expires},
            where=shared_state.c.expires <= now,
        ).returning(shared_state.c.key)
        with self._write() as conn, conn.begin():
            self._maybe_purge(conn, now)
            return conn.execute(stmt).first() is not None

    def delete(self, kind: str, key: str) -> None:
        with self._write() as conn, conn.begin():
            conn.execute(delete(shared_state).where(shared_state.c.key == hashed(kind, key)))

    def purge(self) -> int:
        """Delete every expired row now; how many went."""
        with self._write() as conn, conn.begin():
            return conn.execute(delete(shared_state)
                                .where(shared_state.c.expires <= time.time())).rowcount


class RedisState:
    """Redis: one key per entry, expiring by itself."""

    backend = "redis"

    def __init__(self, url: str, prefix: str | None = None):
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = (prefix or os.environ.get(ENV_REDIS_PREFIX) or "sharedcare").rstrip(":")

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{hashed(kind, key)}"

    @staticmethod
    def _ms(ttl: float) -> int:
        return max(1, int(ttl * 1000))

    def put(self, kind: str, key: str, value: Any, ttl: float) -> None:
        self.client.set(self._key(kind, key), json.dumps(value), px=self._ms(ttl))

    def get(self, kind: str, key: str) -> Any | None:
        value = self.client.get(self._key(kind, key))
        return json.loads(value) if value is not None else None

    def take(self, kind: str, key: str) -> Any | None:
        value = self.client.getdel(self._key(kind, key))  # atomic: one caller gets it
        return json.loads(value) if value is not None else None

    def add(self, kind: str, key: str, ttl: float) -> bool:
        return bool(self.client.set(self._key(kind, key), b"1", nx=True, px=self._ms(ttl)))

    def delete(self, kind: str, key: str) -> None:
        self.client.delete(self._key(kind, key))

    def purge(self) -> int:
        return 0  # Redis expires keys itself


def open_shared_state(engine: Engine, redis_url: str | None = None) -> SharedState:
    """Redis when a URL is given or $SHAREDCARE_REDIS_URL is set, else the database."""
    url = redis_url or os.environ.get(ENV_REDIS_URL)
    if url:
        return RedisState(url)
    return DatabaseState(engine)


def shared_state_of(sc) -> SharedState:
    """The application's shared state (``SharedCare.shared``), made on first use for an
    application object built without one."""
    state = getattr(sc, "shared", None)
    if state is None:
        state = open_shared_state(sc.engine)
        try:
            sc.shared = state
        except AttributeError:  # pragma: no cover - a frozen application object
            pass
    return state


__all__ = ["DatabaseState", "RedisState", "SharedState", "hashed", "open_shared_state",
           "shared_state", "shared_state_of"]
