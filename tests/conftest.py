"""Shared fixtures: real databases (SQLite and PostgreSQL), a real server, real tokens.

Every database test runs on both backends. PostgreSQL is at $SHAREDCARE_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/postgres); when it is unreachable its tests skip -- except
under CI=true, where the run fails.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
# Test data nobody on the project wrote, kept in the repository with its licences (tests/data/
# README.md). Folders of *.xz files are decompressed once into a cache outside the checkout.
DATA = ROOT / "tests" / "data"
DATA_CACHE = Path(os.environ.get("SHAREDCARE_TEST_DATA_CACHE")
                  or Path(tempfile.gettempdir()) / f"sharedcare-test-data-{os.getuid()}")
PG_ADMIN_URL = os.environ.get("SHAREDCARE_TEST_PG",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI") == "true"
TEST_ORG = "RTEST"


def _plain_folder(folder: Path) -> Path:
    """`folder` itself, or -- when it holds *.xz files -- a cached copy with them decompressed
    (same names without .xz). The cache is keyed by the compressed bytes, so changed data gets
    a fresh copy; parallel workers race harmlessly (the first complete copy wins)."""
    packed = sorted(folder.glob("*.xz"))
    if not packed:
        return folder
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    target = DATA_CACHE / f"{folder.relative_to(DATA).as_posix().replace('/', '__')}-" \
                          f"{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    DATA_CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=DATA_CACHE))
    for f in folder.iterdir():
        if f.suffix == ".xz":
            (work / f.stem).write_bytes(lzma.decompress(f.read_bytes()))
        elif f.is_file():
            shutil.copyfile(f, work / f.name)
    try:
        work.rename(target)
    except OSError:  # another worker finished first
        shutil.rmtree(work, ignore_errors=True)
    return target


def data_dir(*parts: str) -> Path:
    """A file or folder of tests/data (e.g. ``data_dir("fhir", "synthea")``), with compressed
    folders presented decompressed. Missing test data is an error, never a skip."""
    for i in range(len(parts), -1, -1):
        folder = DATA.joinpath(*parts[:i])
        if folder.is_dir():
            path = _plain_folder(folder).joinpath(*parts[i:])
            if not path.exists():
                pytest.fail(f"test data {DATA.joinpath(*parts)} is missing")
            return path
    pytest.fail(f"test data {DATA.joinpath(*parts)} is missing")


shared_dir = data_dir  # the old name (the data used to be read from ../shared)


_pg_state: dict = {}


def _postgres_available() -> bool:
    if "ok" not in _pg_state:
        try:
            eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with eng.connect() as c:
                c.execute(text("select 1"))
            eng.dispose()
            _pg_state["ok"] = True
        except Exception as e:  # noqa: BLE001 - any failure means unreachable
            _pg_state["ok"] = False
            _pg_state["why"] = str(e).splitlines()[0]
    return _pg_state["ok"]


@pytest.fixture(scope="session")
def pg_database():
    """One throwaway PostgreSQL database for the whole run."""
    if not _postgres_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL is unreachable in CI: {_pg_state.get('why')}")
        pytest.skip(f"PostgreSQL unreachable: {_pg_state.get('why')}")
    name = f"sharedcare_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as c:
        c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sharedcare.sqlite'}"
    return _clean_schema(request.getfixturevalue("pg_database"))


def _clean_schema(url: str) -> str:
    """A clean schema for every test: drop everything the last test made."""
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE"))
        c.execute(text("CREATE SCHEMA public"))
    eng.dispose()
    return url


@pytest.fixture
def sc(database_url, tmp_path):
    from sharedcare.app import SharedCare

    app = SharedCare.open(database_url, tmp_path / "data")
    app.governance.add_organisation(TEST_ORG, "Test Partner System Trust", "acute-trust")
    yield app
    app.engine.dispose()


@pytest.fixture
def pg_sc(pg_database, tmp_path):
    """sharedcare on PostgreSQL only, for what only PostgreSQL has: query plans, partitions,
    writers running side by side."""
    from sharedcare.app import SharedCare

    app = SharedCare.open(_clean_schema(pg_database), tmp_path / "data")
    yield app
    app.engine.dispose()


@pytest.fixture
def system_token(sc):
    """A partner system of TEST_ORG with full system scopes."""
    return sc.governance.issue_system_token("test-system", TEST_ORG)


@pytest.fixture
def client(sc, system_token):
    from starlette.testclient import TestClient

    from sharedcare.app import create_app

    with TestClient(create_app(sc), base_url="http://testserver") as c:
        c.headers["Authorization"] = f"Bearer {system_token}"
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_thread(app, port: int | None = None):
    """Run an ASGI app with uvicorn in a thread on 127.0.0.1; returns (server, thread, port):
    set server.should_exit and join the thread to stop it."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    return server, thread, port


@pytest.fixture
def live_server(sc):
    """The real app on a real socket (uvicorn in a thread), for real FHIR clients."""
    from sharedcare.app import create_app

    server, thread, port = serve_in_thread(create_app(sc))
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
