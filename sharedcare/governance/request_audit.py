"""One audit event for every FHIR API request, whatever its outcome.

Handlers record the event that says what was done (a read of Patient/1, a refused search). Any
request that ends without one -- a 401, a malformed body, a refused write rolled back with its
transaction, an unexpected 500 -- is recorded here, once, after the handler has finished and its
transaction has closed. So the trail holds exactly one event per request and no refusal goes
unrecorded.

The per-request record travels in a context variable: the ASGI middleware creates it, the
handler's thread (which copies the context) fills it in through `Governance.authenticate` and
`Governance.audit`.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from .policy import Access


@dataclass
class RequestRecord:
    method: str
    path: str
    access: Access | None = None
    audited: bool = False
    status: int = 0
    reason: str | None = None


current_request: ContextVar[RequestRecord | None] = ContextVar("sharedcare_request", default=None)

ANONYMOUS = Access(username=None, ods=None, role="anonymous", kind="anonymous")


def action_of(method: str, path: str) -> str:
    if "$everything" in path:
        return "everything"
    if "$export" in path:
        return "export"
    if "/_history" in path:
        return "history"
    return {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update", "PATCH": "update",
            "DELETE": "delete"}.get(method, "operation")


def outcome_of(status: int) -> str:
    """FHIR AuditEvent.outcome: 0 success, 4 minor failure (refused, bad request), 8 serious."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


class AuditEveryRequest:
    """ASGI middleware for the FHIR API (paths under `prefix`)."""

    def __init__(self, app, audit, prefix: str = "/fhir"):
        self.app = app
        self.audit = audit  # callable(access, action, outcome, **kw), i.e. Governance.audit
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix) or \
                scope["path"] == f"{self.prefix}/metadata":
            return await self.app(scope, receive, send)
        record = RequestRecord(scope["method"], scope["path"])
        token = current_request.set(record)

        async def capture(message):
            if message["type"] == "http.response.start":
                record.status = message["status"]
                # Committed before the answer leaves, like every other audit event.
                await self._record(record)
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception:
            record.status = record.status or 500
            raise
        finally:
            current_request.reset(token)
            await self._record(record)  # no response was started (an exception escaped)

    async def _record(self, record: RequestRecord) -> None:
        if record.audited:
            return
        from starlette.concurrency import run_in_threadpool

        record.audited = True
        # The entity is the path only: a query string can hold patient data.
        await run_in_threadpool(
            self.audit, record.access or ANONYMOUS, action_of(record.method, record.path),
            outcome_of(record.status or 500), entity=record.path[:400].replace("\x00", ""),
            reason=record.reason or f"HTTP {record.status or 500}")
