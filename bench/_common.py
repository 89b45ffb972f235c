"""Shared helpers for bench/run.py and bench/loadgen.py: percentiles, RSS, machine facts, free
ports, fresh databases, the product server as a subprocess, and the targets of issue 8.

Benchmark tooling only; the product does not import this.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


# ------------------------------------------------------------------------------ statistics
def pct(values: list[float], q: float) -> float | None:
    """Percentile by linear interpolation (q in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * q / 100.0
    f = int(k)
    c = min(f + 1, len(v) - 1)
    return v[f] + (v[c] - v[f]) * (k - f)


def summary(ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p95_ms": pct(ms, 95),
        "p99_ms": pct(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else None,
        "max_ms": max(ms) if ms else None,
    }


# ------------------------------------------------------------------------------ processes
def rss_mb(pid: int | None) -> float | None:
    """VmRSS of a process, from /proc/PID/status, in MB."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's RSS every `every` seconds in a thread, while in the `with` block."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every = pid, every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            v = rss_mb(self.pid)
            if v is not None:
                self.samples.append(v)
            self._stop.wait(self.every)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def result(self) -> dict[str, Any]:
        s = self.samples
        return {
            "samples": len(s),
            "max_mb": max(s) if s else None,
            "mean_mb": statistics.fmean(s) if s else None,
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict[str, Any]:
    """CPU model and count, memory, OS and Python: what the figures were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_mb"] = int(line.split()[1]) // 1024
            if line.startswith("MemAvailable:"):
                info["mem_available_mb"] = int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------------ databases
@dataclass
class Backend:
    name: str  # sqlite | postgresql
    url: str
    data_dir: Path


@contextlib.contextmanager
def fresh_backend(name: str, pg_admin_url: str = PG_ADMIN_URL) -> Iterator[Backend]:
    """A fresh, empty database and data dir (keys, exports), removed afterwards.
    SQLite: a file in a temp dir. PostgreSQL: a new database on the admin URL's server, dropped
    (WITH FORCE) afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=f"sharedcare-bench-{name}-"))
    try:
        if name == "sqlite":
            yield Backend(name, f"sqlite:///{tmp / 'sharedcare.sqlite'}", tmp)
            return
        if name != "postgresql":
            raise ValueError(f"unknown backend {name!r}")
        import psycopg

        dbname = f"sharedcare_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = pg_admin_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        base = pg_admin_url.rsplit("/", 1)[0]
        try:
            yield Backend(name, f"{base}/{dbname}", tmp)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def postgres_reachable(pg_admin_url: str = PG_ADMIN_URL) -> str | None:
    """None when reachable, else the reason."""
    try:
        import psycopg

        with psycopg.connect(
            pg_admin_url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3
        ) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        return f"{type(e).__name__}: {e}".splitlines()[0]


# ------------------------------------------------------------------------------ the server
class Server:
    """`sharedcare serve` on a free port as a subprocess, on the given database and data dir
    (so tokens issued with that data dir's signing key are accepted)."""

    def __init__(
        self,
        url: str,
        data_dir: Path,
        start_timeout: float = 90.0,
        extra_args: tuple[str, ...] = (),
    ):
        self.url, self.data_dir, self.start_timeout = url, data_dir, start_timeout
        self.extra_args = extra_args
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(data_dir) / f"server-{self.port}.log"
        self.started_s: float | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> Self:
        import httpx

        exe = Path(sys.executable).with_name("sharedcare")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sharedcare.cli"]
        cmd += [
            "serve",
            "--database",
            self.url,
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]
        env = dict(
            os.environ, SHAREDCARE_DATABASE_URL=self.url, SHAREDCARE_DATA_DIR=str(self.data_dir)
        )
        t0 = time.perf_counter()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sharedcare serve exited ({self.proc.returncode}): "
                    + self.log_path.read_text()[-2000:]
                )
            try:
                r = httpx.get(f"{self.base}/metadata", timeout=2.0)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("sharedcare serve did not answer /fhir/metadata in time")
            time.sleep(0.2)
        self.started_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self._log.close()


# ------------------------------------------------------------------------------ targets
# (key, label, target text, test) -- issue 8's targets for this machine (2 cores).
TARGETS: dict[str, tuple[str, Any]] = {
    "P1": ("≥ 10,000/s", lambda v: v >= 10_000),
    "P2_p50": ("≤ 15 ms", lambda v: v <= 15),
    "P2_p95": ("≤ 40 ms", lambda v: v <= 40),
    "P3_p95": ("≤ 20 ms", lambda v: v <= 20),
    "P3_rps": ("≥ 1,000/s", lambda v: v >= 1_000),
    "P4": ("≤ 1.3×", lambda v: v <= 1.3),
    "P5": ("≥ 20,000/s", lambda v: v >= 20_000),
    "P6": ("≥ 1,000/s", lambda v: v >= 1_000),
    "P7": ("≤ 400 MB", lambda v: v <= 400),
    "R5_p95": ("≤ 100 ms", lambda v: v <= 100),
}


def met(key: str | None, value: float | None) -> bool | None:
    if key is None or not isinstance(value, int | float) or key not in TARGETS:
        return None
    return bool(TARGETS[key][1](value))
