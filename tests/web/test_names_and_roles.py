"""What people read on the pages: organisations by name (ODS codes only in tooltips), no
internal ids in reasons, column headings and wording in words; the GP's role chooser starts with
the practice; the system administrator's menu offers what a sysadmin does."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from sharedcare.web.names import column_label, entity_words, humanise


def visible_text(html: str) -> str:
    """The text a person reads: no tags, attributes (tooltips), scripts or styles."""
    html = re.sub(r"(?s)<(script|style)[^>]*>.*?</\1>", " ", html)
    html = re.sub(r"<[^>]+>", " ", html)
    return re.sub(r"\s+", " ", html)


def codes_shown(demo, html: str) -> set[str]:
    text = visible_text(html)
    return {o.ods for o in demo.cs.organisations if re.search(rf"(?<![\w/-]){re.escape(o.ods)}(?![\w-])", text)}


def test_humanise_names_organisations_and_drops_ids():
    names = {"R0A": "Manchester University NHS Foundation Trust", "RM3": "Northern Care Alliance"}
    html = str(humanise("the patient has an open encounter at R0A (Encounter/beb5c17a-1)", names))
    assert "Encounter/" not in html and "beb5c17a" not in html
    assert 'title="ODS code R0A">Manchester University NHS Foundation Trust</span>' in html
    assert visible_text(html).strip() == ("the patient has an open encounter at Manchester "
                                          "University NHS Foundation Trust")
    html = str(humanise("no active sharing agreement lets RM3 share gp-summary data with R0A for "
                        "direct care; the social-worker role does not include care-plans", names))
    text = visible_text(html)
    assert "RM3" not in text and "gp-summary" not in text and "social-worker" not in text
    assert "GP summary" in text and "social worker role" in text and "care plans" in text
    assert "<script>" not in str(humanise("<script>x</script> R0A", names))  # still escaped
    assert column_label("active_users") == "Active users"
    assert column_label("ods") == "ODS code"
    assert column_label("views_per_1000_population") == "Views per 1,000 registered population"
    assert entity_words("Patient/abc/$everything") == "Whole record"


def test_pages_say_where_you_work_by_name(demo, signed_in):
    gp = demo.personas["GP"]
    html = signed_in(gp.username, gp.org).get("/").text
    practice = demo.cs.organisation(gp.org).name
    assert f"You are working as Clinician at <span class=\"sc-org\" title=\"ODS code {gp.org}\">" \
           f"{practice}</span>" in html
    assert not codes_shown(demo, html)


def test_record_and_refusal_reasons_name_organisations(demo, signed_in):
    ae = demo.personas["A&E doctor"]
    html = signed_in(ae.username, ae.org).get(f"/patients/{demo.pid}").text
    why = html.split('id="why"')[1].split("</details>")[0]
    assert "open encounter at" in why and "Encounter/" not in why
    assert demo.cs.organisation(ae.org).name in why
    assert not codes_shown(demo, html)
    # A clinician of its own: the persona may have broken glass in another test by now.
    outsider = demo.outsider(5)
    ods = demo.access(outsider).ods
    r = signed_in(outsider).get(f"/patients/{demo.pid}")
    assert r.status_code == 403
    assert demo.cs.organisation(ods).name in r.text
    assert "has no legitimate relationship" in r.text
    assert not codes_shown(demo, r.text)


def test_care_plan_wording(demo, signed_in):
    gp = demo.personas["GP"]
    c = signed_in(gp.username, gp.org)
    form = c.get(f"/patients/{demo.pid}/care-plans/new?kind=end-of-life").text
    assert "New end of life and ReSPECT preferences" in form
    assert "respect preferences" not in form
    r = c.post(f"/patients/{demo.pid}/care-plans/new?kind=end-of-life",
               data={"csrf": c.csrf, "kind": "end-of-life"})
    assert "Select the CPR recommendation" in r.text
    assert "Select the preferred place of care" in r.text


@pytest.mark.parametrize("path", ["/programme/adoption", "/programme", "/programme/map",
                                  "/programme/agreements"])
def test_programme_pages_use_words_not_column_names(demo, signed_in, path):
    lead = demo.personas["Programme lead"]
    html = signed_in(lead.username, lead.org).get(path).text
    text = visible_text(html)
    assert not re.search(r"\b[a-z]+_[a-z_]+\b", text), re.findall(r"\b[a-z]+_[a-z_]+\b", text)
    assert "Ods" not in text and "Gp summary" not in text
    assert not codes_shown(demo, html)


def test_one_menu_for_the_programme_lead(demo, signed_in):
    lead = demo.personas["Programme lead"]
    html = signed_in(lead.username, lead.org).get("/programme/adoption").text
    assert html.count("<nav") == html.count('aria-label="Account"') + html.count(
        'aria-label="Menu"') + html.count('aria-label="Pagination"')
    assert 'data-module="nhsuk-header"' in html and "nhsuk-header__menu-toggle" in html
    for href in ("/programme/champions", "/transparency", "/population"):
        assert f'href="{href}"' in html.split('aria-label="Menu"')[1].split("</nav>")[0]


def test_system_administrator_sees_what_a_sysadmin_does(demo, signed_in):
    admin = demo.personas["System administrator"]
    c = signed_in(admin.username, admin.org)
    home = c.get("/").text
    menu = home.split('aria-label="Menu"')[1].split("</nav>")[0]
    for href in ("/admin", "/admin/organisations", "/admin/staff", "/admin/feeds",
                 "/admin/agreements", "/governance/audit"):
        assert f'href="{href}"' in menu, href
    status = c.get("/admin")
    assert status.status_code == 200 and "Chain intact" in status.text
    orgs = c.get("/admin/organisations").text
    assert all(o.name.replace("'", "&#39;") in orgs for o in demo.cs.organisations)
    staff = c.get("/admin/staff?q=" + demo.personas["GP"].username).text
    assert demo.personas["GP"].username in staff and "Clinician at" in staff
    assert c.get("/admin/agreements").status_code == 200
    assert c.get("/admin/feeds").status_code == 200
    gp = demo.personas["GP"]
    assert signed_in(gp.username, gp.org).get("/admin/staff").status_code == 403


def test_gp_role_chooser_starts_with_the_practice(demo, web_app):
    gp = demo.personas["GP"]
    held = demo.cs.staff_member(gp.username).roles
    assert len(held) > 1, "the demo GP should hold more than one role"
    with TestClient(web_app, base_url="http://testserver") as c:
        c.get("/sign-in")
        r = c.post("/sign-in", data={"username": gp.username, "password": gp.password,
                                     "next": "/", "csrf": c.cookies.get("sc_csrf")},
                   follow_redirects=False)
        assert r.headers["location"].startswith("/choose-role")
        html = c.get(r.headers["location"]).text
        values = re.findall(r'name="role" type="radio" value="([^"]+)"', html)
        assert values[0].startswith(f"{gp.org}:"), values
        # the choice made is first next time, whatever it is
        other = next(v for v in values if not v.startswith(f"{gp.org}:"))
        c.post("/choose-role", data={"role": other, "next": "/",
                                     "csrf": c.cookies.get("sc_csrf")}, follow_redirects=False)
        c.cookies.delete("sc_session")
        c.post("/sign-in", data={"username": gp.username, "password": gp.password,
                                 "next": "/", "csrf": c.cookies.get("sc_csrf")},
               follow_redirects=False)
        again = re.findall(r'name="role" type="radio" value="([^"]+)"',
                           c.get("/choose-role").text)
        assert again[0] == other
