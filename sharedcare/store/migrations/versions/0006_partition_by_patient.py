"""partition the record by patient: partition_key on the record tables; on PostgreSQL hash
partitions when SHAREDCARE_PARTITIONS > 0 (default 0: plain tables)

Every record table (resource, resource_version, compartment, the idx_* tables and, on
PostgreSQL, resource_text) gets `partition_key`: the Patient record's id, or "type/id" outside
any patient compartment (sharedcare/store/partitioning.py); compartment rows take their own
patient_id. Existing rows are backfilled from the compartment table.

On PostgreSQL with SHAREDCARE_PARTITIONS > 0 each of those tables becomes
`PARTITION BY HASH (partition_key)` with that many partitions (the rows copied over, the
row-key sequences kept). A partitioned table's unique constraints must hold its partition key,
so: primary keys become (pk, partition_key) / (seq, partition_key); uq_version becomes
(resource_pk, version, partition_key); the unique (type, id) moves to the plain table
`resource_key(type, id) -> pk, partition_key`; the foreign keys to resource.pk are dropped
(resource.pk alone is no longer a key). docs/scaling.md, "Partitioning and Citus".

Revision ID: 0006_partition_by_patient
Revises: 0005_fulltext
"""
import sqlalchemy as sa
from alembic import op

revision = '0006_partition_by_patient'
down_revision = '0005_fulltext'
branch_labels = None
depends_on = None

KEY = 140
INDEX_TABLES = ("idx_token", "idx_string", "idx_date", "idx_number", "idx_reference", "idx_uri")

# The indexes each table has once partitioned (on a plain table they stay as they were).
PARTITIONED_INDEXES = {
    "resource": [
        "ALTER TABLE resource ADD CONSTRAINT resource_pkey PRIMARY KEY (pk, partition_key)",
        "CREATE INDEX ix_resource_type_id ON resource (type, id)",
        "CREATE INDEX ix_resource_type_pk ON resource (type, pk)",
        "CREATE INDEX ix_resource_type_updated ON resource (type, last_updated)",
    ],
    "resource_version": [
        ("ALTER TABLE resource_version ADD CONSTRAINT resource_version_pkey "
        "PRIMARY KEY (seq, partition_key)"),
        ("ALTER TABLE resource_version ADD CONSTRAINT uq_version "
        "UNIQUE (resource_pk, version, partition_key)"),
    ],
    "compartment": [
        "CREATE INDEX ix_compartment_patient ON compartment (patient_id, resource_pk)",
        "CREATE INDEX ix_compartment_resource ON compartment (resource_pk)",
    ],
    "idx_token": ["CREATE INDEX ix_idx_token_lookup ON idx_token (type, param, code, system)"],
    "idx_string": ["CREATE INDEX ix_idx_string_lookup ON idx_string (type, param, value)"],
    "idx_date": ["CREATE INDEX ix_idx_date_lookup ON idx_date (type, param, low, high)"],
    "idx_number": ["CREATE INDEX ix_idx_number_lookup ON idx_number (type, param, value)"],
    "idx_reference": [("CREATE INDEX ix_idx_reference_target "
                      "ON idx_reference (target_id, target_type, param)")],
    "idx_uri": ["CREATE INDEX ix_idx_uri_lookup ON idx_uri (type, param, uri)"],
    "resource_text": [
        ("ALTER TABLE resource_text ADD CONSTRAINT resource_text_pkey "
        "PRIMARY KEY (resource_pk, partition_key)"),
        "CREATE INDEX ix_resource_text_narrative ON resource_text USING gin (narrative)",
        "CREATE INDEX ix_resource_text_content ON resource_text USING gin (content)",
    ],
}
for _t in INDEX_TABLES:
    PARTITIONED_INDEXES[_t].append(f"CREATE INDEX ix_{_t}_resource ON {_t} (resource_pk)")
# The sequences behind the row keys, kept (new keys continue after the copied rows).
SEQUENCES = {"resource": "pk", "resource_version": "seq"}


def upgrade():
    from sharedcare.store.partitioning import partition_count

    conn = op.get_bind()
    pg = conn.dialect.name == "postgresql"
    tables = ["resource", "resource_version", "compartment", *INDEX_TABLES]
    if pg:
        tables.append("resource_text")  # on SQLite an FTS5 table keyed by rowid = pk
    for t in tables:
        if pg:
            op.add_column(t, sa.Column("partition_key", sa.String(KEY), nullable=True))
        else:  # SQLite adds a NOT NULL column only with a default; every write gives it
            op.execute(f"ALTER TABLE {t} ADD COLUMN partition_key VARCHAR({KEY}) "
                       "NOT NULL DEFAULT ''")
    # The key (sharedcare.store.partitioning.partition_key) for what is already stored.
    op.execute("UPDATE compartment SET partition_key = patient_id")
    op.execute("UPDATE resource SET partition_key = CASE WHEN type = 'Patient' THEN id ELSE "
               "COALESCE((SELECT MIN(c.patient_id) FROM compartment c "
               "WHERE c.resource_pk = resource.pk), type || '/' || id) END")
    for t in [t for t in tables if t not in ("resource", "compartment")]:
        op.execute(f"UPDATE {t} SET partition_key = (SELECT r.partition_key FROM resource r "
                   f"WHERE r.pk = {t}.resource_pk)")
    if not pg:
        return
    for t in tables:
        op.alter_column(t, "partition_key", existing_type=sa.String(KEY), nullable=False)
    n = partition_count()
    if n > 0:
        _partition(conn, tables, n)


def _partition(conn, tables: list[str], n: int) -> None:
    comments = {t: conn.execute(sa.text("SELECT obj_description(CAST(:t AS regclass), "
                                        "'pg_class')"), {"t": t}).scalar() for t in tables}
    sequences = {t: conn.execute(sa.text(f"SELECT pg_get_serial_sequence('{t}', '{c}')")
                                 ).scalar() for t, c in SEQUENCES.items()}
    ddl = []  # sent as one batch: a fresh database gets n x 10 tables and their indexes
    for t in tables:
        ddl.append(f"ALTER TABLE {t} RENAME TO {t}_unpartitioned")
        ddl.append(f"CREATE TABLE {t} (LIKE {t}_unpartitioned INCLUDING DEFAULTS "
                   f"INCLUDING COMMENTS) PARTITION BY HASH (partition_key)")
        ddl += [f"CREATE TABLE {t}_p{i} PARTITION OF {t} "
                f"FOR VALUES WITH (MODULUS {n}, REMAINDER {i})" for i in range(n)]
        ddl.append(f"INSERT INTO {t} SELECT * FROM {t}_unpartitioned")
        if t in SEQUENCES:  # the sequence outlives the old table, and new keys continue
            ddl.append(f"ALTER SEQUENCE {sequences[t]} OWNED BY {t}.{SEQUENCES[t]}")
    ddl += [f"DROP TABLE {t}_unpartitioned CASCADE" for t in reversed(tables)]
    for t in tables:
        ddl += PARTITIONED_INDEXES[t]
        if comments[t]:
            quoted = comments[t].replace("'", "''")
            ddl.append(f"COMMENT ON TABLE {t} IS '{quoted}'")
    ddl.append(f"""CREATE TABLE resource_key (
        type VARCHAR(64) NOT NULL,
        id VARCHAR(64) NOT NULL,
        pk BIGINT NOT NULL,
        partition_key VARCHAR({KEY}) NOT NULL,
        PRIMARY KEY (type, id))""")
    ddl.append("COMMENT ON TABLE resource_key IS 'Where a resource lives: its row key and "
               "partition, by (type, id). Replaces the unique (type, id) of the partitioned "
               "resource table.'")
    ddl.append("INSERT INTO resource_key (type, id, pk, partition_key) "
               "SELECT type, id, pk, partition_key FROM resource")
    conn.exec_driver_sql(";\n".join(ddl))


def downgrade():
    conn = op.get_bind()
    pg = conn.dialect.name == "postgresql"
    if pg and conn.execute(sa.text("SELECT to_regclass('resource_key') IS NOT NULL")).scalar():
        raise RuntimeError("0006_partition_by_patient: a partitioned record cannot be "
                           "downgraded in place; restore a backup taken before the upgrade")
    tables = ["resource", "resource_version", "compartment", *INDEX_TABLES]
    if pg:
        tables.append("resource_text")
    for t in tables:
        with op.batch_alter_table(t) as batch:
            batch.drop_column("partition_key")
