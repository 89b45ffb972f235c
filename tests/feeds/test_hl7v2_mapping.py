"""HL7 v2 -> FHIR mapping, checked field by field against the shared sample messages.

The expected values are read from the samples with plain string splitting in this file, not with
the feed's own parser, so a parsing bug cannot hide behind itself.
"""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import jsonschema_rs
import pytest

from sharedcare.feeds.hl7v2 import HL7Error, MappedMessage, build_ack, parse, to_fhir
from sharedcare.fhir.codes import (
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    SOURCE_ORG_SYSTEM,
    feed_source,
    local_identifier_system,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
SCHEMA = Path(__file__).resolve().parents[2] / "sharedcare/fhir/definitions/fhir.schema.json"
ORG, FEED = "RXX", "pas-adt"
LONDON = ZoneInfo("Europe/London")

if not SAMPLES.is_dir():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"shared HL7 v2 samples missing at {SAMPLES}")
    pytest.skip("shared HL7 v2 samples not available", allow_module_level=True)


# --- independent reading of the samples ---------------------------------------------------------


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8").lstrip("\ufeff")


def split(text: str) -> list[list[str]]:
    """Segments as lists of fields, numbered as in HL7 (fields[3] is PID-3; MSH-3 for MSH)."""
    out = []
    for line in re.split(r"\r\n|\n|\r", text.lstrip("\ufeff")):
        line = line.strip()
        if not line:
            continue
        fields = line.split("|")
        if fields[0] == "MSH":
            fields.insert(1, "|")
        out.append(fields)
    return out


def unesc(v: str) -> str:
    for code, char in (("F", "|"), ("S", "^"), ("T", "&"), ("R", "~"), ("E", "\\")):
        v = v.replace(f"\\{code}\\", char)
    return v.replace("\\.br\\", "\n")


def f(seg: list[str], n: int, c: int = 1, s: int = 1, r: int = 1) -> str:
    if n >= len(seg):
        return ""
    reps = [x for x in seg[n].split("~") if x.replace("^", "").replace("&", "").strip()]
    if len(reps) < r:
        return ""
    comps = reps[r - 1].split("^")
    if len(comps) < c:
        return ""
    subs = comps[c - 1].split("&")
    return unesc(subs[s - 1]).strip() if len(subs) >= s else ""


def reps(seg: list[str], n: int) -> list[str]:
    if n >= len(seg):
        return []
    return [x for x in seg[n].split("~") if x.replace("^", "").replace("&", "").strip()]


def first(segs, sid):
    return next((s for s in segs if s[0] == sid), None)


def v2_datetime(value: str) -> datetime:
    m = re.fullmatch(
        r"(\d{4})(\d{2})(\d{2})(\d{2})?(\d{2})?(\d{2})?(?:\.(\d+))?([+-]\d{4})?", value
    )
    assert m, value
    y, mo, d, h, mi, s, frac, off = m.groups()
    micro = int((frac or "0").ljust(6, "0"))
    naive = datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), micro)
    if off:
        sign = 1 if off[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[3:5])))
        return naive.replace(tzinfo=tz)
    return naive.replace(tzinfo=LONDON)


def same_time(fhir: str, v2: str) -> bool:
    """A FHIR date/dateTime equals an HL7 DT/DTM: date-only values compare as dates."""
    if len(v2) <= 8:
        return fhir == "-".join(x for x in (v2[:4], v2[4:6], v2[6:8]) if x)
    return datetime.fromisoformat(fhir) == v2_datetime(v2)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def message_type(path: Path) -> str:
    return f(split(read(path))[0], 9, 1)


def samples(*types: str) -> list[Path]:
    return sorted(p for p in SAMPLES.glob("*.hl7") if message_type(p) in types)


ADT = samples("ADT")
ORU = samples("ORU")
MDM = samples("MDM")
ids = lambda p: p.name


@pytest.fixture(scope="module")
def validator():
    return jsonschema_rs.validator_for(json.loads(SCHEMA.read_text()))


def mapped(path: Path) -> MappedMessage:
    return to_fhir(read(path), source_org=ORG, feed_id=FEED)


def resources(m: MappedMessage, rtype: str) -> list[dict]:
    return [e["resource"] for e in m.bundle["entry"] if e["resource"]["resourceType"] == rtype]


def by_url(m: MappedMessage) -> dict[str, dict]:
    return {e["fullUrl"]: e["resource"] for e in m.bundle["entry"]}


def has_identifier(resource: dict, system: str, value: str) -> bool:
    return any(
        i.get("system") == system and i.get("value") == value
        for i in resource.get("identifier", [])
    )


# --- every sample: structure, schema, meta, provenance ------------------------------------------


def test_sample_sets_are_present():
    assert len(ADT) >= 50 and len(ORU) >= 4 and len(MDM) >= 12


@pytest.mark.parametrize("path", ADT + ORU + MDM, ids=ids)
def test_sample_maps_to_valid_transaction(path, validator):
    segs = split(read(path))
    msh = segs[0]
    m = mapped(path)
    assert m.control_id == f(msh, 10)
    assert m.message_type == f(msh, 9, 1)
    assert m.event == f(msh, 9, 2)
    assert m.sending_facility == (f(msh, 4, 1) or f(msh, 4, 2))
    assert m.message_time.tzinfo is not None and m.message_time.utcoffset() == timedelta(0)
    assert m.message_time == v2_datetime(f(msh, 7))

    bundle = m.bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    assert validator.is_valid(bundle)
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    assert all(u.startswith("urn:uuid:") for u in full_urls)
    urls = [e["request"]["url"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls), "two entries with the same conditional URL"
    for entry in bundle["entry"]:
        res = entry["resource"]
        errors = [str(e) for e in validator.iter_errors(res)]
        assert not errors, (res["resourceType"], errors[:3])
        assert res["meta"]["source"] == feed_source(ORG, FEED)
        assert {"system": SOURCE_ORG_SYSTEM, "code": ORG} in res["meta"]["tag"]
        assert entry["request"]["method"] == "PUT"
        if res["resourceType"] == "Provenance":
            assert entry["request"]["url"] == f"Provenance/{res['id']}"
            continue
        rtype, _, query = entry["request"]["url"].partition("?identifier=")
        assert rtype == res["resourceType"]
        system, _, value = query.partition("|")
        assert has_identifier(res, unquote(system), unquote(value)), "key not among identifiers"
    # every urn:uuid reference resolves inside the bundle
    text = json.dumps(bundle)
    for ref in re.findall(r'"reference": "(urn:uuid:[^"]+)"', text):
        assert ref in full_urls

    prov = resources(m, "Provenance")
    assert len(prov) == 1
    prov = prov[0]
    assert bundle["entry"][-1]["resource"] is prov
    targets = {t["reference"] for t in prov["target"]}
    assert targets == set(full_urls[:-1])
    assert same_time(prov["recorded"], f(msh, 7))
    assert prov["agent"][0]["who"]["identifier"] == {"system": ODS_SYSTEM, "value": ORG}
    assert prov["entity"][0]["what"]["identifier"]["value"] == f(msh, 10)


@pytest.mark.parametrize("path", [ADT[0], ORU[0], MDM[0]], ids=ids)
def test_redelivery_gives_identical_bundle(path):
    assert mapped(path).bundle == mapped(path).bundle


def test_message_object_and_bytes_inputs_are_equivalent():
    path = SAMPLES / "ADT-A01-01.hl7"
    text = read(path)
    a = to_fhir(text, source_org=ORG, feed_id=FEED)
    b = to_fhir(parse(text), source_org=ORG, feed_id=FEED)
    c = to_fhir(path.read_bytes(), source_org=ORG, feed_id=FEED)  # BOM-less bytes
    d = to_fhir(("\ufeff" + text.replace("\n", "\r\n")).encode(), source_org=ORG, feed_id=FEED)
    assert a.bundle == b.bundle == c.bundle == d.bundle


# --- ADT: Patient and Encounter against PID / PV1 -----------------------------------------------

NHS_TYPES = {"NH", "NHS", "NHSNMBR", "NHSNBR"}
EVENT_STATUS = {  # IG ConceptMap Event[EncounterStatus], plus events of the same structures
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "planned",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A09": "in-progress",
    "A10": "in-progress",
    "A11": "cancelled",
    "A13": "in-progress",
    "A14": "planned",
    "A15": "in-progress",
    "A16": "in-progress",
    "A25": "in-progress",
    "A26": "in-progress",
    "A27": "cancelled",
    "A29": "entered-in-error",
}
CLASS = {"E": "EMER", "I": "IMP", "O": "AMB", "P": "PRENC"}


def expected_identifier(rep: str) -> tuple[str, str]:
    comps = rep.split("^") + [""] * 6
    value = unesc(comps[0]).strip()
    authority = comps[3].split("&")[0] or (comps[3].split("&") + [""])[1]
    if comps[4].upper() in NHS_TYPES or authority.upper() in NHS_TYPES | {"NHS"}:
        return NHS_NUMBER_SYSTEM, value
    return local_identifier_system(ORG, slug(authority) if authority else "mrn"), value


@pytest.mark.parametrize("path", ADT, ids=ids)
def test_adt_patient_matches_pid(path):
    segs = split(read(path))
    m = mapped(path)
    patients = resources(m, "Patient")
    pids = [s for s in segs if s[0] == "PID"]
    assert len(patients) == len(pids)
    for pid, patient in zip(pids, patients):
        expected = {expected_identifier(r) for r in reps(pid, 3)}
        got = {(i["system"], i["value"]) for i in patient["identifier"]}
        assert got == expected
        if reps(pid, 5):
            name = patient["name"][0]
            assert name.get("family", "") == f(pid, 5, 1, 1)
            assert name.get("given", [""])[0] == (f(pid, 5, 2) or f(pid, 5, 3))
        sex = f(pid, 8)
        assert (
            patient.get("gender")
            == {"M": "male", "F": "female", "U": "unknown", "O": "other", "": None}[sex]
        )
        dob = f(pid, 7)
        assert patient.get("birthDate") == (f"{dob[:4]}-{dob[4:6]}-{dob[6:8]}" if dob else None)
        if reps(pid, 11):
            addr = patient["address"][0]
            assert addr.get("city") == (f(pid, 11, 3) or None)
            assert addr.get("postalCode") == (f(pid, 11, 5) or None)
            street = " ".join(x for x in reps(pid, 11)[0].split("^")[0].split("&") if x)
            assert addr.get("line", [None])[0] == (street or f(pid, 11, 2) or None)
        if f(pid, 29):
            assert same_time(patient["deceasedDateTime"], f(pid, 29))
        elif f(pid, 30) in ("Y", "N"):
            assert patient["deceasedBoolean"] == (f(pid, 30) == "Y")
        if m.event == "A29":
            assert patient["active"] is False


@pytest.mark.parametrize("path", ADT, ids=ids)
def test_adt_encounter_matches_pv1(path):
    segs = split(read(path))
    m = mapped(path)
    encounters = resources(m, "Encounter")
    refs = by_url(m)
    pv1s = [s for s in segs if s[0] == "PV1" and f(s, 19)]
    visit_numbers = {f(s, 19) for s in pv1s}
    assert {e["identifier"][0]["value"] for e in encounters} == visit_numbers
    for enc in encounters:
        pv1 = next(s for s in pv1s if f(s, 19) == enc["identifier"][0]["value"])
        assert enc["identifier"][0]["system"] == local_identifier_system(ORG, "visit")
        klass = f(pv1, 2)
        assert enc["class"]["code"] == CLASS.get(klass, klass)
        if m.event in EVENT_STATUS:
            assert enc["status"] == EVENT_STATUS[m.event]
        else:  # update events: status from PV1-45 / PV1-2 (IG PV1[Encounter])
            assert enc["status"] == (
                "finished" if f(pv1, 45) else "planned" if klass == "P" else "in-progress"
            )
        if f(pv1, 44):
            assert same_time(enc["period"]["start"], f(pv1, 44))
        if f(pv1, 45):
            assert same_time(enc["period"]["end"], f(pv1, 45))
        assert enc["serviceProvider"]["identifier"] == {"system": ODS_SYSTEM, "value": ORG}
        subject = refs[enc["subject"]["reference"]]
        assert subject["resourceType"] == "Patient"
        if f(pv1, 3):
            loc = refs[enc["location"][0]["location"]["reference"]]
            assert loc["resourceType"] == "Location"
            assert f(pv1, 3, 1, 1) in loc["identifier"][0]["value"]
            if f(pv1, 3, 3):
                assert loc["physicalType"]["coding"][0]["code"] == "bd"
        if f(pv1, 7):
            attending = [
                p for p in enc["participant"] if p["type"][0]["coding"][0]["code"] == "ATND"
            ]
            doc = refs[attending[0]["individual"]["reference"]]
            assert doc["resourceType"] == "Practitioner"
            assert doc["identifier"][0]["value"] == f(pv1, 7, 1)
            assert doc["name"][0].get("family", "") == f(pv1, 7, 2, 1)
        if m.event == "A02" and f(pv1, 6) and f(pv1, 6) != f(pv1, 3):
            assert [x["status"] for x in enc["location"]] == ["active", "completed"]


def test_a03_discharge_and_a11_cancel_statuses():
    assert resources(mapped(SAMPLES / "ADT-A03-01.hl7"), "Encounter")[0]["status"] == "finished"
    assert resources(mapped(SAMPLES / "ADT-A11-01.hl7"), "Encounter")[0]["status"] == "cancelled"
    assert resources(mapped(SAMPLES / "ADT-A13-01.hl7"), "Encounter")[0]["status"] == "in-progress"


def test_a40_merge_from_mrg():
    path = SAMPLES / "ADT-A40-01.hl7"
    segs = split(read(path))
    pid, mrg = first(segs, "PID"), first(segs, "MRG")
    m = mapped(path)
    surviving = expected_identifier(reps(pid, 3)[0])
    retired = expected_identifier(reps(mrg, 1)[0])
    assert m.merge == ("|".join(surviving), "|".join(retired))
    patient = resources(m, "Patient")[0]
    assert patient["link"] == [
        {"other": {"identifier": dict(zip(("system", "value"), retired))}, "type": "replaces"}
    ]
    # the retired record is not rewritten by the merge message
    assert all(not has_identifier(p, *retired) for p in resources(m, "Patient"))


def test_a40_with_two_merge_groups():
    path = SAMPLES / "ADT-A40-02.hl7"
    segs = split(read(path))
    pairs = [s for s in segs if s[0] in ("PID", "MRG")]
    expected = [
        ("|".join(expected_identifier(reps(p, 3)[0])), "|".join(expected_identifier(reps(r, 1)[0])))
        for p, r in zip(pairs[::2], pairs[1::2])
    ]
    m = mapped(path)
    assert m.merges == expected and m.merge == expected[0]


def test_nhs_number_uses_national_system_and_mrn_keys_the_patient():
    text = read(SAMPLES / "ADT-A01-02.hl7")
    pid = next(ln for ln in text.splitlines() if ln.startswith("PID"))
    fields = pid.split("|")
    fields[3] = "MRN77^^^RXX^MR~943 476 5919^^^NHS^NH"
    m = to_fhir(text.replace(pid, "|".join(fields)), source_org=ORG, feed_id=FEED)
    patient_entry = next(e for e in m.bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"} in patient_entry["resource"][
        "identifier"
    ]
    assert patient_entry["request"]["url"].endswith(f"{local_identifier_system(ORG, 'rxx')}|MRN77")
    # a number labelled NHS that fails the modulus-11 check is not given the national system
    fields[3] = "MRN77^^^RXX^MR~9434765918^^^NHS^NH"
    m = to_fhir(text.replace(pid, "|".join(fields)), source_org=ORG, feed_id=FEED)
    systems = {i["system"] for i in resources(m, "Patient")[0]["identifier"]}
    assert NHS_NUMBER_SYSTEM not in systems
    assert any("NHS number" in w for w in m.warnings)


def test_nhs_number_in_mdm_sample_by_authority():
    m = mapped(SAMPLES / "MDM-T02-03.hl7")
    idents = resources(m, "Patient")[0]["identifier"]
    assert {"system": NHS_NUMBER_SYSTEM, "value": "6597923189"} in idents


# --- ORU: DiagnosticReport + Observations against OBR / OBX -------------------------------------

OBS_STATUS = {
    "F": "final",
    "P": "preliminary",
    "C": "corrected",
    "I": "registered",
    "X": "cancelled",
    "D": "entered-in-error",
    "R": "preliminary",
    "S": "preliminary",
}


def oru_groups(segs):
    """[(OBR, [OBX...])] with OBX after SPM (specimen observations) left out."""
    groups, current, in_spm = [], None, False
    for s in segs:
        if s[0] == "OBR":
            current, in_spm = (s, []), False
            groups.append(current)
        elif s[0] == "SPM":
            in_spm = True
        elif s[0] == "OBX" and current and not in_spm:
            current[1].append(s)
    return groups


@pytest.mark.parametrize("path", ORU, ids=ids)
def test_oru_report_and_observations_match_obr_obx(path):
    segs = split(read(path))
    m = mapped(path)
    refs = by_url(m)
    reports = resources(m, "DiagnosticReport")
    groups = oru_groups(segs)
    assert len(reports) == len(groups)
    for report, (obr, obxs) in zip(reports, groups):
        key = f(obr, 3) or f(obr, 2)
        assert report["identifier"][0]["value"] == key
        assert report["code"]["coding"][0]["code"] == f(obr, 4, 1)
        assert (
            report["status"]
            == {"F": "final", "P": "preliminary", "C": "corrected", "": "unknown"}[f(obr, 25)]
        )
        if f(obr, 7):
            assert same_time(report["effectiveDateTime"], f(obr, 7))
        results = [refs[r["reference"]] for r in report.get("result", [])]
        assert len(results) == len(obxs)
        assert refs[report["subject"]["reference"]]["resourceType"] == "Patient"
        for obs, obx in zip(results, obxs):
            assert obs["resourceType"] == "Observation"
            assert obs["code"]["coding"][0]["code"] == f(obx, 3, 1)
            assert obs["status"] == OBS_STATUS[f(obx, 11)]
            assert obs["subject"] == report["subject"]
            vtype, values = f(obx, 2), reps(obx, 5)
            unit = f(obx, 6, 2) or f(obx, 6, 1)
            if not values:
                assert not any(k.startswith("value") for k in obs)
            elif vtype == "NM" and len(values) == 1:
                assert obs["valueQuantity"]["value"] == pytest.approx(float(f(obx, 5)))
                assert obs["valueQuantity"].get("unit") == (unit or None)
            elif vtype == "NM":
                assert [c["valueQuantity"]["value"] for c in obs["component"]] == [
                    pytest.approx(float(v)) for v in values
                ]
            elif vtype == "SN":
                assert obs["valueQuantity"]["value"] == pytest.approx(float(f(obx, 5, 2)))
                assert obs["valueQuantity"].get("unit") == (unit or None)
            elif vtype in ("CWE", "CE"):
                assert obs["valueCodeableConcept"]["coding"][0]["code"] == f(obx, 5, 1)
            elif vtype in ("TX", "ST", "FT"):
                assert obs["valueString"] == "\n".join(unesc(v).strip() for v in values)
            if f(obx, 7):
                assert obs["referenceRange"][0]["text"] == f(obx, 7)
            if f(obx, 8):
                assert obs["interpretation"][0]["coding"][0]["code"] == f(obx, 8, 1)
            when = f(obx, 14) or f(obr, 7)
            if when:
                assert same_time(obs["effectiveDateTime"], when)


def test_oru_reference_range_parsed_with_units():
    m = mapped(SAMPLES / "LRI_2.0-NG_CBC_Typ_Message.hl7")
    hb = next(o for o in resources(m, "Observation") if o["code"]["coding"][0]["code"] == "718-7")
    assert hb["valueQuantity"] == {
        "value": 12.5,
        "unit": "grams per milliliter",
        "system": "http://unitsofmeasure.org",
        "code": "g/mL",
    }
    assert hb["referenceRange"][0]["low"]["value"] == 13
    assert hb["referenceRange"][0]["high"]["value"] == 18
    assert hb["interpretation"][0]["coding"][0]["code"] == "L"


# --- MDM: DocumentReference against TXA / OBX ---------------------------------------------------


@pytest.mark.parametrize("path", MDM, ids=ids)
def test_mdm_document_reference_matches_txa_and_obx(path):
    segs = split(read(path))
    txa = first(segs, "TXA")
    m = mapped(path)
    refs = by_url(m)
    (doc,) = resources(m, "DocumentReference")
    number = f(txa, 12)
    if re.fullmatch(r"[0-2](\.\d+)+", number):
        assert doc["masterIdentifier"] == {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:oid:{number}",
        }
    else:
        assert doc["masterIdentifier"]["value"] == number
    assert doc["type"]["coding"][0]["code"] == f(txa, 2, 1)
    assert doc["status"] == "current"
    completion = {"AU": "final", "LA": "final", "DI": "preliminary", "IP": "preliminary"}
    assert doc.get("docStatus") == completion.get(f(txa, 17))
    assert refs[doc["subject"]["reference"]]["resourceType"] == "Patient"
    if f(txa, 6) and len(f(txa, 6)) > 8:
        assert same_time(doc["date"], f(txa, 6))
    text_obx = [s for s in segs if s[0] == "OBX" and f(s, 2) in ("TX", "ST", "FT")]
    if text_obx:
        attachment = doc["content"][0]["attachment"]
        assert attachment["contentType"].startswith("text/plain")
        expected = "\n".join(unesc(v).strip() for s in text_obx for v in reps(s, 5))
        assert base64.b64decode(attachment["data"]).decode() == expected
    ed_obx = [s for s in segs if s[0] == "OBX" and f(s, 2) == "ED"]
    for s in ed_obx:
        types = [c["attachment"].get("contentType") for c in doc["content"]]
        assert f"{f(s, 5, 2)}/{f(s, 5, 3)}".lower() in types
    event = m.event
    if event in ("T05", "T06", "T09", "T10") and f(txa, 13):
        code = "appends" if event in ("T05", "T06") else "replaces"
        assert doc["relatesTo"][0]["code"] == code
        assert doc["relatesTo"][0]["target"]["identifier"]["value"].endswith(f(txa, 13))
    if f(txa, 9):
        author = doc["author"][0]
        if "reference" in author:
            assert refs[author["reference"]]["identifier"][0]["value"] == f(txa, 9, 1)


def test_mdm_t11_cancel_marks_entered_in_error():
    text = read(SAMPLES / "MDM-T02-01.hl7").replace("MDM^T02^MDM_T02", "MDM^T11^MDM_T11")
    doc = resources(to_fhir(text, source_org=ORG, feed_id=FEED), "DocumentReference")[0]
    assert doc["status"] == "entered-in-error"


# --- malformed input ----------------------------------------------------------------------------

A01 = None


def a01() -> str:
    return read(SAMPLES / "ADT-A01-02.hl7")


def replace_segment(text: str, sid: str, new: str | None) -> str:
    lines = text.splitlines()
    out = []
    done = False
    for ln in lines:
        if ln.startswith(sid + "|") and not done:
            done = True
            if new is not None:
                out.append(new)
        else:
            out.append(ln)
    return "\n".join(out)


def set_field(text: str, sid: str, n: int, value: str) -> str:
    line = next(ln for ln in text.splitlines() if ln.startswith(sid + "|"))
    fields = line.split("|")
    idx = n - 1 if sid == "MSH" else n
    while len(fields) <= idx:
        fields.append("")
    fields[idx] = value
    return text.replace(line, "|".join(fields), 1)


def expect_error(text, ack, code, location):
    with pytest.raises(HL7Error) as info:
        to_fhir(text, source_org=ORG, feed_id=FEED)
    err = info.value
    assert (err.ack_code, err.error_code, err.location) == (ack, code, location), repr(err)
    return err


def test_no_msh():
    expect_error("PID|1||123^^^RXX^MR\nPV1|1|I", "AR", "100", "MSH")
    expect_error("", "AR", "100", "MSH")


def test_wrong_encoding_characters():
    expect_error(a01().replace("MSH|^~\\&|", "MSH|^~\\|", 1), "AR", "102", "MSH-2")
    expect_error(a01().replace("MSH|^~\\&|", "MSH|^~|", 1), "AR", "102", "MSH-2")
    expect_error(a01().replace("MSH|^~\\&|", "MSH#^~\\&#", 1), "AR", "102", "MSH-1")


def test_truncated_segments():
    text = a01()
    lines = text.splitlines()
    expect_error("\n".join(lines[:2] + ["PI"]), "AE", "100", "segment 3")
    expect_error("MSH|^~\\&|App|Fac", "AR", "101", "MSH-7")
    # message cut off inside PID: identifiers never arrived
    expect_error("\n".join(lines[:2] + ["PID|1|"]), "AE", "101", "PID-3")
    # cut off before PV1
    expect_error("\n".join(lines[:3]), "AE", "100", "PV1")


def test_missing_required_msh_fields():
    expect_error(set_field(a01(), "MSH", 10, ""), "AR", "101", "MSH-10")
    expect_error(set_field(a01(), "MSH", 9, ""), "AR", "101", "MSH-9")


def test_unknown_type_and_event():
    expect_error(set_field(a01(), "MSH", 9, "ADT^A99^ADT_A01"), "AR", "201", "MSH-9")
    expect_error(read(SAMPLES / "SIU-S12-01.hl7"), "AR", "200", "MSH-9")
    expect_error(set_field(a01(), "MSH", 9, "ORU^R30"), "AR", "201", "MSH-9")


def test_bad_dates():
    expect_error(set_field(a01(), "MSH", 7, "20241345"), "AR", "102", "MSH-7")
    expect_error(set_field(a01(), "PID", 7, "19881345"), "AE", "102", "PID-7")
    expect_error(set_field(a01(), "PV1", 44, "2024-01-01"), "AE", "102", "PV1-44")


def test_bad_content():
    expect_error(set_field(a01(), "PID", 3, ""), "AE", "101", "PID-3")
    expect_error(set_field(a01(), "PID", 8, "Q"), "AE", "103", "PID-8")
    expect_error(set_field(a01(), "PV1", 2, ""), "AE", "101", "PV1-2")
    expect_error(set_field(a01(), "PV1", 2, "Z"), "AE", "103", "PV1-2")
    oru = read(SAMPLES / "ORU-R01-RMGEAD.hl7")
    expect_error(set_field(set_field(oru, "OBX", 2, "NM"), "OBX", 5, "high"), "AE", "102", "OBX-5")
    expect_error(set_field(oru, "OBX", 3, ""), "AE", "101", "OBX-3")
    expect_error(set_field(oru, "OBX", 11, ""), "AE", "101", "OBX-11")
    mdm = read(SAMPLES / "MDM-T02-01.hl7")
    expect_error(set_field(mdm, "TXA", 12, ""), "AE", "101", "TXA-12")
    expect_error(replace_segment(mdm, "TXA", None), "AE", "100", "TXA")
    a40 = read(SAMPLES / "ADT-A40-01.hl7")
    expect_error(replace_segment(a40, "MRG", None), "AE", "100", "MRG")


def test_error_text_carries_no_patient_data():
    err = expect_error(set_field(a01(), "PID", 7, "EVERYMAN"), "AE", "102", "PID-7")
    assert "EVERYMAN" not in err.text and "EVERYMAN" not in str(err)


# --- ACK / NACK ---------------------------------------------------------------------------------


def test_ack_swaps_sender_and_receiver():
    text = a01()
    msh = split(text)[0]
    ack = build_ack(text)
    segs = split(ack)
    assert [s[0] for s in segs] == ["MSH", "MSA"]
    out = segs[0]
    assert (out[3], out[4], out[5], out[6]) == (msh[5], msh[6], msh[3], msh[4])
    assert out[9] == "ACK^A01^ACK" and out[10] and out[10] != msh[10]
    assert out[12] == msh[12]
    assert segs[1][1:3] == ["AA", msh[10]]
    assert "\n" not in ack and ack.endswith("\r")


def test_nack_has_err_fields():
    text = set_field(a01(), "PID", 3, "")
    with pytest.raises(HL7Error) as info:
        to_fhir(text, source_org=ORG, feed_id=FEED)
    ack = build_ack(text, "AE", info.value)
    segs = split(ack)
    msa, err = segs[1], segs[2]
    assert msa[1:3] == ["AE", split(text)[0][10]]
    assert err[0] == "ERR"
    assert err[2] == "PID^1^3"
    assert err[3].split("^")[0] == "101" and err[3].split("^")[2] == "HL70357"
    assert err[4] == "E"
    assert unesc(err[8]) == info.value.text


def test_nack_for_unparseable_input_is_still_an_ack():
    ack = build_ack("garbage", "AR", HL7Error("AR", "100", "MSH", "no MSH"))
    segs = split(ack)
    assert segs[0][0] == "MSH" and segs[1][:3] == ["MSA", "AR", ""]
    assert segs[2][2] == "MSH" and segs[2][3].startswith("100^")
    # bad encoding characters: nothing copied from the message
    ack = build_ack(a01().replace("^~\\&", "^~|", 1), "AR", HL7Error("AR", "102", "MSH-2", "x"))
    assert split(ack)[1][1] == "AR"


def test_parse_segments_gives_the_fields_and_errors_python_hl7_parse_gives():
    """to_fhir splits a message once (parse_segments) instead of building python-hl7's
    containers: every sample, and malformed variants, give the same fields or the same error."""
    from sharedcare.feeds.hl7v2.parser import parse_segments, segments

    texts = [p.read_bytes() for p in sorted(SAMPLES.glob("*.hl7"))]
    a01 = (SAMPLES / "ADT-A01-02.hl7").read_bytes().decode("utf-8").lstrip("\ufeff")
    texts += [a01.replace("MSH|^~\\&|", "MSH|^~\\|", 1), "NOT HL7", "MSH|^~\\&|A|B\r",
              a01.replace("\r", "\n"), a01 + "\rMSH|^~\\&|X", a01 + "\rP\r", a01 + "\r\r\r",
              a01.replace("|", "|\\F\\x^y&z~w|", 3), b"MSH|^~\\&|A|B|C|D|2024|||",
              "\ufeff" + a01, "MSH|^~\\&#|A|B|C|D|20240101||ADT^A01|1|P|2.5\r"]
    assert len(texts) > 100
    for raw in texts:
        try:
            expected = [(s.id, s.index, s._fields) for s in segments(parse(raw))]
        except HL7Error as e:
            expected = (e.ack_code, e.error_code, e.location, e.text)
        try:
            got = [(s.id, s.index, s._fields) for s in parse_segments(raw)]
        except HL7Error as e:
            got = (e.ack_code, e.error_code, e.location, e.text)
        assert got == expected, raw[:80]
