"""Drift: `mining/drift/run_date=D`, tonight's inputs and scores against the snapshot the model
was last fully trained on, per feature: population stability index and a two-sample
Kolmogorov-Smirnov test, computed in Spark.

What is watched (`WATCHED`): each entry is a lake table, its numeric columns (for the customer
features, every feature of `features/customer_values`: the values before scaling, since each
night's standardization would move the scaled vector by itself), and the stage whose model
learns from it. Its reference is that table's partition on the latest earlier night on
which that stage trained in full (status ok or degraded, not a warm start by its manifest
record's `metrics.registry.training`); where the stage never ran, the table's latest earlier
partition. A first night has no reference and publishes an empty table.

- PSI (Siddiqi 2006): bins at the reference's deciles (Spark's `percentile_approx`; equal edges
  merged), shares e (reference) and a (tonight) per bin floored at 1e-4, PSI = sum (a - e) ln(a/e).
  Under 0.1 stable, 0.1-0.25 some shift, over 0.25 a real one; `drift.psi_threshold` (0.2).
- KS: the exact two-sample statistic (the largest gap between the two empirical distribution
  functions, from per-value counts and running sums in Spark) and its asymptotic p-value
  (scipy's `kstwo`, as `scipy.stats.ks_2samp(method="asymp")`). With tens of thousands of rows a
  tiny shift is significant, so a column drifts by KS only when p < `drift.ks_alpha` and the
  statistic is at least `drift.ks_min_statistic`.

A column drifts when either test says so; the stage names the drifted columns in the manifest
and, per model stage, asks for a full retrain (`metrics.full_retrain`). Null and NaN values are
left out of both tests and counted (`rows` counts the values tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from scipy.stats import kstwo

from deepmine.core.config import Config, ConfigError, DriftConfig
from deepmine.core.lake import Lake, StageRun

FLOOR = 1e-4  # the share an empty bin counts as, so that the log stays finite


@dataclass(frozen=True)
class Watched:
    table: str
    columns: tuple[str, ...]  # numeric columns; empty = every column but customer_id
    model_stage: str  # the stage whose model learns from the table


WATCHED = (
    Watched("features/customer_values", (), "train_autoencoder_customers"),
    Watched("mining/rfm", ("recency_days", "frequency", "monetary"), "rfm"),
    Watched("mining/churn", ("churn_probability", "expected_spend"), "churn"),
)


def check_config(cfg: DriftConfig) -> None:
    if cfg.bins < 2:
        raise ConfigError(f"config key 'drift.bins': expected >= 2, found {cfg.bins}")
    if not 0 < cfg.ks_alpha < 1:
        raise ConfigError(f"config key 'drift.ks_alpha': expected in (0, 1), found {cfg.ks_alpha}")


# --------------------------------------------------------------------------- pure transforms

def long_values(df: DataFrame, columns: dict[str, Column]) -> DataFrame:
    """One row per (column, value) for the named numeric expressions; nulls and NaN left out."""
    cells = F.explode(F.array(*[F.struct(F.lit(name).alias("column"),
                                         expr.cast("double").alias("value"))
                                for name, expr in columns.items()]))
    return (df.select(cells.alias("_cell")).select("_cell.column", "_cell.value")
            .where(F.col("value").isNotNull() & ~F.isnan("value")))


def decile_edges(reference: DataFrame, bins: int, accuracy: int) -> dict[str, list[float]]:
    """Per column, the distinct inner edges of `bins` quantile bins of the reference values
    (the lowest and highest quantile included, as numpy's edges are, then the outer two dropped
    after merging equal ones)."""
    probabilities = [i / bins for i in range(bins + 1)]
    rows = (reference.groupBy("column")
            .agg(F.percentile_approx("value", probabilities, accuracy).alias("q")).collect())
    return {r["column"]: sorted(set(r["q"])) for r in rows}


def bin_counts(values: DataFrame, edges: dict[str, list[float]]) -> DataFrame:
    """(column, bin, n): a value's bin is the number of inner edges at or below it (numpy's
    searchsorted(inner, x, side="right")); a column with one distinct reference value has two
    bins, that value and anything else."""
    spark = values.sparkSession
    table = spark.createDataFrame([(c, [float(x) for x in e]) for c, e in edges.items()],
                                  "column string, edges array<double>")
    inner = F.slice("edges", 2, F.greatest(F.size("edges") - 2, F.lit(0)))
    bin_ = F.when(F.size("edges") < 2, (F.col("value") != F.col("edges")[0]).cast("int")) \
        .otherwise(F.size(F.filter(inner, lambda e: e <= F.col("value"))))
    return (values.join(F.broadcast(table), "column")
            .groupBy("column", bin_.alias("bin")).agg(F.count("*").alias("n")))


def psi(expected_counts: np.ndarray, actual_counts: np.ndarray) -> float:
    """PSI from the two samples' counts in the same bins."""
    e = np.asarray(expected_counts, float)
    a = np.asarray(actual_counts, float)
    e, a = np.maximum(e / e.sum(), FLOOR), np.maximum(a / a.sum(), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistics(reference: DataFrame, current: DataFrame) -> DataFrame:
    """(column, ks_statistic, reference_rows, rows): the exact two-sample KS statistic per
    column, from per-value counts of both samples and their running sums in value order."""
    both = (reference.select("column", "value", F.lit(1).alias("_ref"), F.lit(0).alias("_cur"))
            .unionByName(current.select("column", "value", F.lit(0).alias("_ref"),
                                        F.lit(1).alias("_cur")))
            .groupBy("column", "value").agg(F.sum("_ref").alias("r"), F.sum("_cur").alias("c")))
    totals = both.groupBy("column").agg(F.sum("r").alias("reference_rows"),
                                        F.sum("c").alias("rows"))
    upto = Window.partitionBy("column").orderBy("value") \
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    gaps = (both.join(totals, "column")
            .select("column", "reference_rows", "rows",
                    F.abs(F.sum("r").over(upto) / F.col("reference_rows")
                          - F.sum("c").over(upto) / F.col("rows")).alias("gap")))
    return gaps.groupBy("column", "reference_rows", "rows").agg(
        F.max("gap").alias("ks_statistic"))


def ks_p_value(statistic: float, n: int, m: int) -> float:
    """The asymptotic two-sided p-value of the two-sample statistic (scipy's ks_2samp 'asymp')."""
    if n == 0 or m == 0:
        return float("nan")
    effective = round(n * m / (n + m))
    return float(np.clip(kstwo.sf(statistic, effective), 0.0, 1.0))


def compare(reference: DataFrame, current: DataFrame, cfg: DriftConfig) -> list[dict[str, Any]]:
    """Per column present in both long frames: rows, reference_rows, psi, ks_statistic,
    ks_p_value and drifted (by `cfg`'s thresholds), sorted by column."""
    edges = decile_edges(reference, cfg.bins, cfg.quantile_accuracy)
    counts: dict[tuple[str, int], list[int]] = {}
    for side, frame in enumerate((reference, current)):
        for r in bin_counts(frame, edges).collect():
            counts.setdefault((r["column"], r["bin"]), [0, 0])[side] = r["n"]
    out = []
    for r in sorted(ks_statistics(reference, current).collect(), key=lambda r: r["column"]):
        if not r["reference_rows"] or not r["rows"]:
            continue
        pairs = np.array([v for (c, _), v in sorted(counts.items()) if c == r["column"]])
        value = psi(pairs[:, 0], pairs[:, 1])
        statistic = float(r["ks_statistic"])
        p = ks_p_value(statistic, r["reference_rows"], r["rows"])
        drifted = value > cfg.psi_threshold or (p < cfg.ks_alpha
                                                and statistic >= cfg.ks_min_statistic)
        out.append({"column": r["column"], "reference_rows": int(r["reference_rows"]),
                    "rows": int(r["rows"]), "psi": round(value, 6),
                    "ks_statistic": round(statistic, 6), "ks_p_value": p, "drifted": drifted})
    return out


# --------------------------------------------------------------------------- the stage

def feature_columns(lake: Lake, run_date: str, watched: Watched) -> dict[str, Column]:
    """The watched table's columns as named expressions: those named, or every column of that
    night's partition but customer_id."""
    if watched.columns:
        return {c: F.col(c) for c in watched.columns}
    names = lake.read(watched.table, f"run_date={run_date}").columns
    return {c: F.col(c) for c in names if c != "customer_id"}


def reference_date(lake: Lake, run_date: str, watched: Watched) -> str | None:
    """The latest earlier night whose `watched.model_stage` trained in full and which has the
    table's partition; failing that, the table's latest earlier partition; else None."""
    earlier = sorted((p.split("=", 1)[1] for p, done in lake.partitions(watched.table).items()
                      if done and p.startswith("run_date=") and p.split("=", 1)[1] < run_date),
                     reverse=True)
    for day in earlier:
        record = lake.read_manifest(day)["stages"].get(watched.model_stage)
        training = (record or {}).get("metrics", {}).get("registry", {}).get("training")
        if record and record.get("status") in ("ok", "degraded") and training != "warm_start":
            return day
    return earlier[0] if earlier else None


def run_drift(spark: SparkSession, config: Config, run_date: str) -> dict:
    cfg = config.drift
    check_config(cfg)
    lake = Lake(spark, config.lake.root)
    with StageRun(lake, run_date, "drift") as run:
        rows, drifted, retrain = [], [], {}
        for watched in WATCHED:
            partition = f"run_date={run_date}"
            reference_day = reference_date(lake, run_date, watched)
            if not lake.has_partition(watched.table, partition) or reference_day is None:
                continue
            now = feature_columns(lake, run_date, watched)
            before = feature_columns(lake, reference_day, watched)
            shared = {name: expr for name, expr in now.items() if name in before}
            if not shared:
                continue
            # each side is read by the quantiles, the bin counts and the KS pass: once from disk
            current = long_values(lake.read(watched.table, partition), shared).persist()
            reference = long_values(lake.read(watched.table, f"run_date={reference_day}"),
                                    {name: before[name] for name in shared}).persist()
            try:
                compared = compare(reference, current, cfg)
            finally:
                current.unpersist()
                reference.unpersist()
            for r in compared:
                rows.append({"table": watched.table, **r, "reference_date": reference_day,
                             "model_stage": watched.model_stage})
                if r["drifted"]:
                    drifted.append(f"{watched.table}:{r['column']}")
                    retrain.setdefault(watched.model_stage, []).append(r["column"])
        published = lake.publish(drift_frame(spark, rows), "mining/drift", f"run_date={run_date}")
        run.counts.update(columns_checked=published, columns_drifted=len(drifted))
        run.metrics.update(
            drifted=drifted,
            max_psi=max((r["psi"] for r in rows), default=None),
            references={r["table"]: r["reference_date"] for r in rows},
            # a drifted input asks its model for a full retrain instead of a warm start
            full_retrain={stage: f"drift in {', '.join(cols)}" for stage, cols in retrain.items()})
        if not rows:
            run.metrics["note"] = "no earlier snapshot to compare with"
        if drifted:
            run.warn(f"drift in {len(drifted)} column(s): {', '.join(drifted[:10])}"
                     + (" ..." if len(drifted) > 10 else ""))
        run.outputs["drift"] = lake.partition_url("mining/drift", f"run_date={run_date}")
    return {**run.counts, **run.metrics}


def drift_frame(spark: SparkSession, rows: list[dict[str, Any]]) -> DataFrame:
    from deepmine.core.schemas import MINING_DRIFT
    names = [f.name for f in MINING_DRIFT.fields]
    return spark.createDataFrame([tuple(r[n] for n in names) for r in rows], MINING_DRIFT)
