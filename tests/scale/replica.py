"""A real PostgreSQL streaming replica for the read-replica tests.

`start()` makes a standby with ``pg_basebackup -R -X stream`` and starts it on a free port with
Debian's ``pg_ctl``. The primary is the local server ($SHAREDCARE_TEST_PG) when it accepts
replication connections from 127.0.0.1 (``wal_level`` replica or logical, ``max_wal_senders`` > 0
and a ``host replication ...`` line in pg_hba.conf). Debian's default pg_hba.conf has no such
line, so otherwise a private primary is made for the run with ``initdb`` (whose default
pg_hba.conf does allow local replication) -- nothing on the machine is reconfigured either way.
Servers run as the ``postgres`` user when the tests run as root (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, make_url, text


class Unavailable(Exception):
    """No replica can be made here (the reason is the message)."""


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"{name} is not installed (Debian: apt-get install postgresql)")
    return path


def _as_postgres() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise Unavailable("running as root and runuser is missing (PostgreSQL refuses root)")
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_as_postgres() + cmd, capture_output=True, text=True, timeout=timeout,
                          cwd="/", check=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pair:
    primary_url: str  # SQLAlchemy URL, database "postgres"
    replica_url: str
    base: Path
    own_primary: bool
    clusters: list[Path] = field(default_factory=list)
    why_own: str | None = None

    def url(self, which: str, database: str) -> str:
        u = make_url(self.primary_url if which == "primary" else self.replica_url)
        return u.set(database=database).render_as_string(hide_password=False)

    def stop(self) -> None:
        for data in reversed(self.clusters):
            _run([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], 60)
        shutil.rmtree(self.base, ignore_errors=True)


def _wait_ready(url: str, standby: bool, timeout: float = 60) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    deadline = time.time() + timeout
    last = None
    try:
        while time.time() < deadline:
            try:
                with engine.connect() as c:
                    if bool(c.execute(text("select pg_is_in_recovery()")).scalar()) == standby:
                        return
            except Exception as e:  # noqa: BLE001 - still starting
                last = e
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise Unavailable(f"the {'standby' if standby else 'primary'} did not start: {last}")


def _start(data: Path, port: int, base: Path, log: str) -> None:
    r = _run([_bin("pg_ctl"), "-D", str(data), "-l", str(base / log), "-w", "-t", "60",
              "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"])
    if r.returncode != 0:
        tail = (base / log).read_text()[-800:] if (base / log).exists() else ""
        raise Unavailable(f"pg_ctl start failed: {r.stderr.strip()} {tail}")


def _basebackup(host_port: tuple[str, int], target: Path) -> subprocess.CompletedProcess:
    return _run([_bin("pg_basebackup"), "-h", host_port[0], "-p", str(host_port[1]),
                 "-U", "postgres", "-D", str(target), "-R", "-X", "stream", "-c", "fast",
                 "--no-sync"])


def start(local_admin_url: str) -> Pair:
    """A primary and a streaming standby of it; `Pair.stop()` removes what was made."""
    as_pg = _as_postgres()
    base = Path(tempfile.mkdtemp(prefix="sharedcare-replica-"))
    os.chmod(base, 0o755)
    if as_pg:
        shutil.chown(base, "postgres", "postgres")
    pair: Pair | None = None
    try:
        local = make_url(local_admin_url)
        replica_dir = base / "standby"
        r = _basebackup((local.host or "127.0.0.1", local.port or 5432), replica_dir)
        if r.returncode == 0:
            primary_url = local.set(database="postgres").render_as_string(hide_password=False)
            pair = Pair(primary_url, "", base, own_primary=False)
        else:
            why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "refused"
            shutil.rmtree(replica_dir, ignore_errors=True)
            primary_dir = base / "primary"
            init = _run([_bin("initdb"), "-D", str(primary_dir), "-U", "postgres",
                         "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C.UTF-8"])
            if init.returncode != 0:
                raise Unavailable(f"the local server refused replication ({why}) and initdb "
                                  f"failed: {init.stderr.strip()[:300]}")
            with open(primary_dir / "postgresql.conf", "a") as conf:
                conf.write("\nwal_level = replica\nmax_wal_senders = 5\nfsync = off\n"
                           "synchronous_commit = on\nfull_page_writes = off\n")
            port = _free_port()
            pair = Pair(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", "", base,
                        own_primary=True, why_own=why)
            _start(primary_dir, port, base, "primary.log")
            pair.clusters.append(primary_dir)
            _wait_ready(pair.primary_url, standby=False)
            r = _basebackup(("127.0.0.1", port), replica_dir)
            if r.returncode != 0:
                raise Unavailable(f"pg_basebackup failed: {r.stderr.strip()[:300]}")
        # Debian keeps a cluster's configuration in /etc: give the standby its own.
        for name, body in (("postgresql.conf", "hot_standby = on\n"),
                           ("pg_hba.conf", "local all all trust\nhost all all 127.0.0.1/32 trust\n"),
                           ("pg_ident.conf", "")):
            if not (replica_dir / name).exists():
                (replica_dir / name).write_text(body)
                if as_pg:
                    shutil.chown(replica_dir / name, "postgres", "postgres")
        port = _free_port()
        _start(replica_dir, port, base, "standby.log")
        pair.clusters.append(replica_dir)
        pair.replica_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        _wait_ready(pair.replica_url, standby=True)
        return pair
    except BaseException:
        if pair is not None:
            pair.stop()
        else:
            shutil.rmtree(base, ignore_errors=True)
        raise
