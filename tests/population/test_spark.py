"""The materialisation's Parquet runs unchanged on Apache Spark (pyspark, local mode).

Slow: starts a JVM. Needs pyspark (pinned in the project's optional dependencies) and Java 17+.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys

import duckdb
import pytest

from sharedcare.population import viewdef

pytestmark = pytest.mark.slow

PATIENTS = [
    {"resourceType": "Patient", "id": f"p{i}", "gender": ["male", "female"][i % 2],
     "birthDate": f"19{40 + i}-0{1 + i % 9}-1{i % 10}",
     "deceasedDateTime": "2024-03-01T10:30:00+01:00" if i == 3 else None,
     "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": f"99900000{i:02d}"}],
     "address": [{"use": "home", "postalCode": f"M{i} 1AA"}],
     "generalPractitioner": [{"reference": f"Organization/o{i % 3}"}]}
    for i in range(25)
]
CARE_PLANS = [
    {"resourceType": "CarePlan", "id": f"cp{i}", "status": "active", "intent": "plan",
     "subject": {"reference": f"Patient/p{i}"},
     "category": [{"coding": [{"code": "736373009"}, {"code": f"x{i}"}]}] if i % 2 else [],
     "period": {"start": "2026-01-02T03:04:05Z"}}
    for i in range(10)
]


def _clean(rows):
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def _norm(v):
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).replace(tzinfo=None) if v.tzinfo else v
    if isinstance(v, list | tuple):
        return tuple(_norm(x) for x in v)
    return v


def _rows(records, names):
    return sorted((tuple(_norm(r[n]) for n in names) for r in records),
                  key=lambda t: tuple("" if x is None else str(x) for x in t))


@pytest.fixture(scope="module")
def spark():
    # pyspark is a pinned test dependency and this machine has Java: in CI the Spark path must
    # run, so a missing piece fails there instead of skipping.
    if os.environ.get("CI") == "true":
        import pyspark  # noqa: F401
        assert shutil.which("java"), "pyspark needs a Java runtime (java not on PATH) in CI"
    pyspark = pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("pyspark needs a Java runtime (java not on PATH)")
    from pyspark.sql import SparkSession

    # Python workers evaluating views need this interpreter (sharedcare on it), whatever
    # `python3` is on the PATH: local mode reads the environment.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (SparkSession.builder.master("local[1]").appName("sharedcare-test")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.driver.memory", "512m")
               .config("spark.sql.shuffle.partitions", "1")
               .getOrCreate())
    assert pyspark.__version__
    yield session
    session.stop()


@pytest.mark.parametrize("name,resources", [("patient_demographics", PATIENTS),
                                            ("care_plans", CARE_PLANS)])
def test_spark_reads_the_parquet_duckdb_reads(spark, tmp_path, name, resources):
    view = viewdef.load_view(name)
    path = tmp_path / f"{name}.parquet"
    n = viewdef.write_parquet(view, _clean(resources), path)
    assert n == len(resources)
    names = viewdef.compile_view(view).column_names

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    cur = con.execute(f"select * from read_parquet('{path}')")
    cols = [d[0] for d in cur.description]
    from_duck = [dict(zip(cols, row)) for row in cur.fetchall()]

    df = spark.read.parquet(str(path))
    assert df.columns == names
    from_spark = [r.asDict() for r in df.collect()]
    assert len(from_spark) == n
    assert _rows(from_spark, names) == _rows(from_duck, names)
    # and typed as declared: dates are dates, timestamps timestamps, collections arrays
    types = dict(df.dtypes)
    if name == "patient_demographics":
        assert types["birth_date"] == "date" and types["deceased_at"] == "timestamp"
        assert types["deceased"] == "boolean"
    else:
        assert types["category_codes"] == "array<string>"


def test_a_view_runs_on_spark_over_a_bulk_export_as_on_duckdb(spark, tmp_path):
    """The ViewDefinition itself runs on Spark (its Python workers), over NDJSON as `$export`
    writes it, and gives the rows DuckDB materialises from the same resources."""
    import orjson

    export = tmp_path / "export"
    export.mkdir()
    half = len(PATIENTS) // 2  # two files, as a bulk export splits a type
    for i, part in enumerate((PATIENTS[:half], PATIENTS[half:])):
        (export / f"Patient.{i}.ndjson").write_bytes(
            b"\n".join(orjson.dumps(r) for r in _clean(part)) + b"\n")
    view = viewdef.load_view("patient_demographics")
    names = viewdef.compile_view(view).column_names

    df = viewdef.run_on_spark(view, str(export / "*.ndjson"), spark=spark)
    assert df.columns == names
    from_spark = [r.asDict() for r in df.collect()]

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    viewdef.materialise_duckdb(view, _clean(PATIENTS), con, "patients")
    cur = con.execute("select * from patients")
    cols = [d[0] for d in cur.description]
    from_duck = [dict(zip(cols, row)) for row in cur.fetchall()]
    assert len(from_spark) == len(PATIENTS)
    assert _rows(from_spark, names) == _rows(from_duck, names)
    assert dict(df.dtypes)["birth_date"] == "date"
