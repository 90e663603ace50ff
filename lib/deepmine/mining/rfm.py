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
starts at score 3; some scores may then hold nobody, which is the honest outcome. The same score is
`1 +` the number of the four cut points x_(ceil(s*n/5)), s = 1..4 (order statistics, worse
first) that the value is better than, so it is a bucket expression once the cut points are known;
they are found exactly, with no window over the whole table (quintile_cut_points).

Named segments come from (r_score, f_score) through SEGMENT_GRID below, the one place where the
mapping lives. Clusters: K-means on standardized log1p features, k chosen by silhouette (squared
Euclidean, on a seeded sample of rfm.silhouette_sample customers) over [rfm.k_min, rfm.k_max],
each k the lowest-cost of rfm.n_init seeded runs; scikit-learn on the driver up to
rfm.local_max_customers customers, above that the k sweep on a seeded sample of that size and the
chosen k's centres refined on all by Lloyd's iterations in Spark (choose_clusters). Cluster ids are renumbered by size, 0 the
largest. When K-means leaves fewer than 2 non-empty clusters for every k tried, every customer gets
cluster 0 and the stage ends `degraded` with the reason (published, but the clusters mean nothing).
"""
from __future__ import annotations

import datetime as dt
import math
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from deepmine.core.config import Config, ConfigError, RfmConfig
from deepmine.core.lake import Lake, StageRun

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


# Rank-error bound of percentile_approx's first pass (relative to the number of customers). It
# only sizes the brackets that the second pass searches exactly: the scores do not depend on it.
QUANTILE_ERROR = 0.001


def _order_key(value: str, higher_is_better: bool) -> Column:
    """A column that sorts worse values first (the negated value when larger is worse)."""
    return F.col(value) if higher_is_better else -F.col(value)


def quintile_cut_points(df: DataFrame, values: dict[str, bool]) -> dict[str, list]:
    """For each column `value` (worse first by `values[value]`, higher_is_better): the four exact
    order statistics x_(q_s) of its worse-first order key, q_s = ceil(s * n / 5), s = 1..4, n the
    non-null count ([] when n = 0). A score is 1 + the number of cut points its key exceeds.

    Two distributed passes, no window and no join: percentile_approx brackets each x_(q_s) within
    +-2 * QUANTILE_ERROR * n ranks; then one aggregate counts the keys below each bracket and one
    groupBy counts the distinct keys inside the brackets, from which the driver walks to the exact
    rank. A bracket that missed (never seen; GK's bound makes it impossible) falls back to every
    distinct key of that column.
    """
    names = list(values)
    keys = {v: _order_key(v, values[v]) for v in names}
    probes = [max(0.0, s / 5 - 2 * QUANTILE_ERROR) for s in range(1, 5)] + \
             [min(1.0, s / 5 + 3 * QUANTILE_ERROR) for s in range(1, 5)]
    first = df.agg(*[F.count(F.col(v)).alias(f"n_{i}") for i, v in enumerate(names)],
                   *[F.percentile_approx(keys[v], probes, int(1 / QUANTILE_ERROR)).alias(f"p_{i}")
                     for i, v in enumerate(names)]).first()
    brackets: dict[str, list[tuple]] = {}
    for i, v in enumerate(names):
        n = int(first[f"n_{i}"])
        if n:
            p = first[f"p_{i}"]
            brackets[v] = [(math.ceil(s * n / 5), p[s - 1], p[s + 3]) for s in range(1, 5)]
    if not brackets:
        return {v: [] for v in names}
    below = df.agg(*[F.count(F.when(keys[v] < F.lit(lo), 1)).alias(f"{i}_{s}")
                     for i, v in enumerate(names) if v in brackets
                     for s, (_, lo, _) in enumerate(brackets[v])]).first()
    inside = [F.when(reduce(lambda a, b: a | b, [keys[v].between(lo, hi)
                                                 for _, lo, hi in brackets[v]]),
                     F.struct(F.lit(i).alias("c"), keys[v].cast("double").alias("key")))
              for i, v in enumerate(names) if v in brackets]
    candidates: dict[int, list[tuple[float, int]]] = {}
    for row in (df.select(F.explode(F.array(*inside)).alias("x")).where(F.col("x").isNotNull())
                .groupBy("x.c", "x.key").count().collect()):
        candidates.setdefault(row["c"], []).append((row["key"], row["count"]))
    cuts: dict[str, list] = {v: [] for v in names}
    for i, v in enumerate(names):
        for s, (q, lo, hi) in enumerate(brackets.get(v, [])):
            cut = _walk_to_rank(sorted(candidates.get(i, [])), below[f"{i}_{s}"], q, lo, hi)
            if cut is None:  # the bracket missed x_(q): count every distinct key instead
                every = sorted((r[0], r[1]) for r in df.where(F.col(v).isNotNull())
                               .groupBy(keys[v].cast("double")).count().collect())
                cut = _walk_to_rank(every, 0, q, -math.inf, math.inf)
            cuts[v].append(cut)
    return cuts


def _walk_to_rank(counted: list[tuple[float, int]], before: int, q: int, lo, hi):
    """The q-th smallest key given `before` keys below `lo` and the (key, count) pairs in
    [lo, hi] sorted by key; None when the q-th key is not in [lo, hi]."""
    if before >= q:
        return None
    for key, count in counted:
        if lo <= key <= hi:
            before += count
            if before >= q:
                return key
    return None


def score_column(value: str, higher_is_better: bool, cuts: list) -> Column:
    """1 + floor(5 * b / n) as 1 + the number of cut points the value's order key exceeds (b
    customers strictly worse, n with a value); null for a null value."""
    if not cuts:
        return F.lit(None).cast("int")
    key = _order_key(value, higher_is_better).cast("double")
    return F.when(F.col(value).isNotNull(),
                  reduce(lambda a, b: a + b, [F.when(key > F.lit(c), 1).otherwise(0)
                                              for c in cuts]) + 1).cast("int")


SCORED = {"recency_days": ("r_score", False), "frequency": ("f_score", True),
          "monetary": ("m_score", True)}


def segment_column(r_score: Column, f_score: Column) -> Column:
    """The named segment for (r_score, f_score), from SEGMENT_GRID."""
    pairs = [x for r, row in SEGMENT_GRID.items() for f, name in enumerate(row, 1)
             for x in (F.lit(r * 10 + f), F.lit(name))]
    return F.element_at(F.create_map(*pairs), r_score * 10 + f_score)


def rfm_scores(values: DataFrame) -> DataFrame:
    """rfm_values -> the same rows plus r_score, f_score, m_score and segment. Runs three small
    aggregates over `values` for the cut points (persist it first when it is expensive)."""
    cuts = quintile_cut_points(values, {v: better for v, (_, better) in SCORED.items()})
    scored = values.select("customer_id", "recency_days", "frequency", "monetary",
                           *[score_column(v, better, cuts[v]).alias(score)
                             for v, (score, better) in SCORED.items()])
    return scored.withColumn("segment", segment_column(F.col("r_score"), F.col("f_score")))


def rfm_table(transactions: DataFrame, run_date: str, returns: str = "net") -> DataFrame:
    """Clean transactions -> customer_id, R/F/M values, scores and segment (no cluster yet)."""
    return rfm_scores(rfm_values(transactions, run_date, returns))


CLUSTER_FEATURES = ("recency_days", "frequency", "monetary")


def standardized_features(rfm: DataFrame, columns: tuple[str, ...]) -> DataFrame:
    """customer_id + one double column per feature: log1p of the value, standardized (mean 0,
    sample sd 1; a constant column becomes 0, as Spark ML's StandardScaler does).

    A negative net monetary (returns exceeding purchases) is taken as 0 before log1p."""
    logged = rfm.select("customer_id", *[
        F.log1p(F.greatest(F.col(c).cast("double"), F.lit(0.0))).alias(c) for c in columns])
    stats = logged.agg(*[F.avg(c).alias(f"mean_{c}") for c in columns],
                       *[F.stddev_samp(c).alias(f"sd_{c}") for c in columns]).first()

    def scaled(c: str) -> Column:
        sd = stats[f"sd_{c}"]
        if sd is None or not sd > 0:
            return F.lit(0.0).alias(c)
        return ((F.col(c) - F.lit(stats[f"mean_{c}"])) / F.lit(sd)).alias(c)
    return logged.select("customer_id", *[scaled(c) for c in columns])


def nearest_centre(columns: tuple[str, ...], centres) -> Column:
    """The index of the centre (rows of `centres`, one value per column) nearest to each row in
    squared Euclidean distance, as a Spark expression; ties go to the lower index."""
    distances = [sum((F.col(c) - F.lit(float(centre[j]))) ** 2 for j, c in enumerate(columns))
                 for centre in centres]
    if len(distances) == 1:
        return F.lit(0)
    best = F.least(*distances)
    label = F.when(distances[0] == best, F.lit(0))
    for i, d in enumerate(distances[1:-1], start=1):
        label = label.when(d == best, F.lit(i))
    return label.otherwise(F.lit(len(distances) - 1))


def lloyd_on_spark(features: DataFrame, columns: tuple[str, ...], centres, max_iter: int,
                   tolerance: float = 1e-10) -> tuple[Column, list[int], int]:
    """K-means (Lloyd's iterations) over every row of `features` from `centres`, one Spark
    aggregate per iteration: each row to its nearest centre, then each centre to the mean of its
    rows (a centre left without rows stays where it was), until no centre moves by more than
    `tolerance` (squared) or `max_iter`. Returns the assignment expression of the final centres,
    the rows per centre under it, and the iterations run.

    Started from the centres of a sample's K-means, this is what fitting on every customer adds:
    a few passes instead of Spark ML's restarts from scratch (n_init x maxIter jobs)."""
    import numpy as np
    centres = np.asarray(centres, dtype=np.float64)
    for iteration in range(1, max_iter + 1):
        label = nearest_centre(columns, centres)
        rows = (features.groupBy(label.alias("_label"))
                .agg(F.count("*").alias("n"), *[F.avg(c).alias(c) for c in columns]).collect())
        sizes = [0] * len(centres)
        moved = centres.copy()
        for r in rows:
            sizes[r["_label"]] = int(r["n"])
            moved[r["_label"]] = [r[c] for c in columns]
        shift = float(((moved - centres) ** 2).sum(axis=1).max())
        if shift <= tolerance or iteration == max_iter:
            return label, sizes, iteration
        centres = moved
    raise ValueError("lloyd_on_spark: max_iter must be at least 1")


def collapsed(cluster_sizes) -> bool:
    """True when fewer than 2 clusters hold anyone: silhouette is then undefined. Equal sizes
    ([400, 400]) are two clusters, not a collapse."""
    return sum(1 for size in cluster_sizes if size > 0) < 2


def sweep_k(x, k_min: int, k_max: int, seed: int, max_iter: int, n_init: int,
            silhouette_sample: int) -> tuple[dict, dict]:
    """scikit-learn K-means for every k in [k_min, k_max] on the rows of `x` (numpy, n x d); the
    silhouette (squared Euclidean, Spark's ClusteringEvaluator's measure) of each k on the same
    seeded sample of at most `silhouette_sample` rows. Returns ({k: (silhouette, labels, sizes)}
    for the k that did not collapse, {"collapsed_k": [...]})."""
    import numpy as np
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.metrics import silhouette_score

    fits, skipped = {}, []
    sample = min(len(x), silhouette_sample)
    for k in range(k_min, k_max + 1):
        labels = SkKMeans(n_clusters=k, n_init=n_init, max_iter=max_iter,
                          random_state=seed).fit_predict(x)
        sizes = np.bincount(labels, minlength=k).tolist()
        if collapsed(sizes):
            skipped.append(k)
            continue
        score = float(silhouette_score(x, labels, metric="sqeuclidean", sample_size=sample,
                                       random_state=seed))
        fits[k] = (score, labels, sizes)
    return fits, ({"collapsed_k": skipped} if skipped else {})


def choose_clusters(features: DataFrame, columns: tuple[str, ...], k_min: int, k_max: int,
                    seed: int, max_iter: int = 50, n_init: int = 3,
                    local_max_customers: int = 200_000, silhouette_sample: int = 10_000
                    ) -> tuple[DataFrame | None, dict[str, Any]]:
    """Choose k in [k_min, k_max] by silhouette (ties: smaller k) and cluster every customer.

    `features`: standardized_features. With at most `local_max_customers` customers the table is
    collected and scikit-learn fits every k on all of it (n_init seeded restarts each); with more,
    the same sweep runs on a seeded sample of `local_max_customers` customers and the chosen k's
    centres are refined on the whole table by Lloyd's iterations in Spark (lloyd_on_spark). Silhouettes are measured on a seeded
    sample of at most `silhouette_sample` customers (its standard error is far below the gaps
    between k seen on real data).

    Returns (customer_id, cluster) with clusters renumbered by size (0 = largest; equal sizes by
    K-means' own label), and metrics. With fewer than 2 distinct points no clustering is possible:
    (None, metrics with k = 1). When K-means collapsed (collapsed()) for every k tried, the
    result is (None, metrics with k = 1 and `degraded_reason`): the caller must not pass one
    cluster off as a clustering.
    """
    import numpy as np
    import pandas as pd

    spark = features.sparkSession
    metrics: dict[str, Any] = {"k_range": [k_min, k_max], "silhouette_by_k": {}}
    customers = features.count()
    local = customers <= local_max_customers
    chosen = features if local else features.sample(
        fraction=min(1.0, 1.05 * local_max_customers / customers), seed=seed)
    table = chosen.toPandas().sort_values("customer_id", kind="stable").reset_index(drop=True)
    if not local:
        table = table.head(local_max_customers)
    x = table[list(columns)].to_numpy(np.float64)
    distinct = len(np.unique(x, axis=0))
    if distinct < 2:
        metrics.update(k=1, silhouette=None, note="fewer than 2 distinct customers: one cluster")
        return None, metrics
    fits, skipped = sweep_k(x, k_min, min(k_max, distinct), seed, max_iter, n_init,
                            silhouette_sample)
    metrics.update(skipped)
    metrics["silhouette_by_k"] = {str(k): round(f[0], 6) for k, f in fits.items()}
    metrics["selection"] = (f"scikit-learn on all {customers} customers" if local else
                            f"scikit-learn on a seeded sample of {len(x)} of {customers} "
                            "customers; the chosen k's centres refined on all by Spark")
    metrics["silhouette_sample"] = min(len(x), silhouette_sample)
    if not fits:
        metrics.update(k=1, silhouette=None, degraded_reason=(
            f"K-means put every customer in one cluster for every k tried "
            f"({skipped.get('collapsed_k')}) on {distinct} distinct customers: cluster is 0 for "
            "all, not a clustering"))
        return None, metrics
    k = max(fits, key=lambda k: (fits[k][0], -k))
    score, labels, sizes = fits[k]
    if local:
        labelled = pd.DataFrame({"customer_id": table["customer_id"], "_label": labels})
        predicted = spark.createDataFrame(labelled, "customer_id string, _label int")
    else:
        start = np.stack([x[labels == c].mean(axis=0) for c in range(k) if sizes[c] > 0])
        label, sizes, iterations = lloyd_on_spark(features, columns, start, max_iter)
        metrics["refinement_iterations"] = iterations
        if collapsed(sizes):
            metrics.update(k=1, silhouette=None, degraded_reason=(
                f"K-means with k={k} (chosen on a sample) put every customer in one cluster: "
                "cluster is 0 for all, not a clustering"))
            return None, metrics
        k = len(sizes)
        predicted = features.select("customer_id", label.alias("_label"))
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    relabel = F.create_map(*[e for new, old in enumerate(order) for e in (F.lit(old), F.lit(new))])
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
    if cfg.local_max_customers < 1 or cfg.silhouette_sample < 2:
        raise ConfigError(f"config keys 'rfm.local_max_customers'/'rfm.silhouette_sample': "
                          f"expected >= 1 and >= 2, found {cfg.local_max_customers} and "
                          f"{cfg.silhouette_sample}")
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

        values = rfm_values(transactions, run_date, cfg.returns).persist()
        rfm = rfm_scores(values).persist()
        try:
            stats = rfm.agg(F.count("*").alias("customers"),
                            F.count(F.when(F.col("monetary").isNull(), 1)).alias("unknown")
                            ).first()
            customers, unknown_monetary = int(stats["customers"]), int(stats["unknown"])
            columns = CLUSTER_FEATURES if unknown_monetary == 0 else CLUSTER_FEATURES[:2]
            if customers >= 2:
                features = standardized_features(rfm, columns).persist()
                try:
                    clusters, cluster_metrics = choose_clusters(
                        features, columns, cfg.k_min, cfg.k_max, cfg.seed, cfg.max_iter,
                        cfg.n_init, cfg.local_max_customers, cfg.silhouette_sample)
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
            values.unpersist()

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
