"""Apache Spark for the work that outgrows one machine: identity linkage over a whole population
(splink on Spark) and SQL-on-FHIR views over a bulk export.

DuckDB, in process, stays the default and is right for one machine. ``SHAREDCARE_SPARK_MASTER``
names a cluster (``spark://host:7077``, ``yarn``, ...); without it Spark runs in local mode on
this machine's cores, which is how the tests run it. Needs pyspark (the ``spark`` extra) and
Java 17+.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import Any

_lock = threading.Lock()
_session: Any = None


def spark_session():
    """One Spark session per process (Spark allows one active context per JVM); a stopped one
    is replaced."""
    global _session
    with _lock:
        if _session is None or _session.sparkContext._jsc is None:
            from pyspark.sql import SparkSession
            from splink.backends.spark import similarity_jar_location

            # Python workers (view evaluation) must run this interpreter, with sharedcare on
            # it; in local mode pyspark reads the environment, not only the setting below.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

            _session = (
                SparkSession.builder
                .master(os.environ.get("SHAREDCARE_SPARK_MASTER", "local[2]"))
                .appName("sharedcare")
                # splink's Jaro-Winkler and Damerau-Levenshtein run as Scala UDFs from its jar.
                .config("spark.jars", similarity_jar_location())
                .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.ui.enabled", "false")
                # Few partitions for local runs, as splink advises; a cluster sets its own.
                .config("spark.sql.shuffle.partitions", os.environ.get(
                    "SHAREDCARE_SPARK_SHUFFLE_PARTITIONS", "8"))
                .getOrCreate()
            )
            _session.sparkContext.setLogLevel("ERROR")
            # splink breaks long lineages by writing intermediate tables under the checkpoint
            # directory (a path every node shares, e.g. HDFS or S3, on a real cluster).
            _session.sparkContext.setCheckpointDir(
                os.environ.get("SHAREDCARE_SPARK_CHECKPOINT_DIR")
                or tempfile.mkdtemp(prefix="sharedcare-spark-"))
        return _session
