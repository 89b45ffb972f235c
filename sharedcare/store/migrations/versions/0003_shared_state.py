"""shared state: sign-ins in progress, one-time codes, used assertion ids and export jobs,
shared by every server on the database (issue 14)

Revision ID: 0003_shared_state
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0003_shared_state'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'shared_state',
        sa.Column('key', sa.String(length=64), nullable=False,
                  comment="SHA-256 (hex) of the entry's kind and key: codes and transaction ids "
                          "are never stored as given."),
        sa.Column('kind', sa.String(length=32), nullable=False,
                  comment='What the entry is: smart-pending, smart-code, smart-jti, oidc-login, '
                          'oidc-choose, export, export-cancel.'),
        sa.Column('value', sa.Text(), nullable=True,
                  comment='The entry (JSON); none for a remembered key.'),
        sa.Column('expires', sa.Float(), nullable=False,
                  comment='When the entry stops counting (Unix seconds); expired rows are '
                          'deleted by the servers as they write.'),
        sa.PrimaryKeyConstraint('key'),
        comment='Short-lived state one request leaves for a later one (sign-ins in progress, '
                'one-time codes, used assertion ids, export jobs), shared by every server.',
    )
    op.create_index('ix_shared_state_expires', 'shared_state', ['expires'])


def downgrade():
    op.drop_index('ix_shared_state_expires', table_name='shared_state')
    op.drop_table('shared_state')
