"""Clinical code tables for the synthetic records.

SNOMED CT and LOINC codes below are the commonly used concepts for each condition or test.
Medicine codes are dm+d-*like* (shape and names of dm+d virtual medicinal products, given under
the SNOMED CT system as NHS England profiles do); they are for a demo and were not checked
against a dm+d release. Where no code was certain the concept is sent as text only, which FHIR
allows.
"""

from __future__ import annotations

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
DISCHARGE_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
COURSE_OF_THERAPY = "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy"

# key: (SNOMED code, display, age-band prevalences (<40, 40-64, 65-79, 80+), min age)
CONDITIONS: dict[str, tuple[str, str, tuple[float, float, float, float], int]] = {
    "hypertension": (
        "38341003",
        "Hypertensive disorder, systemic arterial",
        (0.03, 0.20, 0.45, 0.55),
        25,
    ),
    "diabetes": ("44054006", "Diabetes mellitus type 2", (0.02, 0.09, 0.18, 0.18), 25),
    "asthma": ("195967001", "Asthma", (0.10, 0.09, 0.08, 0.07), 3),
    "copd": ("13645005", "Chronic obstructive lung disease", (0.0, 0.03, 0.08, 0.09), 40),
    "depression": ("35489007", "Depressive disorder", (0.10, 0.12, 0.10, 0.10), 14),
    "anxiety": ("197480006", "Anxiety disorder", (0.08, 0.08, 0.06, 0.05), 12),
    "dementia": ("52448006", "Dementia", (0.0, 0.002, 0.04, 0.20), 55),
    "af": ("49436004", "Atrial fibrillation", (0.0, 0.02, 0.08, 0.15), 45),
    "ckd": ("709044004", "Chronic kidney disease", (0.0, 0.03, 0.12, 0.25), 40),
    "heart_failure": ("84114007", "Heart failure", (0.0, 0.01, 0.05, 0.10), 45),
    "chd": ("53741008", "Coronary arteriosclerosis", (0.0, 0.04, 0.12, 0.15), 45),
    "osteoarthritis": ("396275006", "Osteoarthritis", (0.0, 0.10, 0.25, 0.30), 45),
    "obesity": ("414916001", "Obesity", (0.10, 0.20, 0.18, 0.10), 18),
    "hyperlipidaemia": ("55822004", "Hyperlipidemia", (0.01, 0.12, 0.20, 0.15), 30),
    "hypothyroidism": ("40930008", "Hypothyroidism", (0.01, 0.04, 0.06, 0.06), 18),
    "stroke": ("230690007", "Cerebrovascular accident", (0.0, 0.01, 0.04, 0.07), 45),
    "cancer_breast": ("254837009", "Malignant neoplasm of breast", (0.0, 0.01, 0.02, 0.02), 35),
    "cancer_colon": ("363406005", "Malignant neoplasm of colon", (0.0, 0.004, 0.01, 0.015), 40),
}
CONDITION_KEYS = tuple(CONDITIONS)

# Severe mental illness, recorded by the mental health trust (sensitive).
SMI = (("58214004", "Schizophrenia"), ("13746004", "Bipolar disorder"))

# (code, VMP-like name, dose instruction)
MEDICINES: dict[str, tuple[str, str, str]] = {
    "amlodipine": ("319283006", "Amlodipine 5mg tablets", "One tablet once a day"),
    "ramipril": ("318900009", "Ramipril 2.5mg capsules", "One capsule once a day"),
    "metformin": ("325278007", "Metformin 500mg tablets", "One tablet twice a day with meals"),
    "gliclazide": ("325238009", "Gliclazide 80mg tablets", "One tablet each morning"),
    "salbutamol": (
        "320176004",
        "Salbutamol 100micrograms/dose inhaler CFC free",
        "Two puffs when required",
    ),
    "beclometasone": (
        "320198005",
        "Clenil Modulite 100micrograms/dose inhaler",
        "Two puffs twice a day",
    ),
    "tiotropium": (
        "407891004",
        "Tiotropium 18microgram inhalation powder capsules",
        "Inhale one capsule once a day",
    ),
    "sertraline": ("321973004", "Sertraline 50mg tablets", "One tablet once a day"),
    "propranolol": ("318353009", "Propranolol 10mg tablets", "One tablet up to three times a day"),
    "donepezil": ("407627000", "Donepezil 5mg tablets", "One tablet at night"),
    "apixaban": ("703907006", "Apixaban 5mg tablets", "One tablet twice a day"),
    "bisoprolol": ("318590006", "Bisoprolol 2.5mg tablets", "One tablet once a day"),
    "furosemide": ("317972000", "Furosemide 40mg tablets", "One tablet each morning"),
    "atorvastatin": ("320000009", "Atorvastatin 20mg tablets", "One tablet at night"),
    "aspirin": ("319770009", "Aspirin 75mg dispersible tablets", "One tablet once a day"),
    "levothyroxine": (
        "315297002",
        "Levothyroxine sodium 50microgram tablets",
        "One tablet each morning",
    ),
    "paracetamol": (
        "322236009",
        "Paracetamol 500mg tablets",
        "Two tablets up to four times a day when required",
    ),
    "naproxen": ("329696000", "Naproxen 250mg tablets", "One tablet twice a day with food"),
    "clopidogrel": ("376806000", "Clopidogrel 75mg tablets", "One tablet once a day"),
    "olanzapine": ("321646000", "Olanzapine 5mg tablets", "One tablet at night"),
    "morphine": (
        "322497003",
        "Morphine sulfate 10mg/5ml oral solution",
        "2.5ml to 5ml every four hours when required for pain",
    ),
}

CONDITION_MEDICINES: dict[str, tuple[str, ...]] = {
    "hypertension": ("amlodipine", "ramipril"),
    "diabetes": ("metformin", "gliclazide"),
    "asthma": ("salbutamol", "beclometasone"),
    "copd": ("tiotropium", "salbutamol"),
    "depression": ("sertraline",),
    "anxiety": ("propranolol",),
    "dementia": ("donepezil",),
    "af": ("apixaban", "bisoprolol"),
    "heart_failure": ("bisoprolol", "furosemide"),
    "chd": ("atorvastatin", "aspirin"),
    "hyperlipidaemia": ("atorvastatin",),
    "hypothyroidism": ("levothyroxine",),
    "osteoarthritis": ("paracetamol", "naproxen"),
    "stroke": ("clopidogrel", "atorvastatin"),
}

# (SNOMED code, display, category, substance text, reaction (code, display))
ALLERGIES = (
    ("91936005", "Allergy to penicillin", "medication", ("271807003", "Eruption of skin")),
    ("91935009", "Allergy to peanuts", "food", ("39579001", "Anaphylaxis")),
    ("300916003", "Latex allergy", "environment", ("271807003", "Eruption of skin")),
)

# A&E presenting problems (SNOMED code, display)
AE_REASONS = (
    ("29857009", "Chest pain"),
    ("1912002", "Fall"),
    ("267036007", "Dyspnea"),
    ("21522001", "Abdominal pain"),
    ("82271004", "Injury of head"),
    ("125605004", "Fracture of bone"),
    ("68566005", "Urinary tract infectious disease"),
    ("233604007", "Pneumonia"),
    ("50417007", "Lower respiratory tract infection"),
    ("128045006", "Cellulitis"),
    ("271594007", "Syncope"),
)
ADMITTING_REASONS = AE_REASONS[:3] + AE_REASONS[5:]

ENC_AE = ("4525004", "Emergency department patient visit")
ENC_ADMISSION = ("183452005", "Emergency hospital admission")
ENC_FOLLOW_UP = ("185389009", "Follow-up visit")
ENC_HOME_VISIT = ("439708006", "Home visit")
ENC_PROBLEM = ("185347001", "Encounter for problem")

# Observations: (LOINC code, display, unit (UCUM), unit display)
HBA1C = (
    "59261-8",
    "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol",
    "mmol/mol",
    "mmol/mol",
)
EGFR = (
    "62238-1",
    (
        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in "
        "Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)"
    ),
    "mL/min/{1.73_m2}",
    "mL/min/1.73m2",
)
CREATININE = ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "umol/L", "umol/L")
CHOLESTEROL = ("2093-3", "Cholesterol [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L")
WEIGHT = ("29463-7", "Body weight", "kg", "kg")
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
SYSTOLIC = ("8480-6", "Systolic blood pressure")
DIASTOLIC = ("8462-4", "Diastolic blood pressure")
RENAL_PANEL = ("24362-6", "Renal function panel - Serum or Plasma")
LIPID_PANEL = ("57698-3", "Lipid panel with direct LDL - Serum or Plasma")

# Laboratory results as UK pathology sends them: the SNOMED CT code and term of the UK Pathology
# Bounded Code List first, the LOINC mapping after it, and the name the lab report prints as the
# text. LOINC code -> (SNOMED CT code, SNOMED CT term, name on the report).
UK_LAB = {
    HBA1C[0]: (
        "999791000000106",
        "Haemoglobin A1c level - International Federation of Clinical Chemistry and Laboratory "
        "Medicine standardised",
        "HbA1c",
    ),
    EGFR[0]: (
        "1011481000000105",
        "eGFR (estimated glomerular filtration rate) using creatinine Chronic Kidney Disease "
        "Epidemiology Collaboration equation per 1.73 square metres",
        "eGFR",
    ),
    CREATININE[0]: ("1000731000000107", "Serum creatinine level", "Creatinine"),
    CHOLESTEROL[0]: ("1005671000000105", "Serum cholesterol level", "Total cholesterol"),
}
# The report (DiagnosticReport) names a UK laboratory gives these requests.
UK_REPORT_NAMES = {
    HBA1C[0]: "HbA1c",
    RENAL_PANEL[0]: "Urea and electrolytes",
    LIPID_PANEL[0]: "Lipid profile",
}

DISCHARGE_SUMMARY = ("18842-5", "Discharge summary")
PROGRESS_NOTE = ("11506-3", "Progress note")

SENSITIVE_CONDITIONS = {
    "sexual-health": ("105629000", "Chlamydial infection"),
    "gender-identity": ("93461009", "Gender dysphoria"),
}
IVF = ("52637005", "In vitro fertilization")
