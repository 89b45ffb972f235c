"""person_link: one person across partners' Patient records

Revision ID: 0002_person_link
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002_person_link'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'person_link',
        sa.Column('patient_id', sa.String(length=64), nullable=False,
                  comment="A Patient resource's id: one partner's record of a person."),
        sa.Column('person_key', sa.String(length=64), nullable=False,
                  comment="The Person linking it (Person.link.target), or the patient's own id "
                          "while no Person does: patients with the same key are one person."),
        sa.PrimaryKeyConstraint('patient_id'),
        comment="One person across partners: which partners' Patient records are the same "
                "person. Derived from Person resources as they are written (store/persons.py).",
    )
    op.create_index('ix_person_link_key', 'person_link', ['person_key', 'patient_id'])
    # Existing stores: every patient is its own person, then each Person's links join them.
    op.execute("INSERT INTO person_link (patient_id, person_key) "
               "SELECT id, id FROM resource WHERE type = 'Patient'")
    op.execute("UPDATE person_link SET person_key = (SELECT r.id FROM idx_reference x "
               "JOIN resource r ON r.pk = x.resource_pk WHERE x.type = 'Person' "
               "AND x.param = 'link' AND x.target_type = 'Patient' "
               "AND x.target_id = person_link.patient_id AND r.deleted = false "
               "ORDER BY r.pk LIMIT 1) WHERE EXISTS (SELECT 1 FROM idx_reference x "
               "JOIN resource r ON r.pk = x.resource_pk WHERE x.type = 'Person' "
               "AND x.param = 'link' AND x.target_type = 'Patient' "
               "AND x.target_id = person_link.patient_id AND r.deleted = false)")


def downgrade():
    op.drop_index('ix_person_link_key', table_name='person_link')
    op.drop_table('person_link')
