"""Notification tables: the outbox of events, subscribers, deliveries and the staff inbox.

* ``notify_event`` is the outbox: the store's write hook (:mod:`sharedcare.notify.hook`) adds a
  row in the write's own transaction for each write that matters (an admission, a result...), so
  no event exists without its data and no data without its event.
* ``notify_subscription`` is every subscriber: FHIR ``Subscription`` resources (kept from the
  resources as they are written) and organisations' subscriptions without criteria.
* ``notify_delivery`` is one event for one subscriber, with its idempotency key, attempts and
  back-off; a subscriber's deliveries go out in event order (the worker holds a lease on the
  subscriber while it sends).
* ``notify_inbox`` is the in-app channel: what staff of an organisation see on
  ``/notifications``; ``notify_inbox_seen`` how far each person has read.

Times are UTC text, as in the store. Nothing here holds clinical content: an event names the
resource (type/id/version) and the patient id, never what the record says.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from ..store.schema import metadata

# BIGINT on PostgreSQL, the rowid alias on SQLite (autoincrement needs INTEGER PRIMARY KEY).
BigId = BigInteger().with_variant(Integer(), "sqlite")

notify_event = Table(
    "notify_event", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("created", String(32), nullable=False),
    # Space-separated event codes (admission discharge emergency death result ...), padded with
    # spaces; '  ' for a write that only criteria subscriptions may want.
    Column("kinds", String(200), nullable=False),
    Column("rtype", String(64), nullable=False),
    Column("rid", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("patient_id", String(64)),
    Column("ods", String(16)),  # the record's controller, or the organisation acting
    Column("actor", String(100)),  # who acted, for governance events (break-glass)
    Column("dispatched", Boolean, nullable=False, default=False),
    comment="Outbox: events written in the same transaction as the data they are about.",
)
Index("ix_notify_event_pending", notify_event.c.dispatched, notify_event.c.id)

notify_subscription = Table(
    "notify_subscription", metadata,
    Column("id", String(80), primary_key=True),  # fhir:<Subscription id> | org:<uuid> | ig:<ods>
    Column("kind", String(16), nullable=False),  # criteria | topic | org | governance
    Column("resource_id", String(64)),  # the FHIR Subscription, when it is one
    Column("status", String(16), nullable=False),  # requested | active | error | off
    Column("criteria", Text),  # Type?query (criteria) or the topic's canonical URL
    Column("rtype", String(64)),
    Column("filter", Text),  # topic subscriptions: the backport filter criteria
    Column("topics", String(400)),  # ' admission discharge ' (org, topic, governance)
    Column("scope", String(16)),  # org: registered | caseload
    Column("ods", String(16)),  # the subscriber's organisation
    Column("role", String(32), nullable=False),  # the subscriber's role (governs what it may see)
    Column("username", String(100)),  # a person who subscribed (their declared relationships count)
    Column("client_kind", String(8), nullable=False),  # user | system
    Column("channel", String(16), nullable=False),  # rest-hook | email | inbox
    Column("endpoint", String(1000)),
    Column("payload", String(64)),  # '' | application/fhir+json | id-only | full-resource
    Column("headers", Text),  # JSON list of "Name: value"
    Column("end", String(32)),
    Column("created", String(32), nullable=False),
    Column("events", Integer, nullable=False, default=0),  # events since start (backport)
    Column("heartbeat", Integer),  # seconds between heartbeats (backport-heartbeat-period)
    Column("last_sent", String(32)),  # the last notification or heartbeat sent (UTC text)
    Column("sent", Integer, nullable=False, default=0),
    Column("refused", Integer, nullable=False, default=0),
    Column("dead", Integer, nullable=False, default=0),
    Column("lease_owner", String(64)),
    Column("lease_until", String(32)),
    Column("last_error", String(200)),
    comment="Subscribers: FHIR Subscriptions and organisations' subscriptions without criteria.",
)
Index("ix_notify_subscription_status", notify_subscription.c.status, notify_subscription.c.kind)

notify_delivery = Table(
    "notify_delivery", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", BigInteger, nullable=False),
    Column("subscription_id", String(80), nullable=False),
    Column("event_number", Integer, nullable=False),  # per subscription, 1, 2, 3 ...
    # pending | sent | refused (policy said no at send time: counted, never sent) | dead
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt", String(32), nullable=False),
    Column("created", String(32), nullable=False),
    Column("done", String(32)),
    Column("last_error", String(200)),  # the failure's kind, never a response body
    UniqueConstraint("event_id", "subscription_id", name="uq_notify_delivery"),
    comment="One event for one subscriber: at least once, in order, retried, dead-lettered.",
)
Index("ix_notify_delivery_queue", notify_delivery.c.subscription_id, notify_delivery.c.status,
      notify_delivery.c.id)
Index("ix_notify_delivery_status", notify_delivery.c.status, notify_delivery.c.next_attempt)

notify_inbox = Table(
    "notify_inbox", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("delivery_id", BigInteger, nullable=False, unique=True),
    Column("ods", String(16), nullable=False),
    Column("role", String(32)),  # only this role at the organisation (None: all its staff)
    Column("kind", String(32), nullable=False),
    Column("focus", String(200), nullable=False),  # Type/id
    Column("patient_id", String(64)),
    Column("created", String(32), nullable=False),
    comment="In-app notifications for staff of an organisation.",
)
Index("ix_notify_inbox_ods", notify_inbox.c.ods, notify_inbox.c.id)

notify_inbox_seen = Table(
    "notify_inbox_seen", metadata,
    Column("username", String(100), primary_key=True),
    Column("ods", String(16), primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    comment="How far each person has read their organisation's notifications.",
)
