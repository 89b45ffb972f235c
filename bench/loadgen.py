"""HTTP load generator for bench/run.py, run as its own process (so its CPU is not the server's).

    python bench/loadgen.py --spec spec.json --concurrency 1,4,16 --requests 2000 --duration 20

spec.json: {"base": "http://127.0.0.1:8123", "headers": {"authorization": "Bearer ..."},
            "requests": [{"kind": "patient_nhs", "path": "/fhir/Patient?identifier=..."}, ...]}

For each concurrency level C it opens C keep-alive HTTP/1.1 connections (asyncio streams, a
minimal client: no TLS, no redirects, Content-Length or chunked bodies) and sends the spec's
requests round robin until `--requests` have completed or `--duration` seconds have passed,
whichever comes first. It reports requests/s, latency p50/p95/p99 (overall and per kind), and
non-2xx/failed counts, as JSON on stdout (or to --json). Stdlib only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import summary


class Conn:
    def __init__(self, host: str, port: int, headers: dict[str, str]):
        self.host, self.port = host, port
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.prefix = extra + f"host: {host}:{port}\r\naccept: application/fhir+json\r\n\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None

    async def get(self, path: str) -> tuple[int, int]:
        """(status, body bytes). Reconnects once if the server closed the connection."""
        for attempt in (0, 1):
            if self.writer is None:
                await self.open()
            try:
                self.writer.write(f"GET {path} HTTP/1.1\r\n{self.prefix}".encode())
                await self.writer.drain()
                return await self._response()
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                await self.close()
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    async def _response(self) -> tuple[int, int]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, chunked, close = None, False, False
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v.strip())
            elif k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
            elif k == "connection" and "close" in v.lower():
                close = True
        size = 0
        if chunked:
            while True:
                n = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if n:
                    size += len(await self.reader.readexactly(n))
                await self.reader.readexactly(2)
                if not n:
                    break
        elif length is not None:
            size = len(await self.reader.readexactly(length))
        if close:
            await self.close()
        return status, size


async def level(
    base: str,
    headers: dict[str, str],
    reqs: list[dict],
    concurrency: int,
    max_requests: int,
    duration: float,
    warmup: int,
) -> dict:
    u = urlsplit(base)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    conns = [Conn(host, port, headers) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))
    # untimed warm-up, one connection
    for i in range(min(warmup, len(reqs))):
        await conns[0].get(reqs[i]["path"])
    nxt = 0
    lat: dict[str, list[float]] = {}
    statuses: dict[str, int] = {}
    failures: list[str] = []
    body_bytes = 0
    t0 = time.perf_counter()
    deadline = t0 + duration

    async def worker(c: Conn) -> None:
        nonlocal nxt, body_bytes
        while True:
            if nxt >= max_requests or time.perf_counter() > deadline:
                return
            r = reqs[nxt % len(reqs)]
            nxt += 1
            s = time.perf_counter()
            try:
                status, size = await c.get(r["path"])
            except Exception as e:  # noqa: BLE001 - counted and reported
                failures.append(f"{type(e).__name__}: {e}"[:200])
                continue
            ms = (time.perf_counter() - s) * 1000.0
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            body_bytes += size
            if 200 <= status < 300:
                lat.setdefault(r["kind"], []).append(ms)

    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in conns))
    ok = sum(len(v) for v in lat.values())
    every = [x for v in lat.values() for x in v]
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "sent": nxt,
        "ok": ok,
        "non_2xx": sum(n for s, n in statuses.items() if not s.startswith("2")),
        "failed": len(failures),
        "failures": failures[:3],
        "statuses": statuses,
        "requests_per_s": ok / elapsed if elapsed > 0 else None,
        "mean_body_bytes": body_bytes / max(1, sum(statuses.values())),
        "time_bound_hit": nxt < max_requests,
        "latency": summary(every),
        "by_kind": {k: summary(v) for k, v in sorted(lat.items())},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    ap.add_argument("--requests", type=int, default=2000, help="requests per level (max)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per level (max)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed requests before each level")
    ap.add_argument("--json", type=Path, default=None, help="write results here, not stdout")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= 1_000_000:
        ap.error("--requests must be 1..1,000,000")
    if not 0 < args.duration <= 600:
        ap.error("--duration must be in (0, 600]")
    spec = json.loads(args.spec.read_text())
    reqs = spec["requests"]
    if not reqs:
        ap.error("the spec has no requests")
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if any(not 1 <= c <= 256 for c in levels):
        ap.error("concurrency levels must be 1..256")
    out = {
        "client": "bench/loadgen.py: asyncio, one keep-alive HTTP/1.1 connection per "
        "concurrent worker, requests round robin over the spec",
        "requests_per_level": args.requests,
        "duration_bound_s": args.duration,
        "levels": [],
    }
    for c in levels:
        out["levels"].append(
            asyncio.run(
                level(
                    spec["base"],
                    spec.get("headers", {}),
                    reqs,
                    c,
                    args.requests,
                    args.duration,
                    args.warmup,
                )
            )
        )
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
