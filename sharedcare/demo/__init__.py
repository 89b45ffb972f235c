"""The demo's synthetic integrated care system.

`generate(seed, patients)` builds one Integrated Care Board's partners (the real NHS trusts of
NHS Greater Manchester, from ODS, plus made-up GP practices, community service, council adult
social care, care home and hospice), their staff, data sharing agreements in several states,
demo personas, objections and opt-outs, six months of access history, and -- lazily -- every
patient's FHIR R4 record as resources or transaction bundles. Same seed, same output.
"""

from .generator import generate
from .model import (
    AGREEMENT_STATUSES,
    AUDIT_ACTIONS,
    AUDIT_OUTCOMES,
    DATA_CATEGORIES,
    OBJECTION_SCOPES,
    ORG_KINDS,
    PURPOSES,
    STAFF_ROLES,
    Agreement,
    CareSystem,
    Organisation,
    Persona,
    StaffMember,
)
from .nhs import is_valid_nhs_number

__all__ = [
    "AGREEMENT_STATUSES",
    "AUDIT_ACTIONS",
    "AUDIT_OUTCOMES",
    "DATA_CATEGORIES",
    "OBJECTION_SCOPES",
    "ORG_KINDS",
    "PURPOSES",
    "STAFF_ROLES",
    "Agreement",
    "CareSystem",
    "Organisation",
    "Persona",
    "StaffMember",
    "generate",
    "is_valid_nhs_number",
]
