"""full-text search: resource_text (_text and _content), filled for the resources already stored

PostgreSQL: a table of two tsvector columns with GIN indexes. SQLite: an FTS5 virtual table
(rowid = resource.pk). See sharedcare/store/indexing/fulltext.py.

Revision ID: 0005_fulltext
Revises: 0001
"""
import orjson
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005_fulltext'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.create_table(
            'resource_text',
            sa.Column('resource_pk', sa.BigInteger(), sa.ForeignKey('resource.pk'),
                      primary_key=True),
            sa.Column('narrative', postgresql.TSVECTOR(), nullable=True,
                      comment="text.div with the markup stripped, as to_tsvector('english', "
                              "...): _text"),
            sa.Column('content', postgresql.TSVECTOR(), nullable=True,
                      comment="every string of the resource and its text/* attachments' "
                              "text: _content"),
            comment='One row per current resource with any text, replaced with every update, '
                    "removed by a delete, written in the resource's transaction.",
        )
        op.create_index('ix_resource_text_narrative', 'resource_text', ['narrative'],
                        postgresql_using='gin')
        op.create_index('ix_resource_text_content', 'resource_text', ['content'],
                        postgresql_using='gin')
    else:
        op.execute("CREATE VIRTUAL TABLE resource_text USING fts5(narrative, content, "
                   "tokenize='porter unicode61 remove_diacritics 2')")
    _backfill(conn)


def _backfill(conn):
    """Index what is already stored, in row order, a batch at a time."""
    from sharedcare.store.indexing import fulltext

    last = 0
    while True:
        rows = conn.execute(sa.text(
            "SELECT pk, content FROM resource WHERE pk > :last AND deleted = :no "
            "AND content IS NOT NULL ORDER BY pk LIMIT 1000"), {"last": last, "no": False}).all()
        if not rows:
            return
        batch = []
        for pk, content in rows:
            texts = fulltext.text_rows(orjson.loads(content))
            if texts:
                batch.append((pk, *texts))
        fulltext.insert_rows(conn, batch)
        last = rows[-1][0]


def downgrade():
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.drop_index('ix_resource_text_content', table_name='resource_text')
        op.drop_index('ix_resource_text_narrative', table_name='resource_text')
        op.drop_table('resource_text')
    else:
        op.execute("DROP TABLE resource_text")
