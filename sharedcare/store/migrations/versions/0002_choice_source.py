"""patient_choice.source: each choice derived from the FHIR Consent that records it

Revision ID: 0002_choice_source
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002_choice_source'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('patient_choice') as batch:
        batch.add_column(sa.Column('source', sa.String(length=140), nullable=True,
                                   comment='The FHIR Consent this row was derived from.'))
    op.create_index('ix_patient_choice_source', 'patient_choice', ['source'])


def downgrade():
    op.drop_index('ix_patient_choice_source', table_name='patient_choice')
    with op.batch_alter_table('patient_choice') as batch:
        batch.drop_column('source')
