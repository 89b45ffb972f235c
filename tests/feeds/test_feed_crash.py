"""Crash safety: kill -9 the MLLP listener mid-stream, restart, resend -> nothing ACKed is lost,
nothing is duplicated. The listener runs as its own process on SQLite, as in production."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from sharedcare.feeds.hl7v2 import mllp_send
from sharedcare.store.schema import resource, resource_version

ROOT = Path(__file__).resolve().parents[2]
N = 80
MSG = ("MSH|^~\\&|PAS|RCRASH|SC|SC|20240101{hh:02d}{mm:02d}00||ADT^A01^ADT_A01|CR{i:05d}|P|2.5\r"
       "EVN|A01\rPID|1||MRN{i:05d}^^^RCRASH^MR||Crash^Test{i}||19800101|F\r"
       "PV1|1|I|WARD1^^^RCRASH||||||||||||||||VISIT{i:05d}\r")


def message(i: int) -> str:
    return MSG.format(i=i, hh=i // 60 % 24, mm=i % 60)


def start(url: str, data_dir: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sharedcare.feeds.mllp_server", "--port", "0", "--database", url,
         "--data-dir", str(data_dir), "--feed", "crash-feed", "--ods", "RCRASH"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("MLLP listening on"), line
    return proc, int(line.rsplit(":", 1)[1])


def frame(text: str) -> bytes:
    return b"\x0b" + text.encode() + b"\x1c\x0d"


def test_kill_9_mid_stream_loses_nothing_acked_and_duplicates_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'crash.sqlite'}"
    proc, port = start(url, tmp_path / "data")
    acked: set[int] = set()
    try:
        # 30 messages one by one, each ACKed after commit ...
        for i, ack in enumerate(mllp_send("127.0.0.1", port, [message(i) for i in range(30)])):
            assert "MSA|AA" in ack
            acked.add(i)
        # ... then the rest pipelined on one connection, and kill -9 while they are in flight.
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"".join(frame(message(i)) for i in range(30, N)))
        buffer, deadline = b"", time.time() + 10
        while buffer.count(b"\x1c\x0d") < 8 and time.time() < deadline:
            buffer += sock.recv(65536)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sock.settimeout(2)
        try:
            while chunk := sock.recv(65536):
                buffer += chunk
        except OSError:
            pass
        sock.close()
        for block in buffer.split(b"\x1c\x0d"):
            text = block.decode(errors="replace")
            if "MSA|AA|CR" in text:
                acked.add(int(text.split("MSA|AA|CR", 1)[1][:5]))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 30 <= len(acked) < N, "the kill must land mid-stream"

    proc, port = start(url, tmp_path / "data")
    try:
        resend = [i for i in range(N) if i not in acked] + sorted(acked)[:15]
        acks = mllp_send("127.0.0.1", port, [message(i) for i in resend])
        assert all("MSA|AA" in a for a in acks)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.connect() as c:
        per_type = dict(c.execute(select(resource.c.type, func.count())
                                  .group_by(resource.c.type)).all())
        versions = dict(c.execute(
            select(resource.c.type, func.count()).select_from(resource_version.join(
                resource, resource.c.pk == resource_version.c.resource_pk))
            .group_by(resource.c.type)).all())
        contents = [r[0] for r in c.execute(select(resource.c.content).where(
            resource.c.type == "Patient"))]
    engine.dispose()
    assert per_type["Patient"] == N and per_type["Encounter"] == N
    assert per_type["Provenance"] == N  # one receipt per message
    assert versions["Patient"] == N and versions["Encounter"] == N  # each written exactly once
    mrns = sorted(c.split('"value":"MRN', 1)[1][:5] for c in contents)
    assert mrns == [f"{i:05d}" for i in range(N)]
