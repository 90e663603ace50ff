"""On a real cluster: a Spark standalone master and two workers on loopback (pyspark's own
sbin/spark-daemon.sh), the nightly submitted to it with `deepmine submit` (library zipped for
--py-files, config shipped with --files), and its outputs equal to a local[2] run's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepmine.core.lake import Lake
from deepmine.nightly import STAGES

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-22"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    work = tmp_path_factory.mktemp("standalone")
    script = REPO / "scripts" / "standalone_cluster.sh"
    env = dict(os.environ, PYTHON=sys.executable)
    try:
        started = subprocess.run(["bash", str(script), "start", str(work)], capture_output=True,
                                 text=True, timeout=240, env=env)
        assert started.returncode == 0, started.stderr
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(script), "stop", str(work)], capture_output=True, timeout=120,
                       env=env)


def _stable(value) -> str:
    """A value as text; floats to 12 significant digits, because a sum over rows spread across
    two executors adds them in another order than local[2] does (last-bit differences)."""
    return f"{value:.12g}" if isinstance(value, float) else str(value)


def _submit(master: str, conf: Path, stage: str, stage_args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    return subprocess.run(
        [sys.executable, "-m", "deepmine.cli", "submit", "--master", master, "--conf", str(conf),
         "--date", DATE, "--stage", stage, "--spark-arg=--conf=spark.driver.host=127.0.0.1",
         "--spark-arg=--conf=spark.executor.memory=768m", "--", *stage_args],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO)


def test_nightly_on_standalone_cluster_equals_local_run(standalone, spark, nightly_run, tmp_path):
    """The shared local[2] nightly (conftest's nightly_run) and the same nightly submitted to the
    standalone cluster, on the same input and settings, publish the same rows in every table."""
    conf = tmp_path / "cluster.yaml"
    conf.write_text(f"lake:\n  root: {(tmp_path / 'cluster_lake').as_uri()}\n")
    settings = ["--set", *[o for o in nightly_run["overrides"] if not o.startswith("lake.root=")]]

    doctor = _submit(standalone, conf, "doctor", [])
    assert doctor.returncode == 0, doctor.stderr[-3000:]
    report = json.loads(doctor.stdout[doctor.stdout.index("{"):])
    assert report["master"] == standalone
    assert report["executors"] and all(
        "deepmine-" in e["deepmine"] and ".zip" in e["deepmine"] for e in report["executors"]), \
        "executors must import deepmine from the --py-files zip"

    submitted = _submit(standalone, conf, "nightly", settings)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert "manifest: " in submitted.stdout

    on_cluster, on_local = Lake(spark, str(tmp_path / "cluster_lake")), nightly_run["lake"]
    compared = []
    for stage in STAGES:
        for table in stage.outputs:
            partition = f"{stage.partition_key}={DATE}"
            assert on_cluster.has_partition(table, partition) == on_local.has_partition(table, partition)
            if on_local.has_partition(table, partition):
                rows = [sorted(tuple(map(_stable, r)) for r in lake.read(table, partition).collect())
                        for lake in (on_cluster, on_local)]
                assert rows[0] == rows[1], table
                compared.append(table)
    assert {"clean/transactions", "mining/rfm", "mining/rules", "mining/recommendations"} <= set(compared)
    cluster_stages = on_cluster.read_manifest(DATE)["stages"]
    assert cluster_stages["ingest"]["counts"] == on_local.read_manifest(DATE)["stages"]["ingest"]["counts"]
