"""The official R4 Patient CompartmentDefinition: which resource types hold patient data."""

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


def patient_compartment_types() -> frozenset[str]:
    return frozenset(patient_compartment_params())
