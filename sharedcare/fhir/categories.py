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


def category_of(rtype: str, tagged: str | None) -> str:
    return tagged or DEFAULT_CATEGORY.get(rtype, "other")
