"""partner EPRs: sharedcare may authenticate to an EPR with a private key (private_key_jwt)
instead of a secret (issue 17)

Revision ID: 0004_epr_private_key
Revises: 0003_epr_launch
"""
import sqlalchemy as sa
from alembic import op

revision = '0004_epr_private_key'
down_revision = '0003_epr_launch'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('partner_epr') as batch:
        batch.add_column(sa.Column(
            'private_key_file', sa.Text(), nullable=True,
            comment="Path of sharedcare's private key (a JWK file, from 'sharedcare admin "
                    "keygen') for private_key_jwt at the EPR; the key stays out of the "
                    "database."))


def downgrade():
    with op.batch_alter_table('partner_epr') as batch:
        batch.drop_column('private_key_file')
