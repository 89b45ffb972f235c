"""The official R4 Patient CompartmentDefinition: which resource types hold patient data --
and Binary, which the definition leaves out: a Binary is part of the record of what it secures
(Binary.securityContext, http://hl7.org/fhir/R4/binary.html#security): a clinic letter whose
securityContext is the Patient, or the DocumentReference that indexes it, is that patient's
data and is governed as such. The store puts it in the compartment of the Patient it names
(store/indexing/indexer.py) or of the resource it names (governance/policy.py
`secure_binaries`); a Binary in no patient's compartment is seen by no person (fail closed)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson

DEFINITION = Path(__file__).parent / "definitions" / "CompartmentDefinition-patient.json"


@cache
def patient_compartment_params() -> dict[str, tuple[str, ...]]:
    """resource type -> the search parameters that put it in a patient's compartment."""
    doc = orjson.loads(DEFINITION.read_bytes())
    out = {r["code"]: tuple(r["param"]) for r in doc["resource"] if r.get("param")}
    out["Patient"] = ("_id",)
    return out


# Types that join a patient's compartment through what they secure, not a search parameter.
SECURED_TYPES = frozenset({"Binary"})


def patient_compartment_types() -> frozenset[str]:
    return _types()


@cache
def _types() -> frozenset[str]:
    return frozenset(patient_compartment_params()) | SECURED_TYPES


def secured_reference(resource: dict) -> tuple[str, str] | None:
    """(type, id) of what a Binary secures (its securityContext as a relative reference)."""
    ref = (resource.get("securityContext") or {}).get("reference")
    if not isinstance(ref, str):
        return None
    rtype, _, rid = ref.partition("/")
    if not rtype or not rid or "/" in rid:
        return None
    return rtype, rid
