"""Churn and spend: per customer, the probability of no purchase in (D, D + horizon] and the
expected net spend in that window -> `mining/churn/run_date=D`.

Only history up to the end of the run date D is ever read. Examples come from cutoffs T whose
labels are known by D: features as of T (`customer_features`), labels from (T, T + horizon]
(`labels`), for T = D - horizon and `churn.training_cutoffs - 1` earlier ones, stacked. A seeded
hash holds `churn.validation_share` of the customers out of training; the candidates and the
baselines are compared on those customers at the latest cutoff, D - horizon, the situation the
model is used in (the most recent behaviour, customers it has not seen). The models so validated
are the ones published: they score the customers with features as of D (no refit, so the metrics
describe exactly the published model). Validating instead on a later
cutoff than the training ones fails when behaviour is not stationary: customers who stop at a time
the earlier cutoffs cannot see teach the model the opposite of what holds at D (on the generated
data such a model lost to recency alone, AUC 0.80 against 0.94).

Models are Spark ML pipelines: VectorAssembler -> StandardScaler -> an optional selection step
(`UnivariateFeatureSelector` or `PCA`, `churn.selector`) -> a classifier (logistic regression,
random forest, gradient-boosted trees, and the mean of the chosen classifiers' probabilities) for
churn and a regressor (linear, random forest) for spend.
Baselines on the same split: recency alone as the churn score, the last horizon's spend as the
spend prediction. A model that does not beat its baseline leaves the stage `degraded`.
"""
from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline
from pyspark.ml.classification import (GBTClassifier, LogisticRegression,
                                       RandomForestClassifier)
from pyspark.ml.feature import PCA, StandardScaler, UnivariateFeatureSelector, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.regression import LinearRegression, RandomForestRegressor
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from sklearn.metrics import average_precision_score, roc_auc_score

from deepmine.core.config import ChurnConfig, Config, ConfigError
from deepmine.core.lake import Lake, StageRun
from deepmine.core.metrics import roc_points
from deepmine.mining.rfm import end_of_day, rfm_scores, rfm_values

FEATURES = (
    "recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "tenure_days",
    "gap_mean_days", "gap_sd_days", "days_over_usual_gap", "invoices_30d", "invoices_90d",
    "spend_30d", "spend_90d", "frequency_trend", "spend_trend", "return_share",
    "lines_per_invoice", "spend_per_invoice", "log_frequency", "log_monetary",
    "spend_last_horizon", "log_recency", "log_tenure", "log_days_over_usual_gap",
)
CLASSIFIERS = ("logistic", "random_forest", "gbt")
ENSEMBLE = "mean_of_classifiers"  # the candidate that averages every classifier's probability
REGRESSORS = ("linear", "random_forest")


class HistoryTooShort(ValueError):
    """The history up to D cannot teach churn (too short, or one outcome only)."""


def check_config(cfg: ChurnConfig) -> None:
    if cfg.horizon_days < 1:
        raise ConfigError(f"config key 'churn.horizon_days': expected >= 1, found {cfg.horizon_days}")
    for name, chosen, allowed in (("classifiers", cfg.classifiers, CLASSIFIERS),
                                  ("regressors", cfg.regressors, REGRESSORS)):
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise ConfigError(f"config key 'churn.{name}': expected a non-empty list from "
                              f"{list(allowed)}, found {chosen}")
    if cfg.switch_margin < 0:
        raise ConfigError(f"config key 'churn.switch_margin': expected >= 0, found "
                          f"{cfg.switch_margin}")
    if not 0.0 < cfg.validation_share < 1.0:
        raise ConfigError(f"config key 'churn.validation_share': expected a share between 0 and 1, "
                          f"found {cfg.validation_share}")
    if cfg.parallelism < 0:
        raise ConfigError(f"config key 'churn.parallelism': expected >= 0 (0 = Spark's default "
                          f"parallelism), found {cfg.parallelism}")
    if cfg.training_cutoffs < 1:
        raise ConfigError(f"config key 'churn.training_cutoffs': expected >= 1, "
                          f"found {cfg.training_cutoffs}")
    if cfg.selector not in ("none", "univariate", "pca"):
        raise ConfigError(f"config key 'churn.selector': expected none, univariate or pca, "
                          f"found {cfg.selector!r}")


def _day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def cutoffs(run_date: str, cfg: ChurnConfig) -> list[str]:
    """The cutoffs whose labels are known by D, latest first: D - horizon, then each
    `cutoff_step_days` (0 = one horizon) earlier, `training_cutoffs` in all."""
    t0 = _day(run_date) - dt.timedelta(days=cfg.horizon_days)
    step = dt.timedelta(days=cfg.cutoff_step_days or cfg.horizon_days)
    return [(t0 - i * step).isoformat() for i in range(cfg.training_cutoffs)]


def _amount() -> Column:
    return F.col("quantity") * F.col("unit_price")


def customer_features(lines: DataFrame, cutoff: str, horizon_days: int) -> DataFrame:
    """Clean transaction lines -> one row per customer who bought before the end of `cutoff`:
    customer_id and every column of FEATURES (as of the cutoff; nothing later is read).
    `spend_last_horizon` (net spend in the horizon before the cutoff) is the spend baseline."""
    history = lines.where(F.col("invoice_ts") < F.lit(end_of_day(cutoff)))
    day = F.lit(cutoff).cast("date")
    scored = rfm_scores(rfm_values(history, cutoff, "net"))
    purchase = ~F.col("is_return")
    age = F.datediff(day, F.to_date("invoice_ts"))
    invoices = (history.where(purchase).groupBy("customer_id", "invoice_id")
                .agg(F.to_date(F.min("invoice_ts")).alias("invoice_day"),
                     F.count("*").alias("lines"), F.sum(_amount()).alias("spend")))
    gaps = (invoices.select("customer_id", "invoice_day").distinct()
            .withColumn("gap", F.datediff(
                "invoice_day", F.lag("invoice_day").over(
                    Window.partitionBy("customer_id").orderBy("invoice_day"))))
            .groupBy("customer_id")
            .agg(F.avg("gap").alias("gap_mean_days"), F.stddev_samp("gap").alias("gap_sd_days"),
                 F.datediff(day, F.min("invoice_day")).alias("tenure_days")))
    baskets = invoices.groupBy("customer_id").agg(
        F.avg("lines").alias("lines_per_invoice"), F.avg("spend").alias("spend_per_invoice"))
    windows = history.groupBy("customer_id").agg(
        F.count_distinct(F.when(purchase & (age < 30), F.col("invoice_id"))).alias("invoices_30d"),
        F.count_distinct(F.when(purchase & (age < 90), F.col("invoice_id"))).alias("invoices_90d"),
        F.count_distinct(F.when(purchase & (age >= 90) & (age < 180), F.col("invoice_id")))
        .alias("_invoices_90_180d"),
        F.sum(F.when(age < 30, _amount())).alias("spend_30d"),
        F.sum(F.when(age < 90, _amount())).alias("spend_90d"),
        F.sum(F.when((age >= 90) & (age < 180), _amount())).alias("_spend_90_180d"),
        F.sum(F.when(age < horizon_days, _amount())).alias("spend_last_horizon"),
        F.avg(F.col("is_return").cast("double")).alias("return_share"))
    out = (scored.join(gaps, "customer_id", "left").join(baskets, "customer_id", "left")
           .join(windows, "customer_id", "left"))
    return out.select(
        "customer_id",
        *[F.coalesce(F.col(c).cast("double"), F.lit(0.0)).alias(c) for c in (
            "recency_days", "frequency", "monetary", "r_score", "f_score", "m_score",
            "tenure_days", "invoices_30d", "invoices_90d", "spend_30d", "spend_90d",
            "return_share", "lines_per_invoice", "spend_per_invoice", "spend_last_horizon")],
        # one purchase: no gap yet; the tenure stands in for it
        F.coalesce("gap_mean_days", "tenure_days").cast("double").alias("gap_mean_days"),
        F.coalesce("gap_sd_days", F.lit(0.0)).cast("double").alias("gap_sd_days"),
        (F.col("recency_days") / (F.coalesce("gap_mean_days", "tenure_days") + 1.0))
        .alias("days_over_usual_gap"),
        (F.col("invoices_90d") - F.coalesce("_invoices_90_180d", F.lit(0))).cast("double")
        .alias("frequency_trend"),
        (F.coalesce("spend_90d", F.lit(0.0)) - F.coalesce("_spend_90_180d", F.lit(0.0)))
        .cast("double").alias("spend_trend"),
        F.log1p(F.col("frequency").cast("double")).alias("log_frequency"),
        F.log1p(F.greatest(F.coalesce(F.col("monetary"), F.lit(0.0)), F.lit(0.0)))
        .alias("log_monetary"),
        # the odds of churn grow with the log of the time away more than with the time itself
        F.log1p(F.col("recency_days").cast("double")).alias("log_recency"),
        F.log1p(F.coalesce(F.col("tenure_days"), F.lit(0)).cast("double")).alias("log_tenure"),
        F.log1p(F.col("recency_days") / (F.coalesce("gap_mean_days", "tenure_days") + 1.0))
        .alias("log_days_over_usual_gap"))


def labels(lines: DataFrame, cutoff: str, horizon_days: int) -> DataFrame:
    """customer_id, churned (1.0 when no purchase in (cutoff, cutoff + horizon]) and
    future_spend (net spend in that window) for customers with any line in it."""
    start = end_of_day(cutoff)
    end = start + dt.timedelta(days=horizon_days)
    window = lines.where((F.col("invoice_ts") >= F.lit(start)) & (F.col("invoice_ts") < F.lit(end)))
    return window.groupBy("customer_id").agg(
        F.max((~F.col("is_return")).cast("int")).alias("_bought"),
        F.sum(_amount()).alias("future_spend"))


def examples(lines: DataFrame, cutoff: str, horizon_days: int) -> DataFrame:
    """Features as of `cutoff` joined with the labels of the horizon after it."""
    future = labels(lines, cutoff, horizon_days)
    return (customer_features(lines, cutoff, horizon_days).join(future, "customer_id", "left")
            .select("*", (1.0 - F.coalesce(F.col("_bought"), F.lit(0)).cast("double"))
                    .alias("churned"),
                    F.coalesce("future_spend", F.lit(0.0)).alias("spend_label"))
            .drop("_bought", "future_spend")
            .withColumn("cutoff", F.lit(cutoff)))


def _pipeline(cfg: ChurnConfig, estimator, label: str, kind: str) -> Pipeline:
    stages = [VectorAssembler(inputCols=list(FEATURES), outputCol="_raw"),
              StandardScaler(inputCol="_raw", outputCol="_scaled", withMean=True, withStd=True)]
    features = "_scaled"
    if cfg.selector == "univariate":
        stages.append(UnivariateFeatureSelector(
            featuresCol="_scaled", outputCol="_selected", labelCol=label,
            selectionMode="numTopFeatures")
            .setFeatureType("continuous")
            .setLabelType("categorical" if kind == "classifier" else "continuous")
            .setSelectionThreshold(min(cfg.top_features, len(FEATURES))))
        features = "_selected"
    elif cfg.selector == "pca":
        stages.append(PCA(k=min(cfg.pca_components, len(FEATURES)), inputCol="_scaled",
                          outputCol="_selected"))
        features = "_selected"
    stages.append(estimator.setFeaturesCol(features).setLabelCol(label))
    return Pipeline(stages=stages)


def _classifier(name: str, seed: int):
    if name == "logistic":
        return LogisticRegression(maxIter=100, regParam=0.01, elasticNetParam=0.0)
    if name == "random_forest":
        return RandomForestClassifier(numTrees=30, maxDepth=6, seed=seed)
    return GBTClassifier(maxIter=20, maxDepth=4, stepSize=0.2, seed=seed)


def _regressor(name: str, seed: int):
    if name == "linear":
        return LinearRegression(maxIter=100, regParam=0.01)
    return RandomForestRegressor(numTrees=30, maxDepth=6, seed=seed)


def _scores(model, frame: DataFrame, columns: list[str]) -> pd.DataFrame:
    """The model's churn probability (or prediction) beside `columns`, on the driver: validation
    rows are one per held-out customer, small enough to score with numpy in one Spark job."""
    out = model.transform(frame)
    if "probability" in out.columns:
        out = out.withColumn("_score", vector_to_array(F.col("probability"))[1])
    else:
        out = out.withColumn("_score", F.col("prediction"))
    return out.select("_score", *columns).toPandas()


def ranking_metrics(score: np.ndarray, churned: np.ndarray) -> dict[str, float]:
    """AUC, PR AUC (average precision) and lift in the top 10% of `score` (churners' share among
    the rows at or above the 90th percentile over their share overall)."""
    top = score >= np.quantile(score, 0.9)
    lift = churned[top].mean() / churned.mean()
    return {"auc": round(float(roc_auc_score(churned, score)), 4),
            "pr_auc": round(float(average_precision_score(churned, score)), 4),
            "lift_at_10pct": round(float(lift), 3)}


def lift_chart(score: np.ndarray, churned: np.ndarray, bins: int = 10) -> list:
    """Churners' share per decile of `score` (1 = highest scores) over the overall share."""
    order = np.argsort(-score, kind="stable")
    decile = np.empty(len(score), dtype=int)
    decile[order] = np.arange(len(score)) * bins // len(score) + 1
    overall = churned.mean()
    return [{"decile": d, "lift": round(float(churned[decile == d].mean() / overall), 3)}
            for d in range(1, bins + 1) if (decile == d).any()]


def _rmse(predicted, actual) -> float:
    return round(float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(actual)) ** 2))), 4)


def run_churn(spark: SparkSession, config: Config, run_date: str) -> dict:
    """Train on earlier cutoffs, validate on D - horizon, score as of D; publish mining/churn."""
    cfg = config.churn
    check_config(cfg)
    lake = Lake(spark, config.lake.root)
    partition = f"run_date={run_date}"
    with StageRun(lake, run_date, "churn") as run:
        lines = (lake.read_history("clean/transactions", run_date)
                 .where(F.col("invoice_ts") < F.lit(end_of_day(run_date)))
                 .where(F.col("unit_price").isNotNull())
                 .select("customer_id", "invoice_id", "quantity", "unit_price", "invoice_ts",
                         "is_return").persist())
        try:
            result = _fit_and_score(lines, run_date, cfg, run, incumbent_model(lake, run_date))
            rows = lake.publish(result.pop("scores"), "mining/churn", partition)
        except HistoryTooShort as short:
            # nothing to learn from: say so and publish nothing (not a failure of the night)
            run.degrade(str(short))
            run.counts.update(customers_scored=0)
            return {**run.counts, **run.metrics}
        finally:
            lines.unpersist()
        run.counts.update(customers_scored=rows, **result.pop("counts"))
        run.metrics.update(result)
        run.outputs["churn"] = lake.partition_url("mining/churn", partition)
    return {**run.counts, **run.metrics}


ROWS_PER_PARTITION = 200_000


def _compact(frame: DataFrame) -> DataFrame:
    """`frame` persisted in one partition per ROWS_PER_PARTITION rows (at most as many as before):
    an iterative fit runs one Spark job per iteration, and on a few thousand customers spread
    over the shuffle's partitions the tasks' fixed cost is most of it (a logistic regression on
    1,500 examples: 13 s in 8 partitions, 2.7 s in one)."""
    frame = frame.persist()
    rows = frame.count()
    wanted = max(1, -(-rows // ROWS_PER_PARTITION))
    if wanted >= frame.rdd.getNumPartitions():
        return frame
    compact = frame.coalesce(wanted).persist()
    compact.count()
    frame.unpersist()
    return compact


def fit_candidates(train: DataFrame, valid: DataFrame, cfg: ChurnConfig
                   ) -> tuple[dict, dict, dict[str, pd.DataFrame]]:
    """Every candidate pipeline fitted on `train` and scored on `valid`: (classifiers by name,
    regressors by name, validation scores by name, "spend:<name>" for a regressor).

    The fits run `churn.parallelism` at a time from threads of this driver, as Spark ML's
    CrossValidator runs its folds (`parallelism`): each candidate is a chain of small Spark jobs
    (an iteration or a tree level each) on a compacted table, and one job at a time leaves cores
    idle. Every fit is seeded and reads the same persisted partitions, so the models do not
    depend on the order the threads run in."""
    jobs = ([(name, _pipeline(cfg, _classifier(name, cfg.seed), "churned", "classifier"),
              ["customer_id"]) for name in cfg.classifiers]
            + [(f"spend:{name}", _pipeline(cfg, _regressor(name, cfg.seed), "spend_label",
                                          "regressor"), ["spend_label"])
               for name in cfg.regressors])

    def fit(job):
        _, pipeline, columns = job
        model = pipeline.fit(train)
        return model, _scores(model, valid, columns)

    workers = cfg.parallelism or train.sparkSession.sparkContext.defaultParallelism
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        done = dict(zip([name for name, _, _ in jobs], pool.map(fit, jobs)))
    models = {name: model for name, (model, _) in done.items()}
    return ({n: models[n] for n in cfg.classifiers},
            {n: models[f"spend:{n}"] for n in cfg.regressors},
            {name: scores for name, (_, scores) in done.items()})


def choose_model(auc: dict[str, float], order: list[str], incumbent: dict | None,
                 margin: float) -> tuple[str, dict]:
    """The churn model to publish and why: the candidate with the highest validation AUC (ties:
    the earlier in `order`), unless `incumbent` ({"model", "run_date"}: what the last earlier
    run published) is among the candidates and within `margin` of it."""
    best = max(auc, key=lambda n: (round(auc[n], 6), -order.index(n)))
    if not incumbent or incumbent.get("model") not in auc:
        return best, {"incumbent": incumbent, "reason": "highest validation AUC"
                      + ("" if not incumbent else f" (the {incumbent['run_date']} model "
                         f"{incumbent.get('model')} is not a candidate)")}
    kept = incumbent["model"]
    gain = auc[best] - auc[kept]
    if best == kept or gain <= margin:
        return kept, {"incumbent": incumbent, "reason": (
            "highest validation AUC, as on " + incumbent["run_date"] if best == kept else
            f"kept from {incumbent['run_date']}: {best} is higher by {gain:.4f}, not more "
            f"than churn.switch_margin {margin}")}
    return best, {"incumbent": incumbent,
                  "reason": f"higher than {kept} (the {incumbent['run_date']} model) by "
                            f"{gain:.4f}, more than churn.switch_margin {margin}"}


def incumbent_model(lake: Lake, run_date: str) -> dict | None:
    """The churn model of the last run before `run_date` whose churn stage published one."""
    for earlier in reversed(lake.run_dates(before=run_date)):
        record = lake.read_manifest(earlier)["stages"].get("churn", {})
        model = record.get("metrics", {}).get("model")
        if record.get("status") in ("ok", "degraded") and model:
            return {"model": model, "run_date": earlier}
    return None


def _fit_and_score(lines: DataFrame, run_date: str, cfg: ChurnConfig, run: StageRun,
                   incumbent: dict | None = None) -> dict:
    first_day = lines.agg(F.min("invoice_ts")).first()[0]
    usable = [t for t in cutoffs(run_date, cfg)
              if first_day is not None and _day(t) > first_day.date()]
    t0 = cutoffs(run_date, cfg)[0]
    if t0 not in usable:
        raise HistoryTooShort(f"churn needs history before {t0} (D - churn.horizon_days, "
                         f"{cfg.horizon_days}); the clean transactions start {first_day}")
    data = None
    for cutoff in usable:
        part = examples(lines, cutoff, cfg.horizon_days)
        data = part if data is None else data.unionByName(part)
    held_out = (F.abs(F.xxhash64("customer_id", F.lit(cfg.seed))) % 10_000
                < int(round(cfg.validation_share * 10_000)))
    data = _compact(data.withColumn("_held_out", held_out))
    current = customer_features(lines, run_date, cfg.horizon_days).persist()
    try:
        train = data.where(~F.col("_held_out"))
        valid = data.where(F.col("_held_out") & (F.col("cutoff") == t0))
        truth = valid.select("customer_id", "churned", "recency_days", "spend_last_horizon",
                             "spend_label").toPandas()
        counts = {"training_examples": train.count(), "validation_examples": len(truth),
                  "training_cutoffs": usable, "validation_cutoff": t0}
        churned = truth["churned"].to_numpy()
        if len(truth) < 2 or churned.min() == churned.max():
            raise HistoryTooShort(f"the held-out customers at the cutoff {t0} have only one outcome "
                             f"({len(truth)} customers); churn cannot be learned from this history")
        # candidates compared on the held-out customers at the latest cutoff, beside the baselines
        fitted, spend_fitted, validated = fit_candidates(train, valid, cfg)
        churn_auc, spend_rmse = {}, {}
        scored = truth[["customer_id", "churned"]]
        for name in cfg.classifiers:
            got = validated[name].rename(columns={"_score": name})
            scored = scored.merge(got, on="customer_id")
        if len(cfg.classifiers) > 1:  # the mean of their probabilities, a candidate too
            scored[ENSEMBLE] = scored[list(cfg.classifiers)].mean(axis=1)
        for name in scored.columns.drop(["customer_id", "churned"]):
            churn_auc[name] = roc_auc_score(scored["churned"], scored[name])
        for name in cfg.regressors:
            spend = validated[f"spend:{name}"]
            spend_rmse[name] = _rmse(spend["_score"], spend["spend_label"])
        best, choice = choose_model(churn_auc, [*cfg.classifiers, ENSEMBLE], incumbent,
                                    cfg.switch_margin)
        best_spend = min(spend_rmse, key=lambda n: (spend_rmse[n], cfg.regressors.index(n)))
        score = scored[best].to_numpy()
        label = scored["churned"].to_numpy()
        recency = truth["recency_days"].to_numpy()
        metrics: dict[str, Any] = ranking_metrics(score, label)
        baseline = ranking_metrics(recency, churned)
        metrics.update(
            model=best, model_choice=choice, spend_model=best_spend,
            candidates_auc={k: round(float(v), 4) for k, v in churn_auc.items()},
            candidates_spend_rmse=spend_rmse,
            baseline_auc=baseline["auc"], baseline_pr_auc=baseline["pr_auc"],
            baseline_lift_at_10pct=baseline["lift_at_10pct"],
            spend_rmse=spend_rmse[best_spend],
            baseline_spend_rmse=_rmse(truth["spend_last_horizon"], truth["spend_label"]),
            validation_churn_rate=round(float(churned.mean()), 4),
            roc=roc_points(score, label), baseline_roc=roc_points(recency, churned),
            lift_chart=lift_chart(score, label),
            **selection_summary(fitted[cfg.classifiers[0] if best == ENSEMBLE else best], cfg))
        if metrics["auc"] <= metrics["baseline_auc"]:
            run.degrade(f"churn model {best} AUC {metrics['auc']} does not beat recency alone "
                        f"({metrics['baseline_auc']}) on the held-out customers at {t0}")
        if metrics["spend_rmse"] >= metrics["baseline_spend_rmse"]:
            run.degrade(f"spend model {best_spend} RMSE {metrics['spend_rmse']} does not beat the "
                        f"last horizon's spend ({metrics['baseline_spend_rmse']}) on the held-out "
                        f"customers at {t0}")
        # the models validated are the models published: they score the customers as of D
        members = list(cfg.classifiers) if best == ENSEMBLE else [best]
        probability = vector_to_array(F.col("probability"))[1]
        scored_now = current
        for i, name in enumerate(members):
            scored_now = fitted[name].transform(scored_now).select(
                *scored_now.columns, probability.alias(f"_p{i}"))
        scored_now = spend_fitted[best_spend].transform(scored_now.select(
            *current.columns,
            (sum(F.col(f"_p{i}") for i in range(len(members))) / len(members))
            .alias("churn_probability")))
        low, high = cfg.risk_bands
        scores = scored_now.select(
            "customer_id", F.col("churn_probability").cast("double"),
            F.when(F.col("churn_probability") >= high, "high")
            .when(F.col("churn_probability") >= low, "medium").otherwise("low").alias("risk_band"),
            F.col("prediction").cast("double").alias("expected_spend"))
        return {"scores": scores, "counts": counts, **metrics}
    finally:
        for df in (data, current):
            df.unpersist()


def selection_summary(model, cfg: ChurnConfig) -> dict:
    """The features the selection step kept, or the variance its components explain."""
    if cfg.selector == "univariate":
        kept = model.stages[2].selectedFeatures
        return {"features_kept": [FEATURES[i] for i in kept]}
    if cfg.selector == "pca":
        return {"features_kept": list(FEATURES),
                "pca_variance_explained": round(float(sum(model.stages[2].explainedVariance)), 4)}
    return {"features_kept": list(FEATURES)}
