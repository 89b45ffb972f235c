"""CSV feeds: declared mapping, validation before loading, rejected rows with line and reason."""

from __future__ import annotations

import json

import pytest

from sharedcare.feeds import csv_feed
from sharedcare.feeds.service import FeedService
from sharedcare.fhir.codes import NHS_NUMBER_SYSTEM, feed_source
from sharedcare.store.repository import PermitAll

MAPPING = {
    "required": ["client_id", "surname", "dob", "service"],
    "dates": {"dob": "%d/%m/%Y", "start": "%d/%m/%Y"},
    "translations": {"service": {
        "Home care": {"system": "http://snomed.info/sct", "code": "1255191000000101",
                      "display": "Home care"},
        "Meals": {"system": "http://snomed.info/sct", "code": "310454008",
                  "display": "Meals on wheels"}}},
    "resources": [
        {"name": "patient", "resourceType": "Patient",
         "key": {"column": "client_id", "system": "https://example.org/Id/{ods}/client"},
         "elements": {
             "identifier[+]": {"column": "nhs_number", "identifier": NHS_NUMBER_SYSTEM,
                               "nhs_number": True},
             "name[0].family": "surname",
             "name[0].given[0]": "forename",
             "birthDate": {"column": "dob", "date": True},
             "gender": {"column": "sex", "map": {"M": "male", "F": "female"}},
             "address[0].postalCode": "postcode"}},
        {"name": "package", "resourceType": "ServiceRequest",
         "key": {"column": "package_id", "system": "https://example.org/Id/{ods}/package"},
         "elements": {
             "status": {"value": "active"}, "intent": {"value": "order"},
             "code": {"column": "service", "translate": "service"},
             "subject": {"reference": "patient"},
             "occurrencePeriod.start": {"column": "start", "date": True}}},
    ],
}

CSV = """client_id,nhs_number,surname,forename,dob,sex,postcode,package_id,service,start
C1,9434765919,Smith,Jane,01/02/1980,F,LS1 4AB,PK1,Home care,01/03/2024
C2,,Jones,"Bob
 (Robert)",31/12/1950,M,LS2 9ZZ,PK2,Meals,02/03/2024
C3,1234567890,Brown,Ann,01/01/1960,F,LS3 1AA,PK3,Home care,01/03/2024
C4,,Green,Tom,1960-01-01,M,LS4 1AA,PK4,Home care,01/03/2024
C5,,White,Sue,01/01/1970,X,LS5 1AA,PK5,Gardening,01/03/2024
,,Black,Al,01/01/1970,M,LS6 1AA,PK6,Meals,01/03/2024
C7,,Grey,Eve,01/01/1971,F,LS7 1AA,PK7,Meals,01/03/2024
"""


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "council-packages.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def test_validate_reports_line_column_and_reason(csv_file):
    errors = csv_feed.validate(csv_file, MAPPING)
    got = {(e.line, e.column) for e in errors}
    # Row 2 spans lines 3-4 (quoted newline), so C3 is on line 5.
    assert (5, "nhs_number") in got  # bad check digit
    assert (6, "dob") in got  # wrong date format
    assert (7, "sex") in got and (7, "service") in got  # unknown value / unknown code
    assert (8, "client_id") in got  # required value missing
    assert all(e.line not in (2, 3, 9) for e in errors)
    assert all("Brown" not in e.reason and "1234567890" not in e.reason for e in errors)


def test_missing_required_column_is_a_header_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("client_id,surname\nC1,Smith\n")
    errors = csv_feed.validate(path, MAPPING)
    assert {(e.line, e.column) for e in errors} >= {(1, "dob"), (1, "service")}


def test_load_takes_valid_rows_and_reports_the_rest(sc, csv_file, tmp_path):
    feeds = FeedService(sc)
    feeds.add_feed("RCOUNCIL", "council-care", "csv", mapping=MAPPING, status="live")
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps(MAPPING))
    report = csv_feed.load(csv_file, csv_feed.read_mapping(mapping_file), "council-care",
                           service=feeds)
    assert report.rows == 7 and report.loaded_rows == 3
    assert sorted({e.line for e in report.rejected}) == [5, 6, 7, 8]
    patients = [s.json() for s in sc.store.search("Patient", [], PermitAll()).matches]
    assert sorted(p["name"][0]["family"] for p in patients) == ["Grey", "Jones", "Smith"]
    smith = next(p for p in patients if p["name"][0]["family"] == "Smith")
    assert smith["birthDate"] == "1980-02-01" and smith["gender"] == "female"
    assert {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"} in smith["identifier"]
    assert smith["meta"]["source"] == feed_source("RCOUNCIL", "council-care")
    requests = [s.json() for s in sc.store.search("ServiceRequest", [], PermitAll()).matches]
    home = next(r for r in requests if r["code"]["text"] == "Home care")
    assert home["code"]["coding"][0]["code"] == "1255191000000101"
    assert home["subject"]["reference"] == f"Patient/{smith['id']}"
    assert home["occurrencePeriod"]["start"] == "2024-03-01"
    provenance = sc.store.search("Provenance", [], PermitAll()).matches
    assert len(provenance) == 1  # one per batch
    # Re-sending the same file changes nothing; quality report counts the rejects.
    again = feeds.ingest_csv(csv_file, "council-care")
    assert again.duplicate
    assert len(sc.store.search("Patient", [], PermitAll()).matches) == 3
    assert feeds.quality_report("RCOUNCIL")["records_rejected"] >= 4


def test_all_or_nothing_loads_nothing_when_a_row_fails(sc, csv_file):
    feeds = FeedService(sc)
    feeds.add_feed("RCOUNCIL", "council-care", "csv", mapping=MAPPING, status="live")
    report = feeds.ingest_csv(csv_file, "council-care", all_or_nothing=True)
    assert report.loaded_rows == 0 and report.rejected
    assert sc.store.search("Patient", [], PermitAll()).total == 0


HEADER = "client_id,nhs_number,surname,forename,dob,sex,postcode,package_id,service,start"
ROW = "C{n},9434765919,Smith,Jane,01/02/1980,F,LS1 4AB,PK{n},Home care,01/03/2024"


def test_oversized_cell_is_a_row_error_not_a_crash(sc, tmp_path):
    from sharedcare.feeds.csv_feed import MAX_FIELD

    feeds = FeedService(sc)
    feeds.add_feed("LAZ01", "council", "csv", MAPPING, status="live")
    path = tmp_path / "big.csv"
    path.write_text(HEADER + "\n" + ROW.format(n=1) + "\n"
                    + ROW.format(n=2).replace("Smith", "S" * (MAX_FIELD + 1)) + "\n"
                    + ROW.format(n=3) + "\n")
    report = feeds.ingest_csv(path, "council")
    assert [(e.line, e.column) for e in report.rejected] == [(3, "surname")]
    assert "longer than" in report.rejected[0].reason
    assert report.loaded_rows == 2


def test_rows_sharing_an_nhs_number_write_their_person_once(sc, tmp_path):
    feeds = FeedService(sc)
    feeds.add_feed("LAZ01", "council", "csv", MAPPING, status="live")
    path = tmp_path / "same.csv"
    path.write_text(HEADER + "\n" + "\n".join(ROW.format(n=n) for n in range(300)) + "\n")
    report = feeds.ingest_csv(path, "council")
    assert report.loaded_rows == 300 and not report.rejected
    [person] = [s.json() for s in sc.store.iter_current(PermitAll(), ["Person"])]
    assert len(person["link"]) == 300 and person["meta"]["versionId"] == "1"


def test_date_problems_are_reported_in_words():
    from sharedcare.feeds.csv_feed import _safe, date_words

    assert date_words("%d/%m/%Y") == "DD/MM/YYYY"
    said = _safe("'31/02/1950x' does not match '^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|"
                 "[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$'")
    assert "[0-9]" not in said and "31/02" not in said and "YYYY-MM-DD" in said
