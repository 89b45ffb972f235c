"""The store's schema. It documents itself: one row per resource, one per version, one index
table per kind of search parameter (in the manner of HAPI FHIR's HFJ_SPIDX_* tables), and the
patient compartment of every resource, so `$everything` and compartment searches are index
lookups and the data could later be distributed by patient without redesign.

Times are stored as canonical UTC text ('YYYY-MM-DDTHH:MM:SS[.ffffff]'), which sorts correctly
and compares identically on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import TSVECTOR

from .partitioning import KEY_LENGTH

metadata = MetaData()


def partition_key_column(comment: str = "store/partitioning.py partition_key: the Patient "
                         "record's id, or type/id outside any patient compartment") -> Column:
    """The key the record tables are hash-partitioned by on PostgreSQL (migration
    0006_partition_by_patient); the last column of each record table, on both backends."""
    return Column("partition_key", String(KEY_LENGTH), nullable=False, comment=comment)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT identity.
PK = BigInteger().with_variant(Integer(), "sqlite")

resource = Table(
    "resource",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", String(32), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # The resource JSON exactly as served (meta.versionId / meta.lastUpdated included), so a read
    # is one row fetch and no re-serialisation.
    Column("content", Text, nullable=True),
    # Governance columns, copied from meta at write time so policy is a plain SQL predicate.
    Column("source_org", String(32), nullable=True),  # controlling organisation (ODS code)
    Column("category", String(32), nullable=True),  # data category an agreement shares
    Column("sensitivity", String(200), nullable=False, default=""),  # ' code code ' or ''
    partition_key_column(),
    UniqueConstraint("type", "id", name="uq_resource_type_id"),
    comment="Current version of every resource (deleted ones kept as tombstones).",
)
Index("ix_resource_type_pk", resource.c.type, resource.c.pk)
Index("ix_resource_type_updated", resource.c.type, resource.c.last_updated)

resource_version = Table(
    "resource_version",
    metadata,
    Column("seq", PK, primary_key=True, autoincrement=True),
    Column("resource_pk", BigInteger, ForeignKey("resource.pk"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", String(32), nullable=False),
    Column("method", String(8), nullable=False),  # POST | PUT | DELETE
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=True),
    partition_key_column(),
    UniqueConstraint("resource_pk", "version", name="uq_version"),
    comment="Every version of every resource: vread and _history.",
)

compartment = Table(
    "compartment",
    metadata,
    Column("resource_pk", BigInteger, ForeignKey("resource.pk"), nullable=False),
    Column("patient_id", String(64), nullable=False),
    partition_key_column("The row's own patient_id, so a lookup by patient is one partition."),
    comment="Patient compartment membership (official R4 CompartmentDefinition).",
)
Index("ix_compartment_patient", compartment.c.patient_id, compartment.c.resource_pk)
Index("ix_compartment_resource", compartment.c.resource_pk)

person_link = Table(
    "person_link",
    metadata,
    Column("patient_id", String(64), primary_key=True,
           comment="A Patient resource's id: one partner's record of a person."),
    Column("person_key", String(64), nullable=False,
           comment="The Person linking it (Person.link.target), or the patient's own id while "
                   "no Person does: patients with the same key are one person."),
    comment="One person across partners: which partners' Patient records are the same person. "
            "Derived from Person resources as they are written (store/persons.py), so reads, "
            "rules and counts can follow the person; unlinking takes effect on the next query.",
)
Index("ix_person_link_key", person_link.c.person_key, person_link.c.patient_id)


def _index_table(name: str, comment: str, *columns: Column) -> Table:
    t = Table(
        name,
        metadata,
        Column("resource_pk", BigInteger, ForeignKey("resource.pk"), nullable=False),
        Column("type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        partition_key_column(),
        comment=comment,
    )
    Index(f"ix_{name}_resource", t.c.resource_pk)
    return t


idx_token = _index_table(
    "idx_token",
    "token parameters: Coding, CodeableConcept, Identifier, code, boolean, ContactPoint",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    Column("text", String(255), nullable=True),
)
Index("ix_idx_token_lookup", idx_token.c.type, idx_token.c.param, idx_token.c.code, idx_token.c.system)

idx_string = _index_table(
    "idx_string",
    "string parameters: value is normalised (case and accents folded), exact is as written",
    Column("value", String(255), nullable=False),
    Column("exact", String(255), nullable=False),
)
# varchar_pattern_ops: a string search is a prefix LIKE, which a C.UTF-8 btree cannot serve
# (migration 0007); the operator class serves equality too.
Index("ix_idx_string_lookup", idx_string.c.type, idx_string.c.param, idx_string.c.value,
      postgresql_ops={"value": "varchar_pattern_ops"})

idx_date = _index_table(
    "idx_date",
    "date parameters as an inclusive UTC range [low, high]",
    Column("low", String(32), nullable=False),
    Column("high", String(32), nullable=False),
)
Index("ix_idx_date_lookup", idx_date.c.type, idx_date.c.param, idx_date.c.low, idx_date.c.high)

idx_number = _index_table(
    "idx_number",
    "number and quantity parameters; [low, high] is the implied precision of the value",
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("value", Float, nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(64), nullable=True),
    Column("unit", String(64), nullable=True),
)
Index("ix_idx_number_lookup", idx_number.c.type, idx_number.c.param, idx_number.c.value)

idx_reference = _index_table(
    "idx_reference",
    "reference parameters: local references resolved to (target_type, target_id)",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", String(512), nullable=True),
)
Index(
    "ix_idx_reference_target",
    idx_reference.c.target_id,
    idx_reference.c.target_type,
    idx_reference.c.param,
)

idx_uri = _index_table(
    "idx_uri",
    "uri parameters",
    Column("uri", String(512), nullable=False),
)
Index("ix_idx_uri_lookup", idx_uri.c.type, idx_uri.c.param, idx_uri.c.uri)

INDEX_TABLES = {
    "token": idx_token,
    "string": idx_string,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_number,
    "reference": idx_reference,
    "uri": idx_uri,
}

# Full-text search (`_text`, `_content`; store/indexing/fulltext.py). On PostgreSQL this table;
# on SQLite the same name is an FTS5 virtual table (made by migration 0005_fulltext, since
# SQLAlchemy cannot describe one): `resource_text(narrative, content)` whose rowid is the
# resource's pk, tokenised 'porter unicode61 remove_diacritics 2'.
resource_text = Table(
    "resource_text",
    metadata,
    Column("resource_pk", BigInteger, ForeignKey("resource.pk"), primary_key=True),
    Column("narrative", TSVECTOR().with_variant(Text(), "sqlite"), nullable=True,
           comment="text.div with the markup stripped, as to_tsvector('english', ...): _text"),
    Column("content", TSVECTOR().with_variant(Text(), "sqlite"), nullable=True,
           comment="every string of the resource and its text/* attachments' text: _content"),
    partition_key_column(),
    comment="One row per current resource with any text, replaced with every update, removed "
            "by a delete, written in the resource's transaction.",
)
Index("ix_resource_text_narrative", resource_text.c.narrative, postgresql_using="gin")
Index("ix_resource_text_content", resource_text.c.content, postgresql_using="gin")

search_result = Table(
    "search_result",
    metadata,
    Column("search_id", String(36), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("resource_pk", BigInteger, nullable=False),
    Column("created", String(32), nullable=False),
    comment="Snapshot of a sorted search's matches, so its pages neither skip nor repeat.",
)
Index("ix_search_result", search_result.c.search_id, search_result.c.rank)


# Only in the partitioned layout (PostgreSQL with SHAREDCARE_PARTITIONS > 0, made by migration
# 0006): a partitioned table's unique constraints must include its partition key, so the
# unique (type, id) of `resource` moves to this plain table, written in the resource's
# transaction (a concurrent create of the same id fails on its primary key, and the write is
# done again). Kept out of `metadata`, which describes the plain layout.
partitioned_metadata = MetaData()
resource_key = Table(
    "resource_key",
    partitioned_metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("pk", BigInteger, nullable=False),
    Column("partition_key", String(KEY_LENGTH), nullable=False),
    comment="Where a resource lives: its row key and partition, by (type, id).",
)
