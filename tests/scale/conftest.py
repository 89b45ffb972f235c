"""Two application servers on one database, for the stateless-server tests (issue 14).

`servers` opens two independent `SharedCare` objects -- each its own engine, connection pool,
SMART server, bulk-export runner and data folder -- on the same database (SQLite file or
PostgreSQL, from the `database_url` fixture), sharing what a deployment shares: the signing keys
(copied, as an operator would) and the export directory. `state_backend` runs each test with the
shared state in the database and again in Redis ($SHAREDCARE_REDIS_URL, a fresh key prefix per
test); Redis tests skip when no Redis answers at 127.0.0.1:6379 (or $SHAREDCARE_TEST_REDIS).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass

import pytest
from starlette.testclient import TestClient

REDIS_URL = os.environ.get("SHAREDCARE_TEST_REDIS", "redis://127.0.0.1:6379/0")
ORG = "RTEST"
BASE = "http://testserver"


def redis_available() -> str | None:
    """None when Redis answers, else why not."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means unreachable
        return str(e).splitlines()[0] if str(e) else type(e).__name__


@pytest.fixture(params=["database", "redis"])
def state_backend(request, monkeypatch):
    if request.param == "redis":
        why = redis_available()
        if why:
            pytest.skip(f"Redis unreachable at {REDIS_URL}: {why}")
        prefix = f"sharedcare-test-{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("SHAREDCARE_REDIS_URL", REDIS_URL)
        monkeypatch.setenv("SHAREDCARE_REDIS_PREFIX", prefix)
        yield request.param
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        return
    monkeypatch.delenv("SHAREDCARE_REDIS_URL", raising=False)
    yield request.param


@dataclass
class Servers:
    a: object  # SharedCare
    b: object
    export_dir: object


@pytest.fixture
def servers(state_backend, database_url, tmp_path, monkeypatch):
    from sharedcare.app import SharedCare

    export_dir = tmp_path / "shared-exports"
    monkeypatch.setenv("SHAREDCARE_EXPORT_DIR", str(export_dir))
    a = SharedCare.open(database_url, tmp_path / "server-a")
    # Every server signs and checks tokens with the same key, as a deployment's servers would.
    shutil.copytree(tmp_path / "server-a" / "keys", tmp_path / "server-b" / "keys")
    b = SharedCare.open(database_url, tmp_path / "server-b")
    assert a.engine is not b.engine
    assert type(a.shared).__name__ == ("RedisState" if state_backend == "redis"
                                       else "DatabaseState")
    a.governance.add_organisation(ORG, "Test Partner System Trust", "acute-trust")
    yield Servers(a, b, export_dir)
    a.engine.dispose()
    b.engine.dispose()


@pytest.fixture
def clients(servers):
    """A TestClient for each server's full application (create_app)."""
    from sharedcare.app import create_app

    with TestClient(create_app(servers.a), base_url=BASE, follow_redirects=False) as ca, \
            TestClient(create_app(servers.b), base_url=BASE, follow_redirects=False) as cb:
        yield ca, cb
