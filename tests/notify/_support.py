"""A small care system for the notification tests, a real HTTP receiver and a real SMTP server."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from sqlalchemy import func, select

from sharedcare.feeds.service import FeedService
from sharedcare.governance.schema import audit_event
from sharedcare.notify.schema import notify_delivery, notify_event, notify_inbox

HOSPITAL = "RTEST"  # the sc fixture's trust
GP = "P89999"
OTHER_GP = "P80000"
FEED = "pas-adt"
AGREEMENT = "DSA-NOTIFY"
NHS = "9434765919"


def admission(n: int, visit: str | None = None, practice: str = GP, klass: str = "I",
              mrn: str | None = None, nhs: str = NHS, discharged: bool = False) -> str:
    """An ADT A01 (A03 with ``discharged``) for a patient registered with ``practice``."""
    event = "A03" if discharged else "A01"
    when = "20260102120000" if discharged else "20260101120000"
    period = "|" * 25 + "20260101080000" + ("|20260102110000" if discharged else "")
    return (f"MSH|^~\\&|PAS|{HOSPITAL}|SC|SC|{when}||ADT^{event}^ADT_{event}|M{n}{event}|P|2.5\r"
            f"EVN|{event}|{when}\r"
            f"PID|1||{mrn or f'MRN{n}'}^^^{HOSPITAL}^MR~{nhs}^^^NHS^NH||Smith^Jane||19800101|F|||"
            "1 High St^^Leeds^^LS1 4AB\r"
            f"PD1|||Brookside Medical Centre^^^^^ODS^^^^{practice}\r"
            f"PV1|1|{klass}|WARD1^^^{HOSPITAL}||||||||||||||||{visit or f'V{n}'}{period}\r")


def world(sc, categories=("demographics", "encounters", "results")) -> FeedService:
    """The trust (a live ADT feed), two GP practices, one active agreement (trust + GP)."""
    g = sc.governance
    g.add_organisation(GP, "Brookside Medical Centre", "gp-practice")
    g.add_organisation(OTHER_GP, "Other Surgery", "gp-practice")
    g.add_agreement(AGREEMENT, "Direct care", [HOSPITAL, GP], ["direct-care"], list(categories),
                    status="active")
    feeds = FeedService(sc)
    feeds.add_feed(HOSPITAL, FEED, "hl7v2", status="live")
    return feeds


def ack_ok(ack: str) -> bool:
    return "MSA|AA" in ack


def deliveries(sc) -> dict[str, int]:
    with sc.engine.connect() as c:
        return dict(c.execute(select(notify_delivery.c.status, func.count())
                              .group_by(notify_delivery.c.status)).all())


def events(sc) -> list:
    with sc.engine.connect() as c:
        return c.execute(select(notify_event).order_by(notify_event.c.id)).all()


def inbox(sc, ods: str) -> list:
    with sc.engine.connect() as c:
        return c.execute(select(notify_inbox).where(notify_inbox.c.ods == ods)
                         .order_by(notify_inbox.c.id)).all()


def audits(sc, action: str = "notify") -> list:
    with sc.engine.connect() as c:
        return c.execute(select(audit_event.c.ods, audit_event.c.outcome, audit_event.c.entity,
                                audit_event.c.patient_id, audit_event.c.reason)
                         .where(audit_event.c.action == action)
                         .order_by(audit_event.c.seq)).all()


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes

    def json(self):
        return orjson.loads(self.body)

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class Receiver:
    """A partner's system: a threaded HTTP server that records every POST. ``fail`` makes the
    next N answer 503; ``hold`` (an Event) makes requests wait until it is set."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    fail: int = 0
    hold: threading.Event | None = None
    delay: float = 0.0  # seconds each answer takes
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.arrived.set()
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    failing = receiver.fail > 0
                    if failing:
                        receiver.fail -= 1
                    else:
                        receiver.received.append(Received(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return server

    def keys(self) -> list[str]:
        return [r.key for r in self.received]

    def unique(self) -> dict[str, Received]:
        """What a receiver that honours Idempotency-Key keeps: the first of each key."""
        out: dict[str, Received] = {}
        for r in self.received:
            out.setdefault(r.key, r)
        return out
