"""The one application object: database, store, governance and the web/FHIR routes."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware

from . import notify
from .governance import Governance
from .governance.audit import AuditTrail
from .governance.auth import TokenService, load_signing_key
from .identity import hook as identity_hook
from .programme import schema as _programme_schema  # noqa: F401  (tables in metadata)
from .store import migrate
from .store.db import ReadReplica, data_dir, make_engine, make_read_replica
from .store.indexing import Indexer
from .store.repository import Store
from .store.shared_state import SharedState, open_shared_state


@dataclass
class SharedCare:
    """Everything a request handler needs, built once per process."""

    engine: Engine
    store: Store
    governance: Governance
    data_dir: Path
    # Sign-ins in progress, one-time codes, used assertion ids, export jobs: in the database
    # (or Redis with $SHAREDCARE_REDIS_URL), so any server can answer the next request.
    shared: SharedState | None = None
    # $SHAREDCARE_DATABASE_READ_URL: a streaming replica for searches, history, $everything,
    # their pages and exports (read-your-writes: see store.db.ReadReplica).
    replica: ReadReplica | None = None

    @property
    def sealer(self):
        """Seals the secrets kept in the database (keys/secrets.fernet, never in it)."""
        from .governance.sealed import Sealer

        return Sealer(self.data_dir / "keys")

    @classmethod
    def open(cls, database: str | None = None, folder: Path | None = None,
             upgrade: bool = True, read_database: str | None = None) -> "SharedCare":
        folder = Path(folder) if folder else data_dir()
        engine = make_engine(database, folder)
        if upgrade:
            migrate.upgrade(engine)
        store = Store(engine, _indexer())
        identity_hook.install(store)  # every Patient written gets its Person (or is queued)
        keys = folder / "keys"
        gov = Governance(engine, store, TokenService(load_signing_key(keys), engine=engine),
                         AuditTrail.open(engine, keys))
        shared = open_shared_state(engine)
        replica = make_read_replica(engine, shared, read_database)
        store.replica = replica
        sc = cls(engine, store, gov, folder, shared, replica)
        notify.install(sc)  # events in an outbox, in the write's own transaction
        return sc


_INDEXER: Indexer | None = None


def _indexer() -> Indexer:
    # Compiling ~1,000 search parameters takes a moment: do it once per process.
    global _INDEXER
    if _INDEXER is None:
        _INDEXER = Indexer()
    return _INDEXER


def create_app(sc: SharedCare | None = None, **open_kwargs) -> Starlette:
    from .api.rest import FhirApi

    sc = sc or SharedCare.open(**open_kwargs)
    from . import web
    from .governance import smart
    from .identity import pages as identity_pages
    from .population import export as bulk_export
    from .population import pages as population_pages
    from .programme import pages as programme_pages
    from .web import ig as ig_pages

    # $export and SMART routes come before the FHIR ones, whose /fhir/{type}/{id} would
    # otherwise catch /fhir/$export-poll/... and /fhir/.well-known/smart-configuration.
    routes = (web.routes(sc) + programme_pages.routes(sc) + ig_pages.routes(sc)
              + population_pages.routes(sc) + identity_pages.routes(sc) + smart.routes(sc)
              + bulk_export.routes(sc) + notify.routes(sc)
              + FhirApi(sc.store, sc.governance, sc).routes())
    from starlette.exceptions import HTTPException

    from .governance.request_audit import AuditEveryRequest
    from .web.core import CsrfMiddleware
    from .web.security import SecurityMiddleware

    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error}, middleware=[Middleware(SecurityMiddleware),
                                               Middleware(GZipMiddleware, minimum_size=2048),
                                               Middleware(CsrfMiddleware),
                                               Middleware(AuditEveryRequest,
                                                          audit=sc.governance.audit)]
                    + _replica_middleware(sc))
    app.state.sc = sc
    from .identity.worker import attach_identity_worker

    attach_identity_worker(app, sc)  # queued patients get their Person within seconds
    notify.attach_notify_worker(app, sc)  # subscribers told of events, governed and audited
    return app


def _replica_middleware(sc) -> list[Middleware]:
    """With a read replica: route each request's reads, note each write's WAL position."""
    if getattr(sc, "replica", None) is None:
        return []
    from .store.db import ReadReplicaMiddleware

    return [Middleware(ReadReplicaMiddleware, replica=sc.replica)]


async def _http_error(request, exc):
    """Unrouted paths and wrong methods: an OperationOutcome under /fhir, as every FHIR
    answer is; Starlette's plain text elsewhere."""
    from starlette.responses import PlainTextResponse

    from .api.rest import error_response
    from .fhir.outcome import FHIRError

    if request.url.path.startswith("/fhir"):
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        detail = {404: f"there is no FHIR interaction at {request.url.path[:200]}",
                  405: f"{request.method} is not supported at {request.url.path[:200]}"
                  }.get(exc.status_code, str(exc.detail))
        return error_response(FHIRError.of(exc.status_code, code, detail))
    return PlainTextResponse(str(exc.detail), exc.status_code, headers=exc.headers)


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` / several workers: each worker process opens its own
    SharedCare from $SHAREDCARE_DATABASE_URL and $SHAREDCARE_DATA_DIR."""
    application = create_app(SharedCare.open())
    settle_heap()
    return application


def settle_heap() -> None:
    """Take what the server built at start-up (modules, schema, templates, the app: ~160,000
    objects) out of the garbage collector's full collections. A full collection walked them
    all, 80 ms, in whichever request happened to trigger it -- the patient view's p95 was such
    pauses (docs/performance.md). Called by `serve` only, once the app is built: a test
    process that builds many apps keeps collecting them."""
    gc.collect()
    gc.freeze()
