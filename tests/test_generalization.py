"""The image stages on image sets nobody tuned them on (lib/deepmine/data/imagesets.py): a real 8x8
set (scikit-learn's digits), 16x16 dark shapes on white with a third of the training rows
unlabelled, and sparse 28x28 strokes. Each model either beats its baseline on the same data (the
CNN: majority class and logistic regression on the pixels; deep clustering: K-means on the raw
vectors) with stage status ok, or the stage says `degraded` and why; never a silent ok. A
broken set-up (learning rate 10) must end degraded, with its retries on record.

Small on purpose (a few hundred to 1,800 images, a budget of seconds per model): the suite checks
the mechanisms (validation split, early stopping, failure detection, gates), not the figures;
scripts/bench/quality.py measures the figures.
"""
from __future__ import annotations

import pytest

from deepmine.data import imagesets

D = "2026-11-22"
SETS = {  # name -> (rows, share of training rows unlabelled, side of the square images)
    "digits8": (0, 0.0, 8),
    "shapes16_inverted": (700, 0.3, 16),
    "strokes28": (900, 0.0, 28),
}


def _config(root, name, *extra):
    from deepmine.core.config import load_config
    h = w = SETS[name][2]
    return load_config(None, [
        f"lake.root={root / name}", "spark.ui_enabled=false", f"images.height={h}",
        f"images.width={w}", "features.row_groups=2", "train.patience=3",
        # epochs, not the clock, end these runs (the same result on a busy machine); the budget
        # has its own test below
        "train.budget_seconds=0", "train.epochs=15", "train.pretrain_epochs=15",
        "train.kmeans_n_init=3", "train.shuffle_buffer=256", "train.dec_max_epochs=3", *extra])


@pytest.fixture(scope="module")
def image_lakes(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("generalization")
    configs = {}
    for name, (rows, unlabelled, _) in SETS.items():
        config = _config(root, name)
        pixels, labels, splits = imagesets.make(name, rows, seed=3, unlabelled=unlabelled)
        imagesets.publish_image_features(spark, config, D, pixels, labels, splits)
        configs[name] = config
    return configs


def _stage(spark, config, stage):
    from deepmine.core.lake import Lake
    return Lake(spark, config.lake.root).read_manifest(D)["stages"][stage]


def _beats_or_degraded(record, model_score, baseline_score, what, tolerance=0.0):
    """The invariant of the gate: ok only when the model reaches its baseline (less the gate's
    tolerance, train.gate_tolerance, where the gate allows one), else degraded with a reason."""
    if record["status"] == "ok":
        assert model_score >= baseline_score - tolerance - 1e-12, \
            (what, model_score, baseline_score, tolerance, record)
    else:
        assert record["status"] == "degraded" and record["degraded_reasons"], record


@pytest.mark.parametrize("name", list(SETS))
def test_cnn_beats_its_baselines_or_is_degraded(spark, image_lakes, name):
    from deepmine.deep.train import run_train
    config = image_lakes[name]
    run_train(spark, config, D, "cnn", "images")  # unlabelled rows: no "Target -1" error
    record = _stage(spark, config, "train_cnn")
    m = record["metrics"]
    assert m["stop_reason"] in ("patience", "budget", "max_epochs") and m["best_epoch"] >= 0
    assert m["epochs_run"] > 2, m["history"]  # trained past a token epoch count
    assert {"majority_class", "logistic_pixels"} <= set(m["baselines"])
    # the majority class is beaten outright, logistic regression reached within the tolerance
    _beats_or_degraded(record, m["accuracy"], m["baselines"]["majority_class"] + 1e-9, "cnn")
    _beats_or_degraded(record, m["accuracy"], m["baselines"]["logistic_pixels"], "cnn",
                       config.train.gate_tolerance)
    # far above chance on every set (10 classes)
    assert m["accuracy"] > 0.5, m


@pytest.mark.parametrize("name", list(SETS))
def test_image_clustering_beats_kmeans_or_is_degraded(spark, image_lakes, name):
    from deepmine.deep.train import run_train
    config = image_lakes[name]
    run_train(spark, config, D, "autoencoder", "images")
    record = _stage(spark, config, "train_autoencoder_images")
    m = record["metrics"]
    assert m["pretrain_stop_reason"] in ("patience", "budget", "max_epochs")
    _beats_or_degraded(record, m["cluster_acc"], m["kmeans_baseline"]["cluster_acc"], "dec",
                       config.train.gate_tolerance)
    # no dead network: the embedding spreads, no cluster holds almost every row
    assert m["failure"] is None, m["attempts"]
    assert max(m["cluster_sizes"].values()) < 0.9 * sum(m["cluster_sizes"].values())


def test_a_broken_learning_rate_ends_degraded_with_its_retries(spark, image_lakes):
    """Learning rate 10: every attempt fails (NaN or a loss stuck at the class frequencies'), the
    retries are recorded, and the stage ends degraded with the reason, not ok."""
    from dataclasses import replace

    from deepmine.deep.train import run_train
    config = image_lakes["digits8"]
    broken = replace(config, train=replace(config.train, lr=10.0, max_retries=1, epochs=8,
                                           patience=2, budget_seconds=0))
    run_train(spark, broken, D, "cnn", "images")
    record = _stage(spark, broken, "train_cnn")
    assert record["status"] == "degraded", record
    assert any("training failed" in r or "baseline" in r or "majority" in r
               for r in record["degraded_reasons"]), record["degraded_reasons"]
    m = record["metrics"]
    assert m["retries"] == 1 and len(m["attempts"]) == 2
    assert m["attempts"][1]["lr"] == pytest.approx(10.0 * broken.train.recovery_lr_factor)


def test_the_budget_stops_training_before_the_epoch_that_would_overrun_it(spark, image_lakes):
    from dataclasses import replace

    from deepmine.deep.train import run_train
    config = image_lakes["shapes16_inverted"]
    quick = replace(config, train=replace(config.train, budget_seconds=0.5))
    run_train(spark, quick, D, "cnn", "images")
    m = _stage(spark, quick, "train_cnn")["metrics"]
    assert (m["stop_reason"], m["epochs_run"], m["best_epoch"]) == ("budget", 1, 0)
