"""load receipts: what `sharedcare load` committed, by content hash

Revision ID: 0002_load_receipts
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002_load_receipts'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'load_receipt',
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('loaded', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('digest'),
        comment='Bundles and resources `sharedcare load` committed, by content hash.',
    )


def downgrade():
    op.drop_table('load_receipt')
