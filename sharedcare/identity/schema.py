"""Identity tables: the queue of patients waiting for probabilistic matching.

The FHIR ``Person`` resources in the store are the identity itself; this table only says which
``Patient`` still needs the splink model (no valid NHS number, so the write path could not link
it). The store write hook (:mod:`sharedcare.identity.hook`) adds rows in the same transaction as
the Patient; the worker the server runs (:mod:`sharedcare.identity.worker`) claims them with a
lease, so several server processes can share the queue and a crashed worker's claims expire.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table

from ..store.schema import metadata

identity_queue = Table(
    "identity_queue", metadata,
    Column("patient_id", String(64), primary_key=True),
    # pending: waiting for a worker | claimed: a worker holds it until lease_until | failed: gave
    # up after MAX_ATTEMPTS (the reason is the error type only, never patient data)
    Column("status", String(16), nullable=False),
    Column("enqueued", String(32), nullable=False),  # UTC text, as in the store
    Column("lease_until", String(32)),
    Column("owner", String(64)),  # the claiming worker (host:pid:thread)
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(200)),
    comment="Patients without a valid NHS number waiting for the identity worker (splink).",
)
Index("ix_identity_queue_status", identity_queue.c.status, identity_queue.c.enqueued)
