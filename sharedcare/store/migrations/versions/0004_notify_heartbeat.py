"""notifications: heartbeat period and when a subscriber was last sent anything

Revision ID: 0004_notify_heartbeat
Revises: 0003_notify
"""
import sqlalchemy as sa
from alembic import op

revision = '0004_notify_heartbeat'
down_revision = '0003_notify'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('notify_subscription') as t:
        t.add_column(sa.Column('heartbeat', sa.Integer(), nullable=True,
                               comment='seconds between heartbeats (backport-heartbeat-period)'))
        t.add_column(sa.Column('last_sent', sa.String(length=32), nullable=True,
                               comment='UTC text: the last notification or heartbeat sent'))


def downgrade():
    with op.batch_alter_table('notify_subscription') as t:
        t.drop_column('last_sent')
        t.drop_column('heartbeat')
