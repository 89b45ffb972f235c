"""Intake bookkeeping: what `sharedcare load` has already loaded.

One row per loaded Bundle or resource, keyed by the SHA-256 of its content and written in the
same transaction as its data: a load killed part-way (even ``kill -9``) and run again skips what
committed and loads the rest, adding nothing twice.
"""

from __future__ import annotations

from sqlalchemy import Column, String, Table

from ..store.schema import metadata

load_receipt = Table(
    "load_receipt", metadata,
    Column("digest", String(64), primary_key=True),  # sha256 hex of the canonical JSON
    Column("kind", String(16), nullable=False),  # bundle | resource
    Column("loaded", String(32), nullable=False),  # UTC text
    comment="Bundles and resources `sharedcare load` committed, by content hash.",
)
