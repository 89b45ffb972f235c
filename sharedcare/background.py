"""Work the server does by itself, beside its requests: identity linking
(:mod:`sharedcare.identity.worker`) and notification delivery (:mod:`sharedcare.notify.worker`).

A worker is an object with ``run_once() -> int`` (how much work a pass did; 0 when idle). This
module runs it in a daemon thread -- passes back to back while there is work, then one every
``interval`` seconds -- and ties it to the web app's lifespan, so nothing has to be started by
hand. Each kind of worker can be turned off (``SHAREDCARE_<KIND>_WORKER=0``) where a dedicated
process runs it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading

from .logsafe import log_failure

log = logging.getLogger(__name__)


class PollingWorker:
    """Mixin: ``start``/``stop`` around the ``run_once`` each worker class defines."""

    thread_name = "worker"

    def start(self, interval: float = 1.0) -> threading.Event:
        """Run in a daemon thread until the returned event is set."""
        stop = threading.Event()

        def loop():
            while not stop.is_set():
                try:
                    busy = self.run_once()
                except Exception as e:  # noqa: BLE001 - the database may be briefly away
                    log_failure(log, f"{self.thread_name} pass failed", e)
                    busy = 0
                if not busy:
                    stop.wait(interval)

        self._thread = threading.Thread(target=loop, daemon=True, name=self.thread_name)
        self._thread.start()
        return stop

    def stop(self, event: threading.Event, timeout: float = 30.0) -> None:
        event.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout)


def attach(app, make_worker, kind: str, default_interval: float,
           interval: float | None = None) -> None:
    """Run ``make_worker()`` for the web app's lifetime (its Starlette lifespan), unless
    ``SHAREDCARE_<KIND>_WORKER=0``; ``SHAREDCARE_<KIND>_INTERVAL`` sets the idle interval.
    The running worker is ``app.state.<kind>_worker``."""
    env = f"SHAREDCARE_{kind.upper()}"
    if os.environ.get(f"{env}_WORKER", "1") == "0":
        return
    interval = interval if interval is not None else float(
        os.environ.get(f"{env}_INTERVAL", str(default_interval)))
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        worker = make_worker()
        stop = worker.start(interval)
        setattr(app.state, f"{kind}_worker", worker)
        try:
            async with previous(a) as state:
                yield state
        finally:
            await asyncio.to_thread(worker.stop, stop)

    app.router.lifespan_context = lifespan
