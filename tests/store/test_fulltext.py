"""Full-text search in the store: `_text` (narrative) and `_content` (the whole resource, its
text attachments and text Binaries), on SQLite FTS5 and PostgreSQL tsvector alike."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from sqlalchemy import text

from sharedcare.fhir.outcome import FHIRError
from sharedcare.store.indexing import fulltext
from sharedcare.store.repository import PermitAll, WriteOp

XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">{}</div>'


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def doc(rid, div=None, description=None, letter=None, url=None, content_type="text/plain",
        **extra):
    att = {"contentType": content_type}
    if letter is not None:
        att["data"] = b64(letter)
    if url:
        att["url"] = url
    res = {"resourceType": "DocumentReference", "status": "current",
           "content": [{"attachment": att}], **extra}
    if div is not None:
        res["text"] = {"status": "generated", "div": XHTML.format(div)}
    if description:
        res["description"] = description
    return WriteOp("PUT", "DocumentReference", rid, res)


def binary(rid, data: str, content_type="text/plain"):
    return WriteOp("PUT", "Binary", rid, {"resourceType": "Binary", "contentType": content_type,
                                          "data": b64(data)})


def ids(sc, rtype, *params):
    page = sc.store.search(rtype, list(params), PermitAll())
    return [m.id for m in page.matches]


def text_rows(sc) -> int:
    with sc.engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM resource_text")).scalar_one()


@pytest.fixture
def letters(sc):
    sc.store.write([
        doc("asthma", "<p>Clinic letter: <b>asthma</b> review</p>", "respiratory follow-up",
            "The patient has a wheeze. Asthma is well controlled; asthma plan reviewed."),
        doc("heart", "<p>Discharge summary</p>", "cardiology",
            "Heart failure: diuretics increased."),
        doc("pdf", "<p>Scanned referral</p>", content_type="application/pdf",
            letter="ignored-pdf-bytes-epilepsy"),
        doc("linked", "<p>Letter held elsewhere</p>", url="Binary/bin-html"),
        binary("bin-html", "<html><head><title>hidden-title</title></head><body><p>Letter "
                           "about <i>migraine</i></p><script>var gout=1</script></body></html>",
               "text/html"),
        binary("bin-plain", "Dietitian note: coeliac disease", "text/plain; charset=utf-8"),
    ])
    return sc


def test_text_searches_the_narrative_only_and_stems(letters):
    assert ids(letters, "DocumentReference", ("_text", "asthma")) == ["asthma"]
    assert ids(letters, "DocumentReference", ("_text", "wheeze")) == []  # attachment only
    assert ids(letters, "DocumentReference", ("_text", "respiratory")) == []  # not narrative
    # 'letters' finds 'letter' (English stemming on both engines); markup is not text.
    assert sorted(ids(letters, "DocumentReference", ("_text", "letters"))) == ["asthma", "linked"]
    assert ids(letters, "DocumentReference", ("_text", "xhtml")) == []
    assert ids(letters, "DocumentReference", ("_text", "div")) == []


def test_content_searches_strings_and_text_attachments(letters):
    assert ids(letters, "DocumentReference", ("_content", "wheeze")) == ["asthma"]
    assert ids(letters, "DocumentReference", ("_content", "cardiology")) == ["heart"]
    assert ids(letters, "DocumentReference", ("_content", "respiratory")) == ["asthma"]
    # A PDF's bytes are not text.
    assert ids(letters, "DocumentReference", ("_content", "epilepsy")) == []
    # Machinery is not content: the attachment's content type, ids.
    assert ids(letters, "DocumentReference", ("_content", "plain")) == []


def test_binary_text_and_html_is_stripped(letters):
    assert ids(letters, "Binary", ("_content", "coeliac")) == ["bin-plain"]
    assert ids(letters, "Binary", ("_content", "migraine")) == ["bin-html"]
    assert ids(letters, "Binary", ("_content", "gout")) == []  # script
    assert ids(letters, "Binary", ("_content", "hidden-title")) == []  # head


def test_document_finds_the_text_of_the_binary_its_attachment_points_at(letters):
    assert ids(letters, "DocumentReference", ("_content", "migraine")) == ["linked"]
    both = letters.store.search(None, [("_type", "DocumentReference,Binary"),
                                       ("_content", "migraine")], PermitAll())
    assert sorted((m.type, m.id) for m in both.matches) == [
        ("Binary", "bin-html"), ("DocumentReference", "linked")]
    assert both.total == 2
    # The Binary is read at search time: changing it changes what finds the document.
    letters.store.write([binary("bin-html", "<p>Letter about gout</p>", "text/html")])
    assert ids(letters, "DocumentReference", ("_content", "migraine")) == []
    assert ids(letters, "DocumentReference", ("_content", "gout")) == ["linked"]


@pytest.mark.parametrize(("query", "expected"), [
    ('"heart failure"', ["heart"]),
    ('"failure heart"', []),  # a phrase keeps its order
    ("heart failure", ["heart"]),  # words side by side are ANDed
    ("heart AND asthma", []),
    ("heart OR wheeze", ["asthma", "heart"]),
    ("heart,wheeze", ["asthma", "heart"]),  # a comma ORs values, as in every FHIR parameter
    ("letter NOT asthma", ["linked"]),
    ("(heart OR asthma) AND (diuretics OR wheeze)", ["asthma", "heart"]),
    ("(heart OR asthma) NOT diuretics", ["asthma"]),
    ("CONTROLLED", ["asthma"]),  # case does not matter
])
def test_syntax(letters, query, expected):
    assert sorted(ids(letters, "DocumentReference", ("_content", query))) == expected


@pytest.mark.parametrize(("query", "says"), [
    ('"heart failure', "not closed"),
    ("(heart OR asthma", "not closed"),
    ("heart AND", "ends with an operator"),
    ("OR heart", "unexpected"),
    ("heart)", "unexpected"),
    ("NOT heart", "NOT must narrow"),
    ("", "no words"),
    ("-- ...", "no words"),
])
def test_malformed_text_is_a_400_naming_the_parameter(letters, query, says):
    with pytest.raises(FHIRError) as e:
        ids(letters, "DocumentReference", ("_content", query))
    assert e.value.status == 400
    assert e.value.issues[0].expression == "_content"
    assert says in e.value.issues[0].diagnostics


def test_modifiers_and_sorting_by_text_are_400s(letters):
    for params in ([("_content:exact", "heart")], [("_sort", "_content")],
                   [("_sort", "-_text")]):
        with pytest.raises(FHIRError) as e:
            ids(letters, "DocumentReference", *params)
        assert e.value.status == 400


@pytest.mark.parametrize(("query", "expected"), [
    ('heart" OR "asthma', []),  # a phrase " OR " between two words, not an FTS5 escape
    ("asthma* NEAR(heart)", []),  # FTS5's prefix and NEAR are words here
    ("content: heart", []),  # an FTS5 column filter is a word
    ("{narrative content}: heart", []),
    ("^asthma", ["asthma"]),  # FTS5's initial-token marker is punctuation
    ("heart:* | asthma", []),  # tsquery's prefix and OR are punctuation
    ("heart'); DROP TABLE resource; --", None),  # an unopened parenthesis: a 400
    ("heart'; DROP TABLE resource; --", []),
])
def test_engine_syntax_in_user_text_is_only_words(letters, query, expected):
    """Nothing a user types reaches FTS5's MATCH grammar or to_tsquery's: the only operators
    are FHIR's AND/OR/NOT; everything else is words."""
    if expected is None:
        with pytest.raises(FHIRError) as e:
            ids(letters, "DocumentReference", ("_content", query))
        assert e.value.status == 400
        return
    assert ids(letters, "DocumentReference", ("_content", query)) == expected
    assert len(ids(letters, "DocumentReference")) == 4


def test_ranked_by_relevance_without_sort_and_by_sort_with_it(sc):
    sc.store.write([
        doc("once", description="asthma mentioned once among many other words here"),
        doc("thrice", description="asthma asthma asthma"),
        doc("none", description="nothing relevant"),
    ])
    assert ids(sc, "DocumentReference", ("_content", "asthma")) == ["thrice", "once"]
    assert ids(sc, "DocumentReference", ("_content", "asthma"), ("_sort", "_id")) == [
        "once", "thrice"]
    # Pages follow the ranked order and neither repeat nor skip.
    first = sc.store.search("DocumentReference", [("_content", "asthma"), ("_count", "1")],
                            PermitAll())
    assert [m.id for m in first.matches] == ["thrice"] and first.total == 2
    second = sc.store.search("DocumentReference", [("_content", "asthma"), ("_count", "1"),
                                                   ("_cursor", first.next_cursor)], PermitAll())
    assert [m.id for m in second.matches] == ["once"] and second.next_cursor is None


def test_text_combines_with_other_parameters_and_compartments(sc):
    sc.store.write([WriteOp("PUT", "Patient", p, {"resourceType": "Patient"}) for p in "AB"])
    sc.store.write([
        doc("a-cur", description="asthma", subject={"reference": "Patient/A"}),
        doc("a-old", description="asthma", subject={"reference": "Patient/A"}),
        doc("b-cur", description="asthma", subject={"reference": "Patient/B"}),
    ])
    sc.store.write([doc("a-old", description="asthma", subject={"reference": "Patient/A"},
                        status="superseded")])
    assert ids(sc, "DocumentReference", ("_content", "asthma"), ("status", "current"),
               ("subject", "Patient/A")) == ["a-cur"]
    page = sc.store.search("DocumentReference", [("_content", "asthma")], PermitAll(),
                           compartment_of="A")
    assert sorted(m.id for m in page.matches) == ["a-cur", "a-old"] and page.total == 2


def test_update_replaces_the_text_and_delete_removes_it(letters):
    before = text_rows(letters)
    letters.store.write([doc("heart", "<p>Rewritten</p>", "cardiology", "Palpitations only.")])
    assert ids(letters, "DocumentReference", ("_content", "diuretics")) == []
    assert ids(letters, "DocumentReference", ("_content", "palpitations")) == ["heart"]
    assert ids(letters, "DocumentReference", ("_text", "discharge")) == []
    assert ids(letters, "DocumentReference", ("_text", "rewritten")) == ["heart"]
    assert text_rows(letters) == before  # replaced, not added
    letters.store.write([WriteOp("DELETE", "DocumentReference", "heart", None)])
    assert ids(letters, "DocumentReference", ("_content", "palpitations")) == []
    assert text_rows(letters) == before - 1


def test_a_failed_transaction_leaves_no_text(sc):
    before = text_rows(sc)

    def refuse(conn, results):
        raise FHIRError.of(409, "conflict", "refused after the rows were written")

    sc.store.after_write.append(refuse)
    with pytest.raises(FHIRError):
        sc.store.write([doc("new", description="bronchiectasis"),
                        binary("b", "bronchiectasis")])
    sc.store.after_write.remove(refuse)
    assert text_rows(sc) == before
    assert ids(sc, None, ("_content", "bronchiectasis")) == []


def test_one_unit_writing_a_resource_twice_keeps_its_last_text(sc):
    sc.store.write([doc("x", description="first")])
    sc.store.write([doc("x", description="second"), doc("x", description="third")])
    assert ids(sc, "DocumentReference", ("_content", "third")) == ["x"]
    assert ids(sc, "DocumentReference", ("_content", "second")) == []


def test_an_hl7_oru_and_a_csv_row_are_findable(sc, tmp_path):
    from sharedcare.feeds import csv_feed
    from sharedcare.feeds.service import FeedService
    from tests.conftest import data_dir

    feeds = FeedService(sc)
    feeds.add_feed("RTEST", "lab", "hl7v2", status="live")
    raw = Path(data_dir("hl7v2", "ORU-R01-01.hl7")).read_bytes().decode().lstrip("\ufeff")
    feeds.ingest_hl7(raw.replace("\r\n", "\r").replace("\n", "\r"), "lab")
    # OBX-5 of the ORU: 27268008^Salmonella
    assert ids(sc, "Observation", ("_content", "salmonella"))

    mapping = {"required": ["client_id", "surname"], "resources": [
        {"name": "patient", "resourceType": "Patient",
         "key": {"column": "client_id", "system": "https://example.org/Id/{ods}/client"},
         "elements": {"name[0].family": "surname", "name[0].given[0]": "forename"}}]}
    feeds.add_feed("RCOUNCIL", "council", "csv", mapping=mapping, status="live")
    path = tmp_path / "clients.csv"
    path.write_text("client_id,surname,forename\nC1,Quennell,Philippa\n", encoding="utf-8")
    csv_feed.load(path, mapping, "council", service=feeds)
    [found] = ids(sc, "Patient", ("_content", "Philippa Quennell"))
    assert sc.store.read("Patient", found, PermitAll()).json()["name"][0]["family"] == "Quennell"


def test_text_extraction():
    res = {"resourceType": "Observation", "id": "secret-id", "status": "final",
           "meta": {"source": "urn:x"},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1",
                                "display": "Peak flow"}]},
           "text": {"status": "generated", "div": XHTML.format("<p>A&amp;E&nbsp;visit</p>")},
           "valueBase64Binary": b64("not text"),
           "subject": {"reference": "Patient/p", "display": "Jo Bloggs"}}
    narrative, content = fulltext.text_rows(res)
    assert narrative == "A&E\xa0visit" or narrative == "A&E visit"
    for word in ("Peak flow", "Jo Bloggs", "final", "visit"):
        assert word in content
    for machinery in ("secret-id", "snomed", "Patient/p", "urn:x", "not text", "xhtml"):
        assert machinery not in content
    assert fulltext.text_rows({"resourceType": "Binary", "contentType": "image/png",
                               "data": b64("png")}) is None
    latin = base64.b64encode("caf\xe9".encode("latin-1")).decode()
    assert fulltext.decoded_text("text/plain; charset=iso-8859-1", latin) == "caf\xe9"


def test_upgrading_a_store_indexes_what_it_already_holds(sc):
    """Migration 0005_fulltext on a database that already holds resources (as every running
    deployment does) indexes them, so old letters are found like new ones."""
    from sharedcare.store import migrate

    sc.store.write([doc("old", "<p>Old narrative</p>", "sarcoidosis", "steroids tapered"),
                    binary("old-bin", "coeliac"),
                    doc("gone", description="sarcoidosis")])
    sc.store.write([WriteOp("DELETE", "DocumentReference", "gone", None)])
    # The database as it was before the migration (and 0006, which follows it), holding the
    # same record.
    from .test_partitioning import rebuild_before

    rebuild_before(sc.engine, {"0005_fulltext"})
    migrate.upgrade(sc.engine)
    assert ids(sc, "DocumentReference", ("_content", "sarcoidosis steroids")) == ["old"]
    assert ids(sc, "DocumentReference", ("_text", "narrative")) == ["old"]
    assert ids(sc, "Binary", ("_content", "coeliac")) == ["old-bin"]
    assert text_rows(sc) == 2  # not the deleted one
