"""The MLLP listener over a real socket: ACK after the handler, NACKs, many messages per connection."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from sharedcare.feeds.hl7v2 import HL7Error, build_ack, mllp_send, serve_mllp, to_fhir

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "hl7v2"

if not SAMPLES.is_dir():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"shared HL7 v2 samples missing at {SAMPLES}")
    pytest.skip("shared HL7 v2 samples not available", allow_module_level=True)


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8").lstrip("\ufeff")


def fields(message: str, sid: str) -> list[str]:
    """Fields of the first ``sid`` segment, HL7-numbered (MSH-n at index n)."""
    for line in re.split(r"\r\n|\n|\r", message):
        parts = line.split("|")
        if parts[0] == sid:
            return ["MSH", "|"] + parts[1:] if sid == "MSH" else parts
    return []


def control_id(message: str) -> str:
    return fields(message, "MSH")[10]


def mtype(message: str) -> str:
    return fields(message, "MSH")[9].split("^")[0]


ALL = sorted(SAMPLES.glob("*.hl7"))
MAPPED = [p for p in ALL if mtype(read(p)) in ("ADT", "ORU", "MDM")]


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    def start(handle) -> int:
        server = asyncio.run_coroutine_threadsafe(serve_mllp("127.0.0.1", 0, handle), loop).result(
            5
        )
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:

        async def close(s=server):
            s.close()
            await s.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def mapping_handler(log: list):
    async def handle(raw: str) -> str:
        mapped = to_fhir(raw, source_org="RXX", feed_id="pas")  # HL7Error -> NACK by the server
        await asyncio.sleep(0)  # a real store awaits here
        log.append(("stored", mapped.control_id, len(mapped.bundle["entry"])))
        return build_ack(raw)

    return handle


def test_every_sample_acknowledged_on_one_connection(loop):
    log: list = []
    port = loop(mapping_handler(log))
    messages = [read(p) for p in ALL]
    acks = mllp_send("127.0.0.1", port, messages)
    assert len(acks) == len(messages)
    for message, ack in zip(messages, acks):
        msa = fields(ack, "MSA")
        assert msa[2] == control_id(message)
        if mtype(message) in ("ADT", "ORU", "MDM"):
            assert msa[1] == "AA", (control_id(message), ack)
        else:
            assert msa[1] == "AR"
            err = fields(ack, "ERR")
            assert err[2] == "MSH^1^9" and err[3].startswith("200^")
    assert len(log) == len(MAPPED)


def test_ack_is_written_only_after_the_handler_returns(loop):
    """The handler blocks until the test releases it; no ACK byte may arrive before that."""
    release = threading.Event()
    events: list[tuple[str, str, float]] = []

    async def handle(raw: str) -> str:
        events.append(("handler-start", control_id(raw), time.monotonic()))
        while not release.is_set():
            await asyncio.sleep(0.01)
        events.append(("handler-done", control_id(raw), time.monotonic()))
        return build_ack(raw)

    port = loop(handle)
    messages = [read(p) for p in MAPPED[:5]]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for message in messages:
            release.clear()
            sock.sendall(b"\x0b" + message.replace("\n", "\r").encode() + b"\x1c\x0d")
            sock.settimeout(0.3)
            with pytest.raises(socket.timeout):
                sock.recv(1)  # handler still running: nothing may be sent yet
            assert events[-1][0] == "handler-start"
            release.set()
            sock.settimeout(5)
            data = b""
            while not data.endswith(b"\x1c\x0d"):
                data += sock.recv(65536)
            received = time.monotonic()
            ack = data[1:-2].decode()
            done = [e for e in events if e[0] == "handler-done"][-1]
            assert done[1] == control_id(message)
            assert done[2] <= received
            assert fields(ack, "MSA")[1:3] == ["AA", control_id(message)]
    assert [e[0] for e in events] == ["handler-start", "handler-done"] * len(messages)


def test_nacks_carry_msa_and_err(loop):
    port = loop(mapping_handler([]))
    a01 = read(SAMPLES / "ADT-A01-02.hl7")
    no_pid3 = re.sub(r"^(PID\|[^|]*\|[^|]*\|)[^|]*", r"\1", a01, flags=re.MULTILINE)
    bad_event = a01.replace("ADT^A01^ADT_A01", "ADT^A99^ADT_A01")
    bad_encoding = a01.replace("MSH|^~\\&|", "MSH|^~\\|", 1)
    acks = mllp_send("127.0.0.1", port, [no_pid3, bad_event, bad_encoding, "NOT HL7", a01])
    msa = [fields(a, "MSA") for a in acks]
    err = [fields(a, "ERR") for a in acks]
    assert msa[0][1:3] == ["AE", control_id(a01)]
    assert err[0][2] == "PID^1^3" and err[0][3].startswith("101^") and err[0][8]
    assert msa[1][1] == "AR" and err[1][2] == "MSH^1^9" and err[1][3].startswith("201^")
    assert msa[2][1] == "AR" and err[2][2] == "MSH^1^2" and err[2][3].startswith("102^")
    assert msa[3][1:3] == ["AR", ""] and err[3][3].startswith("100^")
    assert msa[4][1] == "AA"  # the connection survived the errors


def test_handler_crash_gives_ae_207_without_details(loop):
    async def handle(raw: str) -> str:
        raise RuntimeError("database said: EVERYMAN ADAM 19880818")

    port = loop(handle)
    message = read(SAMPLES / "ADT-A01-02.hl7")
    (ack,) = mllp_send("127.0.0.1", port, [message])
    assert fields(ack, "MSA")[1:3] == ["AE", control_id(message)]
    err = fields(ack, "ERR")
    assert err[3].startswith("207^")
    assert "EVERYMAN" not in ack and "database" not in ack


def test_handler_hl7error_becomes_nack(loop):
    async def handle(raw: str) -> str:
        raise HL7Error("AE", "103", "PV1-2", "Patient class not known")

    port = loop(handle)
    (ack,) = mllp_send("127.0.0.1", port, [read(SAMPLES / "ADT-A01-02.hl7")])
    err = fields(ack, "ERR")
    assert fields(ack, "MSA")[1] == "AE"
    assert err[2] == "PV1^1^2" and err[3].startswith("103^") and err[8] == "Patient class not known"


def test_concurrent_connections(loop):
    log: list = []
    port = loop(mapping_handler(log))
    messages = [read(p) for p in MAPPED[:10]]
    results: dict[int, list[str]] = {}

    def client(i: int) -> None:
        results[i] = mllp_send("127.0.0.1", port, messages)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [0, 1, 2, 3]
    for acks in results.values():
        assert [fields(a, "MSA")[2] for a in acks] == [control_id(m) for m in messages]
        assert all(fields(a, "MSA")[1] == "AA" for a in acks)
    assert len(log) == 40
