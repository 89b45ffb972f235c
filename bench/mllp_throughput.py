"""HL7 v2 over MLLP: messages/s with ACK-after-commit, over a real socket, into a real store.

    python bench/mllp_throughput.py [--messages 2000] [--connections 1 4] [--database URL]
                                    [--profile out.html]

Without --database: a fresh SQLite file in a temp folder. Each message is a distinct ADT^A01
(new patient, encounter, location, attending) and is ACKed only after its transaction committed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharedcare.feeds.hl7v2 import mllp_send, serve_mllp

MSG = ("MSH|^~\\&|PAS|RBENCH|SC|SC|2024010112{mm:02d}{ss:02d}||ADT^A01^ADT_A01|{run}-{i:06d}|P|2.5\r"
       "EVN|A01|20240101120000\r"
       "PID|1||{nhs}{run}{i:06d}^^^RBENCH^MR||Bench^Patient{i}^Q||19700101|F|||{i} High St^^Leeds^^LS1 4AB\r"
       "PV1|1|I|WARD{w}^^^RBENCH||||DOC{d}^Who^Doctor|||||||||||||V{run}{i:06d}|||||||||||||||||"
       "||||||||20240101120000\r")


def nhs_numbers(n: int, salt: int) -> list[str]:
    """n distinct valid test-range NHS numbers (999...), different for each run."""
    from sharedcare.identity import nhs_number

    out, k = [], salt * 100_000
    while len(out) < n:
        stem = f"999{k % 10**6:06d}"
        k += 1
        out += [stem + str(d) for d in range(10) if nhs_number.is_valid(stem + str(d))]
    return out[:n]


# --mix: the ADT + ORU mix. An ADT^A01 with its visit number in PV1-19 (Patient, Encounter,
# Location, Practitioner) and then an ORU^R01 for the same patient (Patient, DiagnosticReport,
# three Observations), alternately: half the messages update a Patient written one message before.
ADT = ("MSH|^~\\&|PAS|RBENCH|SC|SC|2024010112{mm:02d}{ss:02d}||ADT^A01^ADT_A01|{run}-{i:06d}|P|2.5\r"
       "EVN|A01|20240101120000\r"
       "PID|1||{nhs}{run}{p:06d}^^^RBENCH^MR||Bench^Patient{p}^Q||19700101|F|||{p} High St^^Leeds^^LS1 4AB\r"
       "PV1|1|I|WARD{w}^^^RBENCH||||DOC{d}^Who^Doctor||||||||||||V{run}{p:06d}|||||||||||||||||"
       "|||||||20240101120000\r")
ORU = ("MSH|^~\\&|LAB|RBENCH|SC|SC|2024010113{mm:02d}{ss:02d}||ORU^R01^ORU_R01|{run}-{i:06d}|P|2.5\r"
       "PID|1||{nhs}{run}{p:06d}^^^RBENCH^MR||Bench^Patient{p}^Q||19700101|F\r"
       "OBR|1|PO{run}{p:06d}|FO{run}{p:06d}|24317-0^Hemogram and platelet count^LN|||"
       "20240101125000|||||||||||||||20240101130000||LAB|F\r"
       "OBX|1|NM|11273-0^Erythrocytes^LN||4.06|10*12/L|4.0-5.5|N|||F|||20240101125000\r"
       "OBX|2|NM|20570-8^Hematocrit^LN||40.1|%|36-46|N|||F|||20240101125000\r"
       "OBX|3|NM|11125-2^Platelets^LN||221|10*9/L|150-400|N|||F|||20240101125000\r")


def messages(n: int, run: str, nhs: list[str] | None = None, mix: bool = False) -> list[str]:
    if mix:
        return [(ADT if i % 2 == 0 else ORU).format(
            i=i, p=i // 2, run=run, mm=i // 60 % 60, ss=i % 60, w=i % 20, d=i % 50,
            nhs=f"{nhs[i // 2]}^^^NHS^NH~" if nhs else "") for i in range(n)]
    return [MSG.format(i=i, run=run, mm=i // 60 % 60, ss=i % 60, w=i % 20, d=i % 50,
                       nhs=f"{nhs[i]}^^^NHS^NH~" if nhs else "")
            for i in range(n)]


def run(service, feed: str, n: int, connections: int, run_id: str,
        nhs: list[str] | None = None, mix: bool = False) -> float:
    from sharedcare.feeds.service import mllp_handler

    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    server = asyncio.run_coroutine_threadsafe(
        serve_mllp("127.0.0.1", 0, mllp_handler(service, feed)), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    msgs = messages(n, run_id, nhs, mix)
    # Each connection sends whole patients (with --mix, an ADT and then its ORU) in order.
    step = 2 if mix else 1
    units = [msgs[i:i + step] for i in range(0, n, step)]
    chunks = [[m for u in units[k::connections] for m in u] for k in range(connections)]
    acks: list[list[str]] = [[] for _ in chunks]

    def client(k):
        acks[k] = mllp_send("127.0.0.1", port, chunks[k], timeout=120)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    bad = sum(1 for a in acks for x in a if "MSA|AA" not in x)
    if bad or sum(map(len, acks)) != n:
        raise SystemExit(f"{bad} messages not AA")
    return n / elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    p.add_argument("--database", default=None)
    p.add_argument("--profile", default=None, help="write a pyinstrument HTML profile here")
    p.add_argument("--nhs-numbers", action="store_true",
                   help="each patient carries a valid NHS number (linked to a Person on write)")
    p.add_argument("--compare-identity", action="store_true",
                   help="also run with the identity write hooks removed, for the cost of linking")
    p.add_argument("--rounds", type=int, default=2,
                   help="with --compare-identity: alternating on/off rounds")
    p.add_argument("--mix", action="store_true",
                   help="ADT^A01 (with Encounter) and ORU^R01 (report, 3 results) alternately")
    args = p.parse_args()

    from sharedcare.app import SharedCare
    from sharedcare.feeds.service import FeedService

    tmp = tempfile.mkdtemp(prefix="mllp-bench-")
    url = args.database or f"sqlite:///{tmp}/bench.sqlite"
    sc = SharedCare.open(url, Path(tmp) / "data")
    service = FeedService(sc)
    if service.get_feed("bench-adt", cached=False) is None:
        service.add_feed("RBENCH", "bench-adt", "hl7v2", status="live")
    backend = sc.engine.dialect.name
    run(service, "bench-adt", 50, 1, f"W{os.getpid()}", mix=args.mix)  # warm up (indexer, schema validators)
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled")
    # With --compare-identity the two modes alternate (on, off, on, off), so the store's growth
    # and the machine's other load fall on both alike; the overhead is the ratio of the sums.
    modes = (["identity linking on", "identity linking off"] * args.rounds
             if args.compare_identity else ["identity linking on"])
    hooks = (list(sc.store.before_write), list(sc.store.after_write))
    totals: dict[tuple[str, int], list[float]] = {}
    salt = 1
    for label in modes:
        on = label.endswith(" on")
        sc.store.before_write[:] = [h for h in hooks[0] if on or "identity" not in h.__module__]
        sc.store.after_write[:] = [h for h in hooks[1] if on or "identity" not in h.__module__]
        for c in args.connections:
            salt += 1
            nhs = nhs_numbers(args.messages, salt + os.getpid() % 50) if args.nhs_numbers else None
            if profiler:
                profiler.start()
            rate = run(service, "bench-adt", args.messages, c, f"R{c}{salt}x{os.getpid()}", nhs,
                       args.mix)
            if profiler:
                profiler.stop()
            totals.setdefault((label, c), []).append(rate)
            what = "ADT^A01+ORU^R01" if args.mix else "ADT^A01"
            print(f"{backend}: {args.messages} {what} over {c} connection(s), {label}"
                  f"{', with NHS numbers' if nhs else ''}: {rate:,.0f} msg/s (ACK after commit)",
                  flush=True)
    if args.compare_identity:
        for c in args.connections:
            on = sum(totals[("identity linking on", c)])
            off = sum(totals[("identity linking off", c)])
            print(f"{backend}, {c} connection(s): linking on is {100 * (1 - on / off):.1f}% "
                  f"below off over {args.rounds} alternating round(s)")
    if profiler:
        Path(args.profile).write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False)[:6000])
    sc.engine.dispose()


if __name__ == "__main__":
    main()
