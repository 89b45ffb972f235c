"""identity queue: patients waiting for probabilistic matching

Revision ID: 0002_identity_queue
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002_identity_queue'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'identity_queue',
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('enqueued', sa.String(length=32), nullable=False),
        sa.Column('lease_until', sa.String(length=32), nullable=True),
        sa.Column('owner', sa.String(length=64), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint('patient_id'),
        comment='Patients without a valid NHS number waiting for the identity worker (splink).',
    )
    op.create_index('ix_identity_queue_status', 'identity_queue', ['status', 'enqueued'])


def downgrade():
    op.drop_index('ix_identity_queue_status', table_name='identity_queue')
    op.drop_table('identity_queue')
