"""One banner for the person: the best current demographics across every partner's Patient
record the viewer may see, each partner's identifiers with the organisation's name, and
disagreements between partners flagged with who says what (a nickname is not one)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, SOURCE_ORG_SYSTEM
from sharedcare.web.patient import format_nhs, make_item, merge_person

NAMES = {"P81001": "Brookside Medical Centre", "R0A": "Manchester University NHS FT",
         "LAZ01": "Irwell Council Adult Social Care", "NZC01": "Irwell Community Services"}


@dataclass
class Stored:  # what gov.everything returns, as far as the banner reads it
    type: str
    id: str
    last_updated: str
    res: dict

    def json(self) -> dict:
        return self.res


def patient(pid: str, ods: str, updated: str, *, given="Margaret", family="Wood",
            birth="1941-03-02", gender="female", line="12 High Street", postcode="M19 3SF",
            phone=None, gp=None, nhs="9990677786", local=None):
    res = {"resourceType": "Patient", "id": pid,
           "meta": {"lastUpdated": updated, "tag": [{"system": SOURCE_ORG_SYSTEM, "code": ods}]},
           "identifier": ([{"system": NHS_NUMBER_SYSTEM, "value": nhs}] if nhs else [])
           + ([local] if local else []),
           "name": [{"use": "official", "family": family, "given": [given]}],
           "gender": gender, "birthDate": birth,
           "address": [{"use": "home", "line": [line], "city": "Manchester",
                        "postalCode": postcode}]}
    if phone:
        res["telecom"] = [{"system": "phone", "value": phone}]
    if gp:
        res["generalPractitioner"] = [{"reference": f"Organization/{gp.split()[0].lower()}",
                                       "display": gp}]
    return make_item(Stored("Patient", pid, updated, res), NAMES)


def test_newest_record_wins_each_fact_and_says_where_it_came_from():
    gp = patient("a", "P81001", "2024-01-10T09:00:00+00:00", phone="07700 900001",
                 gp="Brookside Medical Centre")
    acute = patient("b", "R0A", "2025-06-01T09:00:00+00:00", phone="07700 900222",
                    local={"system": "https://fhir.sharedcare.org.uk/Id/local/R0A/mrn",
                           "type": {"coding": [{"system": "http://terminology.hl7.org/"
                                                          "CodeSystem/v2-0203", "code": "MR"}]},
                           "value": "R0A0001234"})
    p = merge_person([gp, acute], opened_id="a")
    assert p.values["phone"] == "07700 900222" and p.sources["phone"] is acute
    assert p.values["gp"] == "Brookside Medical Centre" and p.sources["gp"] is gp  # only one has it
    assert p.values["nhs"] == "999 067 7786"
    assert p.disagreements == []
    lines = p.source_lines()
    assert any(line.startswith("Name") and "from Manchester University NHS FT" in line
               for line in lines), lines
    assert any("GP practice from Brookside Medical Centre" in line for line in lines), lines
    # every partner's identifiers, named for a person (no raw "MR" code), NHS number first
    rows = {r.item.source_name: r for r in p.records}
    assert rows["Manchester University NHS FT"].identifiers == [
        ("NHS number", "999 067 7786"), ("Medical record number", "R0A0001234")]
    assert rows["Brookside Medical Centre"].opened


def test_disagreements_are_flagged_with_the_organisations_not_silently_picked():
    gp = patient("a", "P81001", "2025-01-10T09:00:00+00:00", birth="1941-03-02",
                 gp="Brookside Medical Centre")
    acute = patient("b", "R0A", "2024-06-01T09:00:00+00:00", birth="1941-03-03",
                    line="84 Brook Road", postcode="M14 1SB")
    p = merge_person([acute, gp])
    found = {d.fact: d.text for d in p.disagreements}
    assert found == {
        "date of birth": "Brookside Medical Centre says 2 March 1941, "
                         "Manchester University NHS FT says 3 March 1941",
        "address": "Brookside Medical Centre says 12 High Street, Manchester, M19 3SF; "
                   "Manchester University NHS FT says 84 Brook Road, Manchester, M14 1SB"}
    assert p.values["birth"] == "2 March 1941"  # the newest, shown, and flagged
    assert p.disputed == {"birth", "address"}
    # a different GP practice and a different sex are flagged too
    other = patient("c", "NZC01", "2023-01-01T00:00:00+00:00", gender="male",
                    gp="Riverside Surgery")
    other_nhs = patient("d", "LAZ01", "2023-01-01T00:00:00+00:00", nhs="9434765919")
    labels = {d.label for d in merge_person([gp, other, other_nhs]).disagreements}
    assert labels == {"Registered GP practice", "Gender", "NHS number"}


def test_a_nickname_or_a_differently_written_address_is_not_a_disagreement():
    gp = patient("a", "P81001", "2024-01-10T09:00:00+00:00", line="12 High Street",
                 postcode="M19 3SF")
    community = patient("b", "NZC01", "2025-06-01T09:00:00+00:00", given="Maggie",
                        line="12, high st.", postcode="m193sf")
    council = patient("c", "LAZ01", "2024-06-01T09:00:00+00:00", nhs=None, gender="unknown",
                      local={"system": "https://fhir.sharedcare.org.uk/Id/local/LAZ01/"
                                       "social-care-id", "value": "100328"})
    p = merge_person([gp, community, council])
    assert p.disagreements == []
    assert p.values["name"] == "Margaret WOOD"  # the full name, though the nickname is newer
    rows = {r.item.source_name: r for r in p.records}
    assert "Known as Maggie" in rows["Irwell Community Services"].notes
    assert rows["Irwell Council Adult Social Care"].identifiers == [
        ("Social care person ID", "100328")]
    assert "No NHS number on this record" in rows["Irwell Council Adult Social Care"].notes
    assert p.values["gender"] == "Female"


# ----------------------------------------------------------------------------- on the demo


def _governed_patients(demo, access):
    view = demo.gov.everything(access, demo.pid, 1000)
    out, cur = [s for s in view.matches if s.type == "Patient"], view.next_cursor
    while cur:
        more = demo.gov.everything(access, demo.pid, 1000, cur)
        out += [s for s in more.matches if s.type == "Patient"]
        cur = more.next_cursor
    return out


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def test_gp_sees_the_address_disagreement_and_every_partner_identifier(demo, signed_in,
                                                                        blocks_of):
    from sharedcare.web.patient import org_names

    gp = demo.personas["GP"]
    r = signed_in(gp.username).get(f"/patients/{demo.pid}")
    assert r.status_code == 200
    html = r.text
    names = org_names(demo.sc)
    callout = re.search(r'<div class="nhsuk-warning-callout[^"]*" id="disagreements">(.*?)</div>',
                        html, re.DOTALL)
    assert callout, "no disagreement shown"
    said = dict(re.findall(r'data-disagreement="([^"]+)">(.*?)</li>', callout.group(1),
                           re.DOTALL))
    assert set(said) == {"address"}  # the demo differs by design only there (and a nickname)
    address = _text(said["address"])
    patients = _governed_patients(demo, demo.access(gp.username))
    by_org = {}
    for s in patients:
        res = s.json()
        ods = next(t["code"] for t in res["meta"]["tag"] if t["system"] == SOURCE_ORG_SYSTEM)
        by_org[ods] = res
    assert len(by_org) >= 4
    # both sides named by organisation, each with its own postcode
    postcodes = {ods: res["address"][0]["postalCode"] for ods, res in by_org.items()}
    assert len(set(postcodes.values())) == 2
    for ods, postcode in postcodes.items():
        assert names[ods] in address and postcode in address, (ods, address)
        assert ods not in _text(address)
    assert gp.org in by_org and names[gp.org] in address
    # every partner's record listed with the organisation's name and every identifier it holds
    blocks = blocks_of(html)
    for s in patients:
        row = _text(blocks[f"Patient/{s.id}"])
        res = s.json()
        ods = next(t["code"] for t in res["meta"]["tag"] if t["system"] == SOURCE_ORG_SYSTEM)
        assert row.startswith(names[ods]), row
        for ident in res["identifier"]:
            value = ident["value"]
            shown = format_nhs(value) if ident["system"] == NHS_NUMBER_SYSTEM else value
            assert shown in row, (shown, row)
        if not any(i["system"] == NHS_NUMBER_SYSTEM for i in res["identifier"]):
            assert "No NHS number on this record" in row  # the council's, joined by the model
    # the community team's nickname is noted, not flagged, and not the banner's name
    nick = [s.json() for s in patients if "Known as" in blocks[f"Patient/{s.id}"]]
    assert len(nick) == 1
    given = nick[0]["name"][0]["given"][0]
    banner_name = re.search(r'id="patient-name">([^<]+)<', html).group(1)
    assert given not in banner_name and nick[0]["name"][0]["family"].upper() in banner_name


@pytest.mark.parametrize("label", ["A&E doctor", "Social worker"])
def test_banner_uses_only_the_records_the_viewer_may_see(demo, signed_in, blocks_of, label):
    persona = demo.personas[label]
    r = signed_in(persona.username).get(f"/patients/{demo.pid}")
    assert r.status_code == 200
    seen = {f"Patient/{s.id}" for s in _governed_patients(demo, demo.access(persona.username))}
    listed = {ref for ref in blocks_of(r.text) if ref.startswith("Patient/")}
    assert listed == seen


# ----------------------------------------------------------------------------- on a phone


@pytest.mark.browser
def test_banner_fits_a_phone(live_demo, demo):
    from .test_browser import ARGS, CHROMIUM, SHOTS, _need, sign_in

    _need(CHROMIUM, "Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 390, "height": 844}, locale="en-GB")
            page = ctx.new_page()
            page.set_default_timeout(30000)
            sign_in(page, live_demo, demo.personas["GP"], demo)
            page.goto(f"{live_demo}/patients/{demo.pid}")
            page.click("#person-records summary")
            assert page.is_visible("#disagreements")
            assert page.is_visible("#person-records .nhsuk-summary-list")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.locator(".sc-patient-banner").screenshot(
                path=str(SHOTS / "person-banner-phone.png"))
            sizes = page.evaluate("""() => ({page: document.documentElement.scrollWidth,
                viewport: window.innerWidth,
                wide: [...document.querySelectorAll('.sc-patient-banner *')]
                    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
                    .map(e => e.tagName + '.' + e.className).slice(0, 5)})""")
            assert sizes["page"] <= sizes["viewport"] and not sizes["wide"], sizes
        finally:
            browser.close()
