"""Event notifications: partners told when something happens to their patient -- governed,
durable, audited.

    write (any path) --outbox row, same transaction--> notify_event
        --worker: match subscribers--> notify_delivery (one per event and subscriber)
        --worker: may the subscriber read it now? --> rest-hook | e-mail | inbox, audited

The public entry points:

* :func:`install` -- the store's outbox hook and Governance's break-glass/declared-relationship
  hook (``SharedCare.open`` calls it, so every intake path records events);
* :func:`attach_notify_worker` -- the delivery worker, run by the server (``create_app``);
* :func:`routes` -- ``/notifications`` (the staff inbox), subscriptions and dead letters;
* :func:`subscribe` -- an organisation's subscription without criteria (the CLI and the page);
* :class:`NotifyWorker` -- the worker itself (tests, benchmarks, a dedicated process).
"""

from __future__ import annotations

from . import schema as _schema  # noqa: F401  (tables in the metadata)
from .events import TOPICS, record_governance_event, topic_url
from .events import install as _install_store_hook
from .subscriptions import list_subscriptions, set_status, subscribe
from .worker import NotifyWorker, attach_notify_worker, counts, retry_dead


def install(sc) -> None:
    """Record events for every write and every break-glass / declared relationship of ``sc``."""
    _install_store_hook(sc.store)
    hooks = sc.governance.event_hooks
    if record_governance_event not in hooks:
        hooks.append(record_governance_event)


def routes(sc) -> list:
    from .pages import routes as _routes

    return _routes(sc)


__all__ = ["TOPICS", "NotifyWorker", "attach_notify_worker", "counts", "install",
           "list_subscriptions", "retry_dead", "routes", "set_status", "subscribe", "topic_url"]
