"""MLLP listener (asyncio, python-hl7 streams) and a small blocking client."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from hl7.mllp import start_hl7_server
from hl7.mllp.exceptions import InvalidBlockError

from ...logsafe import log_failure
from .ack import build_ack
from .errors import HL7Error

log = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # documents with base64 PDFs are large


def _decode(block: bytes) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("latin-1")


async def _respond(raw: str, handle: Callable[[str], Awaitable[str]]) -> str:
    try:
        return await handle(raw)
    except HL7Error as exc:
        return build_ack(raw, exc.ack_code, exc)
    except Exception as e:  # noqa: BLE001 - any failure is a NACK, never a dropped connection
        # Neither the NACK nor the log carries the details, which may hold patient data.
        log_failure(log, "HL7 v2 handler failed", e)
        return build_ack(raw, "AE", HL7Error("AE", "207", None, "Application internal error"))


async def serve_mllp(
    host: str, port: int, handle: Callable[[str], Awaitable[str]]
) -> asyncio.AbstractServer:
    """Start an MLLP server.  Each framed message is passed to ``handle(raw)``, which returns the
    ACK text; the ACK is written only after ``handle`` has returned.  Messages on one connection
    are processed in order; a connection stays open for any number of messages."""

    async def connection(reader, writer) -> None:
        try:
            while True:
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError:
                    break  # peer closed
                except InvalidBlockError:
                    log.warning("MLLP block without start character discarded")
                    continue
                except ValueError:
                    log.warning("MLLP message over %d bytes; closing connection", MAX_MESSAGE_BYTES)
                    break
                ack = await _respond(_decode(block), handle)
                writer.writeblock(ack.encode("utf-8"))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return await start_hl7_server(connection, host, port, limit=MAX_MESSAGE_BYTES)


def _frame(message: str) -> bytes:
    text = message.replace("\r\n", "\r").replace("\n", "\r")
    if not text.endswith("\r"):
        text += "\r"
    return START + text.encode("utf-8") + END


def mllp_send(host: str, port: int, messages: list[str], timeout: float = 30.0) -> list[str]:
    """Send messages over one MLLP connection, waiting for each ACK before the next message.
    Segment separators are normalised to CR.  Returns the ACK texts in order."""
    acks: list[str] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        buffer = b""
        for message in messages:
            sock.sendall(_frame(message))
            while END not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("MLLP peer closed the connection before acknowledging")
                buffer += chunk
            block, _, buffer = buffer.partition(END)
            start = block.find(START)
            acks.append(_decode(block[start + 1 if start != -1 else 0 :]))
    return acks
