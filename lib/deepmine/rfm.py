"""RFM: recency, frequency and monetary value per customer, quintile scores, named segments and
K-means clusters (`deepmine rfm` -> `mining/rfm/run_date=D`, `mining/rfm_segments/run_date=D`).

What the values mean, as of run date D (the whole clean history with dt <= D):

- Only lines with `invoice_ts` before the end of day D count (a line dated after D is in the
  future for this run; the manifest counts them as `lines_after_run_date`).
- A *purchase invoice* is an invoice with at least one non-return line (`is_return` false).
  `frequency` = the customer's distinct purchase invoices; `recency_days` = whole days from the
  date (UTC) of the customer's last purchase line to D. A return is not engagement: it moves
  neither recency nor frequency.
- `monetary` = net spend = sum of quantity * unit_price over the customer's lines, each line
  amount rounded to 4 decimals and summed exactly (decimal), so the value does not depend on the
  order Spark adds lines in. The returns policy (`rfm.returns`):
    net     a return line (negative quantity) subtracts its amount; monetary can be <= 0 when a
            customer returns what was bought before the history starts
    ignore  monetary counts purchase lines only
- A customer with a counted line that has no `unit_price` (a source without prices, such as the
  Instacart sample) gets `monetary` null: unknown, never understated. `m_score` is then null too,
  and K-means clusters on recency and frequency alone; the manifest says so
  (`metrics.monetary`, `metrics.cluster_features`).
- Customers whose history holds only returns have no purchase: they are not scored (counted as
  `customers_returns_only`).

Scores 1-5 are rank quintiles that never split a tie: a value's score is
`1 + floor(5 * b / n)`, `b` being the number of customers with a strictly worse value and `n` the
number of customers with a value (worse = larger recency, smaller frequency, smaller monetary).
When half the customers bought once, all of them get f_score 1 and the next value (2 invoices)
starts at score 3; some scores may then hold nobody, which is the honest outcome.

Named segments come from (r_score, f_score) through SEGMENT_GRID below, the one place where the
mapping lives. Clusters: Spark ML K-means on standardized log1p features, k chosen by silhouette
(squared Euclidean) over [rfm.k_min, rfm.k_max], each k the lowest-cost of rfm.n_init seeded runs;
cluster ids are renumbered by size, 0 the largest. When K-means leaves fewer than 2 non-empty
clusters for every k tried, every customer gets cluster 0 and the stage ends `degraded` with the
reason (published, but the clusters mean nothing).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from deepmine.config import Config, ConfigError, RfmConfig
from deepmine.lake import Lake, StageRun

RETURN_POLICIES = ("net", "ignore")

# Named segments by r_score (rows, 5 = bought most recently) and f_score (columns 1..5, 5 = most
# invoices). Read a row left to right: the more often a customer buys, the more loyal the name.
SEGMENT_GRID: dict[int, tuple[str, str, str, str, str]] = {
    #      f_score=1           2                      3                      4            5
    5: ("New customers", "Potential loyalists", "Potential loyalists", "Champions", "Champions"),
    4: ("Promising", "Potential loyalists", "Potential loyalists", "Loyal", "Champions"),
    3: ("About to sleep", "About to sleep", "Need attention", "Loyal", "Loyal"),
    2: ("Hibernating", "Hibernating", "At risk", "At risk", "Can't lose them"),
    1: ("Lost", "Hibernating", "At risk", "At risk", "Can't lose them"),
}
SEGMENTS = tuple(dict.fromkeys(name for row in SEGMENT_GRID.values() for name in row))

# Line amounts are rounded to this many decimals and summed as decimals (exact, order-free).
AMOUNT_SCALE = 4


def segment_name(r_score: int, f_score: int) -> str:
    """The named segment for one pair of scores (the same table the Spark column uses)."""
    return SEGMENT_GRID[r_score][f_score - 1]


# =============================================================== transform

def end_of_day(run_date: str) -> dt.datetime:
    """The first instant after run date D (UTC): lines at or after it are not counted."""
    return dt.datetime.combine(dt.date.fromisoformat(run_date) + dt.timedelta(days=1), dt.time())


def lines_as_of(transactions: DataFrame, run_date: str) -> DataFrame:
    """Transaction lines dated up to the end of the run date."""
    return transactions.where(F.col("invoice_ts") < F.lit(end_of_day(run_date)))


def rfm_values(transactions: DataFrame, run_date: str, returns: str = "net") -> DataFrame:
    """Clean transaction lines -> one row per purchasing customer:
    customer_id, recency_days (int), frequency (long), monetary (double, null if unknown)."""
    if returns not in RETURN_POLICIES:
        raise ConfigError(f"config key 'rfm.returns': expected one of {list(RETURN_POLICIES)}, "
                          f"found {returns!r}")
    lines = lines_as_of(transactions, run_date)
    purchase = ~F.col("is_return")
    counted = F.lit(True) if returns == "net" else purchase
    amount = F.round(F.col("quantity") * F.col("unit_price"), AMOUNT_SCALE) \
        .cast(f"decimal(38,{AMOUNT_SCALE})")
    per_customer = lines.groupBy("customer_id").agg(
        F.max(F.when(purchase, F.col("invoice_ts"))).alias("_last_purchase"),
        F.count_distinct(F.when(purchase, F.col("invoice_id"))).alias("frequency"),
        F.sum(F.when(counted, amount)).alias("_amount"),
        F.count(F.when(counted & F.col("unit_price").isNull(), 1)).alias("_unpriced"))
    return per_customer.where(F.col("frequency") > 0).select(
        "customer_id",
        F.datediff(F.lit(run_date).cast("date"), F.to_date("_last_purchase"))
        .cast("int").alias("recency_days"),
        F.col("frequency").cast("long").alias("frequency"),
        F.when(F.col("_unpriced") == 0, F.col("_amount").cast("double")).alias("monetary"))


def add_quintile_score(df: DataFrame, value: str, score: str, higher_is_better: bool) -> DataFrame:
    """Add `score` = 1 + floor(5 * b / n) (b customers strictly worse, n with a value); ties share
    a score, a null value gets a null score. The ranking runs over distinct values only."""
    counts = df.where(F.col(value).isNotNull()).groupBy(value).agg(F.count("*").alias("_n"))
    worse_first = F.col(value).asc() if higher_is_better else F.col(value).desc()
    worse = F.coalesce(F.sum("_n").over(Window.orderBy(worse_first).rowsBetween(
        Window.unboundedPreceding, -1)), F.lit(0))
    total = F.sum("_n").over(Window.partitionBy())
    score_of = (F.lit(1) + F.expr("(5 * _worse) div _total")).cast("int")
    scores = (counts.select(value, worse.alias("_worse"), total.alias("_total"))
              .select(value, score_of.alias(score)))
    return df.join(scores, value, "left")


def segment_column(r_score: Column, f_score: Column) -> Column:
    """The named segment for (r_score, f_score), from SEGMENT_GRID."""
    pairs = [x for r, row in SEGMENT_GRID.items() for f, name in enumerate(row, 1)
             for x in (F.lit(r * 10 + f), F.lit(name))]
    return F.element_at(F.create_map(*pairs), r_score * 10 + f_score)


def rfm_scores(values: DataFrame) -> DataFrame:
    """rfm_values -> the same rows plus r_score, f_score, m_score and segment."""
    scored = add_quintile_score(values, "recency_days", "r_score", higher_is_better=False)
    scored = add_quintile_score(scored, "frequency", "f_score", higher_is_better=True)
    scored = add_quintile_score(scored, "monetary", "m_score", higher_is_better=True)
    return scored.select("customer_id", "recency_days", "frequency", "monetary", "r_score",
                         "f_score", "m_score",
                         segment_column(F.col("r_score"), F.col("f_score")).alias("segment"))


def rfm_table(transactions: DataFrame, run_date: str, returns: str = "net") -> DataFrame:
    """Clean transactions -> customer_id, R/F/M values, scores and segment (no cluster yet)."""
    return rfm_scores(rfm_values(transactions, run_date, returns))


CLUSTER_FEATURES = ("recency_days", "frequency", "monetary")


def feature_vectors(rfm: DataFrame, columns: tuple[str, ...], partitions: int) -> DataFrame:
    """customer_id + `features`: log1p of each column, standardized (mean 0, sd 1).

    A negative net monetary (returns exceeding purchases) is taken as 0 before log1p. The rows are
    hash-partitioned and sorted by customer so that a seeded K-means sees the same input order on
    every run.
    """
    logged = rfm.select("customer_id", *[
        F.log1p(F.greatest(F.col(c).cast("double"), F.lit(0.0))).alias(f"_log_{c}")
        for c in columns])
    assembled = VectorAssembler(inputCols=[f"_log_{c}" for c in columns],
                                outputCol="_raw").transform(logged)
    scaler = StandardScaler(inputCol="_raw", outputCol="features", withMean=True, withStd=True)
    scaled = scaler.fit(assembled).transform(assembled).select("customer_id", "features")
    return scaled.repartition(partitions, "customer_id").sortWithinPartitions("customer_id")


def fit_kmeans(features: DataFrame, k: int, seed: int, max_iter: int = 50, n_init: int = 3):
    """The K-means model of lowest within-cluster cost over `n_init` runs seeded seed, seed+1, ...

    One run can stop in a poor local optimum (on generated data, 1 run in 4 merged two planted
    groups and split another); restarts are the usual remedy."""
    best = None
    for run in range(n_init):
        model = KMeans(k=k, seed=seed + run, maxIter=max_iter, featuresCol="features",
                       predictionCol="_label").fit(features)
        if best is None or model.summary.trainingCost < best.summary.trainingCost:
            best = model
    return best


CUSTOMERS_PER_PARTITION = 100_000


def feature_partitions(customers: int, max_partitions: int) -> int:
    """Partitions for K-means' input: about CUSTOMERS_PER_PARTITION customers each, at most
    `max_partitions`. Each K-means iteration is a Spark job, and on small inputs the tasks'
    overhead is most of its time (one partition fits 800 customers about twice as fast as four)."""
    return max(1, min(max_partitions, -(-customers // CUSTOMERS_PER_PARTITION)))


def collapsed(cluster_sizes) -> bool:
    """True when fewer than 2 clusters hold anyone: silhouette is then undefined. Equal sizes
    ([400, 400]) are two clusters, not a collapse."""
    return sum(1 for size in cluster_sizes if size > 0) < 2


def choose_clusters(features: DataFrame, k_min: int, k_max: int, seed: int,
                    max_iter: int = 50, n_init: int = 3) -> tuple[DataFrame | None, dict[str, Any]]:
    """Fit K-means for every k in [k_min, k_max] (fit_kmeans); keep the best silhouette (ties:
    smaller k).

    Returns (customer_id, cluster) with clusters renumbered by size (0 = largest; equal sizes by
    K-means' own label), and metrics. With fewer than 2 distinct points no clustering is possible:
    (None, metrics with k = 1). When K-means collapsed (collapsed()) for every k tried, the
    result is (None, metrics with k = 1 and `degraded_reason`): the caller must not pass one
    cluster off as a clustering.
    """
    distinct = features.select("features").distinct().limit(k_max + 1).count()
    metrics: dict[str, Any] = {"k_range": [k_min, k_max], "silhouette_by_k": {}}
    if distinct < 2:
        metrics.update(k=1, silhouette=None, note="fewer than 2 distinct customers: one cluster")
        return None, metrics
    evaluator = ClusteringEvaluator(featuresCol="features", predictionCol="_label",
                                    metricName="silhouette", distanceMeasure="squaredEuclidean")
    best = None
    for k in range(k_min, min(k_max, distinct) + 1):
        model = fit_kmeans(features, k, seed, max_iter, n_init)
        predicted = model.transform(features)
        if collapsed(model.summary.clusterSizes):
            metrics.setdefault("collapsed_k", []).append(k)
            continue
        score = float(evaluator.evaluate(predicted))
        metrics["silhouette_by_k"][str(k)] = round(score, 6)
        if best is None or score > best[0]:
            best = (score, k, model, predicted)
    if best is None:
        tried = metrics.get("collapsed_k", [])
        metrics.update(k=1, silhouette=None, degraded_reason=(
            f"K-means put every customer in one cluster for every k tried ({tried}) on "
            f"{distinct}+ distinct customers: cluster is 0 for all, not a clustering"))
        return None, metrics
    score, k, model, predicted = best
    sizes = model.summary.clusterSizes
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    relabel = F.create_map(*[x for new, old in enumerate(order) for x in (F.lit(old), F.lit(new))])
    metrics.update(k=k, silhouette=round(score, 6),
                   cluster_sizes=[int(sizes[old]) for old in order])
    clusters = predicted.select("customer_id",
                                F.element_at(relabel, F.col("_label")).cast("int").alias("cluster"))
    return clusters, metrics


def segment_summary(rfm: DataFrame) -> DataFrame:
    """One row per named segment and per cluster: size, share and mean R/F/M values."""
    total = F.sum("customers").over(Window.partitionBy("grouping"))

    def by(column: str) -> DataFrame:
        return (rfm.groupBy(F.col(column).cast("string").alias("name"))
                .agg(F.count("*").alias("customers"),
                     F.avg("recency_days").alias("mean_recency_days"),
                     F.avg("frequency").alias("mean_frequency"),
                     F.avg("monetary").alias("mean_monetary"))
                .withColumn("grouping", F.lit(column)))

    both = by("segment").unionByName(by("cluster"))
    return both.select("grouping", "name", F.col("customers").cast("long"),
                       (F.col("customers") / total).alias("share"),
                       "mean_recency_days", "mean_frequency", "mean_monetary")


# =============================================================== load

def check_config(cfg: RfmConfig) -> None:
    if cfg.k_min < 2 or cfg.k_max < cfg.k_min:
        raise ConfigError(f"config keys 'rfm.k_min'/'rfm.k_max': expected 2 <= k_min <= k_max, "
                          f"found k_min={cfg.k_min}, k_max={cfg.k_max}")
    if cfg.returns not in RETURN_POLICIES:
        raise ConfigError(f"config key 'rfm.returns': expected one of {list(RETURN_POLICIES)}, "
                          f"found {cfg.returns!r}")
    if cfg.max_iter < 1 or cfg.n_init < 1:
        raise ConfigError(f"config keys 'rfm.max_iter'/'rfm.n_init': expected >= 1, found "
                          f"max_iter={cfg.max_iter}, n_init={cfg.n_init}")


def run_rfm(spark: SparkSession, config: Config, run_date: str) -> dict:
    """Score, segment and cluster every customer as of `run_date`; publish `mining/rfm` and
    `mining/rfm_segments`; returns the stage's counts and metrics (also in the manifest)."""
    cfg = config.rfm
    check_config(cfg)
    lake = Lake(spark, config.lake.root)
    partition = f"run_date={run_date}"
    with StageRun(lake, run_date, "rfm") as run:
        transactions = lake.read_history("clean/transactions", run_date)
        after = F.col("invoice_ts") >= F.lit(end_of_day(run_date))
        line_counts = transactions.agg(
            F.count("*").alias("lines"),
            F.count(F.when(after, 1)).alias("lines_after_run_date"),
            F.count(F.when(~after & F.col("unit_price").isNull(), 1)).alias("lines_without_price"),
            F.count_distinct(F.when(~after, F.col("customer_id"))).alias("customers_with_lines"),
        ).first().asDict()

        rfm = rfm_table(transactions, run_date, cfg.returns).persist()
        try:
            stats = rfm.agg(F.count("*").alias("customers"),
                            F.count(F.when(F.col("monetary").isNull(), 1)).alias("unknown")
                            ).first()
            customers, unknown_monetary = int(stats["customers"]), int(stats["unknown"])
            columns = CLUSTER_FEATURES if unknown_monetary == 0 else CLUSTER_FEATURES[:2]
            if customers >= 2:
                features = feature_vectors(rfm, columns, feature_partitions(
                    customers, config.spark.shuffle_partitions)).persist()
                try:
                    clusters, cluster_metrics = choose_clusters(
                        features, cfg.k_min, cfg.k_max, cfg.seed, cfg.max_iter, cfg.n_init)
                    if "degraded_reason" in cluster_metrics:
                        run.degrade(cluster_metrics.pop("degraded_reason"))
                    out = (rfm.withColumn("cluster", F.lit(0)) if clusters is None
                           else rfm.join(clusters, "customer_id", "left"))
                    rows = lake.publish(out, "mining/rfm", partition)
                finally:
                    features.unpersist()
            else:
                cluster_metrics = {"k": customers, "silhouette": None,
                                   "note": f"{customers} customer(s): nothing to cluster"}
                rows = lake.publish(rfm.withColumn("cluster", F.lit(0)), "mining/rfm", partition)
        finally:
            rfm.unpersist()

        published = lake.read("mining/rfm", partition)
        summary_rows = lake.publish(segment_summary(published), "mining/rfm_segments", partition)
        by_segment = {r["segment"]: r["count"] for r in
                      published.groupBy("segment").count().collect()}

        run.counts.update(
            lines=line_counts["lines"], lines_after_run_date=line_counts["lines_after_run_date"],
            lines_without_price=line_counts["lines_without_price"], customers=rows,
            customers_returns_only=line_counts["customers_with_lines"] - customers,
            summary_rows=summary_rows,
            customers_by_segment=dict(sorted(by_segment.items())))
        if unknown_monetary == 0:
            monetary_note = f"net spend, returns policy {cfg.returns!r}"
        else:
            monetary_note = (f"null for {unknown_monetary} of {customers} customers: unit_price is "
                             f"missing on {line_counts['lines_without_price']} counted lines; "
                             "m_score null for them and clusters use recency and frequency only")
            run.log(f"[rfm] warning: monetary {monetary_note}")
        run.metrics.update(cluster_metrics, cluster_features=list(columns), monetary=monetary_note,
                           returns_policy=cfg.returns)
        run.outputs.update(rfm=lake.partition_url("mining/rfm", partition),
                           rfm_segments=lake.partition_url("mining/rfm_segments", partition))
    return {**run.counts, "metrics": run.metrics}
