"""revoked tokens: signing out withdraws the session token on every server

Revision ID: 0002_token_revocation
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002_token_revocation'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'revoked_token',
        sa.Column('jti', sa.String(length=64), nullable=False,
                  comment="The token's unique id (its jti claim); looked up by primary key on "
                          "every request."),
        sa.Column('expires', sa.BigInteger(), nullable=False,
                  comment='When the token would have expired (Unix seconds); the row can go '
                          'after.'),
        sa.Column('revoked', sa.String(length=32), nullable=False,
                  comment='When it was revoked (UTC, ISO 8601).'),
        sa.PrimaryKeyConstraint('jti'),
        comment='Access and session tokens withdrawn before they expire (signed out): no server '
                'accepts them again.',
    )


def downgrade():
    op.drop_table('revoked_token')
