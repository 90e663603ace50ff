"""Churn and spend: no look-ahead, planted groups ranked, real CDNOW scored out of time."""
from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from scipy.stats import spearmanr

from conftest import sample_or_skip
from deepmine.mining.churn import cutoffs, customer_features, labels
from deepmine.core.config import ChurnConfig
from deepmine.data.generate import generate_transactions
from deepmine.data.ingest import run_ingest
from deepmine.core.lake import Lake
from deepmine.ops.report import ReportContext, section_churn

FAST = ["churn.classifiers=[logistic]", "churn.regressors=[linear]", "churn.selector=none"]


def test_cutoffs_never_look_past_the_run_date():
    """The latest cutoff is D - horizon: its labels end on D; the others step back from it."""
    got = cutoffs("2026-11-22", ChurnConfig(horizon_days=90, training_cutoffs=3,
                                            cutoff_step_days=30))
    assert got == ["2026-08-24", "2026-07-25", "2026-06-25"]
    assert cutoffs("2026-11-22", ChurnConfig(horizon_days=30, training_cutoffs=2)) == [
        "2026-10-23", "2026-09-23"]


def test_model_choice_keeps_the_incumbent_within_the_margin(spark, tmp_path):
    from deepmine.mining.churn import choose_model, incumbent_model
    order = ["logistic", "gbt", "mean_of_classifiers"]
    auc = {"logistic": 0.90, "gbt": 0.956, "mean_of_classifiers": 0.958}
    last = {"model": "gbt", "run_date": "2026-11-21"}
    # (incumbent, margin) -> the model published
    table = [(None, 0.005, "mean_of_classifiers"),                 # first night: the best
             (last, 0.005, "gbt"),                                 # 0.002 higher: kept
             (last, 0.001, "mean_of_classifiers"),                 # 0.002 > 0.001: switched
             (last, 0.0, "mean_of_classifiers"),                   # no margin: the best always
             ({"model": "logistic", "run_date": "2026-11-21"}, 0.005, "mean_of_classifiers"),
             ({"model": "random_forest", "run_date": "2026-11-21"}, 0.005,  # not a candidate
              "mean_of_classifiers")]
    assert [choose_model(auc, order, inc, m)[0] for inc, m, _ in table] == [t[2] for t in table]
    assert "kept from 2026-11-21" in choose_model(auc, order, last, 0.005)[1]["reason"]
    # ties go to the earlier candidate, as before
    assert choose_model({"logistic": 0.9, "gbt": 0.9}, order, None, 0.005)[0] == "logistic"

    lake = Lake(spark, str(tmp_path / "lake"))
    assert incumbent_model(lake, "2026-11-22") is None  # no runs at all
    lake.record_stage("2026-11-19", "churn", {"status": "ok", "metrics": {"model": "logistic"}})
    lake.record_stage("2026-11-20", "churn", {"status": "degraded", "metrics": {"model": "gbt"}})
    lake.record_stage("2026-11-21", "churn", {"status": "failed", "metrics": {}})
    lake.record_stage("2026-11-22", "churn", {"status": "ok", "metrics": {"model": "logistic"}})
    assert incumbent_model(lake, "2026-11-22") == {"model": "gbt", "run_date": "2026-11-20"}
    assert incumbent_model(lake, "2026-11-20") == {"model": "logistic", "run_date": "2026-11-19"}


def test_features_and_labels_by_hand(spark):
    """Three customers, hand-computed features as of a cutoff and labels of the horizon after."""
    rows = [  # invoice, customer, quantity, price, day, is_return
        ("A1", "a", 2, 5.0, "2026-01-01", False), ("A2", "a", 1, 10.0, "2026-01-21", False),
        ("A3", "a", -1, 10.0, "2026-01-25", True), ("A4", "a", 1, 4.0, "2026-02-10", False),
        ("B1", "b", 3, 1.0, "2026-01-30", False),
        ("C1", "c", 1, 7.0, "2026-02-05", False),  # after the cutoff only: not a customer yet
    ]
    lines = spark.createDataFrame(
        [(i, c, q, p, f"{d} 12:00:00", r) for i, c, q, p, d, r in rows],
        "invoice_id string, customer_id string, quantity long, unit_price double, "
        "invoice_ts string, is_return boolean").withColumn("invoice_ts", F.to_timestamp("invoice_ts"))
    got = {r.customer_id: r for r in customer_features(lines, "2026-01-31", 30).collect()}
    assert set(got) == {"a", "b"}
    a = got["a"]
    assert (a.recency_days, a.frequency, a.monetary, a.tenure_days) == (10, 2, 10.0, 30)
    assert (a.gap_mean_days, a.invoices_30d, a.spend_30d, a.return_share) == (20, 1, 0.0, 1 / 3)
    assert (a.spend_last_horizon, a.lines_per_invoice, a.spend_per_invoice) == (0.0, 1.0, 10.0)
    assert (got["b"].gap_mean_days, got["b"].spend_last_horizon) == (1, 3.0)  # one purchase: tenure
    future = {r.customer_id: (r._bought, r.future_spend) for r in labels(lines, "2026-01-31", 30)
              .collect()}
    assert future == {"a": (1, 4.0), "c": (1, 7.0)}


def _ingested(spark, config, path, date):
    run_ingest(spark, config, date, str(path))
    return Lake(spark, config.lake.root)


def test_later_transactions_change_nothing(spark, make_config, tmp_path):
    """The same history up to D, with and without the lines dated after D: identical scores and
    metrics (only the end of D is ever read). The candidates are fitted two at a time on the one
    and one at a time on the other: the models do not depend on the threads either."""
    generate_transactions(tmp_path / "gen", lines=4000, seed=5, dirty_rate=0.0)
    date = "2026-09-30"
    full = tmp_path / "gen" / "transactions.csv"
    cut = tmp_path / "cut.csv"
    with open(full, newline="") as src, open(cut, "w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst, lineterminator="\n")
        header = next(reader)
        writer.writerow(header)
        ts = header.index("invoice_ts")
        writer.writerows(r for r in reader if r[ts][:10] <= date)
    results = []
    for name, path, parallelism in (("full", full, 2), ("cut", cut, 1)):
        config = make_config(f"lake.root={tmp_path / name}", *FAST,
                             f"churn.parallelism={parallelism}")
        lake = _ingested(spark, config, path, date)
        from deepmine.mining.churn import run_churn
        counts = run_churn(spark, config, date)
        results.append((lake.read("mining/churn", f"run_date={date}"), counts))
    (full_scores, full_counts), (cut_scores, cut_counts) = results
    assertDataFrameEqual(full_scores, cut_scores, rtol=1e-6)
    for key in ("auc", "baseline_auc", "spend_rmse", "baseline_spend_rmse",
                "training_examples", "validation_examples", "customers_scored"):
        assert full_counts[key] == pytest.approx(cut_counts[key], rel=1e-6), key
    assert (full_counts["model"], full_counts["spend_model"]) == (cut_counts["model"],
                                                                  cut_counts["spend_model"])


def test_a_run_date_long_after_the_history_is_degraded_with_nothing_published(
        spark, make_config, tmp_path):
    """Every customer stopped long before D: one outcome only, nothing to learn; the stage says so
    (degraded, the reason) and publishes no table instead of a model of noise."""
    truth = generate_transactions(tmp_path / "gen", lines=1500, seed=3, dirty_rate=0.0)
    late = (dt.date.fromisoformat(truth["as_of"]) + dt.timedelta(days=400)).isoformat()
    config = make_config(*FAST)
    lake = _ingested(spark, config, tmp_path / "gen" / "transactions.csv", late)
    from deepmine.mining.churn import run_churn
    assert run_churn(spark, config, late)["customers_scored"] == 0
    record = lake.read_manifest(late)["stages"]["churn"]
    assert record["status"] == "degraded"
    assert "only one outcome" in " ".join(record["degraded_reasons"])
    assert not lake.has_partition("mining/churn", f"run_date={late}")


def test_planted_churn_hazards_ranked(spark, make_config, tmp_path):
    """Generated customers: the active groups go on buying after as_of at their planted rate, the
    others have stopped (customers_truth.csv), so the planted probability of no purchase in the
    horizon is exp(-rate * horizon), or 1. The model's probabilities rank customers as the planted
    ones do, the groups' means come in the planted order, and the expected spend is highest for
    the fastest buyers."""
    truth = generate_transactions(tmp_path / "gen", lines=8000, seed=9, dirty_rate=0.0)
    date = truth["as_of"]
    config = make_config("churn.classifiers=[logistic]", "churn.regressors=[random_forest]",
                         "churn.selector=univariate", "churn.top_features=6")
    lake = _ingested(spark, config, tmp_path / "gen" / "transactions.csv", date)
    from deepmine.mining.churn import run_churn
    counts = run_churn(spark, config, date)
    assert {"auc", "pr_auc", "lift_at_10pct", "baseline_auc", "spend_rmse",
            "baseline_spend_rmse", "model", "features_kept"} <= set(counts)
    # the selection step kept 6 features, the time since the last purchase among them
    assert len(counts["features_kept"]) == 6 and {"recency_days", "log_recency",
                                                  "days_over_usual_gap"} & set(counts["features_kept"])
    planted = pd.read_csv(tmp_path / "gen" / "customers_truth.csv", dtype={"customer_id": str})
    rate = planted["purchase_rate_per_day"]
    planted["planted"] = np.where(rate > 0, np.exp(-rate * config.churn.horizon_days), 1.0)
    got = lake.read("mining/churn", f"run_date={date}").toPandas().merge(planted, on="customer_id")
    assert len(got) == len(planted)
    rho = spearmanr(got["churn_probability"], got["planted"]).statistic
    assert rho >= 0.6, rho
    means = got.groupby("group")[["churn_probability", "planted", "expected_spend"]].mean()
    by_planted = means.sort_values("planted")
    distinct = by_planted["planted"].diff().fillna(1.0) > 0.05  # stopped groups tie at 1
    ordered = by_planted.loc[distinct, "churn_probability"]
    assert ordered.is_monotonic_increasing, means
    assert means.loc["champions", "expected_spend"] > means.loc["loyal", "expected_spend"] > max(
        means.loc["at_risk", "expected_spend"], means.loc["one_off", "expected_spend"]), means
    bands = set(got["risk_band"])
    assert bands <= {"low", "medium", "high"} and {"low", "high"} <= bands
    # the report's section: both ROC curves and the lift chart (one figure), the features kept,
    # and the customers per risk band as published
    title, body = section_churn(ReportContext(lake, config, date))
    assert title == "Churn risk and next-period spend" and body.count("<img") == 1
    assert ", ".join(counts["features_kept"]) in body
    for band, n in got["risk_band"].value_counts().items():
        assert f"<td>{band}</td>\n      <td>{n}</td>" in body, (band, n)


def test_cdnow_out_of_time_auc(spark, make_config, tmp_path):
    """Real CDNOW with D = 1998-03-31, horizon 90 days: scored against what customers really did
    from April to June 1998 (later lines are in the input; churn must not read them)."""
    info = sample_or_skip(tmp_path / "samples", "cdnow")
    config = make_config(path="conf/samples/cdnow.yaml")
    date = "1998-03-31"
    lake = _ingested(spark, config, info["path"], date)
    from deepmine.mining.churn import run_churn
    counts = run_churn(spark, config, date)
    tx = lake.read("clean/transactions", f"dt={date}")
    bought = (tx.where((F.col("invoice_ts") >= "1998-04-01") & (F.col("invoice_ts") < "1998-06-30")
                       & ~F.col("is_return")).select("customer_id").distinct()
              .withColumn("bought", F.lit(1.0)))
    scored = (lake.read("mining/churn", f"run_date={date}").join(bought, "customer_id", "left")
              .select("churn_probability", (1.0 - F.coalesce("bought", F.lit(0.0))).alias("churned")))
    auc = BinaryClassificationEvaluator(rawPredictionCol="churn_probability",
                                        labelCol="churned").evaluate(scored)
    print(f"CDNOW out of time: AUC {auc:.4f}; held out at {counts['validation_cutoff']}: "
          f"{counts['model']} {counts['auc']} vs recency {counts['baseline_auc']}, "
          f"candidates {counts['candidates_auc']}")
    assert auc >= 0.84, (auc, counts["auc"], counts["baseline_auc"])
    assert counts["auc"] > counts["baseline_auc"]
