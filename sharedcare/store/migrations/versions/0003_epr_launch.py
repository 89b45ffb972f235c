"""SMART EHR launch both ways: partner EPRs allowed to launch sharedcare, and the launch URL of
apps sharedcare launches (issue 17)

Revision ID: 0003_epr_launch
Revises: 0002_token_revocation
"""
import sqlalchemy as sa
from alembic import op

revision = '0003_epr_launch'
down_revision = '0002_token_revocation'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'partner_epr',
        sa.Column('iss', sa.String(length=400), nullable=False,
                  comment='The EPR\'s FHIR base URL, as it sends it in iss when it launches '
                          'sharedcare.'),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('ods', sa.String(length=16), nullable=False,
                  comment="The organisation the EPR belongs to: its users' home organisation "
                          "here."),
        sa.Column('client_id', sa.String(length=200), nullable=False,
                  comment="sharedcare's client id at the EPR's authorisation server."),
        sa.Column('client_secret', sa.Text(), nullable=True,
                  comment="sharedcare's secret there (client_secret_basic)."),
        sa.Column('user_match', sa.String(length=32), nullable=False,
                  comment="How the EPR's user is matched to a staff account: sds-user-id (the "
                          "fhirUser Practitioner's SDS user id = staff.sds_id) or "
                          "preferred-username (the ID token's preferred_username = "
                          "staff.username)."),
        sa.Column('scope', sa.String(length=400), nullable=False,
                  comment='Scopes asked of the EPR on launch.'),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('iss'),
        comment='Partner EPRs a sysadmin allowed to launch sharedcare (SMART EHR launch): only '
                'these issuers are contacted.',
    )
    with op.batch_alter_table('api_client') as batch:
        batch.add_column(sa.Column(
            'launch_url', sa.Text(), nullable=True,
            comment="Apps sharedcare launches (SMART EHR launch): the app's launch URL; the "
                    "patient view offers 'Open in <app>' when set."))


def downgrade():
    with op.batch_alter_table('api_client') as batch:
        batch.drop_column('launch_url')
    op.drop_table('partner_epr')
