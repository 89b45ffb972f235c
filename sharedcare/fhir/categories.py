"""Data categories: what a sharing agreement shares. A resource's category is its
DATA_CATEGORY_SYSTEM tag, else the default for its type below."""

from __future__ import annotations

CATEGORIES = (
    "demographics",
    "gp-summary",
    "encounters",
    "results",
    "documents",
    "care-plans",
    "mental-health",
    "social-care",
    "care-home-notes",
)

DEFAULT_CATEGORY = {
    "Patient": "demographics",
    "RelatedPerson": "demographics",
    "Condition": "gp-summary",
    "AllergyIntolerance": "gp-summary",
    "MedicationRequest": "gp-summary",
    "MedicationStatement": "gp-summary",
    "MedicationDispense": "gp-summary",
    "MedicationAdministration": "gp-summary",
    "Immunization": "gp-summary",
    "Procedure": "gp-summary",
    "FamilyMemberHistory": "gp-summary",
    "Encounter": "encounters",
    "EpisodeOfCare": "encounters",
    "Appointment": "encounters",
    "ServiceRequest": "encounters",
    "Claim": "encounters",
    "ExplanationOfBenefit": "encounters",
    "Coverage": "encounters",
    "Observation": "results",
    "DiagnosticReport": "results",
    "ImagingStudy": "results",
    "Specimen": "results",
    "DocumentReference": "documents",
    "Composition": "documents",
    "Media": "documents",
    "QuestionnaireResponse": "documents",
    "Communication": "documents",
    # a Binary takes the category of what it secures (governance/policy.py secure_binaries);
    # secured by a Patient, or by nothing, it is a document
    "Binary": "documents",
    "CarePlan": "care-plans",
    "CareTeam": "care-plans",
    "Goal": "care-plans",
    "Flag": "care-plans",
    "Consent": "care-plans",
}

# Reference data that is not about a person: visible to anyone signed in for direct care.
DIRECTORY_TYPES = frozenset({
    "Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService",
    "Endpoint", "Medication", "Questionnaire", "ValueSet", "CodeSystem", "StructureDefinition",
    "SearchParameter", "Substance",
})


# Medicines, problems, allergies and results stay what they are whatever a partner's tag says:
# a feed that tags a discharge medicine or an admission's diagnosis "encounters" (it arrived with
# the admission) must not show it to a role without medication or the problem list (a social
# worker, an admin). For these types a tag may name only the type's own category or the
# narrower mental-health one. A tag that is not a known category is kept: no role has it, so
# the record is withheld (fail closed).
TAG_BOUNDS = {
    "gp-summary": frozenset({"gp-summary", "mental-health"}),
    "results": frozenset({"results", "mental-health"}),
}


def category_of(rtype: str, tagged: str | None) -> str:
    """A resource's data category: its DATA_CATEGORY_SYSTEM tag within the bounds of its type
    (TAG_BOUNDS), else the type's default."""
    default = DEFAULT_CATEGORY.get(rtype, "other")
    if not tagged:
        return default
    bounds = TAG_BOUNDS.get(default)
    if bounds is not None and tagged in CATEGORIES and tagged not in bounds:
        return default
    return tagged
