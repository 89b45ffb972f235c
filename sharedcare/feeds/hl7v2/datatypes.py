"""HL7 v2 data types (CX, XPN, XAD, XTN, CWE, XCN, PL) to FHIR R4 data types.

Follows the HL7 v2-to-FHIR IG data type maps (CX[Identifier], XPN[HumanName], XAD[Address],
XTN[ContactPoint], CWE[CodeableConcept], XCN[Practitioner], PL[Location]) for the components a
shared care record uses.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import nhs_number

from sharedcare.fhir.codes import BASE, NHS_NUMBER_SYSTEM, local_identifier_system

from .parser import Rep

THO = "http://terminology.hl7.org/CodeSystem"
V2_TABLE = re.compile(r"^HL7(\d{4})$")

# Coding system names seen in v2 CWE-3 (HL7 table 0396) -> FHIR system URIs.
CODE_SYSTEMS = {
    "LN": "http://loinc.org",
    "LNC": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNOMEDCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "UCUM": "http://unitsofmeasure.org",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CM": "http://hl7.org/fhir/sid/icd-9-cm",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "DMD": "https://dmd.nhs.uk",
    "READ": "http://read.info/readv2",
    "CTV3": "http://read.info/ctv3",
}

# PID-3 / MRG-1: which identifiers are NHS numbers.
NHS_TYPE_CODES = {"NH", "NHS", "NHSNMBR", "NHSNBR"}
NHS_AUTHORITIES = {"NHS", "NHSNBR", "NHSNMBR", "NHS NUMBER", "NHSNUMBER"}
NHS_OID = "2.16.840.1.113883.2.1.4.1"

_SLUG = re.compile(r"[^a-z0-9.]+")


def slug(text: str) -> str:
    return _SLUG.sub("-", text.lower()).strip("-") or "x"


def conditional_url(resource_type: str, system: str, value: str) -> str:
    """``Patient?identifier=<system>|<value>`` with the parts percent-encoded for a query."""
    return f"{resource_type}?identifier={quote(system, safe=':/')}|{quote(value, safe='')}"


def local_code_system(source_org: str, name: str) -> str:
    return f"{BASE}/CodeSystem/local/{source_org}/{slug(name)}"


def code_system(name: str, source_org: str) -> str | None:
    name = name.strip()
    if not name:
        return None
    if name.upper() in CODE_SYSTEMS:
        return CODE_SYSTEMS[name.upper()]
    m = V2_TABLE.match(name.upper())
    if m:
        return f"{THO}/v2-{m.group(1)}"
    return local_code_system(source_org, name)


def coding(code: str, display: str, system_name: str, source_org: str) -> dict | None:
    if not code:
        return None
    out: dict = {}
    system = code_system(system_name, source_org)
    if system:
        out["system"] = system
    out["code"] = code
    if display:
        out["display"] = display
    return out


def codeable_concept(rep: Rep, source_org: str) -> dict | None:
    """CWE/CE/CNE: primary (1-3) and alternate (4-6) codings, original text (9) or display."""
    codings = [
        c
        for c in (
            coding(rep.c(1), rep.c(2), rep.c(3), source_org),
            coding(rep.c(4), rep.c(5), rep.c(6), source_org),
        )
        if c
    ]
    text = rep.c(9) or rep.c(2)
    if not codings and not text:
        return None
    out: dict = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    return out


_CODE_LIKE = re.compile(r"^[A-Za-z0-9._-]{1,20}$")


def table_concept(code: str, table: str, display: str = "") -> dict:
    """A code from HL7 table ``table``; free text that is not code-like becomes .text only."""
    if not _CODE_LIKE.match(code):
        return {"text": code}
    c = {"system": f"{THO}/v2-{table}", "code": code}
    if display:
        c["display"] = display
    return {"coding": [c]}


# --- identifiers -------------------------------------------------------------------------------


def hd_name(rep: Rep, comp: int) -> str:
    """An HD inside a composite: namespace id, else universal id."""
    return rep.c(comp, 1) or rep.c(comp, 2)


def is_nhs_claim(rep: Rep) -> bool:
    return (
        rep.c(5).upper() in NHS_TYPE_CODES
        or hd_name(rep, 4).upper() in NHS_AUTHORITIES
        or rep.c(4, 2) == NHS_OID
    )


def cx_identifier(rep: Rep, source_org: str, warnings: list[str]) -> dict | None:
    """CX -> Identifier.  NHS numbers (type NH / NHS authority) that pass the modulus-11 check get
    the national system; everything else is local to the source organisation, namespaced by the
    assigning authority (CX-4), or 'mrn' when there is none."""
    value = rep.c(1)
    if not value:
        return None
    type_code = rep.c(5)
    if is_nhs_claim(rep):
        digits = value.replace(" ", "").replace("-", "")
        if digits.isdigit() and len(digits) == 10 and nhs_number.is_valid(digits):
            return {"system": NHS_NUMBER_SYSTEM, "value": digits}
        warnings.append(
            "An identifier labelled as an NHS number failed the check digit; kept as local"
        )
    authority = hd_name(rep, 4)
    ident: dict = {
        "system": local_identifier_system(source_org, slug(authority) if authority else "mrn"),
        "value": value,
    }
    if type_code and re.fullmatch(r"[A-Za-z0-9]{1,6}", type_code):
        ident["type"] = table_concept(type_code, "0203")
    return ident


def key_identifier(identifiers: list[dict]) -> dict:
    """Which identifier keys the conditional update: the source's own record number (type MR),
    else its first local identifier, else the NHS number.  A partner always sends its own number,
    while the NHS number may be missing on one message and present on the next."""
    for ident in identifiers:
        codes = [c["code"] for c in ident.get("type", {}).get("coding", [])]
        if "MR" in codes and ident["system"] != NHS_NUMBER_SYSTEM:
            return ident
    for ident in identifiers:
        if ident["system"] != NHS_NUMBER_SYSTEM:
            return ident
    return identifiers[0]


# --- names, addresses, telecoms --------------------------------------------------------------------

NAME_USE = {
    "L": "official",
    "D": "usual",
    "M": "maiden",
    "N": "nickname",
    "A": "usual",
    "B": "old",
    "C": "old",
    "U": "temp",
    "T": "temp",
    "S": "anonymous",
}


def xpn_name(rep: Rep) -> dict | None:
    family = rep.c(1, 1)
    given = [g for g in (rep.c(2), rep.c(3)) if g]
    if not family and not given:
        return None
    name: dict = {}
    use = NAME_USE.get(rep.c(7).upper())
    if use:
        name["use"] = use
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if rep.c(5):
        name["prefix"] = [rep.c(5)]
    suffix = [s for s in (rep.c(4), rep.c(6)) if s]
    if suffix:
        name["suffix"] = suffix
    return name


ADDRESS_USE = {"H": "home", "P": "home", "B": "work", "O": "work", "C": "temp", "BA": "old"}


def xad_address(rep: Rep) -> dict | None:
    # SAD: street address & street name & dwelling number -> one line
    line1 = " ".join(s for s in rep.subs(1) if s)
    lines = [ln for ln in (line1, rep.c(2)) if ln]
    addr: dict = {}
    if lines:
        addr["line"] = lines
    for key, comp in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6)):
        if rep.c(comp):
            addr[key] = rep.c(comp)
    if not addr:
        return None
    kind = rep.c(7).upper()
    if kind in ADDRESS_USE:
        addr["use"] = ADDRESS_USE[kind]
    elif kind == "M":
        addr["type"] = "postal"
    return addr


TELECOM_USE = {"PRN": "home", "ORN": "home", "VHN": "home", "WPN": "work", "EMR": "temp"}
EQUIPMENT = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "BP": "pager",
    "INTERNET": "email",
    "X.400": "email",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
}


def xtn_telecom(rep: Rep, default_use: str) -> dict | None:
    equipment = rep.c(3).upper()
    system = EQUIPMENT.get(equipment)
    if system == "email":
        value = rep.c(4) or rep.c(1)
    else:
        value = rep.c(1) or rep.c(12)
        if not value:
            parts = [p for p in (rep.c(5) and f"+{rep.c(5)}", rep.c(6), rep.c(7)) if p]
            value = " ".join(parts)
            if value and rep.c(8):
                value += f" ext. {rep.c(8)}"
    if not value:
        return None
    tel: dict = {"system": system or ("email" if "@" in value else "phone"), "value": value}
    use = "mobile" if equipment == "CP" else TELECOM_USE.get(rep.c(2).upper(), default_use)
    if use:
        tel["use"] = use
    return tel


# --- people and places --------------------------------------------------------------------------


def xcn_name(rep: Rep) -> dict | None:
    family = rep.c(2, 1)
    given = [g for g in (rep.c(3), rep.c(4)) if g]
    if not family and not given:
        return None
    name: dict = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if rep.c(6):
        name["prefix"] = [rep.c(6)]
    suffix = [s for s in (rep.c(5), rep.c(7)) if s]
    if suffix:
        name["suffix"] = suffix
    return name


def xcn_display(rep: Rep) -> str:
    name = xcn_name(rep)
    if not name:
        return rep.c(1)
    return " ".join(
        name.get("prefix", []) + name.get("given", []) + [name.get("family", "")]
    ).strip()


def xcn_identifier(rep: Rep, source_org: str) -> dict | None:
    if not rep.c(1):
        return None
    authority = rep.c(9, 1) or rep.c(9, 2)
    kind = f"practitioner/{slug(authority)}" if authority else "practitioner"
    return {"system": local_identifier_system(source_org, kind), "value": rep.c(1)}


def pl_parts(rep: Rep) -> dict:
    """PL: point of care (1), room (2), bed (3), facility (4), building (7), floor (8), text (9)."""
    return {
        "facility": rep.c(4, 1) or rep.c(4, 2),
        "building": rep.c(7),
        "floor": rep.c(8),
        "point_of_care": rep.c(1, 1),
        "room": rep.c(2, 1),
        "bed": rep.c(3, 1),
        "description": rep.c(9),
    }


def pl_key(rep: Rep) -> str:
    p = pl_parts(rep)
    return "/".join(
        p[k] for k in ("facility", "building", "floor", "point_of_care", "room", "bed") if p[k]
    )
