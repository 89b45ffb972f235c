"""The patient's "who looked at my record": each line says what really happened -- a review is
not a change, a refusal is not a look (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from sharedcare.app import create_app
from sharedcare.governance.policy import Access
from sharedcare.web.accesslog import access_log

ORG = "RTEST"
PID = "pat-1"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def log(sc):
    gov = sc.governance
    gov.add_staff("dr.one", "Dr One", [(ORG, "clinician")], PASSWORD)
    gov.add_staff("ig.one", "IG One", [(ORG, "ig-lead")], PASSWORD)
    gov.add_staff("me", "The Patient", [], PASSWORD, patient_id=PID)
    doc = Access("dr.one", ORG, "clinician")
    ig = Access("ig.one", ORG, "ig-lead")
    seqs = {
        "refused whole": gov.audit(doc, "everything", "4", patient_id=PID,
                                   entity=f"Patient/{PID}", reason="no legitimate relationship"),
        "refused part": gov.audit(doc, "read", "4", patient_id=PID, entity="Observation/o1"),
        "glass": gov.audit(doc, "break-glass", "0", patient_id=PID,
                           reason="Collapsed in A&E, no history", glass=True),
        "look under glass": gov.audit(doc, "everything", "0", patient_id=PID,
                                      entity=f"Patient/{PID}", glass=True),
        "review glass": gov.audit(ig, "update", "0", patient_id=PID, entity="break-glass/1",
                                  reason="reviewed break-glass by dr.one: appropriate"),
        "review claim": gov.audit(ig, "update", "0", patient_id=PID,
                                  entity="care-relationship/7",
                                  reason="rejected relationship declared by dr.one"),
        "look": gov.audit(doc, "everything", "0", patient_id=PID, entity=f"Patient/{PID}"),
        "change": gov.audit(doc, "update", "0", patient_id=PID, entity="CarePlan/cp1"),
    }
    return sc, seqs


def test_each_line_says_what_happened(log):
    sc, seqs = log
    what = {r["seq"]: r["what"] for r in access_log(sc.engine, PID)}
    said = {k: what[s] for k, s in seqs.items()}
    assert said["refused whole"] == "Tried to look at your whole record and was refused"
    assert said["refused part"] == "Tried to look at part of your record and was refused"
    assert said["glass"] == "Broke glass: opened your record in an emergency"
    assert said["look under glass"] == ("Looked at your whole record, using emergency (break "
                                        "glass) access")
    assert said["review glass"] == "Reviewed an emergency (break glass) access to your record"
    assert said["review claim"] == "Reviewed someone's claim to be caring for you"
    assert said["look"] == "Looked at your whole record"
    assert said["change"] == "Changed part of your record"
    # A refusal never reads as a look, a review never as a change to the record.
    for k in ("refused whole", "refused part", "review glass", "review claim"):
        assert not said[k].startswith(("Looked", "Changed")), (k, said[k])


def test_the_page_shows_the_words(log):
    sc, seqs = log
    with TestClient(create_app(sc)) as c:
        c.get("/sign-in")
        r = c.post("/sign-in", data={"username": "me", "password": PASSWORD, "next": "/",
                                     "csrf": c.cookies.get("sc_csrf")}, follow_redirects=True)
    assert r.status_code == 200 and "Who has looked at your record" in r.text
    import re

    rows = dict(re.findall(r'data-seq="(\d+)">(.*?)</tr>', r.text, re.DOTALL))
    assert "Reviewed an emergency (break glass) access" in rows[str(seqs["review glass"])]
    assert "Changed" not in rows[str(seqs["review glass"])]
    refused = rows[str(seqs["refused whole"])]
    assert "Tried to look at your whole record and was refused" in refused
    assert "Looked at" not in refused


def _patient(pid: str, ods: str, nhs_number: str) -> dict:
    from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM

    return {"resourceType": "Patient", "id": pid,
            "meta": {"tag": [{"system": SOURCE_ORG_SYSTEM, "code": ods}]},
            "name": [{"family": "Thistlewood", "given": ["Margaret"]}],
            "birthDate": "1948-05-17", "gender": "female",
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs_number}]}


def test_the_log_follows_the_person_across_partners_records(sc):
    """Signed in through the GP's record of her, the patient sees the hospital doctor's look at
    the hospital's record of her -- naming the hospital -- and nobody else's accesses."""
    import re

    from sharedcare.store.persons import patients_of_person
    from sharedcare.store.repository import WriteOp

    gov = sc.governance
    gov.add_organisation("RGP01", "Brookside Medical Centre", "gp-practice")
    gov.add_organisation("RHOSP", "Manchester Royal Infirmary", "acute-trust")
    sc.store.write([WriteOp("PUT", "Patient", "gp-rec", _patient("gp-rec", "RGP01", "9434765919")),
                    WriteOp("PUT", "Patient", "hosp-rec",
                            _patient("hosp-rec", "RHOSP", "9434765919")),
                    WriteOp("PUT", "Patient", "someone-else",
                            _patient("someone-else", "RHOSP", "9434765870"))])
    with sc.engine.connect() as conn:  # identity joined the two records of her
        assert patients_of_person(conn, "gp-rec") == ["gp-rec", "hosp-rec"]
    gov.add_staff("dr.hosp", "Dr Hosp", [("RHOSP", "clinician")], PASSWORD)
    gov.add_staff("margaret", "Margaret Thistlewood", [], PASSWORD, patient_id="gp-rec")
    doc = Access("dr.hosp", "RHOSP", "clinician")
    hers = gov.audit(doc, "everything", "0", patient_id="hosp-rec", entity="Patient/hosp-rec")
    glass = gov.audit(doc, "break-glass", "0", patient_id="hosp-rec", reason="Unconscious in A&E",
                      glass=True)
    other = gov.audit(doc, "everything", "0", patient_id="someone-else",
                      entity="Patient/someone-else")
    rows = {r["seq"]: r for r in access_log(sc.engine, "gp-rec")}
    assert hers in rows and glass in rows and other not in rows
    assert rows[hers]["org"] == "Manchester Royal Infirmary"
    assert rows[hers]["record"] == "Manchester Royal Infirmary"
    with TestClient(create_app(sc)) as c:
        c.get("/sign-in")
        r = c.post("/sign-in", data={"username": "margaret", "password": PASSWORD, "next": "/",
                                     "csrf": c.cookies.get("sc_csrf")}, follow_redirects=True)
    assert r.status_code == 200 and "Who has looked at your record" in r.text
    shown = dict(re.findall(r'data-seq="(\d+)">(.*?)</tr>', r.text, re.DOTALL))
    assert str(other) not in shown
    line = shown[str(hers)]
    assert "Manchester Royal Infirmary" in line and "RHOSP" not in line
    assert "Looked at your whole record" in line
    assert "Through the record Manchester Royal Infirmary keeps about you" in line
    assert "emergency" in r.text and 'id="glass-summary"' in r.text
