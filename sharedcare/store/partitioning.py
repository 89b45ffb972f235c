"""The record's partition key: which patient's partition a resource, its versions, its index
rows and its text live in (docs/scaling.md, "Partitioning and Citus").

One function decides it (`partition_key`), for both backends: SQLite keeps the column and
nothing more; PostgreSQL hash-partitions the record tables by it when `SHAREDCARE_PARTITIONS`
asks for partitions (migration 0006_partition_by_patient), the layout Citus would distribute by
(`create_distributed_table(..., 'partition_key')`). The default is 0, plain tables: governed
searches still join their per-row probes by row key alone, which visits every partition, so the
partitioned layout measured 3-5x slower (docs/performance.md, docs/scaling.md).

The key is the **Patient record's id** -- the partner's copy -- not the person (person_link):
linking or unlinking Patients then never moves a row, and a person's record is the few
partitions of their linked Patient ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sqlalchemy import Connection, text

ENV_PARTITIONS = "SHAREDCARE_PARTITIONS"
DEFAULT_PARTITIONS = 0
KEY_LENGTH = 140  # a patient id (64) or "type/id" (type up to 64, id up to 64)

# The tables hash-partitioned by partition_key on PostgreSQL (resource_key is the plain lookup
# table that replaces the unique (type, id) constraint a partitioned table cannot keep).
RECORD_TABLES = ("resource", "resource_version", "compartment", "idx_token", "idx_string",
                 "idx_date", "idx_number", "idx_reference", "idx_uri", "resource_text")


def partition_key(rtype: str, rid: str, compartments: Iterable[str] = ()) -> str:
    """A Patient: its own id. A resource in patient compartments: the smallest patient id
    (deterministic when it is in several). Anything else (Organization, Practitioner, ...):
    "type/id", which spreads such resources evenly over the partitions."""
    if rtype == "Patient":
        return rid
    first = min(compartments, default=None)
    return first if first is not None else f"{rtype}/{rid}"


def partition_count() -> int:
    """$SHAREDCARE_PARTITIONS: how many hash partitions migration 0006 makes on PostgreSQL
    (default 0: plain tables). Read when the migration runs: changing it later does
    not re-partition an existing database."""
    raw = os.environ.get(ENV_PARTITIONS, "").strip()
    if not raw:
        return DEFAULT_PARTITIONS
    n = int(raw)
    if n < 0:
        raise ValueError(f"{ENV_PARTITIONS} must be 0 (plain tables) or a positive count")
    return n


def is_partitioned(conn: Connection) -> bool:
    """Is this database's `resource` table hash-partitioned (PostgreSQL, SHAREDCARE_PARTITIONS
    > 0 when it was migrated)?"""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(text(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c "
        "ON c.oid = p.partrelid WHERE c.relname = 'resource' "
        "AND c.relnamespace = to_regnamespace(current_schema())::oid)")).scalar())


def partitions(conn: Connection, table: str = "resource") -> list[str]:
    """The partitions of `table` (empty for a plain table), in name order."""
    if conn.dialect.name != "postgresql":
        return []
    return sorted(conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t "
        "AND p.relnamespace = to_regnamespace(current_schema())::oid"), {"t": table}
    ).scalars())


__all__ = ["DEFAULT_PARTITIONS", "ENV_PARTITIONS", "RECORD_TABLES", "is_partitioned",
           "partition_count", "partition_key", "partitions"]
