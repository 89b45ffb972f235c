"""NHS numbers for identity: re-exported from the FHIR model layer (`sharedcare.fhir.nhs_number`),
where the validation of NHS-number identifiers needs them and which must not import upward."""

from ..fhir.nhs_number import SYNTHETIC_END, SYNTHETIC_START, is_valid, normalise, synthetic

__all__ = ["SYNTHETIC_END", "SYNTHETIC_START", "is_valid", "normalise", "synthetic"]
