"""Drift: the Spark PSI against a hand-computed table, the Spark KS statistic and p-value against
scipy's ks_2samp on the same samples, planted shifts found and unshifted columns left alone, and
the stage over three nights of a lake (reference = the last full training, not a warm start)."""
from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F
from scipy.stats import ks_2samp

from deepmine.core.config import DriftConfig
from deepmine.core.lake import Lake, StageRun
from deepmine.ops.drift import compare, long_values, run_drift


def _long(spark, columns: dict[str, np.ndarray]):
    rows = max(len(v) for v in columns.values())
    data = [tuple(float(v[i]) if i < len(v) else None for v in columns.values())
            for i in range(rows)]
    df = spark.createDataFrame(data, ", ".join(f"{c} double" for c in columns))
    return long_values(df, {c: F.col(c) for c in columns})


def test_psi_by_hand(spark):
    """0..99 against half 10s and half 90s on quartile bins. Spark's percentile_approx gives the
    smallest value whose share at or below reaches p: edges 24, 49, 74, so the reference shares
    are 24, 25, 25, 26 in 100 and tonight's 50, 0, 0, 50 (0 floored at 1e-4)."""
    got = compare(_long(spark, {"x": np.arange(100.0)}),
                  _long(spark, {"x": np.array([10.0] * 50 + [90.0] * 50)}),
                  DriftConfig(bins=4))
    e, a = np.array([.24, .25, .25, .26]), np.array([.5, 1e-4, 1e-4, .5])
    assert got[0]["psi"] == pytest.approx(float(np.sum((a - e) * np.log(a / e))), abs=1e-6)
    same = compare(_long(spark, {"x": np.arange(100.0)}), _long(spark, {"x": np.arange(100.0)}),
                   DriftConfig(bins=4))
    assert same[0]["psi"] == 0.0 and same[0]["ks_statistic"] == 0.0 and not same[0]["drifted"]


def test_ks_matches_scipy_and_planted_shifts_are_found(spark):
    rng = np.random.default_rng(3)
    reference = {
        "shifted": rng.normal(0, 1, 3000),
        "same": rng.normal(5, 2, 3000),
        "ties": rng.integers(0, 6, 3000).astype(float),  # heavy ties: KS on distinct values
        "constant": np.zeros(3000),
    }
    tonight = {
        "shifted": rng.normal(0.5, 1, 2000),
        "same": rng.normal(5, 2, 2000),
        "ties": rng.integers(0, 6, 2000).astype(float),
        "constant": np.r_[np.zeros(1500), np.ones(500)],  # a quarter is new
    }
    with_nulls = {**tonight, "same": np.r_[tonight["same"], [np.nan] * 50]}  # left out, not 0
    got = {r["column"]: r for r in compare(_long(spark, reference), _long(spark, with_nulls),
                                           DriftConfig())}
    assert set(got) == set(reference)
    for column in reference:
        peer = ks_2samp(reference[column], tonight[column], method="asymp")
        assert got[column]["ks_statistic"] == pytest.approx(peer.statistic, abs=1e-6), column
        assert got[column]["ks_p_value"] == pytest.approx(peer.pvalue, rel=1e-6, abs=1e-12), column
        assert (got[column]["reference_rows"], got[column]["rows"]) == (3000, 2000)
    # planted: a half-sd shift and a new value in a quarter of the rows; nothing else
    assert {c for c, r in got.items() if r["drifted"]} == {"shifted", "constant"}
    assert got["shifted"]["psi"] > 0.2 > got["same"]["psi"]
    # one value before, two after: the constant column's bins are "0" and "anything else"
    e, a = np.array([1.0, 1e-4]), np.array([0.75, 0.25])
    assert got["constant"]["psi"] == pytest.approx(float(np.sum((a - e) * np.log(a / e))),
                                                   abs=1e-6)


def _night(spark, lake, date: str, shift: float, customer_training: str | None, seed: int):
    """features/customer_values for `date` (two features, the second shifted by `shift` sd) and
    the manifest record the drift stage reads: the model's training."""
    rng = np.random.default_rng(seed)
    rows = [(f"C{i:04d}", float(rng.normal()), float(rng.normal(shift))) for i in range(800)]
    lake.publish(spark.createDataFrame(rows, "customer_id string, recency double, spend double"),
                 "features/customer_values", f"run_date={date}")
    if customer_training:
        with StageRun(lake, date, "train_autoencoder_customers", log=lambda _: None) as run:
            run.metrics["registry"] = {"training": customer_training}


def test_drift_stage_over_three_nights(spark, make_config):
    config = make_config()
    lake = Lake(spark, config.lake.root)
    _night(spark, lake, "2026-11-20", 0.0, "full", seed=1)
    first = run_drift(spark, config, "2026-11-20")  # nothing earlier: an empty table, said so
    assert first["columns_checked"] == 0 and first["note"]
    assert lake.read("mining/drift", "run_date=2026-11-20").count() == 0

    _night(spark, lake, "2026-11-21", 0.0, "warm_start", seed=2)
    _night(spark, lake, "2026-11-22", 1.0, None, seed=3)
    got = run_drift(spark, config, "2026-11-22")
    table = {r["column"]: r.asDict() for r in lake.read("mining/drift", "run_date=2026-11-22")
             .collect()}
    # the reference is the last full training (11-20), not the warm start of 11-21
    assert {r["reference_date"] for r in table.values()} == {"2026-11-20"}
    assert set(table) == {"recency", "spend"}
    assert table["spend"]["drifted"] and not table["recency"]["drifted"]
    assert got["drifted"] == ["features/customer_values:spend"]
    assert got["full_retrain"] == {"train_autoencoder_customers": "drift in spend"}
    stage = lake.read_manifest("2026-11-22")["stages"]["drift"]
    assert stage["status"] == "ok" and "spend" in stage["warnings"][0]
