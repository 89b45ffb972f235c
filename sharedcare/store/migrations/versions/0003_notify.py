"""notifications: outbox of events, subscribers, deliveries, staff inbox

Revision ID: 0003_notify
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0003_notify'
down_revision = '0001'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    op.create_table(
        'notify_event',
        sa.Column('id', BigId, primary_key=True, autoincrement=True),
        sa.Column('created', sa.String(length=32), nullable=False),
        sa.Column('kinds', sa.String(length=200), nullable=False),
        sa.Column('rtype', sa.String(length=64), nullable=False),
        sa.Column('rid', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=True),
        sa.Column('ods', sa.String(length=16), nullable=True),
        sa.Column('actor', sa.String(length=100), nullable=True),
        sa.Column('dispatched', sa.Boolean(), nullable=False),
        comment='Outbox: events written in the same transaction as the data they are about.',
    )
    op.create_index('ix_notify_event_pending', 'notify_event', ['dispatched', 'id'])
    op.create_table(
        'notify_subscription',
        sa.Column('id', sa.String(length=80), primary_key=True),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('resource_id', sa.String(length=64), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('criteria', sa.Text(), nullable=True),
        sa.Column('rtype', sa.String(length=64), nullable=True),
        sa.Column('filter', sa.Text(), nullable=True),
        sa.Column('topics', sa.String(length=400), nullable=True),
        sa.Column('scope', sa.String(length=16), nullable=True),
        sa.Column('ods', sa.String(length=16), nullable=True),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('username', sa.String(length=100), nullable=True),
        sa.Column('client_kind', sa.String(length=8), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('endpoint', sa.String(length=1000), nullable=True),
        sa.Column('payload', sa.String(length=64), nullable=True),
        sa.Column('headers', sa.Text(), nullable=True),
        sa.Column('end', sa.String(length=32), nullable=True),
        sa.Column('created', sa.String(length=32), nullable=False),
        sa.Column('events', sa.Integer(), nullable=False),
        sa.Column('sent', sa.Integer(), nullable=False),
        sa.Column('refused', sa.Integer(), nullable=False),
        sa.Column('dead', sa.Integer(), nullable=False),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_until', sa.String(length=32), nullable=True),
        sa.Column('last_error', sa.String(length=200), nullable=True),
        comment='Subscribers: FHIR Subscriptions and organisations\' subscriptions without criteria.',
    )
    op.create_index('ix_notify_subscription_status', 'notify_subscription', ['status', 'kind'])
    op.create_table(
        'notify_delivery',
        sa.Column('id', BigId, primary_key=True, autoincrement=True),
        sa.Column('event_id', sa.BigInteger(), nullable=False),
        sa.Column('subscription_id', sa.String(length=80), nullable=False),
        sa.Column('event_number', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt', sa.String(length=32), nullable=False),
        sa.Column('created', sa.String(length=32), nullable=False),
        sa.Column('done', sa.String(length=32), nullable=True),
        sa.Column('last_error', sa.String(length=200), nullable=True),
        sa.UniqueConstraint('event_id', 'subscription_id', name='uq_notify_delivery'),
        comment='One event for one subscriber: at least once, in order, retried, dead-lettered.',
    )
    op.create_index('ix_notify_delivery_queue', 'notify_delivery',
                    ['subscription_id', 'status', 'id'])
    op.create_index('ix_notify_delivery_status', 'notify_delivery', ['status', 'next_attempt'])
    op.create_table(
        'notify_inbox',
        sa.Column('id', BigId, primary_key=True, autoincrement=True),
        sa.Column('delivery_id', sa.BigInteger(), nullable=False, unique=True),
        sa.Column('ods', sa.String(length=16), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=True),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('focus', sa.String(length=200), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=True),
        sa.Column('created', sa.String(length=32), nullable=False),
        comment='In-app notifications for staff of an organisation.',
    )
    op.create_index('ix_notify_inbox_ods', 'notify_inbox', ['ods', 'id'])
    op.create_table(
        'notify_inbox_seen',
        sa.Column('username', sa.String(length=100), primary_key=True),
        sa.Column('ods', sa.String(length=16), primary_key=True),
        sa.Column('last_id', sa.BigInteger(), nullable=False),
        comment='How far each person has read their organisation\'s notifications.',
    )


def downgrade():
    op.drop_table('notify_inbox_seen')
    op.drop_index('ix_notify_inbox_ods', table_name='notify_inbox')
    op.drop_table('notify_inbox')
    op.drop_index('ix_notify_delivery_status', table_name='notify_delivery')
    op.drop_index('ix_notify_delivery_queue', table_name='notify_delivery')
    op.drop_table('notify_delivery')
    op.drop_index('ix_notify_subscription_status', table_name='notify_subscription')
    op.drop_table('notify_subscription')
    op.drop_index('ix_notify_event_pending', table_name='notify_event')
    op.drop_table('notify_event')
