"""`deepmine doctor`: where the driver and the executors find Python, deepmine and the stack.

On a cluster this answers "do the executors import the deepmine I shipped?" (`--py-files` puts
the zip first on their path) and "which versions run there?". Prints one JSON document.
"""
from __future__ import annotations

import json

from pyspark.sql import SparkSession


def _environment(_=None) -> dict:
    import platform
    import socket
    import sys

    import deepmine
    info = {"host": socket.gethostname(), "python": sys.executable,
            "python_version": platform.python_version(), "deepmine": deepmine.__file__}
    for name in ("pyspark", "pyarrow", "numpy", "pandas", "torch", "petastorm", "horovod"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # missing on that node: say so rather than fail the check
            info[name] = f"unavailable: {type(e).__name__}"
    return info


def run_doctor(spark: SparkSession, partitions: int = 4) -> dict:
    sc = spark.sparkContext
    executors = sc.parallelize(range(partitions), partitions).map(_environment).collect()
    unique = sorted({json.dumps(e, sort_keys=True) for e in executors})
    return {"master": sc.master, "driver": _environment(),
            "executors": [json.loads(e) for e in unique]}
