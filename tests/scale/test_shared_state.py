"""The shared-state store's guarantees, on the database (SQLite, PostgreSQL) and on Redis.

Two store objects over two engines (or two Redis connections) stand for two servers.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from sharedcare.store import migrate
from sharedcare.store.db import make_engine
from sharedcare.store.shared_state import (
    DatabaseState,
    RedisState,
    hashed,
    open_shared_state,
    shared_state,
)
from tests.scale.conftest import REDIS_URL


@pytest.fixture
def pair(state_backend, database_url):
    """Two stores on one backend, as two servers would hold them."""
    if state_backend == "redis":
        yield RedisState(REDIS_URL), RedisState(REDIS_URL)
        return
    engines = [make_engine(database_url) for _ in range(2)]  # the app's engine settings
    migrate.upgrade(engines[0])
    yield DatabaseState(engines[0]), DatabaseState(engines[1])
    for e in engines:
        e.dispose()


def test_backend_follows_the_environment(state_backend, database_url):
    engine = make_engine(database_url)
    state = open_shared_state(engine)
    assert isinstance(state, RedisState if state_backend == "redis" else DatabaseState)
    engine.dispose()


def test_put_get_take_delete_across_stores(pair):
    a, b = pair
    a.put("k", "one", {"x": 1, "list": ["a"]}, 60)
    assert b.get("k", "one") == {"x": 1, "list": ["a"]}
    assert b.get("other-kind", "one") is None  # kinds are separate
    a.put("k", "one", {"x": 2}, 60)  # replaced
    assert b.take("k", "one") == {"x": 2}
    assert a.take("k", "one") is None and a.get("k", "one") is None
    b.put("k", "two", True, 60)
    a.delete("k", "two")
    assert b.get("k", "two") is None


def test_take_is_single_use_under_a_race(pair):
    a, b = pair
    keys = [f"code-{i}" for i in range(20)]
    for k in keys:
        a.put("code", k, {"k": k}, 60)
    won: list[str] = []
    go = threading.Barrier(4)

    def taker(store):
        go.wait()
        for k in keys:
            if store.take("code", k) is not None:
                won.append(k)

    threads = [threading.Thread(target=taker, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(won) == sorted(keys)  # every code taken exactly once


def test_add_remembers_a_key_once_under_a_race(pair):
    a, b = pair
    results: list[bool] = []
    go = threading.Barrier(4)

    def adder(store):
        go.wait()
        results.append(store.add("jti", "client\0same-jti", 60))

    threads = [threading.Thread(target=adder, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [False, False, False, True]


def test_expired_entries_do_not_count_and_are_cleaned(pair, state_backend):
    a, b = pair
    a.put("k", "short", {"v": 1}, 0.2)
    a.put("k", "long", {"v": 2}, 60)
    assert a.add("jti", "j1", 0.2) is True
    time.sleep(0.4)
    assert b.get("k", "short") is None
    assert b.take("k", "short") is None
    assert b.add("jti", "j1", 60) is True  # an expired jti no longer blocks (its exp passed)
    assert b.add("jti", "j1", 60) is False
    assert b.get("k", "long") == {"v": 2}
    if state_backend == "database":
        a.put("k", "gone-soon", 1, 0.1)
        time.sleep(0.2)
        with a.engine.connect() as conn:
            before = conn.execute(select(func.count()).select_from(shared_state)).scalar()
        assert a.purge() >= 1
        with a.engine.connect() as conn:
            rows = conn.execute(select(shared_state.c.kind, shared_state.c.expires)).all()
        assert len(rows) < before
        assert all(exp > time.time() for _kind, exp in rows)  # only live entries remain
    else:
        assert a.client.ttl(a._key("k", "long")) > 0  # Redis expires keys itself
        assert not a.client.exists(a._key("k", "short"))


@pytest.mark.parametrize("state_backend", ["database"], indirect=True)  # Redis expires keys
def test_writes_sweep_expired_rows_now_and_then(pair, state_backend, monkeypatch):
    from sharedcare.store import shared_state as mod

    a, _b = pair
    a.put("k", "stale", 1, 0.05)
    time.sleep(0.1)
    monkeypatch.setattr(mod, "PURGE_EVERY", 0.0)
    a.put("k", "fresh", 1, 60)  # a write sweeps what has expired
    with a.engine.connect() as conn:
        keys = set(conn.execute(select(shared_state.c.key)).scalars())
    assert hashed("k", "stale") not in keys and hashed("k", "fresh") in keys


def test_keys_are_stored_hashed(pair, state_backend):
    a, _b = pair
    secret = "a-one-time-code-nobody-may-read"
    a.put("smart-code", secret, {"ok": True}, 60)
    if state_backend == "database":
        with a.engine.connect() as conn:
            keys = list(conn.execute(select(shared_state.c.key)).scalars())
        assert hashed("smart-code", secret) in keys
        assert not any(secret in k for k in keys)
    else:
        names = [k.decode() for k in a.client.scan_iter(f"{a.prefix}:*")]
        assert names and not any(secret in n for n in names)
