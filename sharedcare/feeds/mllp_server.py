"""Run the HL7 v2 MLLP listener on its own:

    python -m sharedcare.feeds.mllp_server --port 2575 --database URL --feed pas-adt [--ods RXX]

Every message is ACKed only after its transaction has committed (see FeedService.ingest_hl7).
With ``--ods`` a missing feed is created (live); without ``--feed`` messages are routed by
MSH-3/MSH-4. Prints ``MLLP listening on HOST:PORT`` once the socket accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path


async def _run(args) -> None:
    from ..app import SharedCare
    from .hl7v2 import serve_mllp
    from .service import FeedService, mllp_handler

    sc = SharedCare.open(args.database, Path(args.data_dir) if args.data_dir else None)
    service = FeedService(sc)
    if args.feed and args.ods and service.get_feed(args.feed, cached=False) is None:
        service.add_feed(args.ods, args.feed, "hl7v2", status="live")
    server = await serve_mllp(args.host, args.port, mllp_handler(service, args.feed))
    port = server.sockets[0].getsockname()[1]
    print(f"MLLP listening on {args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - Windows
            pass
    await stop.wait()
    server.close()
    await server.wait_closed()
    sc.engine.dispose()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sharedcare.feeds.mllp_server",
                                description="HL7 v2 over MLLP into sharedcare")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575)
    p.add_argument("--database", default=None, help="database URL (default: embedded SQLite)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--feed", default=None, help="feed id every message belongs to")
    p.add_argument("--ods", default=None, help="create the feed for this ODS code if missing")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
