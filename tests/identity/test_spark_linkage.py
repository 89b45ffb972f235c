"""splink on Apache Spark (pyspark, local mode) links the identity benchmark's records as DuckDB does.

Slow: starts a JVM and runs splink's training on Spark. pyspark is a pinned test dependency and
the machine has Java 17; under CI a missing piece fails instead of skipping.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from sharedcare.identity.matching import Linker
from sharedcare.identity.simulate import make_people, make_records, pairwise_scores, true_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark_ready():
    if os.environ.get("CI") == "true":
        import pyspark  # noqa: F401
        assert shutil.which("java"), "pyspark needs a Java runtime (java not on PATH) in CI"
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("pyspark needs a Java runtime (java not on PATH)")
    from pyspark.sql import SparkSession

    # A session another test left running lacks splink's similarity jar: start our own.
    if (active := SparkSession.getActiveSession()) is not None:
        active.stop()
    os.environ.setdefault("SHAREDCARE_SPARK_SHUFFLE_PARTITIONS", "2")
    from sharedcare.spark import spark_session

    yield spark_session()
    spark_session().stop()


@pytest.fixture(scope="module")
def population():
    rng = random.Random(23)
    people = make_people(150, rng)
    records, truth = make_records(people, rng)
    return records, true_pairs(truth)


def _links(decisions):
    return {(d.a, d.b) for d in decisions if d.outcome == "link"}


def test_spark_trains_and_links_with_duckdbs_precision_and_recall(spark_ready, population):
    records, truth = population
    duck = Linker()
    duck.train(records)
    on_duck = pairwise_scores(_links(duck.predict(records)), truth)

    spark = Linker(engine="spark")
    spark.train(records)
    on_spark = pairwise_scores(_links(spark.predict(records)), truth)

    assert on_duck["recall"] > 0.9  # a real population with real links, not an empty one
    assert abs(on_spark["precision"] - on_duck["precision"]) <= 0.005
    assert abs(on_spark["recall"] - on_duck["recall"]) <= 0.005
    # The same training data gives the same model up to floating point.
    assert spark.training_info["m_method"] == duck.training_info["m_method"]
    assert spark.training_info["probability_two_random_records_match"] == pytest.approx(
        duck.training_info["probability_two_random_records_match"], rel=1e-9)


def test_a_model_trained_on_duckdb_scores_every_pair_the_same_on_spark(spark_ready, population):
    records, _ = population
    duck = Linker()
    duck.train(records)
    on_spark = Linker.from_json(duck.to_json())
    on_spark.engine = "spark"
    a = {(d.a, d.b): d for d in duck.predict(records)}
    b = {(d.a, d.b): d for d in on_spark.predict(records)}
    assert a.keys() == b.keys() and len(a) > len(records) // 2
    for pair, d in a.items():
        assert b[pair].outcome == d.outcome, pair
        assert b[pair].probability == pytest.approx(d.probability, abs=1e-9), pair


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of duckdb, spark"):
        Linker(engine="polars")


def test_a_model_moves_between_dialects_without_changing_a_score():
    """No JVM: the saved model's SQL is DuckDB's; rendered for Spark and back it scores alike."""
    from sharedcare.identity.matching import _in_dialect

    rng = random.Random(5)
    records, _ = make_records(make_people(80, rng), rng)
    duck = Linker()
    duck.train(records)
    model = duck.to_dict()["splink_model"]
    as_spark = _in_dialect(model, "spark")
    assert as_spark["sql_dialect"] == "spark" and "epoch(" not in str(as_spark)
    back = Linker.from_json(duck.to_json())
    back._model = _in_dialect(as_spark, "duckdb")
    a = {(d.a, d.b): d.probability for d in duck.predict(records)}
    b = {(d.a, d.b): d.probability for d in back.predict(records)}
    assert a.keys() == b.keys() and a
    assert all(b[k] == pytest.approx(a[k], abs=1e-12) for k in a)
