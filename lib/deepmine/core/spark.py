"""The Spark session, built from the config's `spark` section.

Local mode binds everything to loopback (driver host, bind address, UI): tests and the embedded
default never open a port on another interface. On a cluster, `spark.master` is the cluster's URL
and spark-submit's own settings win over ours for anything it sets.
"""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from deepmine.core.config import Config
from deepmine.core.lake import resolve_url


def is_local(master: str) -> bool:
    return master.startswith("local")


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands Python its gateway; it owns master and binding."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_settings(config: Config) -> dict[str, str]:
    """Every setting deepmine puts on the session, as one dict (tests and submit reuse it)."""
    sc = config.spark
    settings = {
        "spark.sql.shuffle.partitions": str(sc.shuffle_partitions),
        "spark.default.parallelism": str(sc.shuffle_partitions),
        "spark.ui.enabled": str(sc.ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": sc.driver_memory,
        # Parquet written by Spark and read by pyarrow/Petastorm: plain microsecond timestamps
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    if is_local(sc.master):
        # A file is one split unless it is larger than its open cost (4 MB by default): a few-MB
        # input would then be scanned by one core while the other idles.
        settings["spark.sql.files.openCostInBytes"] = str(512 * 1024)
    if is_local(sc.master) and not under_spark_submit():
        settings.update({
            "spark.driver.host": sc.local_ip,
            "spark.driver.bindAddress": sc.local_ip,
            "spark.ui.host": sc.local_ip,
        })
    settings.update(sc.options)
    return settings


def build_session(config: Config) -> SparkSession:
    """Get or create the session for this config, with the checkpoint directory set (ALS needs it)."""
    sc = config.spark
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")  # pyspark.pandas asks for it with pyarrow>=2
    if is_local(sc.master):
        os.environ.setdefault("SPARK_LOCAL_IP", sc.local_ip)
        # Python workers run the driver's interpreter (the venv), not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(sc.app_name)
    if not under_spark_submit():
        builder = builder.master(sc.master)
    for key, value in spark_settings(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    checkpoint = sc.checkpoint_dir or resolve_url(config.lake.root).rstrip("/") + "/_checkpoints"
    spark.sparkContext.setCheckpointDir(checkpoint)
    return spark
