"""Patient choices as FHIR R4 `Consent` resources.

A patient's objection to sharing, or their national data opt-out, is a `Consent` in the record
(readable and writable through the API like any resource, by the roles allowed to, audited): a
`deny` provision (R4 Consent.provision.type) with

* no actor: objection to all sharing (`objection-all`);
* an actor in the role of custodian (CST) naming an organisation by ODS code: no sharing of
  that organisation's data (`objection-from`);
* an actor in the role of recipient (PRCP): no sharing with that organisation (`objection-to`);
* the national data opt-out policy (`Consent.policy.uri`): the national data opt-out, which
  applies to planning and research, never direct care.

A store hook keeps `patient_choice` -- what the policy reads, an indexed lookup -- current from
them in the same transaction, so a Consent written through any path takes effect on the next
query and withdrawing it (status `inactive`) lifts it.
"""

from __future__ import annotations

import uuid

import orjson
from sqlalchemy import Connection, delete, insert

from ..fhir.codes import BASE, DATA_CATEGORY_SYSTEM, ODS_SYSTEM
from .policy import now_text
from .schema import patient_choice

NATIONAL_OPT_OUT_POLICY = "https://digital.nhs.uk/services/national-data-opt-out"
CHOICE_SYSTEM = f"{BASE}/CodeSystem/patient-choice"
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACTOR_ROLE = {"objection-from": ("CST", "custodian"), "objection-to": ("PRCP", "primary information recipient")}
WORDS = {"objection-all": "Objection to sharing my record",
         "objection-from": "Objection to sharing one organisation's records about me",
         "objection-to": "Objection to sharing my record with one organisation",
         "national-opt-out": "National data opt-out (planning and research)"}
KINDS = tuple(WORDS)


def consent_for(patient_id: str, kind: str, ods: str | None = None) -> dict:
    """The R4 Consent recording a patient's choice."""
    if kind not in KINDS:
        raise ValueError(f"unknown patient choice '{kind}' (one of {', '.join(KINDS)})")
    if kind in ACTOR_ROLE and not ods:
        raise ValueError(f"{kind} needs an organisation")
    provision: dict = {"type": "deny"}
    res = {
        "resourceType": "Consent", "status": "active",
        # A privacy choice is about how the record is shared: those who may see the person's
        # demographics may see it (an advance directive would be a care plan).
        "meta": {"tag": [{"system": DATA_CATEGORY_SYSTEM, "code": "demographics"}]},
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy", "display": "Privacy Consent"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0",
                                  "display": "Patient Consent"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": now_text()[:19] + "Z",
        "policyRule": {"coding": [{"system": CHOICE_SYSTEM, "code": kind, "display": WORDS[kind]}],
                       "text": WORDS[kind]},
        "provision": provision,
    }
    if kind == "national-opt-out":
        res["policy"] = [{"uri": NATIONAL_OPT_OUT_POLICY}]
        provision["purpose"] = [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code}
            for code in ("HOPERAT", "HRESCH")]
    elif kind in ACTOR_ROLE:
        code, display = ACTOR_ROLE[kind]
        provision["actor"] = [{"role": {"coding": [{"system": ROLE_SYSTEM, "code": code,
                                                    "display": display}]},
                               "reference": {"identifier": {"system": ODS_SYSTEM, "value": ods}}}]
    return res


def choices_in(consent: dict) -> list[tuple[str, str | None]]:
    """(kind, organisation) for each patient choice an active Consent records."""
    if consent.get("status") != "active":
        return []
    provision = consent.get("provision") or {}
    if provision.get("type") != "deny":
        return []
    if any((p or {}).get("uri") == NATIONAL_OPT_OUT_POLICY for p in consent.get("policy") or []):
        return [("national-opt-out", None)]
    out = []
    for actor in provision.get("actor") or []:
        roles = {c.get("code") for c in ((actor or {}).get("role") or {}).get("coding") or []}
        ident = ((actor or {}).get("reference") or {}).get("identifier") or {}
        if ident.get("system") != ODS_SYSTEM or not ident.get("value"):
            continue
        if "CST" in roles:
            out.append(("objection-from", ident["value"]))
        elif "PRCP" in roles:
            out.append(("objection-to", ident["value"]))
    return out or [("objection-all", None)]


def _patient_of(consent: dict) -> str | None:
    ref = (consent.get("patient") or {}).get("reference") or ""
    return ref.split("/", 1)[1] if ref.startswith("Patient/") else None


def derive_choices(conn: Connection, results) -> None:
    """Store hook: patient_choice rows follow the Consents written in this transaction."""
    written = [r.stored for r in results if r.stored.type == "Consent"]
    if not written:
        return
    sources = [f"Consent/{s.id}" for s in written]
    conn.execute(delete(patient_choice).where(patient_choice.c.source.in_(sources)))
    rows = []
    for s in written:
        if s.deleted or not s.content:
            continue
        consent = orjson.loads(s.content)
        patient = _patient_of(consent)
        if not patient:
            continue
        for kind, ods in choices_in(consent):
            rows.append({"patient_id": patient, "kind": kind, "ods": ods,
                         "recorded": now_text(), "source": f"Consent/{s.id}",
                         "recorded_by": None})
    if rows:
        conn.execute(insert(patient_choice), rows)


def new_consent_id() -> str:
    return str(uuid.uuid4())
