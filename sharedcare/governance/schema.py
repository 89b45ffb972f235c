"""Governance tables: organisations, staff and roles, sharing agreements, care relationships,
patient choices, break-glass, API clients and the hash-chained audit trail."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text

from ..store.schema import PK, metadata

organisation = Table(
    "organisation", metadata,
    Column("ods", String(16), primary_key=True),
    Column("name", String(200), nullable=False),
    # gp-practice | acute-trust | community | mental-health | ambulance | hospice | social-care
    # | care-home
    Column("kind", String(32), nullable=False),
    Column("postcode", String(16)),
    Column("go_live", String(10)),  # date the organisation started using sharedcare
    Column("left_on", String(10)),  # date it left the programme, if it did
    Column("registered_population", Integer),
    comment="Care partners, by ODS code.",
)

staff = Table(
    "staff", metadata,
    Column("username", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("password_hash", String(200)),  # argon2; NULL for OIDC-only staff
    Column("sds_id", String(32)),
    Column("oidc_subject", String(200)),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", String(32)),
    Column("active", Boolean, nullable=False, default=True),
    Column("patient_id", String(64)),  # set for a patient's own (citizen) account
    comment="People who sign in: staff, and patients viewing their own access log.",
)

staff_role = Table(
    "staff_role", metadata,
    Column("username", String(64), nullable=False),
    Column("ods", String(16), nullable=False),
    # clinician | nurse | allied-health | social-worker | admin | ig-lead | programme-lead
    # | sysadmin | patient
    Column("role", String(32), nullable=False),
    comment="Each role a person holds at an organisation; one is chosen per session.",
)
Index("ix_staff_role_user", staff_role.c.username)

agreement = Table(
    "agreement", metadata,
    Column("id", String(64), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("purposes", String(200), nullable=False),  # space-separated
    Column("categories", String(400), nullable=False),  # space-separated data categories
    # draft | circulated | signed | active | suspended | expired | withdrawn
    Column("status", String(16), nullable=False),
    Column("effective", String(10)),
    Column("end", String(10)),
    Column("summary", Text),
    Column("created", String(32), nullable=False),
    Column("updated", String(32), nullable=False),
    comment="Information sharing agreements: who shares what, for which purposes.",
)

agreement_party = Table(
    "agreement_party", metadata,
    Column("agreement_id", String(64), nullable=False),
    Column("ods", String(16), nullable=False),
    Column("signed_by", String(64)),
    Column("signed_at", String(32)),
    comment="Parties to an agreement and their signatures.",
)
Index("ix_agreement_party", agreement_party.c.agreement_id)

care_relationship = Table(
    "care_relationship", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
    Column("ods", String(16), nullable=False),
    # registered | encounter | episode | referral | care-team | declared
    Column("kind", String(16), nullable=False),
    Column("source", String(140)),  # the resource it was derived from, e.g. Encounter/123
    Column("username", String(64)),  # declared relationships: who declared it
    Column("reason", Text),
    Column("created", String(32), nullable=False),
    Column("expires", String(32)),
    Column("review_status", String(16)),  # declared ones: pending | accepted | rejected
    comment="Legitimate relationships between a patient and an organisation.",
)
Index("ix_care_relationship_lookup", care_relationship.c.ods, care_relationship.c.patient_id)
Index("ix_care_relationship_source", care_relationship.c.source)

patient_choice = Table(
    "patient_choice", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("patient_id", String(64), nullable=False),
    # objection-all | objection-from | objection-to | national-opt-out
    Column("kind", String(24), nullable=False),
    Column("ods", String(16)),
    Column("recorded", String(32), nullable=False),
    Column("recorded_by", String(64)),
    # The FHIR Consent this row was derived from (governance/consent.py), e.g. Consent/123.
    Column("source", String(140)),
    comment="A patient's objections to sharing and the national data opt-out, derived from the "
            "Consent resources that record them.",
)
Index("ix_patient_choice", patient_choice.c.patient_id)
Index("ix_patient_choice_source", patient_choice.c.source)

break_glass = Table(
    "break_glass", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False),
    Column("ods", String(16), nullable=False),
    Column("role", String(32), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("started", String(32), nullable=False),
    Column("expires", String(32), nullable=False),
    Column("reviewed_by", String(64)),
    Column("review_note", Text),
    comment="Emergency overrides: time-limited, reason required, reviewed by the IG lead.",
)
Index("ix_break_glass_user", break_glass.c.username, break_glass.c.patient_id)

api_client = Table(
    "api_client", metadata,
    Column("client_id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("ods", String(16)),  # the organisation a system client acts for
    Column("redirect_uris", Text),  # space-separated, for authorization code
    Column("jwks", Text),  # public keys (JSON) for private_key_jwt
    Column("scopes", Text, nullable=False),  # the most it may ever be granted
    Column("purpose", String(16), nullable=False, default="direct-care"),
    Column("public", Boolean, nullable=False, default=True),
    Column("launch_url", Text, comment="Apps sharedcare launches (SMART EHR launch): the app's "
           "launch URL; the patient view offers 'Open in <app>' when set."),
    comment="SMART on FHIR clients: apps acting for a user, and partner systems.",
)

partner_epr = Table(
    "partner_epr", metadata,
    Column("iss", String(400), primary_key=True,
           comment="The EPR's FHIR base URL, as it sends it in iss when it launches sharedcare."),
    Column("name", String(200), nullable=False),
    Column("ods", String(16), nullable=False,
           comment="The organisation the EPR belongs to: its users' home organisation here."),
    Column("client_id", String(200), nullable=False,
           comment="sharedcare's client id at the EPR's authorisation server."),
    Column("client_secret", Text, comment="sharedcare's secret there (client_secret_basic)."),
    Column("private_key_file", Text,
           comment="Path of sharedcare's private key (a JWK file, from 'sharedcare admin "
                   "keygen') for private_key_jwt at the EPR; the key stays out of the "
                   "database."),
    Column("user_match", String(32), nullable=False, default="sds-user-id",
           comment="How the EPR's user is matched to a staff account: sds-user-id (the fhirUser "
                   "Practitioner's SDS user id = staff.sds_id) or preferred-username (the ID "
                   "token's preferred_username = staff.username)."),
    Column("scope", String(400), nullable=False,
           comment="Scopes asked of the EPR on launch."),
    Column("active", Boolean, nullable=False, default=True),
    comment="Partner EPRs a sysadmin allowed to launch sharedcare (SMART EHR launch): only "
            "these issuers are contacted.",
)

audit_event = Table(
    "audit_event", metadata,
    Column("seq", PK, primary_key=True, autoincrement=True),
    Column("recorded", String(32), nullable=False),
    Column("username", String(64)),
    Column("client_id", String(100)),
    Column("ods", String(16)),
    Column("role", String(32)),
    Column("purpose", String(16)),
    Column("action", String(32), nullable=False),  # read | search | everything | create ...
    Column("outcome", String(2), nullable=False),  # 0 success | 4 minor failure (denied) | 8
    Column("patient_id", String(64)),
    Column("entity", String(400)),  # what was asked for: Type/id or a query, no patient data
    Column("reason", Text),  # why access was allowed or refused (relationship, break-glass ..)
    Column("break_glass", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=False),  # the FHIR AuditEvent (IHE BALP) as JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    comment="One AuditEvent per access, hash-chained so edits are detectable.",
)
Index("ix_audit_patient", audit_event.c.patient_id, audit_event.c.seq)
Index("ix_audit_user", audit_event.c.username, audit_event.c.seq)
Index("ix_audit_recorded", audit_event.c.recorded)

audit_anchor = Table(
    "audit_anchor", metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("mac", String(64), nullable=False),  # keyed hash of (seq, hash)
    comment="The head of the audit chain, so deleting the newest events is detected too.",
)

feedback = Table(
    "feedback", metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("created", String(32), nullable=False),
    Column("username", String(64)),
    Column("ods", String(16)),
    Column("role", String(32)),
    Column("page", String(400)),
    Column("kind", String(32), nullable=False),  # wrong | missing | idea | praise
    Column("text", Text, nullable=False),
    Column("status", String(16), nullable=False, default="new"),  # new|planned|done|wont-do
    Column("theme", String(64)),
    Column("response", Text),
    comment="Users' feedback to the programme (the change programme's inbox).",
)

ORG_KINDS = ("gp-practice", "acute-trust", "community", "mental-health", "ambulance", "hospice",
             "social-care", "care-home")

revoked_token = Table(
    "revoked_token", metadata,
    Column("jti", String(64), primary_key=True,
           comment="The token's unique id (its jti claim); looked up by primary key on every "
                   "request."),
    Column("expires", BigInteger, nullable=False,
           comment="When the token would have expired (Unix seconds); the row can go after."),
    Column("revoked", String(32), nullable=False, comment="When it was revoked (UTC, ISO 8601)."),
    comment="Access and session tokens withdrawn before they expire (signed out): no server "
            "accepts them again.",
)
