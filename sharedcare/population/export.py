"""FHIR Bulk Data Access (``$export``) for authorised partner systems.

Kick-off (``Prefer: respond-async`` required; 202 + ``Content-Location``)::

    GET /fhir/$export                      every resource the client may read
    GET /fhir/Patient/$export              the patient compartments of all patients
    GET /fhir/Group/{id}/$export           the patient compartments of the Group's members
        ?_type=Patient,Condition  &_since=2026-01-01T00:00:00Z  &_outputFormat=application/fhir+ndjson

Status and files::

    GET    /fhir/$export-poll/{job}        202 + X-Progress while running, 200 + manifest when done
    DELETE /fhir/$export-poll/{job}        cancel (and delete the files)
    GET    /fhir/$export-file/{job}/{name}.ndjson

Governance: the export runs under the requester's own ``Access`` and reads with
``Store.iter_current(access.policy, ...)`` -- the same SQL predicate as every direct-care read --
narrowed (never widened) to the requested compartments and to resources last updated at or
before the manifest's ``transactionTime``. So a client exports exactly what it could page
through with ``GET /fhir/{type}``. The kick-off writes one audit event (action ``export``);
status, files and cancel need the same token's identity (same client/user, organisation and
role), and every response to anyone else is 403. The files are the stored JSON bytes, one
resource a line, written without re-serialisation under ``$SHAREDCARE_EXPORT_DIR/{job}/``
(default ``<data dir>/exports/``).

Several servers: the job runs on the server that took the kick-off, and its status (progress,
manifest, error) is kept in the shared state (``sharedcare.store.shared_state``: the database,
or Redis), so a poll, a download or a cancel may land on any server. Every server must see the
same export directory (a shared volume: ``SHAREDCARE_EXPORT_DIR``). A cancel at another server
is seen by the running job within a second; a job whose server stopped is reported as an error
after ``STALLED`` seconds without progress. Finished jobs and their files are kept for
``JOB_LIFETIME`` (24 hours, the manifest's ``Expires``) and then swept away by the servers.
With a read replica (``SHAREDCARE_DATABASE_READ_URL``) the job reads from it once it has replayed
the primary's WAL up to the kick-off (waiting up to ``REPLICA_WAIT``), else from the primary.

Only ``_outputFormat`` NDJSON (``application/fhir+ndjson``, ``application/ndjson``,
``ndjson``) is supported; ``_typeFilter``, ``_elements``, ``patient`` and
``includeAssociatedData`` are refused with 400 unless ``Prefer: handling=lenient``, when they are
ignored. The routes must come before ``FhirApi``'s (``/fhir/{type}`` would match ``$export``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import and_, func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ..fhir.compartment import patient_compartment_types
from ..fhir.outcome import FHIRError, Issue, operation_outcome
from ..fhir.validation import resource_types
from ..governance.auth import forbidden, parse_scopes
from ..governance.policy import Access
from ..store.db import reads_from_replica
from ..store.repository import instant, now_utc
from ..store.schema import compartment, resource
from ..store.shared_state import shared_state_of

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
UNSUPPORTED = ("_typeFilter", "_elements", "patient", "includeAssociatedData")
MAX_PER_FILE = 100_000
WINDOW = 10_000  # row keys per query
_NAME_RE = re.compile(r"^[A-Z][A-Za-z]+-\d{1,6}$")
_JOB_RE = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger(__name__)
ENV_EXPORT_DIR = "SHAREDCARE_EXPORT_DIR"  # a directory every server shares
JOB_LIFETIME = 24 * 3600  # a finished job's manifest and files (the manifest's Expires)
STALLED = 300  # seconds without a sign of life before a running job is reported lost
SAVE_EVERY = 0.5  # seconds between a running job's status writes (and cancel checks)
REPLICA_WAIT = 30  # seconds an export waits for the read replica to catch up
SWEEP_EVERY = 600  # seconds between a server's sweeps of expired jobs' files
JOB, CANCEL = "export", "export-cancel"  # kinds of shared state


def export_root(sc) -> Path:
    """Where export files go: $SHAREDCARE_EXPORT_DIR, else <data dir>/exports."""
    return Path(os.environ.get(ENV_EXPORT_DIR) or Path(sc.data_dir) / "exports")


class _Narrowed:
    """``access.policy`` AND extra conditions: the export can only ever see less than the
    client could through the normal API, never more."""

    def __init__(self, policy, *extra):
        self.policy = policy
        self.extra = extra

    def resource_filter(self):
        base = self.policy.resource_filter()
        conds = ([base] if base is not None else []) + list(self.extra)
        return and_(*conds) if conds else None


def _identity(access: Access) -> dict:
    return {"kind": access.kind, "username": access.username, "client_id": access.client_id,
            "ods": access.ods, "role": access.role, "purpose": access.purpose}


@dataclass
class Job:
    id: str
    folder: Path
    requester: dict
    request: str
    transaction_time: str  # stored form (naive UTC)
    base: str
    types: list[str] | None
    since: str | None
    level: str
    status: str = "running"  # running | complete | error | cancelled
    progress: int = 0
    output: list[dict] = field(default_factory=list)
    error: str | None = None
    finished: float | None = None  # wall clock
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    saved: float = 0.0  # monotonic time of the last status write
    position: str | None = None  # the primary's WAL position at kick-off (with a replica)

    def manifest(self) -> dict:
        return _manifest(self.state())

    def state(self) -> dict:
        """What every server knows of the job (the shared state's "export" entry)."""
        return {"requester": self.requester, "request": self.request,
                "transaction_time": self.transaction_time, "base": self.base,
                "types": self.types, "since": self.since, "level": self.level,
                "status": self.status, "progress": self.progress, "output": self.output,
                "error": self.error, "finished": self.finished, "beat": time.time()}


def _manifest(state: dict) -> dict:
    return {
        "transactionTime": instant(state["transaction_time"]),
        "request": state["request"],
        "requiresAccessToken": True,
        "output": state["output"],
        "error": [],
    }


class BulkExport:
    """Export jobs of one SharedCare instance; ``routes()`` gives the HTTP interface. Jobs run
    here; their status is in the shared state, so any server answers polls, files and cancels."""

    def __init__(self, sc):
        self.sc = sc
        self.root = export_root(sc)
        self.state = shared_state_of(sc)
        self.jobs: dict[str, Job] = {}  # jobs running in this process
        self.lock = threading.Lock()
        self._swept = 0.0

    # ------------------------------------------------------------------ HTTP
    def routes(self) -> list[Route]:
        h = self._handle
        return [
            Route("/fhir/$export", h(self.kickoff), methods=["GET"]),
            Route("/fhir/Patient/$export", h(self.kickoff), methods=["GET"]),
            Route("/fhir/Group/{id}/$export", h(self.kickoff), methods=["GET"]),
            Route("/fhir/$export-poll/{job}", h(self.status), methods=["GET", "DELETE"]),
            Route("/fhir/$export-file/{job}/{name}.ndjson", h(self.file), methods=["GET"]),
        ]

    def _handle(self, fn):
        async def endpoint(request: Request) -> Response:
            try:
                return await run_in_threadpool(fn, request)
            except FHIRError as e:
                return Response(orjson.dumps(e.outcome()), e.status, headers=e.headers,
                                media_type=FHIR_JSON)

        return endpoint

    @staticmethod
    def _base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/fhir"

    def kickoff(self, request: Request) -> Response:
        gov = self.sc.governance
        access = gov.authenticate(request, cookie=False)  # starts work: no cookie
        self.sweep()  # expired jobs' files, now and then
        gid = request.path_params.get("id")
        path = request.url.path
        level = "group" if gid is not None else "patient" if path.endswith(
            "/Patient/$export") else "system"
        entity = f"$export {level}" + (f" Group/{gid}" if gid else "") + \
            (f"?{request.url.query}" if request.url.query else "")
        try:
            job = self._start(request, access, level, gid)
        except FHIRError as e:
            gov.audit(access, "export", "4", entity=entity[:400], reason=str(e)[:1000])
            raise
        gov.audit(access, "export", "0", entity=entity[:400],
                  reason=f"bulk export job {job.id}; types: "
                         f"{','.join(job.types) if job.types else 'all permitted'}")
        return Response(status_code=202, headers={
            "Content-Location": f"{job.base}/$export-poll/{job.id}"})

    def _params(self, request: Request, lenient: bool) -> tuple[list[str] | None, str | None]:
        q = request.query_params
        fmt = q.get("_outputFormat")
        if fmt is not None and fmt not in OUTPUT_FORMATS:
            raise FHIRError.of(400, "not-supported", f"_outputFormat '{fmt}' is not supported: "
                               "only application/fhir+ndjson", "_outputFormat")
        for p in q:
            if p in UNSUPPORTED and not lenient:
                raise FHIRError.of(400, "not-supported", f"the {p} parameter is not supported "
                                   "(send Prefer: handling=lenient to ignore it)", p)
        types: list[str] | None = None
        raw = [t.strip() for v in q.getlist("_type") for t in v.split(",") if t.strip()]
        if raw:
            known = resource_types()
            bad = [t for t in raw if t not in known]
            if bad:
                raise FHIRError.of(400, "invalid", f"_type names unknown resource type(s): "
                                   f"{', '.join(bad)}", "_type")
            types = list(dict.fromkeys(raw))
        since = None
        if q.get("_since"):
            since = _stored_time(q["_since"])
        return types, since

    def _start(self, request: Request, access: Access, level: str, gid: str | None) -> Job:
        prefer = request.headers.get("prefer", "")
        if "respond-async" not in prefer:
            raise FHIRError.of(400, "invalid", "$export is asynchronous: send "
                               "'Prefer: respond-async'")
        lenient = "handling=lenient" in prefer
        types, since = self._params(request, lenient)
        readable = self._readable(access, types, level)
        extra = []
        tx = now_utc()
        extra.append(resource.c.last_updated <= tx)
        if level == "patient":
            extra.append(resource.c.pk.in_(select(compartment.c.resource_pk)))
        elif level == "group":
            members = self._members(access, gid)
            extra.append(resource.c.pk.in_(select(compartment.c.resource_pk).where(
                compartment.c.patient_id.in_(members or ["-"]))))
        policy = _Narrowed(access.policy, *extra)
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        job = Job(job_id, folder, _identity(access), str(request.url), tx, self._base(request),
                  readable, since, level)
        replica = getattr(self.sc, "replica", None)
        if replica is not None:
            job.position = replica.write_position()
        self.state.put(JOB, job_id, job.state(), JOB_LIFETIME)
        job.saved = time.monotonic()
        with self.lock:
            self.jobs[job_id] = job
        job.thread = threading.Thread(target=self._run, args=(job, policy), daemon=True,
                                      name=f"export-{job_id[:8]}")
        job.thread.start()
        return job

    def _readable(self, access: Access, types: list[str] | None, level: str) -> list[str] | None:
        """The types to export: the requested ones (each needs a read scope), else every type
        the token's scopes allow; patient and group level keep to the patient compartment."""
        scopes = parse_scopes(" ".join(access.scopes))
        compartment_types = set(patient_compartment_types()) | {"Patient"}
        if types is not None:
            for t in types:
                if not any(s.allows(t, "r") for s in scopes):
                    raise forbidden(f"the access token's scopes do not allow reading {t}")
                if level != "system" and t not in compartment_types:
                    raise FHIRError.of(400, "invalid", f"{t} is not in the patient compartment,"
                                       f" so a {level}-level export cannot include it", "_type")
            return types
        if any(s.rtype == "*" and "r" in s.perms for s in scopes):
            return None if level == "system" else sorted(compartment_types)
        allowed = sorted({s.rtype for s in scopes if "r" in s.perms})
        if level != "system":
            allowed = [t for t in allowed if t in compartment_types]
        if not allowed:
            raise forbidden("the access token's scopes allow reading no resource type")
        return allowed

    def _members(self, access: Access, gid: str) -> list[str]:
        scopes = parse_scopes(" ".join(access.scopes))
        if not any(s.allows("Group", "r") for s in scopes):
            raise forbidden("the access token's scopes do not allow reading Group")
        group = self.sc.store.read("Group", gid, access.policy).json()
        out = []
        for m in group.get("member") or []:
            if m.get("inactive"):
                continue
            ref = (m.get("entity") or {}).get("reference") or ""
            parts = ref.split("/")
            if len(parts) >= 2 and parts[-2] == "Patient":
                out.append(parts[-1])
        return out

    # ------------------------------------------------------------------ the job
    def _run(self, job: Job, policy) -> None:
        # With a read replica the export reads from it, once it has replayed everything
        # committed before the kick-off (transactionTime); else from the primary.
        replica = getattr(self.sc, "replica", None)
        use = replica is not None and job.position is not None and \
            replica.caught_up(job.position, REPLICA_WAIT)
        with reads_from_replica(use):
            self._export(job, policy)

    def _export(self, job: Job, policy) -> None:
        handles: dict[str, tuple] = {}  # type -> (file, name, count in file)
        counts: dict[str, int] = {}
        files: list[tuple[str, str, int]] = []
        try:
            n = 0
            for s in self._rows(policy, job):
                h = handles.get(s.type)
                if h is None or h[2] >= MAX_PER_FILE:
                    if h is not None:
                        h[0].close()
                        files.append((s.type, h[1], h[2]))
                    part = counts.get(s.type, 0) // MAX_PER_FILE + 1
                    name = f"{s.type}-{part}"
                    h = [open(job.folder / f"{name}.ndjson", "wb", buffering=1 << 20), name, 0]  # noqa: SIM115
                    handles[s.type] = h
                h[0].write(s.content)
                h[0].write(b"\n")
                h[2] += 1
                counts[s.type] = counts.get(s.type, 0) + 1
                n += 1
                if not n % 1000:
                    job.progress = n
                    if self._tick(job):
                        break
            job.progress = n
            for t, h in handles.items():
                h[0].close()
                files.append((t, h[1], h[2]))
            handles.clear()
            if self._tick(job, force=True):
                self._drop(job)
                return
            job.output = [{"type": t, "url": f"{job.base}/$export-file/{job.id}/{name}.ndjson",
                           "count": c} for t, name, c in sorted(files)]
            job.status = "complete"
            job.finished = time.time()
            (job.folder / "manifest.json").write_bytes(orjson.dumps(job.manifest()))
            self.state.put(JOB, job.id, job.state(), JOB_LIFETIME)
            if self._cancelled(job):  # cancelled while finishing
                self._drop(job)
        except Exception as e:  # noqa: BLE001 - reported to the client through the status URL
            job.error = f"{type(e).__name__}: {e}"
            job.status = "error"
            job.finished = time.time()
            try:
                self.state.put(JOB, job.id, job.state(), JOB_LIFETIME)
            except Exception:  # the poll will report the job as stalled
                log.exception("export job %s: its error could not be recorded", job.id)
        finally:
            for h in handles.values():
                h[0].close()
            with self.lock:
                self.jobs.pop(job.id, None)

    def _cancelled(self, job: Job) -> bool:
        if not job.cancel.is_set() and self.state.get(CANCEL, job.id) is not None:
            job.cancel.set()  # cancelled through another server
        return job.cancel.is_set()

    def _tick(self, job: Job, force: bool = False) -> bool:
        """Every SAVE_EVERY seconds (or when forced): look for a cancel from any server and
        publish the progress. True when the job is cancelled."""
        now = time.monotonic()
        if not force and now - job.saved < SAVE_EVERY:
            return job.cancel.is_set()
        job.saved = now
        if self._cancelled(job):
            return True
        self.state.put(JOB, job.id, job.state(), JOB_LIFETIME)
        return False

    def _drop(self, job: Job) -> None:
        job.status = "cancelled"
        self.state.delete(JOB, job.id)
        shutil.rmtree(job.folder, ignore_errors=True)

    def sweep(self, force: bool = False) -> int:
        """Remove the files of jobs that are gone (expired, cancelled, or lost with their
        server) and expired shared-state entries; at most every SWEEP_EVERY seconds unless
        forced. How many jobs' folders went."""
        now = time.monotonic()
        if not force and now - self._swept < SWEEP_EVERY:
            return 0
        self._swept = now
        self.state.purge()
        if not self.root.is_dir():
            return 0
        gone = 0
        for folder in self.root.iterdir():
            if not folder.is_dir() or not _JOB_RE.match(folder.name):
                continue
            try:
                age = time.time() - folder.stat().st_mtime
            except OSError:
                continue
            # A folder just made may belong to a job whose state is being written elsewhere.
            if age > 2 * STALLED and self.state.get(JOB, folder.name) is None:
                shutil.rmtree(folder, ignore_errors=True)
                gone += 1
        return gone

    def _rows(self, policy, job: Job):
        """``iter_current`` over consecutive row-key windows: each query is an index range scan
        of at most WINDOW rows, so the cost stays linear in the store's size (one unbounded
        ``pk > last ORDER BY pk LIMIT n`` query re-sorts everything after ``last`` on
        PostgreSQL when the policy's correlated sub-query hides the order from the planner)."""
        with self.sc.engine.connect() as conn:
            lo, hi = conn.execute(select(func.min(resource.c.pk), func.max(resource.c.pk))).one()
        if lo is None:
            return
        start = lo - 1
        while start < hi and not self._tick(job):
            end = start + WINDOW
            window = _Narrowed(policy, resource.c.pk > start, resource.c.pk <= end)
            yield from self.sc.store.iter_current(window, job.types, job.since, batch=WINDOW)
            start = end

    def _job_for(self, request: Request) -> tuple[Access, str, dict]:
        """The job's shared state, from whichever server started it."""
        access = self.sc.governance.authenticate(request)
        jid = request.path_params["job"]
        job = self.state.get(JOB, jid) if _JOB_RE.match(jid) else None
        if job is None or job["status"] == "cancelled":
            raise FHIRError.of(404, "not-found", "no such export job (finished jobs' files are "
                               "kept for 24 hours or until deleted; cancelled jobs are gone)")
        if job["requester"] != _identity(access):
            raise forbidden("this export belongs to another client")
        return access, jid, job

    def status(self, request: Request) -> Response:
        _access, jid, job = self._job_for(request)
        if request.method == "DELETE":
            # Whichever server runs the job sees the cancel within SAVE_EVERY and stops.
            self.state.put(CANCEL, jid, True, JOB_LIFETIME)
            self.state.delete(JOB, jid)
            with self.lock:
                local = self.jobs.get(jid)
            if local is not None:
                local.cancel.set()
            if job["status"] != "running":
                shutil.rmtree(self.root / jid, ignore_errors=True)
            return Response(status_code=202)
        if job["status"] == "running":
            if time.time() - job["beat"] > STALLED:
                return _error_response("the export stopped making progress (the server "
                                       "running it may have stopped); start it again")
            return Response(status_code=202, headers={
                "X-Progress": f"{job['progress']} resources exported", "Retry-After": "1"})
        if job["status"] == "error":
            return _error_response(job["error"] or "export failed")
        expires = (job.get("finished") or time.time()) + JOB_LIFETIME
        return Response(orjson.dumps(_manifest(job)), 200, media_type="application/json",
                        headers={"Expires": _http_date(expires)})

    def file(self, request: Request) -> Response:
        _access, jid, job = self._job_for(request)
        name = request.path_params["name"]
        if job["status"] != "complete" or not _NAME_RE.match(name):
            raise FHIRError.of(404, "not-found", f"no file {name}.ndjson in this export")
        path = self.root / jid / f"{name}.ndjson"
        if not path.is_file():
            raise FHIRError.of(404, "not-found", f"no file {name}.ndjson in this export")
        return FileResponse(path, media_type=NDJSON)


def _stored_time(text: str) -> str:
    """A FHIR instant/date/dateTime as the store's naive UTC text."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise FHIRError.of(400, "invalid", f"_since '{text}' is not a FHIR instant",
                           "_since") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _http_date(epoch: float) -> str:
    from email.utils import format_datetime

    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


def _error_response(message: str) -> Response:
    return Response(orjson.dumps(operation_outcome([Issue("exception", message)])), 500,
                    media_type=FHIR_JSON)


def routes(sc) -> list[Route]:
    """The $export routes for ``create_app``: put them BEFORE ``FhirApi(...).routes()``."""
    bulk = getattr(sc, "_bulk_export", None)
    if bulk is None:
        bulk = BulkExport(sc)
        try:
            sc._bulk_export = bulk
        except AttributeError:  # pragma: no cover - a frozen SharedCare
            pass
    return bulk.routes()


__all__ = ["BulkExport", "Job", "routes"]
