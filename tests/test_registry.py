"""The model registry: the promotion rule as a table, and two nights of CNN training against a
real `mlflow server` on loopback, read back through MLflow's REST API: both trainings logged and
registered, the first version the champion, the second warm-started from it and (held to a bar
it cannot reach) not promoted, the second night's predictions the champion's; then the third
night's plan: a warm start, or a full training when drift or the schedule asks."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from deepmine.deep.registry import promotion, warm_start_plan


@pytest.mark.parametrize("gate_ok,score,champion_score,has_champion,want", [
    (True, 0.80, None, False, True),    # the first version
    (False, 0.80, None, False, False),  # failed its gate: never the champion
    (True, 0.80, 0.803, True, True),    # within the tolerance (0.005)
    (True, 0.80, 0.81, True, False),    # below it by more
    (True, 0.90, 0.81, True, True),
    (False, 0.90, 0.81, True, False),
    (True, 0.80, None, True, True),     # the champion cannot be scored on tonight's rows
])
def test_promotion_rule(gate_ok, score, champion_score, has_champion, want):
    assert promotion(gate_ok, score, champion_score, has_champion, 0.005).promote is want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "mlflow.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", f"file://{tmp_path / 'artifacts'}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
                assert time.time() < deadline, "mlflow server did not start in 180 s"
                time.sleep(1)
        yield base
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_two_nights_against_an_mlflow_server(spark, make_config, mlflow_server):
    from deepmine.core.lake import Lake
    from deepmine.deep.features import run_features
    from deepmine.deep.train import run_train

    settings = [f"mlflow.tracking_uri={mlflow_server}", "features.image_source=synthetic",
                "features.synthetic_images=600", "features.row_groups=2", "train.epochs=1",
                "train.budget_seconds=0",
                # one epoch need not beat logistic regression: this test is about the registry
                "train.gate_tolerance=1"]
    first, second = "2026-11-21", "2026-11-22"
    config = make_config(*settings)
    lake = Lake(spark, config.lake.root)
    for day in (first, second):  # the same synthetic images both nights
        run_features(spark, config, day)
    run_train(spark, config, first, "cnn")
    # the second night's model must beat the champion by a whole point: it cannot
    run_train(spark, make_config(*settings, "mlflow.promotion_tolerance=-1"), second, "cnn")

    one = lake.read_manifest(first)["stages"]["train_cnn"]["metrics"]["registry"]
    two_stage = lake.read_manifest(second)["stages"]["train_cnn"]
    two = two_stage["metrics"]["registry"]
    assert (one["version"], one["promoted"], one["champion"]) == ("1", True, "1")
    assert (one["training"], one["parent_version"]) == ("full", None)
    assert (two["version"], two["promoted"], two["champion"]) == ("2", False, "1")
    # the second night started from the champion's weights, for mlflow.warm_start_epochs
    assert (two["training"], two["parent_version"]) == ("warm_start", "1")
    assert two_stage["metrics"]["epochs_run"] == 2
    assert two["champion_comparable"] and two["predictions_from"] == "champion 1"
    assert two["validation_score"] == pytest.approx(two_stage["metrics"]["accuracy"], abs=1e-6)
    assert any("champion version 1 kept" in w for w in two_stage["warnings"])

    # read back through the server's REST API
    alias = _get(mlflow_server, "registered-models/alias", name="deepmine-cnn", alias="champion")
    assert alias["model_version"]["version"] == "1"
    versions = _get(mlflow_server, "model-versions/search", filter="name='deepmine-cnn'")
    by_version = {v["version"]: {t["key"]: t["value"] for t in v.get("tags", [])}
                  for v in versions["model_versions"]}
    assert {v: t["run_date"] for v, t in by_version.items()} == {"1": first, "2": second}
    assert {v: (t["training"], t["parent_version"]) for v, t in by_version.items()} == \
        {"1": ("full", ""), "2": ("warm_start", "1")}
    experiment = _get(mlflow_server, "experiments/get-by-name", experiment_name="deepmine")
    runs = _post(mlflow_server, "runs/search",
                 {"experiment_ids": [experiment["experiment"]["experiment_id"]]})["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == [f"train_cnn {first}",
                                                           f"train_cnn {second}"]
    for r in runs:
        metrics = {m["key"] for m in r["data"]["metrics"]}
        assert {"accuracy", "epoch_loss"} <= metrics, metrics
        assert any(p["key"] == "spec.kind" and p["value"] == "cnn" for p in r["data"]["params"])

    # the champion's predictions were published the second night: the same images, the same
    # weights, so the same labels as the first night's
    night = {d: {r["image_id"]: r["predicted_label"] for r in
                 lake.read("predictions/cnn", f"run_date={d}").collect()} for d in (first, second)}
    assert night[first] == night[second]

    # a third night: a warm start from the champion, unless the drift stage or the schedule
    # asks for a full training
    spec = lake.read_manifest(first)["stages"]["train_cnn"]["metrics"]["spec"]
    third, quiet = "2026-11-23", {"stages": {}}
    drifted = {"stages": {"drift": {"metrics": {"full_retrain": {"train_cnn": "drift in x"}}}}}
    plan = warm_start_plan(config, "cnn", "train_cnn", third, spec, quiet)
    assert (plan["training"], plan["parent_version"], plan["warm_starts_since_full"]) == \
        ("warm_start", "1", 1)
    assert plan["init_weights_url"].endswith("models/cnn/run_date=2026-11-21/weights.pt")
    assert warm_start_plan(config, "cnn", "train_cnn", third, spec, drifted)["training"] == "full"
    every_night = make_config(*settings, "mlflow.full_retrain_every=1")
    assert warm_start_plan(every_night, "cnn", "train_cnn", third, spec, quiet)["training"] == \
        "full"
    assert warm_start_plan(config, "cnn", "train_cnn", first, spec, quiet)["training"] == "full"
    assert warm_start_plan(config, "cnn", "train_cnn", third, {**spec, "n_classes": 3},
                           quiet)["training"] == "full"
