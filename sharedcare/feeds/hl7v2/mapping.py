"""HL7 v2 -> FHIR R4 transaction Bundle, in the manner of the HL7 v2-to-FHIR IG.

ADT (PID/PD1 -> Patient, PV1 -> Encounter + Location + Practitioner, MRG -> merge), ORU^R01
(OBR -> DiagnosticReport, OBX -> Observation) and MDM T01-T11 (TXA + OBX -> DocumentReference).

Every resource is written with a conditional update keyed by a business identifier, so a redelivered
message updates the same resources instead of creating new ones; references between entries use
``urn:uuid`` fullUrls (deterministic per message).  Each bundle ends with a Provenance for the message,
written to an id derived from the feed, control id and message time, so redelivery overwrites it.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import hl7

from sharedcare.fhir.codes import (
    ODS_SYSTEM,
    SOURCE_ORG_SYSTEM,
    feed_source,
    local_identifier_system,
)

from . import datatypes as dt
from .errors import HL7Error
from .parser import Dtm, Rep, Seg, parse_dtm, parse_segments

_NS = uuid.UUID("0f6b6f1e-1d0c-4c55-9a0e-6c1e5b3c9a10")  # namespace for this feed's UUIDs
THO = dt.THO

ADT_EVENTS = {
    # event: Encounter.status (None: derive from PV1-2/PV1-45, as the PV1[Encounter] map does)
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "planned",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A08": None,
    "A09": "in-progress",
    "A10": "in-progress",
    "A11": "cancelled",
    "A12": "in-progress",
    "A13": "in-progress",
    "A14": "planned",
    "A15": "in-progress",
    "A16": "in-progress",
    "A21": "onleave",
    "A22": "in-progress",
    "A23": "entered-in-error",
    "A25": "in-progress",
    "A26": "in-progress",
    "A27": "cancelled",
    "A28": None,
    "A29": "entered-in-error",
    "A31": None,
    "A40": None,
    "A41": None,
    "A45": None,
    "A47": None,
    "A60": None,
}
# Events whose message structure requires a real PV1 (visit events).
PV1_REQUIRED = {e for e, s in ADT_EVENTS.items() if s} - {"A29"} | {"A08"}
MERGE_EVENTS = {"A40", "A47"}  # MRG-1 patient identifier retired in favour of PID-3
MDM_EVENTS = {f"T{n:02d}" for n in range(1, 12)}
SUPPORTED = {"ADT": set(ADT_EVENTS), "ORU": {"R01"}, "MDM": MDM_EVENTS}

PATIENT_CLASS = {  # IG ConceptMap PatientClass[EncounterClass]
    "E": ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "EMER", "emergency"),
    "I": ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP", "inpatient encounter"),
    "O": ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory"),
    "P": ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PRENC", "pre-admission"),
    "R": (f"{THO}/v2-0004", "R", "Recurring patient"),
    "B": (f"{THO}/v2-0004", "B", "Obstetrics"),
    "C": (f"{THO}/v2-0004", "C", "Commercial Account"),
    "N": (f"{THO}/v2-0004", "N", "Not Applicable"),
    "U": (f"{THO}/v2-0004", "U", "Unknown"),
}
CLASS_STATUS = {
    "P": "planned",
    "U": "unknown",
}  # IG PatientClass[EncounterStatus]; rest in-progress
GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
PARTICIPANTS = (
    (7, "ATND", "attender"),
    (8, "REF", "referrer"),
    (9, "CON", "consultant"),
    (17, "ADM", "admitter"),
)
OBS_STATUS = {  # OBX-11 -> Observation.status (IG ObservationResultStatus)
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "I": "registered",
    "N": "cancelled",
    "O": "registered",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "U": "final",
    "W": "entered-in-error",
    "X": "cancelled",
    "A": "amended",
}
REPORT_STATUS = {  # OBR-25 -> DiagnosticReport.status (IG ResultStatus)
    "O": "registered",
    "I": "registered",
    "S": "registered",
    "A": "partial",
    "P": "preliminary",
    "C": "corrected",
    "R": "partial",
    "N": "partial",
    "F": "final",
    "X": "cancelled",
    "D": "entered-in-error",
    "M": "partial",
    "Y": "unknown",
    "Z": "unknown",
}
DOC_STATUS = {
    "AU": "final",
    "LA": "final",
    "DI": "preliminary",
    "DO": "preliminary",
    "IN": "preliminary",
    "IP": "preliminary",
    "PA": "preliminary",
}
V3_INTERPRETATION = {
    "<",
    ">",
    "A",
    "AA",
    "AC",
    "B",
    "CAR",
    "D",
    "DET",
    "E",
    "EX",
    "EXP",
    "H",
    "HH",
    "HM",
    "HU",
    "HX",
    "I",
    "IE",
    "IND",
    "L",
    "LL",
    "LU",
    "LX",
    "MS",
    "N",
    "NCL",
    "ND",
    "NEG",
    "NR",
    "NS",
    "OBX",
    "POS",
    "QCF",
    "R",
    "RR",
    "S",
    "SDD",
    "SYN-R",
    "SYN-S",
    "TOX",
    "U",
    "UNE",
    "VS",
    "W",
    "WR",
}
SN_COMPARATORS = {"<", "<=", ">=", ">"}
STRING_TYPES = {"ST", "TX", "FT", "TN", "RP", "HD", "EI", "ID", "IS"}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_RANGE = re.compile(
    r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:-|to|_)\s*([+-]?\d+(?:\.\d+)?)\s*$", re.IGNORECASE
)
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")


@dataclass
class MappedMessage:
    control_id: str
    message_type: str
    event: str
    message_time: datetime  # aware, UTC
    sending_facility: str
    bundle: dict
    merge: tuple[str, str] | None = None  # (surviving 'system|value', retired 'system|value')
    merges: list[tuple[str, str]] = field(default_factory=list)  # all pairs (A40 may carry many)
    warnings: list[str] = field(default_factory=list)  # data dropped/adjusted; no patient data


def _number(text: str, location: str) -> int | float:
    text = text.strip()
    if not _NUMBER.match(text):
        raise HL7Error("AE", "102", location, f"{location} is not a number")
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return float(text)


class _Builder:
    """Collects bundle entries for one message."""

    def __init__(self, source_org: str, feed_id: str, control_id: str, msh7: str):
        self.source_org = source_org
        self.feed_id = feed_id
        self.control_id = control_id
        self.seed = f"{source_org}|{feed_id}|{control_id}|{msh7}"
        self.entries: dict[tuple[str, str, str], dict] = {}
        self.warnings: list[str] = []
        self.org_ref = {"identifier": {"system": ODS_SYSTEM, "value": source_org}}

    def meta(self) -> dict:
        return {
            "source": feed_source(self.source_org, self.feed_id),
            "tag": [{"system": SOURCE_ORG_SYSTEM, "code": self.source_org}],
        }

    def uuid(self, *parts: str) -> str:
        return str(uuid.uuid5(_NS, "|".join((self.seed, *parts))))

    def put(self, rtype: str, key: dict, body: dict) -> str:
        """Add a conditional-update entry keyed by identifier ``key``; returns its fullUrl.
        A second resource with the same key in one message keeps the first (warned)."""
        k = (rtype, key["system"], key["value"])
        if k in self.entries:
            if rtype in ("Patient", "Encounter", "DiagnosticReport", "Observation"):
                self.warnings.append(f"Duplicate {rtype} in one message; first occurrence kept")
            return self.entries[k]["fullUrl"]
        resource = {"resourceType": rtype, "meta": self.meta(), **body}
        entry = {
            "fullUrl": f"urn:uuid:{self.uuid(*k)}",
            "resource": resource,
            "request": {
                "method": "PUT",
                "url": dt.conditional_url(rtype, key["system"], key["value"]),
            },
        }
        self.entries[k] = entry
        return entry["fullUrl"]

    def resource(self, full_url: str) -> dict:
        for entry in self.entries.values():
            if entry["fullUrl"] == full_url:
                return entry["resource"]
        raise KeyError(full_url)

    def bundle(self, message_type: str, event: str, recorded: str) -> dict:
        entries = list(self.entries.values())
        prov_id = self.uuid("Provenance")
        provenance = {
            "resourceType": "Provenance",
            "id": prov_id,
            "meta": self.meta(),
            "target": [{"reference": e["fullUrl"]} for e in entries],
            "recorded": recorded,
            "activity": {"coding": [{"system": f"{THO}/v2-0003", "code": event}]},
            "agent": [
                {
                    "type": {
                        "coding": [
                            {"system": f"{THO}/provenance-participant-type", "code": "author"}
                        ]
                    },
                    "who": self.org_ref,
                }
            ],
            "entity": [
                {
                    "role": "source",
                    "what": {
                        "identifier": {
                            "system": local_identifier_system(
                                self.source_org, f"hl7v2-message/{dt.slug(self.feed_id)}"
                            ),
                            "value": self.control_id,
                        },
                        "display": f"HL7 v2 {message_type}^{event} message {self.control_id}",
                    },
                }
            ],
        }
        entries.append(
            {
                "fullUrl": f"urn:uuid:{prov_id}",
                "resource": provenance,
                "request": {"method": "PUT", "url": f"Provenance/{prov_id}"},
            }
        )
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    # --- shared resources ---------------------------------------------------------------------

    def practitioner(self, rep: Rep) -> dict | None:
        ident = dt.xcn_identifier(rep, self.source_org)
        display = dt.xcn_display(rep)
        if not ident:
            return {"display": display} if display else None
        body: dict = {"identifier": [ident]}
        name = dt.xcn_name(rep)
        if name:
            body["name"] = [name]
        ref = {"reference": self.put("Practitioner", ident, body)}
        if display:
            ref["display"] = display
        return ref

    def location(self, rep: Rep) -> dict | None:
        key = dt.pl_key(rep)
        if not key:
            return None
        p = dt.pl_parts(rep)
        ident = {"system": local_identifier_system(self.source_org, "location"), "value": key}
        kind = ("bd", "Bed") if p["bed"] else ("ro", "Room") if p["room"] else ("wa", "Ward")
        body = {
            "identifier": [ident],
            "status": "active",
            "name": p["description"] or key,
            "mode": "instance",
            "physicalType": {
                "coding": [
                    {"system": f"{THO}/location-physical-type", "code": kind[0], "display": kind[1]}
                ]
            },
            "managingOrganization": self.org_ref,
        }
        return {"reference": self.put("Location", ident, body), "display": body["name"]}


# --- segment maps ------------------------------------------------------------------------------


def _dtm(seg: Seg, n: int, rep: Rep | None = None) -> Dtm | None:
    value = (rep or seg.rep(n)).c(1)
    return parse_dtm(value, f"{seg.id}-{n}") if value else None


def _map_pid(
    b: _Builder, pid: Seg, pd1: Seg | None, *, active: bool | None = None
) -> tuple[str, dict]:
    identifiers: list[dict] = []
    for rep in pid.reps(3):
        ident = dt.cx_identifier(rep, b.source_org, b.warnings)
        if ident and all(
            (i["system"], i["value"]) != (ident["system"], ident["value"]) for i in identifiers
        ):
            identifiers.append(ident)
    if not identifiers:
        raise HL7Error("AE", "101", "PID-3", "Patient identifier list (PID-3) is missing")
    body: dict = {"identifier": identifiers}
    if active is not None:
        body["active"] = active
    names = [n for n in (dt.xpn_name(r) for r in pid.reps(5)) if n]
    if names:
        body["name"] = names
    telecom = [t for t in (dt.xtn_telecom(r, "home") for r in pid.reps(13)) if t]
    telecom += [t for t in (dt.xtn_telecom(r, "work") for r in pid.reps(14)) if t]
    if telecom:
        body["telecom"] = telecom
    sex = pid.get(8).upper()
    if sex:
        if sex not in GENDER:
            raise HL7Error("AE", "103", "PID-8", "Administrative sex (PID-8) is not in table 0001")
        body["gender"] = GENDER[sex]
    birth = _dtm(pid, 7)
    if birth:
        body["birthDate"] = birth.date
    death = _dtm(pid, 29)
    if death:
        body["deceasedDateTime"] = death.fhir
    elif pid.get(30).upper() in ("Y", "N"):
        body["deceasedBoolean"] = pid.get(30).upper() == "Y"
    addresses = [a for a in (dt.xad_address(r) for r in pid.reps(11)) if a]
    if addresses:
        body["address"] = addresses
    if pd1 is not None:
        gps = [g for g in (b.practitioner(r) for r in pd1.reps(4)) if g]
        practice = pd1.rep(3)
        if not practice.empty:
            org: dict = {}
            org_id = practice.c(10) or practice.c(3)
            if org_id and (practice.c(6, 1) or "").upper() in ("ODS", "NHS"):
                org["identifier"] = {"system": ODS_SYSTEM, "value": org_id}
            if practice.c(1):
                org["display"] = practice.c(1)
            if org:
                gps.append(org)
        if gps:
            body["generalPractitioner"] = gps
    key = dt.key_identifier(identifiers)
    return b.put("Patient", key, body), key


def _map_pv1(b: _Builder, pv1: Seg, patient: str, status: str | None, event: str) -> str | None:
    visit = pv1.rep(19)
    if not visit.c(1):
        b.warnings.append("PV1 without a visit number (PV1-19): no Encounter written")
        return None
    klass = pv1.get(2).upper()
    if not klass:
        raise HL7Error("AE", "101", "PV1-2", "Patient class (PV1-2) is missing")
    if klass not in PATIENT_CLASS:
        raise HL7Error("AE", "103", "PV1-2", "Patient class (PV1-2) is not in table 0004")
    start, end = _dtm(pv1, 44), _dtm(pv1, 45)
    if status is None:
        status = "finished" if end else CLASS_STATUS.get(klass, "in-progress")
    ident = {
        "system": local_identifier_system(b.source_org, "visit"),
        "value": visit.c(1),
        "type": dt.table_concept("VN", "0203"),
    }
    system, code, display = PATIENT_CLASS[klass]
    body: dict = {
        "identifier": [ident],
        "status": status,
        "class": {"system": system, "code": code, "display": display},
        "subject": {"reference": patient},
    }
    if not pv1.rep(10).empty:
        body["serviceType"] = dt.table_concept(pv1.get(10), "0069")
    participants = []
    for n, code_, display_ in PARTICIPANTS:
        for rep in pv1.reps(n):
            who = b.practitioner(rep)
            if who:
                participants.append(
                    {
                        "type": [
                            {
                                "coding": [
                                    {
                                        "system": f"{THO}/v3-ParticipationType",
                                        "code": code_,
                                        "display": display_,
                                    }
                                ]
                            }
                        ],
                        "individual": who,
                    }
                )
    if participants:
        body["participant"] = participants
    if start or end:
        body["period"] = {k: v.fhir for k, v in (("start", start), ("end", end)) if v}
    hosp: dict = {}
    if pv1.get(14):
        hosp["admitSource"] = dt.table_concept(pv1.get(14), "0023")
    if pv1.get(36):
        hosp["dischargeDisposition"] = dt.table_concept(pv1.get(36), "0112")
    if hosp:
        body["hospitalization"] = hosp
    loc_status = {
        "planned": "planned",
        "finished": "completed",
        "cancelled": "completed",
        "entered-in-error": "completed",
    }.get(status, "active")
    locations = []
    current = b.location(pv1.rep(3))
    if current:
        locations.append({"location": current, "status": loc_status})
    if event == "A02":  # transfer: PV1-6 is where the patient came from
        prior = b.location(pv1.rep(6))
        if prior and prior["reference"] != (current or {}).get("reference"):
            locations.append({"location": prior, "status": "completed"})
    if locations:
        body["location"] = locations
    body["serviceProvider"] = b.org_ref
    return b.put("Encounter", ident, body)


def _identifier_string(ident: dict) -> str:
    return f"{ident['system']}|{ident['value']}"


# --- ADT ---------------------------------------------------------------------------------------


def _map_adt(b: _Builder, segs: list[Seg], event: str) -> list[tuple[str, str]]:
    status = ADT_EVENTS[event]
    merges: list[tuple[str, str]] = []
    patient: str | None = None
    patient_key: dict | None = None
    saw_pv1 = False
    group_has_mrg = False
    for i, seg in enumerate(segs):
        if seg.id == "PID":
            if event in MERGE_EVENTS and patient and not group_has_mrg:
                raise HL7Error("AE", "100", "MRG", "Merge event without an MRG segment")
            nxt = segs[i + 1] if i + 1 < len(segs) else None
            pd1 = nxt if nxt is not None and nxt.id == "PD1" else None
            patient, patient_key = _map_pid(b, seg, pd1, active=False if event == "A29" else None)
            group_has_mrg = False
        elif seg.id == "PV1":
            if patient is None:
                raise HL7Error("AE", "100", "PV1", "PV1 before PID")
            saw_pv1 = True
            _map_pv1(b, seg, patient, status, event)
        elif seg.id == "MRG" and event in MERGE_EVENTS:
            if patient is None:
                raise HL7Error("AE", "100", "MRG", "MRG before PID")
            group_has_mrg = True
            retired = [
                i for i in (dt.cx_identifier(r, b.source_org, b.warnings) for r in seg.reps(1)) if i
            ]
            if not retired:
                raise HL7Error("AE", "101", "MRG-1", "Prior patient identifier (MRG-1) is missing")
            old = dt.key_identifier(retired)
            if (old["system"], old["value"]) == (patient_key["system"], patient_key["value"]):
                raise HL7Error("AE", "102", "MRG-1", "MRG-1 names the surviving patient itself")
            merges.append((_identifier_string(patient_key), _identifier_string(old)))
            res = b.resource(patient)
            res.setdefault("link", []).append(
                {
                    "other": {"identifier": {"system": old["system"], "value": old["value"]}},
                    "type": "replaces",
                }
            )
    if patient is None:
        raise HL7Error("AE", "100", "PID", "ADT message without a PID segment")
    if event in MERGE_EVENTS and not group_has_mrg:
        raise HL7Error("AE", "100", "MRG", "Merge event without an MRG segment")
    if event in PV1_REQUIRED and not saw_pv1:
        raise HL7Error("AE", "100", "PV1", f"ADT^{event} requires a PV1 segment")
    return merges


# --- ORU ---------------------------------------------------------------------------------------


def _ei_key(b: _Builder, rep: Rep, kind: str) -> dict | None:
    if not rep.c(1):
        return None
    ns = rep.c(2) or rep.c(3)
    k = f"{kind}/{dt.slug(ns)}" if ns else kind
    return {"system": local_identifier_system(b.source_org, k), "value": rep.c(1)}


def _units(rep: Rep) -> dict:
    out: dict = {}
    unit = rep.c(2) or rep.c(1)
    if unit:
        out["unit"] = unit
    if rep.c(1) and rep.c(3).upper() == "UCUM":
        out["system"] = "http://unitsofmeasure.org"
        out["code"] = rep.c(1)
    return out


def _sn_value(rep: Rep, units: dict, loc: str) -> dict:
    comparator, n1, sep, n2 = rep.c(1), rep.c(2), rep.c(3), rep.c(4)
    if sep and n2:
        a, c = _number(n1, loc), _number(n2, loc)
        if sep == "-":
            return {"valueRange": {"low": {"value": a, **units}, "high": {"value": c, **units}}}
        if sep in (":", "/"):
            return {"valueRatio": {"numerator": {"value": a}, "denominator": {"value": c}}}
        if sep == ".":
            return {"valueQuantity": {"value": _number(f"{n1}.{n2}", loc), **units}}
        raise HL7Error("AE", "102", loc, f"{loc} has an unknown SN separator")
    if sep == "+":
        return {"valueString": f"{n1}+"}
    if not n1:
        raise HL7Error("AE", "102", loc, f"{loc} structured numeric has no number")
    quantity = {"value": _number(n1, loc), **units}
    if comparator and comparator != "=":
        if comparator not in SN_COMPARATORS:
            raise HL7Error("AE", "102", loc, f"{loc} has an unknown SN comparator")
        quantity["comparator"] = comparator
    return {"valueQuantity": quantity}


def _obx_value(b: _Builder, seg: Seg, vtype: str, rep: Rep) -> dict:
    loc = "OBX-5"
    if vtype == "NM":
        return {"valueQuantity": {"value": _number(rep.c(1), loc), **_units(seg.rep(6))}}
    if vtype == "SN":
        return _sn_value(rep, _units(seg.rep(6)), loc)
    if vtype in ("CE", "CWE", "CNE", "CF"):
        cc = dt.codeable_concept(rep, b.source_org)
        return {"valueCodeableConcept": cc} if cc else {}
    if vtype in ("DT", "DTM", "TS"):
        return {"valueDateTime": parse_dtm(rep.c(1), loc).fhir}
    if vtype == "TM":
        m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?", rep.c(1))
        if not m or int(m.group(1)) > 23 or int(m.group(2) or 0) > 59 or int(m.group(3) or 0) > 59:
            raise HL7Error("AE", "102", loc, f"{loc} is not a valid HL7 time")
        return {"valueTime": f"{m.group(1)}:{m.group(2) or '00'}:{m.group(3) or '00'}"}
    raise HL7Error("AE", "103", "OBX-2", "Unsupported OBX value type (OBX-2)")


def _ed_attachment(rep: Rep, loc: str) -> dict:
    """ED: source^type^subtype^encoding^data -> Attachment (base64 data)."""
    kind, subtype, encoding, data = rep.c(2), rep.c(3), rep.c(4).upper(), rep.c(5)
    att: dict = {}
    if kind and subtype:
        att["contentType"] = f"{kind}/{subtype}".lower()
    if data:
        if encoding in ("BASE64", "B64"):
            compact = re.sub(r"\s+", "", data)
            try:
                base64.b64decode(compact, validate=True)
            except (binascii.Error, ValueError):
                raise HL7Error("AE", "102", loc, f"{loc} is not valid base64") from None
            att["data"] = compact
        elif encoding == "HEX":
            try:
                att["data"] = base64.b64encode(bytes.fromhex(data)).decode()
            except ValueError:
                raise HL7Error("AE", "102", loc, f"{loc} is not valid hex") from None
        else:
            att["data"] = base64.b64encode(data.encode("utf-8")).decode()
    return att


def _map_obx(
    b: _Builder, seg: Seg, report: dict, patient: str, encounter: str | None, used: set[str]
) -> tuple[str | None, dict | None]:
    """OBX -> Observation.  Returns (fullUrl, presentedForm attachment for ED values)."""
    vtype = seg.get(2).upper()
    code = dt.codeable_concept(seg.rep(3), b.source_org)
    if not code:
        raise HL7Error("AE", "101", "OBX-3", "Observation identifier (OBX-3) is missing")
    values = seg.reps(5)
    if values and not vtype:
        raise HL7Error("AE", "101", "OBX-2", "Value type (OBX-2) is missing")
    raw_status = seg.get(11).upper()
    if not raw_status:
        raise HL7Error("AE", "101", "OBX-11", "Observation result status (OBX-11) is missing")
    if raw_status not in OBS_STATUS:
        raise HL7Error("AE", "103", "OBX-11", "OBX-11 is not in table 0085")
    value_id = f"{report['key']['value']}/{seg.rep(3).c(1)}"
    if seg.get(4):
        value_id += f"/{seg.get(4)}"
    base, n = value_id, 1
    while value_id in used:
        n += 1
        value_id = f"{base}#{n}"
    used.add(value_id)
    ident = {"system": report["key"]["system"] + "/result", "value": value_id}
    body: dict = {
        "identifier": [ident],
        "status": OBS_STATUS[raw_status],
        "code": code,
        "subject": {"reference": patient},
    }
    if encounter:
        body["encounter"] = {"reference": encounter}
    effective = _dtm(seg, 14) or report["effective"]
    if effective:
        body["effectiveDateTime"] = effective.fhir
    attachment = None
    if values:
        if vtype == "ED":
            attachment = _ed_attachment(values[0], "OBX-5")
        elif vtype in STRING_TYPES:
            body["valueString"] = "\n".join(r.text() for r in values)
        elif len(values) == 1:
            body.update(_obx_value(b, seg, vtype, values[0]))
        else:  # IG OBX[Observation-Component]: one component per repetition
            body["component"] = [{"code": code, **_obx_value(b, seg, vtype, r)} for r in values]
    interpretation = []
    for rep in seg.reps(8):
        c = rep.c(1)
        if c:
            system = (
                f"{THO}/v3-ObservationInterpretation"
                if c in V3_INTERPRETATION
                else f"{THO}/v2-0078"
            )
            interpretation.append({"coding": [{"system": system, "code": c}]})
    if interpretation:
        body["interpretation"] = interpretation
    ref_range = seg.get(7)
    if ref_range:
        rr: dict = {"text": ref_range}
        m = _RANGE.match(ref_range)
        if m:
            units = _units(seg.rep(6))
            rr["low"] = {"value": _number(m.group(1), "OBX-7"), **units}
            rr["high"] = {"value": _number(m.group(2), "OBX-7"), **units}
        body["referenceRange"] = [rr]
    return b.put("Observation", ident, body), attachment


def _map_oru(b: _Builder, segs: list[Seg], event: str) -> None:
    patient: str | None = None
    encounter: str | None = None
    report: dict | None = None
    last_obs: str | None = None
    saw_obr = False
    used: set[str] = set()

    def finish() -> None:
        if report is None:
            return
        obr: Seg = report["obr"]
        body: dict = {"identifier": report["identifiers"]}
        raw_status = obr.get(25).upper()
        if raw_status and raw_status not in REPORT_STATUS:
            raise HL7Error("AE", "103", "OBR-25", "OBR-25 is not in table 0123")
        body["status"] = REPORT_STATUS.get(raw_status, "unknown")
        if obr.get(24):
            body["category"] = [dt.table_concept(obr.get(24), "0074")]
        body["code"] = report["code"]
        body["subject"] = {"reference": report["patient"]}
        if report["encounter"]:
            body["encounter"] = {"reference": report["encounter"]}
        if report["effective"]:
            body["effectiveDateTime"] = report["effective"].fhir
        issued = _dtm(obr, 22)
        if issued:
            body["issued"] = issued.instant()
        if report["results"]:
            body["result"] = [{"reference": r} for r in report["results"]]
        if report["forms"]:
            body["presentedForm"] = report["forms"]
        b.put("DiagnosticReport", report["key"], body)

    for index, seg in enumerate(segs):
        if seg.id == "PID":
            finish()
            report, last_obs = None, None
            patient, _ = _map_pid(b, seg, None)
            encounter = None
        elif seg.id == "PV1" and patient:
            encounter = _map_pv1(b, seg, patient, None, event)
        elif seg.id == "OBR":
            finish()
            saw_obr = True
            if patient is None:
                raise HL7Error("AE", "100", "PID", "ORU^R01 result without a PID segment")
            code = dt.codeable_concept(seg.rep(4), b.source_org)
            if not code:
                raise HL7Error(
                    "AE", "101", "OBR-4", "Universal service identifier (OBR-4) is missing"
                )
            filler = _ei_key(b, seg.rep(3), "filler-order")
            placer = _ei_key(b, seg.rep(2), "placer-order")
            identifiers = []
            if filler:
                identifiers.append({**filler, "type": dt.table_concept("FILL", "0203")})
            if placer:
                identifiers.append({**placer, "type": dt.table_concept("PLAC", "0203")})
            key = filler or placer
            if key is None:
                b.warnings.append(
                    "OBR without placer or filler number: keyed by message control id"
                )
                key = {
                    "system": local_identifier_system(b.source_org, "hl7v2-report"),
                    "value": f"{b.control_id}-{seg.get(1) or index}",
                }
                identifiers.append(key)
            report = {
                "obr": seg,
                "key": key,
                "identifiers": identifiers,
                "code": code,
                "patient": patient,
                "encounter": encounter,
                "effective": _dtm(seg, 7),
                "results": [],
                "forms": [],
                "in_specimen": False,
            }
            last_obs = None
        elif seg.id == "SPM" and report is not None:
            report["in_specimen"] = True
            last_obs = None
        elif seg.id == "OBX":
            if report is None or report["in_specimen"]:
                b.warnings.append("OBX outside an OBR result group (or about a specimen) skipped")
                last_obs = None
                continue
            ref, attachment = _map_obx(b, seg, report, report["patient"], report["encounter"], used)
            if ref not in report["results"]:
                report["results"].append(ref)
            if attachment:
                report["forms"].append(attachment)
            last_obs = ref
        elif seg.id == "NTE" and last_obs:
            text = "\n".join(r.text() for r in seg.reps(3))
            if text:
                b.resource(last_obs).setdefault("note", []).append({"text": text})
    finish()
    if patient is None:
        raise HL7Error("AE", "100", "PID", "ORU^R01 without a PID segment")
    if not saw_obr:
        raise HL7Error("AE", "100", "OBR", "ORU^R01 without an OBR segment")


# --- MDM ---------------------------------------------------------------------------------------


def _doc_identifier(b: _Builder, rep: Rep) -> dict:
    value = rep.c(1)
    if _OID.match(value):
        return {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{value}"}
    ns = rep.c(2) or rep.c(3)
    kind = f"document/{dt.slug(ns)}" if ns else "document"
    return {"system": local_identifier_system(b.source_org, kind), "value": value}


def _map_mdm(b: _Builder, segs: list[Seg], event: str) -> None:
    patient: str | None = None
    encounter: str | None = None
    txa: Seg | None = None
    text_lines: list[str] = []
    attachments: list[dict] = []
    for seg in segs:
        if seg.id == "PID" and patient is None:
            patient, _ = _map_pid(b, seg, None)
        elif seg.id == "PV1" and patient and encounter is None:
            encounter = _map_pv1(b, seg, patient, None, event)
        elif seg.id == "TXA" and txa is None:
            txa = seg
        elif seg.id == "OBX" and txa is not None:
            vtype = seg.get(2).upper()
            reps = seg.reps(5)
            if vtype in ("TX", "ST", "FT", "CE", "CWE"):
                text_lines.extend(
                    r.text() if vtype in ("TX", "ST", "FT") else (r.c(2) or r.c(1)) for r in reps
                )
            elif vtype == "ED":
                for r in reps:
                    att = _ed_attachment(r, "OBX-5")
                    if "data" not in att:
                        b.warnings.append("ED document content without data")
                    attachments.append(att)
            elif vtype == "RP":
                for r in reps:
                    att = {"url": r.c(1)}
                    if r.c(3) and r.c(4):
                        att["contentType"] = f"{r.c(3)}/{r.c(4)}".lower()
                    attachments.append(att)
            else:
                b.warnings.append(f"MDM OBX value type {vtype or '(none)'} is not document content")
    if patient is None:
        raise HL7Error("AE", "100", "PID", "MDM message without a PID segment")
    if txa is None:
        raise HL7Error("AE", "100", "TXA", "MDM message without a TXA segment")
    if not txa.get(2):
        raise HL7Error("AE", "101", "TXA-2", "Document type (TXA-2) is missing")
    if not txa.get(12):
        raise HL7Error("AE", "101", "TXA-12", "Unique document number (TXA-12) is missing")
    key = _doc_identifier(b, txa.rep(12))
    availability = txa.get(19).upper()
    status = {"OB": "superseded", "CA": "entered-in-error"}.get(availability, "current")
    if event == "T11":
        status = "entered-in-error"
    type_rep = txa.rep(2)
    doc_type = (
        dt.codeable_concept(type_rep, b.source_org)
        if type_rep.c(3)
        else dt.table_concept(type_rep.c(1), "0270", type_rep.c(2))
    )
    body: dict = {"masterIdentifier": key, "identifier": [key], "status": status}
    completion = txa.get(17).upper()
    if completion in DOC_STATUS:
        body["docStatus"] = DOC_STATUS[completion]
    elif completion:
        b.warnings.append("TXA-17 completion status not recognised; docStatus omitted")
    body["type"] = doc_type
    body["subject"] = {"reference": patient}
    when = _dtm(txa, 6) or _dtm(txa, 4)
    if when:
        body["date"] = when.instant()
    authors = [a for a in (b.practitioner(r) for r in txa.reps(9)) if a]
    if authors:
        body["author"] = authors
    if txa.has(10):
        auth = b.practitioner(txa.rep(10))
        if auth:
            body["authenticator"] = auth
    body["custodian"] = b.org_ref
    relation = {"T05": "appends", "T06": "appends", "T09": "replaces", "T10": "replaces"}.get(event)
    if relation:
        if txa.get(13):
            body["relatesTo"] = [
                {"code": relation, "target": {"identifier": _doc_identifier(b, txa.rep(13))}}
            ]
        else:
            b.warnings.append(f"MDM^{event} without a parent document number (TXA-13)")
    title = "; ".join(r.text() for r in txa.reps(25))
    if title:
        body["description"] = title
    content = []
    if text_lines:
        content.append(
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode("\n".join(text_lines).encode("utf-8")).decode(),
                }
            }
        )
    content.extend({"attachment": a} for a in attachments if a)
    if not content:  # notification-only events (T01, T03, T05, ...) carry no content
        content.append({"attachment": {"title": title or "Document notification (no content)"}})
    body["content"] = content
    if encounter:
        body["context"] = {"encounter": [{"reference": encounter}]}
    b.put("DocumentReference", key, body)


# --- entry point -------------------------------------------------------------------------------


def to_fhir(raw_or_message, *, source_org: str, feed_id: str) -> MappedMessage:
    """Map one HL7 v2 message to a FHIR R4 transaction Bundle.  Raises HL7Error."""
    if not source_org or not feed_id:
        raise ValueError("source_org and feed_id are required")
    if isinstance(raw_or_message, hl7.Message):
        raw_or_message = str(raw_or_message)
    segs = parse_segments(raw_or_message)
    msh = segs[0]
    message_type = msh.get(9, 1).upper()
    event = msh.get(9, 2).upper()
    if message_type not in SUPPORTED:
        raise HL7Error("AR", "200", "MSH-9", "Unsupported message type")
    if not event:
        evn = next((s for s in segs if s.id == "EVN"), None)
        event = evn.get(1).upper() if evn else ""
    if not event:
        raise HL7Error("AR", "101", "MSH-9", "Trigger event (MSH-9.2) is missing")
    if event not in SUPPORTED[message_type]:
        raise HL7Error("AR", "201", "MSH-9", f"Unsupported {message_type} trigger event")
    control_id = msh.get(10)
    msh7 = parse_dtm(msh.get(7), "MSH-7", ack_code="AR")
    b = _Builder(source_org, feed_id, control_id, msh.get(7))
    merges: list[tuple[str, str]] = []
    if message_type == "ADT":
        merges = _map_adt(b, segs, event)
    elif message_type == "ORU":
        _map_oru(b, segs, event)
    else:
        _map_mdm(b, segs, event)
    message_time = msh7.utc()
    return MappedMessage(
        control_id=control_id,
        message_type=message_type,
        event=event,
        message_time=message_time,
        sending_facility=dt.hd_name(msh.rep(4), 1),
        bundle=b.bundle(message_type, event, msh7.instant()),
        merge=merges[0] if merges else None,
        merges=merges,
        warnings=b.warnings,
    )
