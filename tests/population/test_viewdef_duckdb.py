"""Materialising ViewDefinitions into DuckDB tables and Parquet files."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow.parquet as pq
import pytest

from sharedcare.population.viewdef import (
    ViewEvaluationError,
    arrow_schema,
    evaluate,
    materialise_duckdb,
    write_parquet,
)

UTC = dt.UTC

VIEW = {
    "resourceType": "ViewDefinition",
    "resource": "Observation",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {
                    "name": "patient_id",
                    "path": "subject.getReferenceKey(Patient)",
                    "type": "string",
                },
                {"name": "has_value", "path": "value.exists()", "type": "boolean"},
                {"name": "int_value", "path": "value.ofType(integer)", "type": "integer"},
                {"name": "qty", "path": "value.ofType(Quantity).value", "type": "decimal"},
                {"name": "issued_on", "path": "effective.ofType(dateTime)", "type": "date"},
                {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
                {"name": "at_time", "path": "value.ofType(time)", "type": "time"},
                {"name": "codes", "path": "code.coding.code", "type": "code", "collection": True},
                {"name": "coding", "path": "code.coding.first()"},
            ]
        }
    ],
}

RESOURCES = [
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}, {"code": "x"}]},
        "effectiveDateTime": "2021-03-04T05:06:07.5+01:00",
        "valueQuantity": {"value": 176.5, "unit": "cm"},
    },
    {
        "resourceType": "Observation",
        "id": "o2",
        "status": "final",
        "subject": {"reference": "urn:uuid:7f1c"},
        "code": {"coding": [{"code": "y"}]},
        "effectiveDateTime": "2020-02",  # partial: date/timestamp use the start
        "valueInteger": 42,
    },
    {
        "resourceType": "Observation",
        "id": "o3",
        "status": "final",
        "code": {"text": "no codings"},
        "valueTime": "12:34:56.25",
    },
    {"resourceType": "Patient", "id": "p1"},  # other type: skipped
]

EXPECTED = [
    (
        "o1",
        "p1",
        True,
        None,
        176.5,
        dt.date(2021, 3, 4),
        dt.datetime(2021, 3, 4, 4, 6, 7, 500000, tzinfo=UTC),
        None,
        ["8302-2", "x"],
        '{"system": "http://loinc.org", "code": "8302-2"}',
    ),
    (
        "o2",
        "7f1c",
        True,
        42,
        None,
        dt.date(2020, 2, 1),
        dt.datetime(2020, 2, 1, tzinfo=UTC),
        None,
        ["y"],
        '{"code": "y"}',
    ),
    ("o3", None, True, None, None, None, None, dt.time(12, 34, 56, 250000), [], None),
]

DUCKDB_TYPES = {
    "id": "VARCHAR",
    "patient_id": "VARCHAR",
    "has_value": "BOOLEAN",
    "int_value": "BIGINT",
    "qty": "DOUBLE",
    "issued_on": "DATE",
    "effective": "TIMESTAMP WITH TIME ZONE",
    "at_time": "TIME",
    "codes": "VARCHAR[]",
    "coding": "VARCHAR",
}


@pytest.fixture()
def con():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    yield c
    c.close()


def _types(con, sql_from: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {sql_from}").fetchall()}


def test_rows_in_python():
    rows = evaluate(VIEW, RESOURCES)
    assert [r["id"] for r in rows] == ["o1", "o2", "o3"]
    assert rows[0]["coding"] == {"system": "http://loinc.org", "code": "8302-2"}
    assert rows[1]["effective"] == "2020-02"


@pytest.mark.parametrize("batch_size", [1, 2, 8192])
def test_materialise_duckdb_typed_table(con, batch_size):
    n = materialise_duckdb(VIEW, iter(RESOURCES), con, "obs", batch_size=batch_size)
    assert n == 3
    assert _types(con, "obs") == DUCKDB_TYPES
    got = con.execute("SELECT * FROM obs ORDER BY id").fetchall()
    assert got == EXPECTED


def test_materialise_replaces_table_and_handles_empty_input(con):
    con.execute("CREATE TABLE obs AS SELECT 1 AS unrelated")
    assert materialise_duckdb(VIEW, [], con, "obs") == 0
    assert _types(con, "obs") == DUCKDB_TYPES
    assert con.execute("SELECT count(*) FROM obs").fetchone() == (0,)
    assert materialise_duckdb(VIEW, RESOURCES, con, "obs") == 3
    assert con.execute("SELECT count(*) FROM obs").fetchone() == (3,)


def test_write_parquet_reads_back_in_duckdb_and_arrow(con, tmp_path):
    path = tmp_path / "obs.parquet"
    assert write_parquet(VIEW, RESOURCES, path) == 3
    src = f"read_parquet('{path}')"
    # Same types as the table, except time, which Parquet carries as a string for Spark.
    assert _types(con, src) == {**DUCKDB_TYPES, "at_time": "VARCHAR"}
    got = con.execute(f"SELECT * FROM {src} ORDER BY id").fetchall()
    expected = [r[:7] + ("12:34:56.25" if r[7] else None,) + r[8:] for r in EXPECTED]
    assert got == expected

    table = pq.read_table(path)
    assert table.schema.equals(arrow_schema(VIEW, time_as_string=True))
    assert table.num_rows == 3


def test_parquet_uses_spark_readable_encodings(tmp_path):
    path = tmp_path / "obs.parquet"
    write_parquet(VIEW, RESOURCES, path)
    schema = pq.ParquetFile(path).schema  # physical Parquet schema
    text = str(schema)
    assert "INT96" not in text  # legacy timestamps
    col = {schema.column(i).path: schema.column(i) for i in range(len(schema))}
    effective = col["effective"]
    assert effective.physical_type == "INT64"
    assert "isAdjustedToUTC=true" in str(effective.logical_type)
    assert "timeUnit=microseconds" in str(effective.logical_type)
    assert col["issued_on"].logical_type.type == "DATE"
    # Standard 3-level list layout (list/element), which Spark and DuckDB both read.
    assert "codes.list.element" in col
    assert "TIME" not in str(col["at_time"].logical_type)


def test_type_mismatch_is_reported(con):
    view = {
        "resource": "Patient",
        "select": [{"column": [{"name": "n", "path": "gender", "type": "integer"}]}],
    }
    with pytest.raises(ViewEvaluationError, match="'n'.*integer"):
        materialise_duckdb(view, [{"resourceType": "Patient", "gender": "male"}], con, "t")
